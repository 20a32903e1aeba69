"""Renewals and revenue over the life of a contract: a 36-month deal with a redline legal
approves, a mid-term seat increase, an automatic renewal with the contract's uplift (a new run of
the same workflow), and the customer's notice that ends the renewed term (churn)."""

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings, SspTable
from l2c.journal import ACCOUNTS_RECEIVABLE, CASH, DEFERRED_REVENUE
from l2c.ledger_check import check_ledger
from models.deal import Stage
from models.ledger import Entitlement, JournalEntry, JournalLine
from models.money import ZERO
from models.state import DealState, RenewalAgreed
from tests.helpers import (
    NOTICE,
    STARTED,
    Handle,
    account_balances,
    final_state,
    own_worker,
    pay_in_full,
    refused_after,
    sign,
    signal,
    start,
    state_of,
    wait_for_stage,
    wait_until,
)


async def pay_as_billed(
    env: WorkflowEnvironment, handle: Handle, until: Callable[[DealState], bool],
    step: timedelta = timedelta(days=15),
) -> DealState:  # fmt: skip
    """Skip time, paying every invoice in full as it is issued, until `until` holds."""
    for _ in range(600):
        state = await state_of(handle)
        for invoice in state.invoices:
            if invoice.status == "open":
                await pay_in_full(handle, invoice)
        if until(state):
            return state
        await env.sleep(step)
    raise AssertionError(f"not reached; last events {state.events[-3:]}")


def recognized_by_key(ledger: Engine, deal_id: str) -> dict[str, Decimal]:
    """Revenue recognized per posting key (`month-7:PLATFORM`, `provisioning:ONBOARDING`)."""
    with Session(ledger) as session:
        rows = session.exec(select(JournalEntry, JournalLine).join(
            JournalLine, JournalLine.entry_id == JournalEntry.id)  # type: ignore[arg-type]
            .where(JournalEntry.deal_id == deal_id, JournalLine.account == DEFERRED_REVENUE,
                   JournalEntry.entry_key.contains(":recognize:"))).all()  # type: ignore[attr-defined]  # fmt: skip
    return {entry.entry_key.split(":recognize:")[1]: line.debit for entry, line in rows}


