"""Dunning levels beyond reminders: entitlements suspended at a level, restored on payment."""

from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings
from l2c.mailcatcher import MailCatcher
from models.deal import Stage
from models.ledger import Entitlement, OrderRecord
from tests.helpers import (
    advance_until,
    final_state,
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
