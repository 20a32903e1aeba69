"""Seat changes mid-term: the rest of the period is prorated, later periods bill the new quantity,
and what is recognized adds up to what was billed less what was credited."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings, load_business_rules
from l2c.drill import drill_config
from l2c.journal import (
    ACCOUNTS_RECEIVABLE,
    CASH,
    CUSTOMER_CREDIT,
    DEFERRED_REVENUE,
    REVENUE_SUBSCRIPTION,
)
from l2c.ledger_check import check_ledger
from models.deal import Stage
from models.ledger import Entitlement
from models.money import ZERO
from tests.helpers import (
    account_balances,
    advance_until,
    final_state,
    own_worker,
    pay_in_full,
    quote_to_signature,
    refused_after,
    signal,
    start,
    wait_until,
)


async def test_more_seats_are_prorated_onto_the_next_invoice_and_fewer_become_credit(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, tmp_path: Path
) -> None:
    rules = load_business_rules(drill_config(tmp_path / "config", month_seconds=31 * 24 * 3600))
    async with own_worker(ts_env.client, sqlite_ledger, rules, settings):
        handle = await start(ts_env.client, settings.task_queue)
        state = await quote_to_signature(handle, term_months=4)  # 10 seats: 500.00 a month
        await pay_in_full(handle, state.invoices[0])
        assert "PLATFORM is already at 10" in await refused_after(
            handle, "change_quantity", {"sku": "PLATFORM", "quantity": 10})  # fmt: skip
        assert "not a recurring line" in await refused_after(
            handle, "change_quantity", {"sku": "ONBOARDING", "quantity": 2})  # fmt: skip
        # Ten days into the second month: 20 seats.
        state = await advance_until(ts_env, handle, lambda s: len(s.invoices) >= 2)
        await ts_env.sleep(timedelta(days=10))
        await pay_in_full(handle, state.invoices[1])
        await signal(handle, "change_quantity", {"sku": "PLATFORM", "quantity": 20, "by": "sam"})
        state = await wait_until(handle, lambda s: s.quantity_changes == 1)
        up = state.pending_adjustments[0].line.amount
        assert Decimal("0") < up < Decimal("500.00")  # the rest of month 2 at 500 more a month
        state = await advance_until(ts_env, handle, lambda s: len(s.invoices) >= 3)
        third = state.invoices[2]
        assert third.amount == Decimal("1000.00") + up  # 20 seats, and the proration
        await pay_in_full(handle, third)
        # Some days into month 3: back to 15 seats; the unused part is held as credit.
        await ts_env.sleep(timedelta(days=5))
        await signal(handle, "change_quantity", {"sku": "PLATFORM", "quantity": 15})
        state = await wait_until(handle, lambda s: s.quantity_changes == 2)
        down = state.customer_credit
        assert Decimal("0") < down < Decimal("250.00")
        state = await advance_until(ts_env, handle, lambda s: len(s.invoices) >= 4)
        fourth = state.invoices[3]
        assert fourth.amount == Decimal("750.00") and fourth.amount_paid == down  # credit used
        await pay_in_full(handle, fourth)
        final = await final_state(handle)

    assert final.stage == Stage.WON
    billed = sum((i.amount for i in final.invoices), ZERO)
    assert billed == Decimal("500.00") * 2 + Decimal("1000.00") + up + Decimal("750.00")
    assert final.revenue_recognized == billed - down
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[CASH] == billed - down
    assert balances.get(DEFERRED_REVENUE, ZERO) == ZERO
    assert balances.get(ACCOUNTS_RECEIVABLE, ZERO) == ZERO
    assert balances.get(CUSTOMER_CREDIT, ZERO) == ZERO
    assert check_ledger(sqlite_ledger) == []
    with Session(sqlite_ledger) as session:
        seats = session.exec(select(Entitlement).where(Entitlement.sku == "PLATFORM",
                                                       Entitlement.order_id == final.order_id)).one()  # fmt: skip
        assert seats.quantity == 15


async def test_a_bundled_line_changes_only_with_its_bundle(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle, term_months=2,
                                     lines=[{"sku": "GROWTH_BUNDLE", "quantity": 1}])  # fmt: skip
    assert [(line.sku, line.bundle) for line in state.quote.lines] == [  # type: ignore[union-attr]
        ("PLATFORM", "GROWTH_BUNDLE"), ("PREMIUM_SUPPORT", "GROWTH_BUNDLE")]  # fmt: skip
    assert state.invoices[0].amount == Decimal("1100.00")
    await pay_in_full(handle, state.invoices[0])
    assert "PLATFORM is part of GROWTH_BUNDLE" in await refused_after(
        handle, "change_quantity", {"sku": "PLATFORM", "quantity": 20})  # fmt: skip


async def test_a_cut_taking_back_more_than_is_left_to_recognize_is_caught_up_not_a_failure(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, tmp_path: Path
) -> None:
    """Seats sell above their SSP and onboarding below it, so the seats' obligation holds less
    than they bill: cutting 10 seats to 1 takes back more than it has left. The difference is
    taken back from revenue at once (a cumulative catch-up), never a failed workflow task."""
    rules = load_business_rules(drill_config(tmp_path / "config", month_seconds=31 * 24 * 3600))
    async with own_worker(ts_env.client, sqlite_ledger, rules, settings):
        handle = await start(ts_env.client, settings.task_queue)
        state = await quote_to_signature(handle, lines=[{"sku": "PLATFORM", "quantity": 10},
                                                        {"sku": "ONBOARDING", "quantity": 5}])  # fmt: skip
        await pay_in_full(handle, state.invoices[0])
        await signal(handle, "change_quantity", {"sku": "PLATFORM", "quantity": 1})
        state = await wait_until(handle, lambda s: s.quantity_changes == 1)
        seats = next(s for s in state.revenue_schedules if s.sku == "PLATFORM")
        assert seats.months[1] < 0  # the catch-up, at the end of the month under way
        assert sum(seats.months.values(), ZERO) + seats.recognized == seats.allocated
        state = await advance_until(ts_env, handle, lambda s: s.revenue_schedules[0].recognized < 0)
        failures = [e async for e in handle.fetch_history_events()
                    if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]  # fmt: skip
        assert failures == []
        by_entry = account_balances(sqlite_ledger, handle.id)  # balanced, catch-up included
        assert -by_entry[REVENUE_SUBSCRIPTION] == state.revenue_schedules[0].recognized
