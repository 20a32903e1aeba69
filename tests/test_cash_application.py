"""Cash application: one payment across invoices oldest first, overpayments held as customer
credit and applied to the next invoice, credit notes, refunds."""

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings
from l2c.journal import ACCOUNTS_RECEIVABLE, CASH, CUSTOMER_CREDIT, SALES_CREDITS
from l2c.ledger_check import check_ledger
from models.deal import Stage
from models.money import ZERO
from tests.helpers import (
    account_balances,
    advance_until,
    final_state,
    own_worker,
    quote_to_signature,
    refused_after,
    signal,
    start,
    state_of,
    wait_until,
)


async def test_payments_spread_oldest_first_and_credit_pays_the_next_invoice(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await quote_to_signature(handle, term_months=3)  # 10 seats: 500.00 a month, billed monthly
    state = await advance_until(ts_env, handle, lambda s: len(s.invoices) >= 2)
    first, second = state.invoices[0].number, state.invoices[1].number

    # One transfer for both open invoices and then some: oldest first, the rest held as credit.
    await signal(handle, "record_payment", {"amount": "1200.00", "reference": "WIRE-1"})
    state = await wait_until(handle, lambda s: s.customer_credit == Decimal("200.00"))
    assert [i.status for i in state.invoices] == ["paid", "paid"]
    assert state.balance_due == ZERO

    # A credit note on a paid invoice: what it had been paid becomes credit too.
    await signal(handle, "issue_credit_note", {"invoice_number": first, "amount": "100.00",
                                              "reason": "outage on day 3", "reference": "CN-1",
                                              "issued_by": "fay.finance"})  # fmt: skip
    state = await wait_until(handle, lambda s: s.customer_credit == Decimal("300.00"))
    assert state.invoices[0].amount_credited == Decimal("100.00")
    assert state.invoices[0].amount_paid == Decimal("400.00")
    assert state.invoices[0].status == "paid"
    assert "already used" in await refused_after(handle, "issue_credit_note", {
        "invoice_number": first, "amount": "1.00", "reason": "again", "reference": "CN-1",
        "issued_by": "fay.finance"})  # fmt: skip
    assert "can still be credited (400.00)" in await refused_after(handle, "issue_credit_note", {
        "invoice_number": first, "amount": "400.01", "reason": "too much", "reference": "CN-2",
        "issued_by": "fay.finance"})  # fmt: skip
    # Money for an invoice paid meanwhile is not turned away: with nothing else open, it is credit.
    await signal(handle, "record_payment",
                 {"invoice_number": second, "amount": "5.00", "reference": "WIRE-X"})  # fmt: skip
    await wait_until(handle, lambda s: s.customer_credit == Decimal("305.00"))

    # The next invoice takes the credit first.
    state = await advance_until(ts_env, handle, lambda s: len(s.invoices) >= 3)
    third = state.invoices[2]
    assert third.amount_paid == Decimal("305.00") and third.balance == Decimal("195.00")
    assert state.customer_credit == ZERO
    assert any(e.kind == "credit_applied" and third.number in e.detail for e in state.events)

    # Overpay it, refund the rest; a refund beyond the credit is refused.
    await signal(handle, "record_payment",
                 {"invoice_number": third.number, "amount": "250.00", "reference": "WIRE-2"})  # fmt: skip
    await wait_until(handle, lambda s: s.customer_credit == Decimal("55.00"))
    assert "exceeds the customer credit held (55.00)" in await refused_after(
        handle, "refund_credit", {"amount": "60.00", "reference": "RF-1"}
    )
    assert "bills in USD" in await refused_after(
        handle, "refund_credit", {"amount": "5.00", "reference": "RF-1", "currency": "EUR"}
    )
    await signal(handle, "refund_credit", {"amount": "55.00", "reference": "RF-1"})
    await wait_until(handle, lambda s: s.customer_credit == ZERO)

    final = await final_state(handle)
    assert final.stage == Stage.WON
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[CASH] == Decimal("1200.00") + Decimal("5.00") + Decimal("250.00") - Decimal(
        "55.00"
    )
    assert balances.get(ACCOUNTS_RECEIVABLE, ZERO) == ZERO
    assert balances.get(CUSTOMER_CREDIT, ZERO) == ZERO
    assert balances[SALES_CREDITS] == Decimal("100.00")
    assert check_ledger(sqlite_ledger) == []


async def test_a_fully_credited_unpaid_invoice_is_void_and_refuses_payments(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle, term_months=1, billing_period="upfront")
    invoice = state.invoices[0]
    assert "unknown invoice INV-999999" in await refused_after(handle, "issue_credit_note", {
        "invoice_number": "INV-999999", "amount": "1.00", "reason": "typo", "reference": "CN-0",
        "issued_by": "fay.finance"})  # fmt: skip
    await signal(handle, "issue_credit_note", {"invoice_number": invoice.number,
                                              "amount": str(invoice.amount), "reason": "cancelled",
                                              "reference": "CN-9", "issued_by": "fay.finance"})  # fmt: skip
    state = await wait_until(handle, lambda s: s.invoices[0].status == "void")
    assert state.balance_due == ZERO
    assert f"{invoice.number} is void" in await refused_after(
        handle, "record_payment", {"invoice_number": invoice.number, "amount": "1.00",
                                   "reference": "W-1"})  # fmt: skip
    final = await final_state(handle)
    assert final.stage == Stage.WON
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances.get(ACCOUNTS_RECEIVABLE, ZERO) == ZERO
    assert balances[SALES_CREDITS] == invoice.amount
    assert check_ledger(sqlite_ledger) == []


@pytest.fixture
async def slow_postings(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, rules: BusinessRules, settings: Settings
) -> AsyncIterator[Settings]:
    """A worker whose payment postings take 2 s, as a retried posting would."""
    slow = settings.model_copy(
        update={"faults_json": '{"apply_payment": {"kind": "slow", "seconds": 2}}'}
    )
    async with own_worker(ts_env.client, sqlite_ledger, rules, slow):
        yield slow


async def test_postings_reach_the_ledger_in_the_order_the_deal_decided_them(
    ts_env: WorkflowEnvironment, slow_postings: Settings, sqlite_ledger: Engine
) -> None:
    """A refund of credit, and a credit note on a paid invoice, decided while the payment that
    made them possible is still being posted, wait for that posting."""
    handle = await start(ts_env.client, slow_postings.task_queue)
    state = await quote_to_signature(handle, term_months=1, billing_period="upfront")
    invoice = state.invoices[0]
    await signal(handle, "record_payment", {"invoice_number": invoice.number, "reference": "W1",
                                           "amount": str(invoice.amount + Decimal("50.00"))})  # fmt: skip
    await wait_until(handle, lambda s: s.customer_credit == Decimal("50.00"))
    await signal(handle, "refund_credit", {"amount": "50.00", "reference": "RF-1"})
    await signal(handle, "issue_credit_note", {"invoice_number": invoice.number, "amount": "10.00",
                                              "reason": "late start", "reference": "CN-1",
                                              "issued_by": "fay.finance"})  # fmt: skip
    # The credit note made 10.00 of credit the customer is owed: the deal waits for its refund.
    state = await wait_until(handle, lambda s: s.customer_credit == Decimal("10.00"))
    await signal(handle, "refund_credit", {"amount": "10.00", "reference": "RF-2"})
    final = await final_state(handle)
    assert final.stage == Stage.WON and final.customer_credit == ZERO
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances.get(CUSTOMER_CREDIT, ZERO) == ZERO
    assert balances[CASH] == invoice.amount - Decimal("10.00")
    assert check_ledger(sqlite_ledger) == []


async def test_credit_held_at_the_end_of_the_term_waits_for_its_refund(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle, term_months=1)
    invoice = state.invoices[0]
    await advance_until(ts_env, handle, lambda s: s.revenue_recognized > 0)  # the term is over
    await signal(handle, "record_payment", {"invoice_number": invoice.number, "reference": "W1",
                                           "amount": str(invoice.amount + Decimal("50.00"))})  # fmt: skip
    state = await wait_until(handle, lambda s: s.invoices[0].status == "paid")
    await ts_env.sleep(timedelta(days=30))
    state = await state_of(handle)
    assert state.stage == Stage.ACTIVE and state.customer_credit == Decimal("50.00")
    await signal(handle, "refund_credit", {"amount": "50.00", "reference": "RF-1"})
    final = await final_state(handle)
    assert final.stage == Stage.WON
    assert account_balances(sqlite_ledger, handle.id).get(CUSTOMER_CREDIT, ZERO) == ZERO
