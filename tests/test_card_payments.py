"""Cards on file: charged on the due date through the sandbox gateway, once, whatever fails."""

from decimal import Decimal

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings
from l2c.gateway_sandbox import SandboxGateway
from models.deal import Stage
from models.ledger import PaymentRecordRow
from tests.helpers import final_state, quote_to_signature, start

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
