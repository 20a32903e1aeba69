"""Dunning levels beyond reminders: entitlements suspended at a level, restored on payment."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings, load_business_rules
from l2c.drill import drill_config
from l2c.journal import BAD_DEBT_EXPENSE, CASH, DEFERRED_REVENUE, LATE_FEES
from l2c.ledger_check import check_ledger
from l2c.mailcatcher import MailCatcher
from models.cash import late_fee
from models.deal import Stage
from models.ledger import Entitlement, OrderRecord
from models.money import ZERO, to_cents
from tests.helpers import (
    account_balances,
    advance_until,
    final_state,
    own_worker,
    pay_in_full,
    quote_to_signature,
    signal,
    start,
    wait_until,
)


def service(ledger: Engine, deal_id: str) -> tuple[str, set[bool]]:
    with Session(ledger) as session:
        order = session.exec(select(OrderRecord).where(OrderRecord.deal_id == deal_id)).one()
        flags = session.exec(
            select(Entitlement.active).where(Entitlement.order_id == order.order_id)
        ).all()
        return order.status, set(flags)


async def test_service_is_suspended_at_the_third_reminder_and_restored_on_payment(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine, mailbox: MailCatcher
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle, term_months=3, billing_period="upfront")
    assert service(sqlite_ledger, handle.id) == ("provisioned", {True})
    state = await advance_until(ts_env, handle, lambda s: s.entitlements_suspended)
    assert state.invoices[0].reminders_sent == 3  # 14 days overdue (policy: suspend_at_level 3)
    assert service(sqlite_ledger, handle.id) == ("suspended", {False})
    third = [m for m in mailbox.messages if "Reminder 3" in m["Subject"]]
    assert len(third) == 1 and "access to the service is suspended" in str(
        third[0].get_payload(decode=True)
    )
    await pay_in_full(handle, state.invoices[0])
    state = await wait_until(handle, lambda s: not s.entitlements_suspended)
    assert [e.kind for e in state.events if e.kind.startswith("entitlements_")] == [
        "entitlements_suspended", "entitlements_restored"]  # fmt: skip
    final = await final_state(handle)
    assert final.stage == Stage.WON
    assert service(sqlite_ledger, handle.id) == ("provisioned", {True})


async def test_a_contested_invoice_keeps_service_suspended_until_it_is_paid(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle, term_months=3, billing_period="upfront")
    invoice = state.invoices[0]
    await advance_until(ts_env, handle, lambda s: s.entitlements_suspended)
    await signal(handle, "open_dispute", {"invoice_number": invoice.number, "dispute_id": "D-1",
                                         "amount": "0.01", "reason": "one cent"})  # fmt: skip
    await wait_until(handle, lambda s: s.invoices[0].status == "disputed")
    await ts_env.sleep(timedelta(days=3))
    await signal(handle, "close_dispute", {"dispute_id": "D-1", "outcome": "won"})
    state = await wait_until(handle, lambda s: s.invoices[0].status == "open")
    assert state.entitlements_suspended  # a dispute does not lift the suspension; payment does
    await pay_in_full(handle, state.invoices[0])
    await wait_until(handle, lambda s: not s.entitlements_suspended)
    assert (await final_state(handle)).stage == Stage.WON


async def test_a_late_fee_is_charged_once_at_its_level_and_collected_like_an_invoice(
    ts_env: WorkflowEnvironment,
    sqlite_ledger: Engine,
    settings: Settings,
    mailbox: MailCatcher,
    tmp_path: Path,
) -> None:
    config = drill_config(tmp_path / "config", late_fee_percent=1.5, late_fee_at_level=2)
    async with own_worker(ts_env.client, sqlite_ledger, load_business_rules(config), settings):
        handle = await start(ts_env.client, settings.task_queue)
        state = await quote_to_signature(handle, term_months=1)
        invoice = state.invoices[0]
        state = await advance_until(ts_env, handle, lambda s: len(s.invoices) == 2)
        fee = state.invoices[1]
        assert fee.late_fee_on == invoice.number
        assert fee.amount == late_fee(invoice.amount, Decimal("1.5")) == to_cents(
            invoice.amount * Decimal("0.015"))  # fmt: skip
        assert fee.due_date == invoice.due_date + timedelta(days=7 + 30)  # charged at reminder 2
        second = await wait_until(handle, lambda s: s.invoices[0].reminders_sent == 2)
        assert second.balance_due == invoice.amount + fee.amount
        [mail] = [m for m in mailbox.messages if "Reminder 2" in m["Subject"]
                  and invoice.number in m["Subject"]]  # fmt: skip
        assert f"late fee of USD {fee.amount}" in str(mail.get_payload(decode=True))
        # The fee invoice is dunned in its turn, and never charged a fee itself.
        state = await advance_until(ts_env, handle, lambda s: s.invoices[1].reminders_sent >= 2)
        assert len(state.invoices) == 2
        assert [e.kind for e in state.events].count("late_fee_charged") == 1
        await pay_in_full(handle, state.invoices[0])
        await pay_in_full(handle, state.invoices[1])
        assert (await final_state(handle)).stage == Stage.WON
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[LATE_FEES] == -fee.amount  # income, credit-side
    assert balances[CASH] == invoice.amount + fee.amount
    assert check_ledger(sqlite_ledger) == []


async def test_an_unpaid_late_fee_is_written_off_as_bad_debt_not_reversed(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, tmp_path: Path
) -> None:
    config = drill_config(tmp_path / "config", late_fee_percent=2, late_fee_at_level=1)
    async with own_worker(ts_env.client, sqlite_ledger, load_business_rules(config), settings):
        handle = await start(ts_env.client, settings.task_queue)
        await quote_to_signature(handle, term_months=1)
        final = await final_state(handle, timeout=90)
    assert final.stage == Stage.WRITTEN_OFF
    invoice, fee = final.invoices
    assert fee.late_fee_on == invoice.number and fee.amount == late_fee(invoice.amount, Decimal(2))
    assert invoice.status == fee.status == "uncollectible"
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[LATE_FEES] == -fee.amount  # charged, and stays charged
    # The month was delivered before the write-off: all of it, and the fee, is bad debt.
    assert balances[BAD_DEBT_EXPENSE] == invoice.amount + fee.amount
    assert balances.get(DEFERRED_REVENUE, ZERO) == ZERO
    assert check_ledger(sqlite_ledger) == []


async def test_an_unpaid_late_fee_alone_is_waived_and_never_suspends_or_ends_the_contract(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, tmp_path: Path
) -> None:
    config = drill_config(tmp_path / "config", late_fee_percent=2, late_fee_at_level=1)
    async with own_worker(ts_env.client, sqlite_ledger, load_business_rules(config), settings):
        handle = await start(ts_env.client, settings.task_queue)
        await quote_to_signature(handle, term_months=1)
        state = await advance_until(ts_env, handle, lambda s: len(s.invoices) == 2)
        await pay_in_full(handle, state.invoices[0])  # the invoice; its fee is left unpaid
        final = await final_state(handle, timeout=90)
    assert final.stage == Stage.WON
    fee = final.invoices[1]
    assert fee.late_fee_on == final.invoices[0].number and fee.status == "void"
    assert fee.reminders_sent == 4 and fee.amount_credited == fee.amount
    assert not any(e.kind == "entitlements_suspended" for e in final.events)
    assert "late fee unpaid 60 days after due: waived" in next(
        e.detail for e in final.events if e.kind == "credit_note")  # fmt: skip
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances.get(LATE_FEES, ZERO) == ZERO  # charged, then taken back
    assert balances.get(BAD_DEBT_EXPENSE, ZERO) == ZERO
    assert check_ledger(sqlite_ledger) == []
