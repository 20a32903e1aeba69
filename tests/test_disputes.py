"""Disputes: a chargeback through the gateway's webhook, and an invoice contested before payment.
The invoice is `disputed`, dunning pauses, and the dispute ends won or lost."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings
from l2c.drill import free_port
from l2c.gateway_sandbox import SandboxGateway
from l2c.journal import (
    ACCOUNTS_RECEIVABLE,
    CASH,
    CHARGEBACK_LOSSES,
    CUSTOMER_CREDIT,
    SALES_CREDITS,
)
from l2c.ledger_check import check_ledger
from l2c.webhooks import sign, webhook_endpoint, webhook_url
from models.deal import Stage
from models.money import ZERO
from tests.helpers import (
    account_balances,
    advance_until,
    final_state,
    pay_in_full,
    quote_to_signature,
    refusals,
    refused_after,
    signal,
    start,
    state_of,
    wait_until,
)

SECRET = "whsec_test"
VISA = {"customer": "cus_acme", "payment_method": "pm_card_visa"}


@pytest.fixture
async def webhooks(
    ts_env: WorkflowEnvironment, sandbox_gateway: SandboxGateway, sqlite_ledger: Engine
) -> AsyncIterator[str]:
    """The webhook endpoint, announced to by the sandbox gateway; yields its URL."""
    endpoint = webhook_endpoint(free_port(), SECRET, ts_env.client, sqlite_ledger)
    endpoint.start()
    sandbox_gateway.state.webhook = (webhook_url(endpoint), SECRET)
    try:
        yield webhook_url(endpoint)
    finally:
        endpoint.stop()


async def post_event(url: str, kind: str, obj: dict[str, Any]) -> httpx.Response:
    payload = json.dumps({"id": f"evt_{kind}", "type": kind, "data": {"object": obj}}).encode()
    headers = {"Stripe-Signature": sign(SECRET, payload, int(time.time())),
               "Content-Type": "application/json"}  # fmt: skip
    return await asyncio.to_thread(httpx.post, url, content=payload, headers=headers, timeout=30)


async def test_a_chargeback_lost_through_the_gateways_webhooks_voids_the_invoice(
    ts_env: WorkflowEnvironment, deal_worker: Settings, webhooks: str, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    # Paid by card on its due date (day 30), well inside the 3-month term.
    await quote_to_signature(handle, card_on_file=VISA, term_months=3,
                             billing_period="upfront")  # fmt: skip
    paid = await advance_until(ts_env, handle, lambda s: s.invoices[0].status == "paid")
    invoice, intent = paid.invoices[0], paid.payment_references[0]
    dispute = {"id": "dp_1", "amount": int(invoice.amount * 100), "currency": "usd",
               "payment_intent": intent,
               "reason": "fraudulent", "status": "needs_response"}  # fmt: skip
    opened = await post_event(webhooks, "charge.dispute.created", dispute)
    assert opened.status_code == 200, opened.text
    state = await wait_until(handle, lambda s: s.invoices[0].status == "disputed")
    assert state.invoices[0].amount_paid == ZERO and state.balance_due == invoice.amount
    assert state.disputes[0].payment_reference == intent
    # Delivered again: the deal counts the dispute once.
    assert (await post_event(webhooks, "charge.dispute.created", dispute)).status_code == 200
    await wait_until(handle, lambda s: len(refusals(s, "open_dispute")) == 1)
    unknown = {**dispute, "id": "dp_2", "payment_intent": "pi_nobody"}
    assert (await post_event(webhooks, "charge.dispute.created", unknown)).status_code == 404
    closed = await post_event(webhooks, "charge.dispute.closed", {**dispute, "status": "lost"})
    assert closed.status_code == 200
    final = await final_state(handle)
    assert final.stage == Stage.WON
    assert final.invoices[0].status == "void"
    assert final.invoices[0].amount_credited == invoice.amount
    assert final.disputes[0].status == "lost"
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances.get(CASH, ZERO) == ZERO  # paid, then taken back
    assert balances.get(ACCOUNTS_RECEIVABLE, ZERO) == ZERO
    assert balances[SALES_CREDITS] == invoice.amount
    assert check_ledger(sqlite_ledger) == []


async def test_a_contested_invoice_pauses_dunning_until_the_dispute_is_won(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle, term_months=1, billing_period="upfront")
    invoice = state.invoices[0]  # due in 30 days; reminders 1, 7, 14, 30 days after
    assert "no payment pi_x" in await refused_after(handle, "open_dispute", {
        "invoice_number": invoice.number, "dispute_id": "D-0", "amount": "1.00",
        "reason": "x", "payment_reference": "pi_x"})  # fmt: skip
    assert "exceeds the balance due" in await refused_after(handle, "open_dispute", {
        "invoice_number": invoice.number, "dispute_id": "D-0", "amount": "999999.00",
        "reason": "x"})  # fmt: skip
    await signal(handle, "open_dispute", {"invoice_number": invoice.number, "dispute_id": "D-1",
                                         "amount": str(invoice.amount),
                                         "reason": "seats were never provisioned"})  # fmt: skip
    await wait_until(handle, lambda s: s.invoices[0].status == "disputed")
    await ts_env.sleep(timedelta(days=45))  # past the first two reminders' dates
    state = await state_of(handle)
    assert state.invoices[0].status == "disputed" and state.invoices[0].reminders_sent == 0
    closed_at = (await state_of(handle)).events[-1].at
    await signal(handle, "close_dispute", {"dispute_id": "D-1", "outcome": "won"})
    state = await wait_until(handle, lambda s: s.invoices[0].status == "open")
    assert "already closed (won)" in await refused_after(
        handle, "close_dispute", {"dispute_id": "D-1", "outcome": "lost"}
    )
    # Dunning resumes where it paused: reminder 1 comes as long after the dispute as it had left.
    state = await advance_until(ts_env, handle, lambda s: s.invoices[0].reminders_sent == 1,
                                step=timedelta(days=1))  # fmt: skip
    sent = next(e.at for e in state.events if e.kind == "dunning_reminder")
    assert sent - closed_at > timedelta(days=15)
    await pay_in_full(handle, state.invoices[0])
    final = await final_state(handle)
    assert final.stage == Stage.WON
    assert final.disputes[0].status == "won"
    assert check_ledger(sqlite_ledger) == []


async def test_a_write_off_takes_disputed_invoices_and_closes_their_disputes(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await quote_to_signature(handle, term_months=3)
    state = await advance_until(ts_env, handle, lambda s: len(s.invoices) >= 2)
    second = state.invoices[1]
    await signal(handle, "open_dispute", {"invoice_number": second.number, "dispute_id": "D-1",
                                         "amount": str(second.amount), "reason": "contested"})  # fmt: skip
    await wait_until(handle, lambda s: s.invoices[1].status == "disputed")
    final = await final_state(handle)  # invoice 1 is never paid: written off on day 90
    assert final.stage == Stage.WRITTEN_OFF
    assert {i.status for i in final.invoices} == {"uncollectible"}
    assert final.disputes[0].status == "written_off"
    assert account_balances(sqlite_ledger, handle.id).get(ACCOUNTS_RECEIVABLE, ZERO) == ZERO
    assert check_ledger(sqlite_ledger) == []


async def test_a_chargeback_after_the_deal_closed_is_recorded_in_the_ledger(
    ts_env: WorkflowEnvironment, deal_worker: Settings, webhooks: str, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await quote_to_signature(handle, card_on_file=VISA, term_months=1,
                             billing_period="upfront")  # fmt: skip
    final = await final_state(handle)  # paid by card on its due date, then won
    assert final.stage == Stage.WON
    invoice, intent = final.invoices[0], final.payment_references[0]
    dispute = {"id": "dp_late", "amount": int(invoice.amount * 100), "currency": "usd",
               "payment_intent": intent, "reason": "fraudulent", "status": "needs_response"}  # fmt: skip
    opened = await post_event(webhooks, "charge.dispute.created", dispute)
    assert opened.status_code == 200 and "recorded in the ledger" in opened.json()["recorded"]
    again = await post_event(webhooks, "charge.dispute.created", dispute)
    assert "already recorded" in again.json()["recorded"]
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances.get(CASH, ZERO) == ZERO and balances[CHARGEBACK_LOSSES] == invoice.amount
    won = await post_event(webhooks, "charge.dispute.closed", {**dispute, "status": "won"})
    assert won.status_code == 200 and "won" in won.json()["recorded"]
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[CASH] == invoice.amount and balances.get(CHARGEBACK_LOSSES, ZERO) == ZERO
    assert check_ledger(sqlite_ledger) == []


async def test_a_chargeback_of_money_held_as_credit_pays_that_credit_back(
    ts_env: WorkflowEnvironment, deal_worker: Settings, webhooks: str, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await quote_to_signature(handle, card_on_file=VISA, term_months=3, billing_period="upfront")
    paid = await advance_until(ts_env, handle, lambda s: s.invoices[0].status == "paid")
    invoice, intent = paid.invoices[0], paid.payment_references[0]
    # Credited in full after payment: void, its money held as customer credit.
    await signal(handle, "issue_credit_note", {"invoice_number": invoice.number,
                                              "amount": str(invoice.amount), "reason": "cancelled",
                                              "reference": "CN-1", "issued_by": "fay.finance"})  # fmt: skip
    await wait_until(handle, lambda s: s.invoices[0].status == "void")
    dispute = {"id": "dp_9", "amount": int(invoice.amount * 100), "currency": "usd",
               "payment_intent": intent, "reason": "fraudulent", "status": "needs_response"}  # fmt: skip
    assert (await post_event(webhooks, "charge.dispute.created", dispute)).status_code == 200
    state = await wait_until(handle, lambda s: bool(s.disputes))
    assert state.disputes[0].status == "ledger_only" and state.disputes[0].from_credit
    assert state.customer_credit == ZERO
    assert any(e.kind == "dispute_outside_invoices" and "is void" in e.detail for e in state.events)
    for _ in range(200):  # the ledger posting follows the deal's decision
        balances = account_balances(sqlite_ledger, handle.id)
        if balances.get(CASH, ZERO) == ZERO:
            break
        await asyncio.sleep(0.05)
    assert balances.get(CASH, ZERO) == ZERO and balances.get(CUSTOMER_CREDIT, ZERO) == ZERO
    # Won: the money comes back, and with nothing open it is the customer's credit again.
    closed = await post_event(webhooks, "charge.dispute.closed", {**dispute, "status": "won"})
    assert closed.status_code == 200
    await wait_until(handle, lambda s: s.customer_credit == invoice.amount)
    await signal(handle, "refund_credit", {"amount": str(invoice.amount), "reference": "RF-1"})
    final = await final_state(handle)
    assert final.stage == Stage.WON and final.disputes[0].status == "won"
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances.get(CASH, ZERO) == ZERO and balances.get(CUSTOMER_CREDIT, ZERO) == ZERO
    assert balances.get(CHARGEBACK_LOSSES, ZERO) == ZERO
    assert check_ledger(sqlite_ledger) == []