async def test_a_36_month_contract_with_a_redline_a_seat_increase_and_an_automatic_renewal(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", {
        "submitted_by": "nora.na", "term_months": 36, "billing_period": "annual",
        "lines": [{"sku": "PLATFORM", "quantity": 20}, {"sku": "ONBOARDING", "quantity": 1}]})  # fmt: skip
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    quote = state.quote
    assert quote is not None and quote.term_discount_percent == Decimal("5")

    # Net 90 needs legal and the CFO; approved, the revision with it is signed and billed.
    await signal(handle, "propose_terms", {"proposed_by": "ada.lovelace",
                                           "changes": {"payment_terms": 90}})  # fmt: skip
    await wait_until(handle, lambda s: s.contract is not None
                     and s.contract.redline_under_review is not None)  # fmt: skip
    await signal(handle, "approve_terms", {"approver": "lena.legal"})
    await signal(handle, "approve_terms", {"approver": "carla.cfo"})  # net 90: the CFO's too
    state = await wait_until(handle, lambda s: s.contract is not None and s.contract.revision == 1)
    await sign(handle, state, renews=True)
    state = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) == 1)
    assert state.renewal is not None and state.renewal.auto_renews
    assert state.renewal.uplift_percent == Decimal("5")
    first = state.invoices[0]
    assert (first.due_date - first.issued_on).days == 90
    # 20 seats x 50.00 x 12 less 5% for the 36-month term, and onboarding less 5%.
    assert first.amount == Decimal("11400.00") + Decimal("2375.00")
    activated_at = state.activated_at
    assert activated_at is not None

    # Ten more seats in month 19: prorated on the year-3 invoice, and the seats' obligation
    # re-spread over the months left (a prospective modification).
    state = await pay_as_billed(ts_env, handle, lambda s: s.invoices[-1].period_index == 1
                                and s.invoices[-1].status == "paid")  # fmt: skip
    await ts_env.sleep(timedelta(days=190))
    await signal(handle, "change_quantity", {"sku": "PLATFORM", "quantity": 30, "by": "ops"})
    state = await wait_until(handle, lambda s: s.quantity_changes == 1)
    seats = next(s for s in state.revenue_schedules if s.sku == "PLATFORM")
    assert seats.modifications == 1

    # No notice: at the end of month 36 the contract renews, with its uplift, in a new run.
    state = await pay_as_billed(ts_env, handle, lambda s: s.renewal is not None
                                and s.renewal.term == 2)  # fmt: skip
    assert state.quote is not None and state.quote.version == 2
    renewed = next(line for line in state.quote.lines if line.sku == "PLATFORM")
    assert [line.sku for line in state.quote.lines] == ["PLATFORM"]  # onboarding is not renewed
    assert (renewed.quantity, renewed.monthly_list, renewed.monthly_net) == (
        30, Decimal("1575.00"), Decimal("1496.25"))  # 30 x 50.00 + 5%, less the 5% term discount  # fmt: skip
    assert state.run > 1 and "contract_renewed" in [e.kind for e in state.events]

    # Term 1 is fully recognized: what its obligations recognized is what it billed.
    term_one = [i for i in state.invoices if i.billing_month < 36]
    # The three years, and the proration billed at the month boundary after the change.
    assert [i.period_index for i in term_one] == [0, 1, None, 2]
    assert [i.billing_month for i in term_one if i.period_index is not None] == [0, 12, 24]
    by_key = recognized_by_key(sqlite_ledger, handle.id)
    months = [k for k in by_key if k.startswith("month-") and int(k.split(":")[0][6:]) <= 36]
    assert len(months) == 36 and "provisioning:ONBOARDING" in by_key
    recognized_one = sum((by_key[k] for k in [*months, "provisioning:ONBOARDING"]), ZERO)
    assert recognized_one == sum((i.amount for i in term_one), ZERO)

    # Notice in the renewed term: it ends after its 36 months, paid up, as won with churn.
    await signal(handle, "give_notice", {"by": "ada.lovelace", "party": "customer",
                                         "reason": "moving on"})  # fmt: skip
    await wait_until(handle, lambda s: s.non_renewal_notice is not None)
    await pay_as_billed(ts_env, handle, lambda s: s.stage == Stage.WON, step=timedelta(days=30))
    final = await final_state(handle)
    assert final.renewal is not None and final.renewal.outcome == "churned"
    assert "not renewed after term 2 (churn)" in final.events[-1].detail
    term_two = [i for i in final.invoices if i.billing_month >= 36]
    assert [i.amount for i in term_two] == [Decimal("1496.25") * 12] * 3
    for schedule in final.revenue_schedules:  # the renewal's obligations, all recognized
        assert schedule.months == {} and schedule.recognized == schedule.allocated

    billed = sum((i.amount for i in final.invoices), ZERO)
    assert final.revenue_recognized == billed
    balances = account_balances(sqlite_ledger, handle.id)  # every entry balances on the way
    assert balances[CASH] == billed
    assert balances.get(ACCOUNTS_RECEIVABLE, ZERO) == ZERO
    assert balances.get(DEFERRED_REVENUE, ZERO) == ZERO
    assert check_ledger(sqlite_ledger) == []
    # One workflow id, its runs chained by continue-as-new.
    history = await ts_env.client.get_workflow_handle(handle.id, run_id=None).fetch_history()
    assert history.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
    assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED


