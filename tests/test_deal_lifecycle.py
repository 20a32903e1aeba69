"""The deal from lead to cash on the time-skipping server, driven by signals as ops staff would."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings, load_business_rules
from l2c.drill import drill_config
from l2c.journal import (
    ACCOUNTS_RECEIVABLE,
    BAD_DEBT_EXPENSE,
    CASH,
    DEFERRED_REVENUE,
    REVENUE_SERVICES,
    REVENUE_SUBSCRIPTION,
    REVENUE_USAGE,
)
from l2c.mailcatcher import MailCatcher
from l2c.runtime import start_deal
from models.deal import Stage
from models.ledger import InvoiceRecord, Lead, OutboxEmail, PaymentRecordRow
from models.money import ZERO
from tests.helpers import (
    account_balances,
    advance_until,
    final_state,
    make_lead,
    own_worker,
    quote_to_signature,
    refused_after,
    retire_at_rest,
    sign,
    signal,
    start,
    state_of,
    wait_for_stage,
    wait_until,
)

# Deals here wait at qualified while their lead's SLA passes and its reassignments run: a clock
# of their own for each test (tests/conftest.py).
pytestmark = pytest.mark.own_clock


async def test_twelve_month_monthly_subscription_from_lead_to_won(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await wait_for_stage(handle, Stage.QUALIFIED)
    assert state.score == 70 and state.routing is not None
    assert state.routing.assignments[0].owner == "nora.na"  # later ones if the SLA passed
    assert state.score_breakdown == {
        "company_size": 25,
        "source": 10,
        "target_country": 15,
        "corporate_email": 20,
    }

    await signal(handle, "submit_quote", {
        "submitted_by": "nora.na", "discount_percent": "15", "term_months": 12, "billing_period": "monthly",
        "lines": [{"sku": "PLATFORM", "quantity": 25}, {"sku": "ONBOARDING", "quantity": 1},
                  {"sku": "API_CALLS", "quantity": 150}]})  # fmt: skip
    state = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    assert state.pending_approval is not None
    assert state.pending_approval.required_role == "manager"
    assert state.pending_approval.eligible_approvers == ["mia.manager", "victor.vp", "carla.cfo"]
    quote = state.quote
    assert quote is not None
    # 25 seats x 50 = 1250/month; API: 100 x 2.00 + 50 x 1.50 = 275/month; onboarding 2500 once.
    assert quote.list_total == Decimal("1525.00") * 12 + Decimal("2500.00")
    assert quote.monthly_recurring_net == Decimal("1296.25")  # 1525 x 0.85
    assert quote.net_total == Decimal("1296.25") * 12 + Decimal("2125.00")

    await signal(handle, "approve_discount", {"approver": "mia.manager", "comment": "new logo"})
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    await sign(handle, state)
    state = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) == 1)
    assert state.contract is not None and state.contract.signed_by == "Ada Lovelace"
    assert state.invoices[0].amount == Decimal("1296.25") + Decimal("2125.00")

    for number in range(12):
        state = await advance_until(ts_env, handle, lambda s, n=number: len(s.invoices) > n)
        invoice = state.invoices[number]
        await signal(handle, "record_payment", {"invoice_number": invoice.number, "amount": str(invoice.amount),
                                               "reference": f"BANK-{number}"})  # fmt: skip
        await wait_until(handle, lambda s, n=number: s.invoices[n].status == "paid")

    final = await final_state(handle)
    assert final.stage == Stage.WON
    assert final.balance_due == ZERO
    assert final.revenue_recognized == quote.net_total
    numbers = [i.number for i in final.invoices]
    assert len(numbers) == len(set(numbers)) == 12
    assert sum((i.amount for i in final.invoices), ZERO) == quote.net_total
    assert [e.kind for e in final.events if e.kind.startswith("refused")] == []

    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[CASH] == quote.net_total
    assert balances[ACCOUNTS_RECEIVABLE] == ZERO
    assert balances[DEFERRED_REVENUE] == ZERO
    # Revenue follows the obligations, not the invoice lines: the net 17,680.00 allocated by
    # standalone selling price (config/ssp.toml), 25 x 45.00 x 12 = 13,500.00 for the seats,
    # 3,000.00 for onboarding, 150 x 1.80 x 12 = 3,240.00 for the calls: 19,740.00 in all.
    assert -balances[REVENUE_SUBSCRIPTION] == Decimal("12091.19")  # 17,680 x 13,500 / 19,740
    assert -balances[REVENUE_SERVICES] == Decimal("2686.93")  # x 3,000 / 19,740 (billed 2,125)
    assert -balances[REVENUE_USAGE] == Decimal("2901.88")  # x 3,240 / 19,740, to the cent left
    with Session(sqlite_ledger) as session:
        lead = session.exec(select(Lead).where(Lead.deal_id == handle.id)).one()
        assert lead.status == "won"
        assert (
            len(session.exec(select(InvoiceRecord).where(InvoiceRecord.deal_id == handle.id)).all())
            == 12
        )


async def test_nurtured_lead_qualifies_on_engagement(
    ts_env: WorkflowEnvironment, deal_worker: Settings, mailbox: MailCatcher
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue, contact_email="pat@gmail.com",
                         employees=4, country="BR")  # fmt: skip
    state = await wait_for_stage(handle, Stage.NURTURING)
    assert state.score == 15
    await wait_until(handle, lambda s: any(e.kind == "nurture_touch" for e in s.events))
    reason = await refused_after(handle, "log_engagement", {"kind": "rumour"})
    assert "unknown engagement kind 'rumour'" in reason
    await signal(handle, "log_engagement", {"kind": "demo_request"})
    await signal(handle, "log_engagement", {"kind": "pricing_page"})
    state = await wait_for_stage(handle, Stage.QUALIFIED)
    assert state.score == 75
    assert len(mailbox.messages) == 1
    assert mailbox.messages[0]["To"] == "pat@gmail.com"


async def test_nurtured_lead_without_engagement_is_disqualified(
    ts_env: WorkflowEnvironment, deal_worker: Settings, mailbox: MailCatcher, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue, contact_email="pat@gmail.com",
                         employees=4, country="BR")  # fmt: skip
    final = await final_state(handle)
    assert final.stage == Stage.DISQUALIFIED
    touches = [e for e in final.events if e.kind == "nurture_touch"]
    # The cadence of config/policy.toml: days 0, 7, 21 and 45, each its own e-mail; re-scored
    # before each touch but the first and once more at the end (day 60), then disqualified.
    assert [t.detail for t in touches] == [
        "touch 1 sent (nurture_welcome.txt)", "touch 2 sent (nurture_guide.txt)",
        "touch 3 sent (nurture_case_study.txt)", "touch 4 sent (nurture_last_call.txt)"]  # fmt: skip
    started = next(e.at for e in final.events if e.kind == "nurture_touch")
    assert [(t.at - started).days for t in touches] == [0, 7, 21, 45]
    assert len([e for e in final.events if e.kind == "lead_rescored"]) == 4
    assert round((final.events[-1].at - started) / timedelta(days=1)) == 60
    assert "through the nurture cadence (4 touches over 60 days)" in final.events[-1].detail
    with Session(sqlite_ledger) as session:
        assert len(session.exec(select(OutboxEmail)).all()) == 4
    subjects = [m["Subject"] for m in mailbox.messages]
    assert len(subjects) == 4 and "shall we stay in touch" in subjects[-1]


async def test_discount_approval_refused_then_rejected_then_requoted(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", {"submitted_by": "victor.vp", "discount_percent": "30",
                                          "lines": [{"sku": "PLATFORM", "quantity": 40}]})  # fmt: skip
    state = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    assert state.pending_approval is not None
    assert state.pending_approval.required_role == "vp_sales"
    assert state.pending_approval.eligible_approvers == ["carla.cfo"]  # the submitter is excluded

    assert "no authority" in await refused_after(
        handle, "approve_discount", {"approver": "mia.manager"}
    )
    assert "own quote" in await refused_after(handle, "approve_discount", {"approver": "victor.vp"})
    assert "reason" in await refused_after(handle, "reject_discount", {"approver": "carla.cfo"})
    await signal(
        handle, "reject_discount", {"approver": "carla.cfo", "reason": "too deep for a 1-year term"}
    )
    state = await wait_for_stage(handle, Stage.QUALIFIED)
    assert state.pending_approval is None

    assert "highest approval limit" in await _refused_quote(handle, {"discount_percent": "60"})
    assert "unknown SKU 'GOLD'" in await _refused_quote(
        handle, {"lines": [{"sku": "GOLD", "quantity": 1}]}
    )
    await signal(handle, "submit_quote", {"submitted_by": "victor.vp", "discount_percent": "5",
                                          "lines": [{"sku": "PLATFORM", "quantity": 40}]})  # fmt: skip
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    assert state.quote is not None and state.quote.version == 4


async def _refused_quote(handle, changes: dict[str, object]) -> str:  # type: ignore[no-untyped-def]
    payload = {
        "submitted_by": "victor.vp",
        "discount_percent": "5",
        "lines": [{"sku": "PLATFORM", "quantity": 40}],
    }
    payload.update(changes)
    before = await state_of(handle)
    await signal(handle, "submit_quote", payload)
    state = await wait_until(handle, lambda s: len([e for e in s.events if e.kind == "refused:submit_quote"])
                             > len([e for e in before.events if e.kind == "refused:submit_quote"]))  # fmt: skip
    assert state.stage == Stage.QUALIFIED
    return state.events[-1].detail


async def test_contract_declined_then_wrong_hash_refused_then_signed(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    quote = {
        "submitted_by": "nora.na",
        "lines": [{"sku": "PLATFORM", "quantity": 5}],
        "billing_period": "upfront",
    }
    await signal(handle, "submit_quote", quote)
    first = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    await signal(handle, "decline_contract", {"reason": "legal wants changes"})
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", quote)
    second = await wait_until(handle, lambda s: s.stage == Stage.AWAITING_SIGNATURE and s.contract is not None
                              and s.contract.version == 2)  # fmt: skip
    assert first.contract is not None and second.contract is not None
    reason = await refused_after(handle, "sign_contract", {
        "signer_name": "Ada", "signer_email": "ada@acme.example", "document_sha256": first.contract.document_sha256 if
        first.contract.document_sha256 != second.contract.document_sha256 else "0" * 64})  # fmt: skip
    assert "does not match" in reason
    await sign(handle, second)
    state = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) == 1)
    assert state.invoices[0].amount == Decimal("3000.00")  # 5 seats x 50 x 12, upfront
    await retire_at_rest([handle])


async def test_unpaid_invoice_is_dunned_and_written_off(
    ts_env: WorkflowEnvironment,
    sqlite_ledger: Engine,
    settings: Settings,
    mailbox: MailCatcher,
    tmp_path: Path,
) -> None:
    # 31-day months keep what was delivered by the write-off on day 90 off the calendar (the test
    # server's clock is wherever earlier tests left it), and keep every timer off day 90 but one.
    async with own_worker(ts_env.client, sqlite_ledger, months_of(31, tmp_path), settings):
        handle = await start(ts_env.client, settings.task_queue)
        state = await quote_to_signature(handle, billing_period="upfront",
                                         lines=[{"sku": "PLATFORM", "quantity": 10}, {"sku": "ONBOARDING", "quantity": 1}])  # fmt: skip
        invoice = state.invoices[0]
        assert invoice.amount == Decimal("8500.00")
        final = await final_state(handle)
    assert final.stage == Stage.WRITTEN_OFF
    assert final.invoices[0].status == "uncollectible"
    assert final.invoices[0].reminders_sent == 4
    assert [
        e.detail.split(": level ")[1][0] for e in final.events if e.kind == "dunning_reminder"
    ] == list("1234")
    dunning = [m for m in mailbox.messages if invoice.number in m["Subject"]]
    assert len(dunning) == 4 and dunning[-1]["Subject"].startswith("Final notice")

    # Written off 90 days after activation (due +60): onboarding and months 1-2 (days 31 and 62)
    # were delivered and went unpaid (bad debt); the 10 undelivered months are reversed out of
    # deferred revenue. Revenue follows the 8,500.00 allocated by SSP (5,400.00 : 3,000.00):
    # 3,035.71 for onboarding, 5,464.29 for the seats, 455.36 in each of months 1 and 2.
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[ACCOUNTS_RECEIVABLE] == ZERO
    assert balances[DEFERRED_REVENUE] == ZERO
    assert balances[BAD_DEBT_EXPENSE] == Decimal("3035.71") + Decimal("455.36") * 2
    with Session(sqlite_ledger) as session:
        row = session.get(InvoiceRecord, invoice.number)
        assert row is not None and row.status == "uncollectible"


async def test_payments_count_once_and_bad_payments_are_refused(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle, billing_period="upfront")
    invoice = state.invoices[0]
    assert invoice.amount == Decimal("6000.00")

    await signal(
        handle,
        "record_payment",
        {"invoice_number": invoice.number, "amount": "1000.00", "reference": "WIRE-1"},
    )
    state = await wait_until(handle, lambda s: s.invoices[0].amount_paid == Decimal("1000.00"))
    assert state.balance_due == Decimal("5000.00")
    reason = await refused_after(
        handle,
        "record_payment",
        {"invoice_number": invoice.number, "amount": "1000.00", "reference": "WIRE-1"},
    )
    assert "already applied" in reason
    assert "unknown invoice" in await refused_after(
        handle,
        "record_payment",
        {"invoice_number": "INV-999999", "amount": "1.00", "reference": "X"},
    )
    assert "EUR" in await refused_after(
        handle,
        "record_payment",
        {"invoice_number": invoice.number, "amount": "10.00", "reference": "X3", "currency": "EUR"},
    )
    assert "greater than 0" in await refused_after(
        handle,
        "record_payment",
        {"invoice_number": invoice.number, "amount": "-5", "reference": "X4"},
    )
    assert "decimal places" in await refused_after(
        handle,
        "record_payment",
        {"invoice_number": invoice.number, "amount": "1.001", "reference": "X5"},
    )

    await signal(
        handle,
        "record_payment",
        {"invoice_number": invoice.number, "amount": "5000.00", "reference": "WIRE-2"},
    )
    state = await wait_until(handle, lambda s: s.invoices[0].status == "paid")
    assert state.balance_due == ZERO
    final = await final_state(handle)
    assert final.stage == Stage.WON
    with Session(sqlite_ledger) as session:
        payments = session.exec(
            select(PaymentRecordRow).where(PaymentRecordRow.deal_id == handle.id)
        ).all()
        assert sorted(p.reference for p in payments) == ["WIRE-1", "WIRE-2"]
    assert account_balances(sqlite_ledger, handle.id)[CASH] == Decimal("6000.00")


async def test_malformed_and_out_of_stage_signals_are_recorded_not_fatal(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    assert "no JSON payload" in await refused_after(handle, "submit_quote", None)
    assert "lines" in await refused_after(handle, "submit_quote", {"submitted_by": "nora.na"})
    assert "quantity" in await refused_after(
        handle,
        "submit_quote",
        {"submitted_by": "nora.na", "lines": [{"sku": "PLATFORM", "quantity": 2.5}]},
    )
    assert "discount_percent" in await refused_after(
        handle,
        "submit_quote",
        {
            "submitted_by": "nora.na",
            "discount_percent": "101",
            "lines": [{"sku": "PLATFORM", "quantity": 1}],
        },
    )
    assert "discount_percent" in await refused_after(
        handle,
        "submit_quote",
        {
            "submitted_by": "nora.na",
            "discount_percent": "NaN",
            "lines": [{"sku": "PLATFORM", "quantity": 1}],
        },
    )
    assert "malformed" in await refused_after(handle, "approve_discount", "not an object")
    assert "stage qualified" in await refused_after(
        handle, "approve_discount", {"approver": "mia.manager"}
    )
    assert "stage qualified" in await refused_after(
        handle, "record_payment", {"invoice_number": "INV-1", "amount": "1", "reference": "r"}
    )
    assert "stage qualified" in await refused_after(
        handle, "log_engagement", {"kind": "email_open"}
    )
    assert "Extra inputs" in await refused_after(
        handle, "mark_lost", {"by": "nora.na", "reason": "x", "typo": 1}
    )
    state = await state_of(handle)
    assert state.events[-1].actor == "nora.na"  # who sent a refused signal is recorded too

    await signal(handle, "mark_lost", {"by": "nora.na", "reason": "chose a competitor"})
    final = await final_state(handle)
    assert final.stage == Stage.LOST
    assert final.events[-1].detail == "marked lost by nora.na: chose a competitor"


async def test_mark_lost_is_refused_after_signature(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await quote_to_signature(handle)
    reason = await refused_after(handle, "mark_lost", {"by": "nora.na", "reason": "changed mind"})
    assert "stage active" in reason
    await retire_at_rest([handle])


async def test_invalid_lead_fails_at_once_without_retrying(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await ts_env.client.start_workflow(
        "DealWorkflow", {"lead_id": "L-bad", "company": "Acme", "contact_name": "A", "contact_email": "not-an-email", "country": "US"},
        id="deal-L-bad-input", task_queue=deal_worker.task_queue,
    )  # fmt: skip
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidLead" and cause.non_retryable
    assert "contact_email" in cause.message


async def test_same_lead_twice_gives_one_deal(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    lead = make_lead()
    first, created = await start_deal(ts_env.client, lead, deal_worker.task_queue)
    second, created_again = await start_deal(ts_env.client, lead, deal_worker.task_queue)
    assert created and not created_again
    assert first.id == second.id == f"deal-{lead.lead_id}"
    assert (await first.describe()).run_id == (await second.describe()).run_id
    # Terminate only at rest: the time-skipping server keeps time locked for an activity that was in
    # flight when its workflow was terminated, which would freeze every later test (at qualified,
    # the lead's SLA may pass and a reassignment run at any moment).
    await wait_for_stage(first, Stage.QUALIFIED)
    await retire_at_rest([first])


async def test_write_off_of_a_monthly_deal_stops_billing_and_leaves_nothing_open(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, tmp_path: Path
) -> None:
    async with own_worker(ts_env.client, sqlite_ledger, months_of(31, tmp_path), settings):
        handle = await start(ts_env.client, settings.task_queue)
        await quote_to_signature(handle, billing_period="monthly", term_months=24)
        final = await final_state(handle)
    assert final.stage == Stage.WRITTEN_OFF
    # Invoice 1 is due on day 30 and written off on day 90: months 2 and 3 (days 31 and 62) were
    # billed too, month 4 (day 93) was not.
    assert [i.period_index for i in final.invoices] == [0, 1, 2]
    assert {i.status for i in final.invoices} == {"uncollectible"}
    assert final.balance_due == ZERO
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[ACCOUNTS_RECEIVABLE] == ZERO
    assert balances[DEFERRED_REVENUE] == ZERO
    assert (
        balances[BAD_DEBT_EXPENSE] == -balances[REVENUE_SUBSCRIPTION]
    )  # what was delivered went unpaid
    with Session(sqlite_ledger) as session:
        rows = session.exec(select(InvoiceRecord).where(InvoiceRecord.deal_id == handle.id)).all()
        assert len(rows) == len(final.invoices) and {r.status for r in rows} == {"uncollectible"}


# The last reminder decides whether the write-off timer starts before month 3's timer (day 59) or
# after it (day 89), and so which of the two the test server fires first at day 90. Neither
# schedule puts another timer at day 90.
@pytest.mark.parametrize("reminders", [[1, 7, 14, 29], [1, 7, 14, 59]])
async def test_a_write_off_at_a_month_end_delivers_that_month_and_bills_no_more(
    ts_env: WorkflowEnvironment,
    sqlite_ledger: Engine,
    settings: Settings,
    tmp_path: Path,
    reminders: list[int],
) -> None:
    """With 30-day months, invoice 1's write-off (due on day 30, plus 60) falls at the very moment
    month 3 ends and month 4 would be billed: two timers due together, fired in the server's order.
    The month that ended was delivered; the period that did not begin is not billed."""
    rules = months_of(30, tmp_path, reminder_days_after_due=reminders)
    async with own_worker(ts_env.client, sqlite_ledger, rules, settings):
        handle = await start(ts_env.client, settings.task_queue)
        state = await quote_to_signature(handle, billing_period="monthly", term_months=12)
        final = await final_state(handle)
    assert state.quote is not None
    monthly = state.quote.monthly_recurring_net
    assert final.stage == Stage.WRITTEN_OFF
    assert [i.period_index for i in final.invoices] == [0, 1, 2]
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[REVENUE_SUBSCRIPTION] == -3 * monthly
    assert balances[BAD_DEBT_EXPENSE] == 3 * monthly
    assert balances[ACCOUNTS_RECEIVABLE] == ZERO == balances[DEFERRED_REVENUE]


def months_of(days: int, folder: Path, **policy: list[int]) -> BusinessRules:
    """The business rules with months of a fixed number of days (and other policy changes)."""
    config = drill_config(folder / "config", month_seconds=days * 24 * 3600, **policy)
    return load_business_rules(config)
