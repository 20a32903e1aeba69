"""Invoice terms: drafts (numbered, visible, not payable, then final and due) and the
early-payment discount."""

import asyncio
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings, load_business_rules
from l2c.drill import drill_config
from l2c.journal import ACCOUNTS_RECEIVABLE, CASH, SALES_CREDITS
from l2c.ledger_check import check_ledger
from models.deal import Stage
from models.ledger import InvoiceRecord
from tests.helpers import (
    account_balances,
    advance_until,
    final_state,
    own_worker,
    pay_in_full,
    quote_to_signature,
    refusals,
    refused_after,
    signal,
    start,
    wait_until,
)


def stored(ledger: Engine, number: str) -> InvoiceRecord:
    with Session(ledger) as session:
        return session.exec(select(InvoiceRecord).where(InvoiceRecord.number == number)).one()


async def test_a_draft_is_not_payable_until_final_then_due_by_its_terms(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, tmp_path: Path
) -> None:
    rules = load_business_rules(drill_config(tmp_path / "config", invoice_draft_hours=24))
    async with own_worker(ts_env.client, sqlite_ledger, rules, settings):
        handle = await start(ts_env.client, settings.task_queue)
        state = await quote_to_signature(handle, term_months=1)
        draft = state.invoices[0]
        assert draft.status == "draft"
        assert state.events[-1].kind == "invoice_drafted"
        row = stored(sqlite_ledger, draft.number)
        assert row.status == "draft" and "DRAFT" in row.html
        assert account_balances(sqlite_ledger, handle.id).get(ACCOUNTS_RECEIVABLE, 0) == 0
        reason = await refused_after(handle, "record_payment", {
            "invoice_number": draft.number, "amount": str(draft.amount), "reference": "EARLY"})  # fmt: skip
        assert reason == f"{draft.number} is draft"

        await ts_env.sleep(timedelta(hours=25))
        state = await wait_until(handle, lambda s: s.invoices[0].status == "open")
        final = state.invoices[0]
        assert final.number == draft.number and final.amount == draft.amount
        assert final.issued_on == draft.issued_on + timedelta(days=1)  # dated when made final
        assert final.due_date == final.issued_on + timedelta(days=30)
        row = stored(sqlite_ledger, final.number)
        assert (row.status, row.issued_on, row.due_date) == ("open", final.issued_on,
                                                             final.due_date)  # fmt: skip
        assert "DRAFT" not in row.html and final.due_date.isoformat() in row.html
        assert account_balances(sqlite_ledger, handle.id)[ACCOUNTS_RECEIVABLE] == final.amount

        await pay_in_full(handle, final)
        assert (await final_state(handle)).stage == Stage.WON
    assert check_ledger(sqlite_ledger) == []


async def test_a_write_off_makes_a_draft_final_and_writes_it_off_with_the_rest(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, tmp_path: Path
) -> None:
    # 31-day months and a week of review: invoice 1 is final on day 7, due day 37, and written
    # off on day 67, while invoice 3 (drafted on day 62) is still a draft.
    config = drill_config(tmp_path / "config", month_seconds=31 * 24 * 3600,
                          invoice_draft_hours=168, reminder_days_after_due=[2, 9],
                          write_off_days_after_due=30, suspend_at_level=0)  # fmt: skip
    async with own_worker(ts_env.client, sqlite_ledger, load_business_rules(config), settings):
        handle = await start(ts_env.client, settings.task_queue)
        await quote_to_signature(handle, term_months=4)
        state = await advance_until(ts_env, handle, lambda s: len(s.invoices) == 3)
        assert state.invoices[2].status == "draft"
        state = await final_state(handle, timeout=90)
    assert state.stage == Stage.WRITTEN_OFF
    assert [i.status for i in state.invoices] == ["uncollectible"] * 3
    third = state.invoices[2]
    assert third.issued_on == state.invoices[0].due_date + timedelta(days=30)  # the write-off day
    assert stored(sqlite_ledger, third.number).status == "uncollectible"
    assert [e.kind for e in state.events].count("invoice_drafted") == 3
    assert check_ledger(sqlite_ledger) == []


async def test_an_invoice_paid_in_full_by_its_discount_day_is_paid_less_by_a_credit_note(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, tmp_path: Path
) -> None:
    # "2/10 net 30"
    config = drill_config(tmp_path / "config", early_payment_discount_percent=2,
                          early_payment_discount_days=10, month_seconds=31 * 24 * 3600)  # fmt: skip
    async with own_worker(ts_env.client, sqlite_ledger, load_business_rules(config), settings):
        handle = await start(ts_env.client, settings.task_queue)
        state = await quote_to_signature(handle, term_months=2)  # 500.00 a month
        first = state.invoices[0]
        assert first.early_payment_discount == Decimal("10.00")
        assert first.early_payment_until == first.issued_on + timedelta(days=10)
        html = stored(sqlite_ledger, first.number).html
        assert f"pay USD 490.00 in full by {first.early_payment_until.isoformat()}" in html
        # Paid on time: the discount is a credit note, and 490.00 settles the invoice. The bank
        # file is sent twice at once: the second is counted once while the first is applied.
        early = {"invoice_number": first.number, "amount": "490.00", "reference": "EARLY-1"}
        await asyncio.gather(*(signal(handle, "record_payment", early) for _ in range(2)))
        state = await wait_until(handle, lambda s: s.invoices[0].status == "paid"
                                 and len(refusals(s, "record_payment")) == 1)  # fmt: skip
        assert "counted once" in refusals(state, "record_payment")[0]
        assert state.payment_references == ["EARLY-1"] and state.customer_credit == 0
        assert (state.invoices[0].amount_paid, state.invoices[0].amount_credited) == (
            Decimal("490.00"), Decimal("10.00"))  # fmt: skip
        [note] = [e.detail for e in state.events if e.kind == "credit_note"]
        assert "early-payment discount" in note
        # Paid 11 days after its date: no discount, and 10.00 is still owed.
        state = await advance_until(ts_env, handle, lambda s: len(s.invoices) == 2)
        second = state.invoices[1]
        assert second.early_payment_until == second.issued_on + timedelta(days=10)
        await ts_env.sleep(timedelta(days=11))
        await signal(handle, "record_payment", {"invoice_number": second.number, "amount": "490.00",
                                               "reference": "LATE-2"})  # fmt: skip
        state = await wait_until(handle, lambda s: s.invoices[1].amount_paid > 0)
        assert state.invoices[1].status == "open" and state.invoices[1].balance == Decimal("10.00")
        await pay_in_full(handle, state.invoices[1])
        assert (await final_state(handle)).stage == Stage.WON
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[CASH] == Decimal("490.00") + Decimal("500.00")
    assert balances[SALES_CREDITS] == Decimal("10.00")  # contra revenue
    assert check_ledger(sqlite_ledger) == []
