"""Cash application: one payment across invoices oldest first, overpayments held as customer
credit and applied to the next invoice, credit notes, refunds."""

from decimal import Decimal

from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings
from l2c.journal import ACCOUNTS_RECEIVABLE, CASH, CUSTOMER_CREDIT, SALES_CREDITS
from l2c.ledger_check import check_ledger
from models.deal import Stage
from models.money import ZERO
from tests.helpers import (
    account_balances,
    advance_until,
    final_state,
    quote_to_signature,
    refused_after,
    signal,
    start,
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