async def test_notice_is_refused_when_the_contract_does_not_renew_and_after_its_deadline(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", {"submitted_by": "nora.na", "term_months": 4,
                                          "lines": [{"sku": "PLATFORM", "quantity": 5}]})  # fmt: skip
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    assert "not signed yet" in await refused_after(handle, "give_notice", NOTICE)
    await sign(handle, state, renews=True)
    state = await wait_for_stage(handle, Stage.ACTIVE)
    renewal = state.renewal
    assert renewal is not None and renewal.notice_deadline is not None
    # 60 days' notice before the end of a four-month term.
    assert renewal.term_ends_at - renewal.notice_deadline == timedelta(days=60)
    state = await pay_as_billed(ts_env, handle, lambda s: s.invoices[-1].period_index == 3)
    reason = await refused_after(handle, "give_notice", NOTICE)
    assert "notice had to be given by" in reason and "term 2 is committed" in reason
    state = await pay_as_billed(ts_env, handle, lambda s: s.renewal is not None
                                and s.renewal.term == 2)  # fmt: skip
    assert state.stage == Stage.ACTIVE and state.non_renewal_notice is None
    await signal(handle, "give_notice", NOTICE)
    state = await wait_until(handle, lambda s: s.non_renewal_notice is not None)
    assert "already given" in await refused_after(handle, "give_notice", NOTICE)
    await pay_as_billed(ts_env, handle, lambda s: s.stage == Stage.WON)
    final = await final_state(handle)
    assert [i.billing_month for i in final.invoices] == list(range(8))
    assert final.renewal is not None and final.renewal.outcome == "churned"


async def test_a_deal_recognizing_as_billed_renews_with_each_month_posted_once(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, rules: BusinessRules
) -> None:
    """Without an SSP table a deal recognizes as billed: its renewed term's months are posted
    under their own keys (months from activation), never taken for term 1's."""
    async with own_worker(ts_env.client, sqlite_ledger,
                          rules.model_copy(update={"ssp": SspTable()}), settings):  # fmt: skip
        handle = await start(ts_env.client, settings.task_queue)
        await wait_for_stage(handle, Stage.QUALIFIED)
        await signal(handle, "submit_quote", {"submitted_by": "nora.na", "term_months": 4,
                                              "lines": [{"sku": "PLATFORM", "quantity": 5}]})  # fmt: skip
        state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
        await sign(handle, state, renews=True)
        state = await wait_for_stage(handle, Stage.ACTIVE)
        assert state.revenue_schedules == []
        await pay_as_billed(ts_env, handle, lambda s: s.renewal is not None and s.renewal.term == 2)
        await signal(handle, "give_notice", NOTICE)
        await wait_until(handle, lambda s: s.non_renewal_notice is not None)
        await pay_as_billed(ts_env, handle, lambda s: s.stage == Stage.WON)
        final = await final_state(handle)
    assert sorted(recognized_by_key(sqlite_ledger, handle.id)) == sorted(
        f"month-{n}" for n in range(1, 9))  # fmt: skip
    billed = sum((i.amount for i in final.invoices), ZERO)
    assert final.revenue_recognized == billed
    assert account_balances(sqlite_ledger, handle.id).get(DEFERRED_REVENUE, ZERO) == ZERO


async def strike_auto_renewal(handle: Handle, term_months: int) -> DealState:
    """A quote, a redline striking auto-renewal that legal approves, the revision signed."""
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", {"submitted_by": "nora.na", "term_months": term_months,
                                          "lines": [{"sku": "PLATFORM", "quantity": 10}]})  # fmt: skip
    await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    await handle.execute_update("propose_terms", {"proposed_by": "ada", "remove": ["auto_renewal"]})
    await signal(handle, "approve_terms", {"approver": "lena.legal"})
    state = await wait_until(handle, lambda s: s.contract is not None and s.contract.revision == 1)
    await sign(handle, state, renews=True)
    state = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) >= 1)
    assert state.renewal is not None and not state.renewal.auto_renews
    assert state.renewal.renewal_quote_opens_at is not None
    return state


