"""Metered usage billed in arrears: overage above the commitment, late events, the last month."""

from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings
from l2c.journal import ACCOUNTS_RECEIVABLE, DEFERRED_REVENUE, REVENUE_USAGE
from l2c.ledger_check import check_ledger
from l2c.usage import ingest_usage
from models.deal import Stage
from models.ledger import InvoiceLineRecord
from models.money import ZERO
from models.state import DealState
from tests.helpers import (
    account_balances,
    advance_until,
    final_state,
    pay_in_full,
    quote_to_signature,
    start,
    usage_lines,
)


def invoice_lines(ledger: Engine, number: str) -> list[InvoiceLineRecord]:
    with Session(ledger) as session:
        return list(
            session.exec(
                select(InvoiceLineRecord).where(InvoiceLineRecord.invoice_number == number)
            ).all()
        )


async def test_usage_above_the_commitment_is_billed_in_arrears_late_events_included(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine, rules: BusinessRules
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    # 10 seats (500) and a committed 100 thousand calls a month (100 x 2.00): 700 a month.
    state = await quote_to_signature(handle, term_months=3, lines=[
        {"sku": "PLATFORM", "quantity": 10}, {"sku": "API_CALLS", "quantity": 100}])  # fmt: skip
    assert state.activated_at is not None and state.policy is not None
    month = [state.policy.months_after(state.activated_at, m) for m in range(4)]

    def ingest(*events: tuple[str, datetime, int]) -> None:
        report = ingest_usage(sqlite_ledger, usage_lines(handle.id, *events), rules.catalog)
        assert report.rejected == 0, report.problems

    ingest(
        ("m1-a", month[0] + timedelta(hours=1), 90_000),
        ("m1-b", month[1] - timedelta(seconds=1), 60_000),  # 150 thousand in month 1
        ("early", month[0] - timedelta(seconds=1), 500_000),  # before activation: never billed
    )
    await pay_in_full(handle, state.invoices[0])
    state = await advance_until(ts_env, handle, lambda s: len(s.invoices) >= 2)
    second = state.invoices[1]
    # 50 thousand calls above the commitment, in the 101-1000 tier at 1.50.
    assert second.amount == Decimal("700.00") + Decimal("75.00")
    assert second.period_index == 1 and second.billing_month == 1
    assert (
        "month 1: 150,000 metered, 100,000 committed"
        in invoice_lines(sqlite_ledger, second.number)[-1].description
    )

    # Month 1 gets 10 thousand more calls after it was invoiced; month 2 stays in the commitment.
    ingest(
        ("m1-late", month[1] - timedelta(minutes=5), 10_000),
        ("m1-a", month[0] + timedelta(hours=1), 90_000),  # resent: a duplicate, ignored
        ("m2-a", month[1] + timedelta(days=3), 50_000),
    )
    await pay_in_full(handle, second)
    state = await advance_until(ts_env, handle, lambda s: len(s.invoices) >= 3)
    third = state.invoices[2]
    assert third.amount == Decimal("700.00") + Decimal("15.00")
    late = invoice_lines(sqlite_ledger, third.number)[-1]
    assert late.amount == Decimal("15.00") and "month 1: 10,000 more metered" in late.description

    # Month 3: 1.2 million calls; the last month's usage comes on an invoice after the term.
    ingest(
        ("m3-a", month[2] + timedelta(days=1), 1_200_000),
        ("after-term", month[3] + timedelta(seconds=1), 777_000),  # after the term: never billed
    )
    await pay_in_full(handle, third)
    state = await advance_until(ts_env, handle, lambda s: len(s.invoices) >= 4)
    last = state.invoices[3]
    # 1200 thousand: 100 x 2.00 + 900 x 1.50 + 200 x 1.00 = 1750, less the committed 200.
    assert last.amount == Decimal("1550.00")
    assert last.period_index is None and last.billing_month == 3
    assert last.issued_on >= month[3].date()
    await pay_in_full(handle, last)

    final: DealState = await final_state(handle)
    assert final.stage == Stage.WON
    assert len(final.invoices) == 4
    usage_billed = Decimal("75.00") + Decimal("15.00") + Decimal("1550.00")
    assert final.revenue_recognized == Decimal("700.00") * 3 + usage_billed
    balances = account_balances(sqlite_ledger, handle.id)
    # The commitment's share of the price (by SSP: 100 x 1.80 against 10 x 45.00, so 600.00 of
    # the 2,100.00) ratably, and usage above it as billed.
    assert -balances[REVENUE_USAGE] == Decimal("600.00") + usage_billed
    assert balances[ACCOUNTS_RECEIVABLE] == ZERO
    assert balances[DEFERRED_REVENUE] == ZERO
    assert check_ledger(sqlite_ledger) == []


async def test_usage_within_the_commitment_adds_no_invoice(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine, rules: BusinessRules
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle, term_months=2, billing_period="upfront",
                                     lines=[{"sku": "API_CALLS", "quantity": 100}])  # fmt: skip
    assert state.activated_at is not None
    report = ingest_usage(
        sqlite_ledger,
        usage_lines(handle.id, ("u1", state.activated_at + timedelta(days=2), 99_999)),
        rules.catalog,
    )
    assert report.accepted == 1
    await pay_in_full(handle, state.invoices[0])
    final = await final_state(handle)
    assert final.stage == Stage.WON
    assert [i.amount for i in final.invoices] == [Decimal("400.00")]
    usage_steps = [e for e in final.events if e.kind == "invoice_issued"]
    assert len(usage_steps) == 1
