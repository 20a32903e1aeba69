"""Cards on file: charged on the due date through the sandbox gateway, once, whatever fails."""

from decimal import Decimal

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings
from l2c.drill import free_port
from l2c.gateway_sandbox import SandboxGateway
from l2c.webhooks import webhook_endpoint, webhook_url
from models.deal import Stage
from models.ledger import PaymentRecordRow
from tests.helpers import (
    advance_until,
    final_state,
    own_worker,
    quote_to_signature,
    refusals,
    start,
    wait_until,
)

VISA = {"customer": "cus_acme", "payment_method": "pm_card_visa"}


def kinds(final: object, kind: str) -> list[str]:
    return [e.detail for e in final.events if e.kind == kind]  # type: ignore[attr-defined]


async def test_the_card_on_file_pays_the_invoice_on_its_due_date(
    ts_env: WorkflowEnvironment,
    deal_worker: Settings,
    sandbox_gateway: SandboxGateway,
    sqlite_ledger: Engine,
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    # The gateway fails twice first: before charging, then after charging with the answer lost.
    faults = {"next": ["500", "500_after"]}
    httpx.post(f"{sandbox_gateway.url}/_sandbox/faults", json=faults).raise_for_status()
    state = await quote_to_signature(handle, card_on_file=VISA, billing_period="upfront")
    assert state.card_on_file is not None and state.card_on_file.customer == "cus_acme"
    final = await final_state(handle)

    assert final.stage == Stage.WON
    assert not sandbox_gateway.state.faults  # both outages were met
    invoice = final.invoices[0]
    assert invoice.status == "paid" and invoice.amount_paid == Decimal("6000.00")
    assert invoice.reminders_sent == 0
    charges = sandbox_gateway.successful_charges()
    assert [(c["amount"], c["metadata"]["invoice_number"]) for c in charges] == [
        (600000, invoice.number)
    ]
    assert final.payment_references == [charges[0]["id"]]
    with Session(sqlite_ledger) as session:
        rows = session.exec(select(PaymentRecordRow)).all()
        assert [(r.reference, r.amount) for r in rows] == [(charges[0]["id"], Decimal("6000.00"))]


@pytest.mark.parametrize(
    ("payment_method", "declines"),
    [
        ("pm_card_chargeDeclinedInsufficientFunds", ["insufficient_funds"] * 3),  # each attempt
        ("pm_card_chargeDeclinedStolenCard", ["stolen_card (hard decline: no more attempts)"]),
    ],
)
async def test_declined_cards_are_retried_unless_hard_declined_then_dunned(
    ts_env: WorkflowEnvironment,
    deal_worker: Settings,
    sandbox_gateway: SandboxGateway,
    payment_method: str,
    declines: list[str],
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    card = {"customer": "cus_acme", "payment_method": payment_method}
    await quote_to_signature(handle, card_on_file=card, billing_period="upfront")
    final = await final_state(handle)
    assert [d.split(": ", 1)[1] for d in kinds(final, "card_declined")] == declines
    assert final.stage == Stage.WRITTEN_OFF and final.invoices[0].reminders_sent == 4
    assert sandbox_gateway.successful_charges() == []


async def test_the_gateways_webhook_for_a_card_charge_is_not_a_second_payment(
    ts_env: WorkflowEnvironment,
    deal_worker: Settings,
    sandbox_gateway: SandboxGateway,
    sqlite_ledger: Engine,
) -> None:
    endpoint = webhook_endpoint(free_port(), "whsec_test", ts_env.client, sqlite_ledger)
    endpoint.start()
    sandbox_gateway.state.webhook = (webhook_url(endpoint), "whsec_test")
    try:
        handle = await start(ts_env.client, deal_worker.task_queue)
        await quote_to_signature(handle, card_on_file=VISA, billing_period="upfront")
        # The webhook echoes the charge while the deal is still active (its term is a year).
        paid = await advance_until(ts_env, handle, lambda s: s.invoices[0].status == "paid")
        await wait_until(handle, lambda s: len(refusals(s, "record_payment")) == 1)
        final = await final_state(handle)
    finally:
        endpoint.stop()
    (reason,) = refusals(final, "record_payment")
    assert "counted once" in reason or "being charged" in reason
    assert final.stage == Stage.WON
    assert final.invoices == paid.invoices and final.payment_references == paid.payment_references
    with Session(sqlite_ledger) as session:
        assert len(session.exec(select(PaymentRecordRow)).all()) == 1
    assert len(sandbox_gateway.successful_charges()) == 1


async def test_without_a_gateway_the_invoice_is_left_to_dunning(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, rules: BusinessRules, settings: Settings
) -> None:
    no_gateway = settings.model_copy(update={"gateway_url": None})
    async with own_worker(ts_env.client, sqlite_ledger, rules, no_gateway):
        handle = await start(ts_env.client, settings.task_queue)
        await quote_to_signature(handle, card_on_file=VISA, billing_period="upfront")
        final = await final_state(handle)
    (reason,) = kinds(final, "card_not_charged")
    assert "no payment gateway is configured" in reason
    assert final.stage == Stage.WRITTEN_OFF and final.invoices[0].reminders_sent == 4