async def test_without_auto_renewal_a_renewal_quote_is_approved_signed_and_billed(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await strike_auto_renewal(handle, term_months=4)
    assert "does not renew automatically" in await refused_after(handle, "give_notice", NOTICE)
    state = await pay_as_billed(ts_env, handle, lambda s: s.renewal is not None
                                and s.renewal.outcome == "quoting")  # fmt: skip
    assert (
        state.renewal is not None and state.renewal.renewal_workflow_id == f"{handle.id}-renewal-2"
    )
    renewal: Handle = ts_env.client.get_workflow_handle(state.renewal.renewal_workflow_id,
                                                        result_type=DealState)  # fmt: skip
    STARTED.setdefault(deal_worker.task_queue, []).append(renewal)  # retired if the test fails
    # Only the renewal's own workflow can say it is signed: a made-up contract is refused.
    assert state.quote is not None and state.contract is not None
    forged = RenewalAgreed(quote=state.quote.model_copy(update={"version": 2}),
                           contract=state.contract.model_copy(update={"contract_id": "made-up"}))  # fmt: skip
    assert "made-up is not a signed renewal" in await refused_after(
        handle, "renewal_signed", forged
    )
    # Nor the deal's own signed contract passed off for another quote.
    assert "not a signed renewal" in await refused_after(handle, "renewal_signed", RenewalAgreed(
        quote=state.quote.model_copy(update={"version": 2}), contract=state.contract))  # fmt: skip
    # The renewal quote goes through pricing and approvals again, in its own workflow.
    await wait_for_stage(renewal, Stage.QUALIFIED)
    await signal(renewal, "submit_quote", {"submitted_by": "nora.na", "term_months": 4,
                                           "discount_percent": "15",
                                           "lines": [{"sku": "PLATFORM", "quantity": 12}]})  # fmt: skip
    await wait_for_stage(renewal, Stage.AWAITING_APPROVAL)
    await signal(renewal, "approve_discount", {"approver": "mia.manager"})
    quoted = await wait_for_stage(renewal, Stage.AWAITING_SIGNATURE)
    await sign(renewal, quoted, renews=True)
    await wait_for_stage(renewal, Stage.WON)
    await wait_until(handle, lambda s: s.renewal_agreed is not None)
    # At the end of the term the deal renews on the signed renewal: its quote, its contract.
    state = await pay_as_billed(ts_env, handle, lambda s: s.renewal is not None
                                and s.renewal.term == 2)  # fmt: skip
    assert state.quote is not None and state.quote.version == 2
    assert state.contract is not None and state.contract.contract_id == f"{handle.id}-C2"
    assert state.contract.signed_by == "Ada Lovelace"
    assert state.renewal is not None and state.renewal.auto_renews  # the new contract's terms
    await signal(handle, "give_notice", NOTICE)
    await wait_until(handle, lambda s: s.non_renewal_notice is not None)
    await pay_as_billed(ts_env, handle, lambda s: s.stage == Stage.WON)
    final = await final_state(handle)
    term_two = [i.amount for i in final.invoices if i.billing_month >= 4]
    assert term_two == [Decimal("510.00")] * 4  # 12 seats x 50.00 less 15%
    with Session(sqlite_ledger) as session:  # entitled to what the renewal sold
        seats = session.get(Entitlement, (f"{handle.id}-O1", "PLATFORM"))
        assert seats is not None and seats.quantity == 12
    assert final.renewal is not None and final.renewal.outcome == "churned"


async def test_a_renewal_quote_not_signed_by_the_end_of_the_term_is_closed_and_the_deal_churns(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await strike_auto_renewal(handle, term_months=2)
    await pay_as_billed(ts_env, handle, lambda s: s.stage == Stage.WON)
    final = await final_state(handle)
    assert final.renewal is not None and final.renewal.renewal_workflow_id is not None
    assert final.renewal.outcome == "churned"
    assert "renewal quote was not signed in time" in next(
        e.detail for e in final.events if e.kind == "churned")  # fmt: skip
    renewal = ts_env.client.get_workflow_handle(final.renewal.renewal_workflow_id)
    description = await renewal.describe()
    assert description.status == WorkflowExecutionStatus.CANCELED
