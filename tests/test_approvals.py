"""The quote stage as a CPQ: several approvals in parallel with segregation of duties, escalation
after the SLA, quotes that expire, and re-quotes that supersede."""

from datetime import timedelta

import pytest
from sqlalchemy import Engine
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings
from l2c.mailcatcher import MailCatcher
from l2c.runtime import build_worker
from models.deal import Stage
from tests.helpers import (
    advance_until,
    own_worker,
    refusals,
    refused_after,
    sign,
    signal,
    start,
    state_of,
    wait_for_stage,
    wait_until,
)

# These tests skip days of business hours past SLAs: a clock of their own (tests/conftest.py).
pytestmark = pytest.mark.own_clock


LARGE = {"submitted_by": "nora.na", "discount_percent": "15", "term_months": 12,
         "lines": [{"sku": "PLATFORM", "quantity": 200}]}  # fmt: skip  # TCV 102,000.00 USD


async def test_a_large_discounted_deal_needs_two_approvals_from_two_people(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", LARGE)
    state = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    pending = state.pending_approval
    assert pending is not None
    assert [(r.role, r.rule) for r in pending.requirements] == [
        ("manager", "discount 15%"),
        ("cfo", "large deal: total contract value 102000.00 USD >= 100000")]  # fmt: skip
    assert pending.requirements[1].eligible_approvers == ["carla.cfo"]
    assert all(r.due_at is not None for r in pending.requirements)  # the SLA

    # The CFO may give either approval, but giving the manager's would leave the large-deal
    # approval with nobody else: refused. Without a role, she gives the highest one she can.
    reason = await refused_after(handle, "approve_discount",
                                 {"approver": "carla.cfo", "role": "manager"})  # fmt: skip
    assert "would leave an approval with nobody else eligible" in reason
    assert "own quote" in await refused_after(handle, "approve_discount", {"approver": "nora.na"})
    assert "not the one awaiting approval" in await refused_after(
        handle, "approve_discount", {"approver": "mia.manager", "quote_version": 7})  # fmt: skip
    await signal(handle, "approve_discount", {"approver": "carla.cfo", "comment": "fine"})
    state = await wait_until(handle, lambda s: s.pending_approval is not None
                             and s.pending_approval.requirements[1].approved_by == "carla.cfo")  # fmt: skip
    assert state.stage == Stage.AWAITING_APPROVAL  # one approval is still needed
    assert state.pending_approval is not None
    assert state.pending_approval.required_role == "manager"
    assert "already approved as cfo" in await refused_after(
        handle, "approve_discount", {"approver": "carla.cfo"})  # fmt: skip
    await signal(handle, "approve_discount", {"approver": "mia.manager"})
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    approvals = [e.detail for e in state.events if e.kind == "discount_approved"]
    assert approvals == ["as cfo (large deal: total contract value 102000.00 USD >= 100000): fine",
                         "as manager (discount 15%): approved"]  # fmt: skip


async def test_an_approval_not_given_in_its_sla_is_escalated_with_a_reminder(
    ts_env: WorkflowEnvironment, deal_worker: Settings, mailbox: MailCatcher
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", {**LARGE, "lines": [{"sku": "PLATFORM", "quantity": 10}]})
    state = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    assert state.pending_approval is not None
    due = state.pending_approval.requirements[0].due_at
    assert due is not None and due.weekday() < 5 and 9 <= due.hour <= 17  # business hours
    state = await advance_until(ts_env, handle, lambda s: s.pending_approval is not None
                                and s.pending_approval.requirements[0].escalated_to == "vp_sales",
                                step=timedelta(hours=12))  # fmt: skip
    pending = state.pending_approval
    assert pending is not None and pending.required_role == "manager"  # a manager still may
    assert pending.eligible_approvers == ["mia.manager", "victor.vp", "carla.cfo"]
    assert pending.requirements[0].due_at is not None and pending.requirements[0].due_at > due
    assert [e.kind for e in state.events].count("approval_escalated") == 1
    reminders = [m for m in mailbox.messages if m["Subject"].startswith("Approval overdue")]
    assert [m["To"] for m in reminders] == ["victor.vp@seller.example"]
    assert "escalated to you (vp_sales)" in str(reminders[0].get_payload(decode=True))
    # Still not given: the cfo is asked next, then reminded again at the top.
    state = await advance_until(ts_env, handle, lambda s: s.pending_approval is not None
                                and s.pending_approval.requirements[0].escalations == 3,
                                step=timedelta(hours=12))  # fmt: skip
    assert state.pending_approval is not None
    assert state.pending_approval.requirements[0].escalated_to == "cfo"
    reminded = [m["To"] for m in mailbox.messages if m["Subject"].startswith("Approval overdue")]
    assert reminded == ["victor.vp@seller.example"] + ["carla.cfo@seller.example"] * 2
    await signal(handle, "approve_discount", {"approver": "victor.vp"})
    await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)


async def test_a_quote_not_signed_in_time_expires_back_to_qualified(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", {**LARGE, "discount_percent": "0",
                                          "lines": [{"sku": "PLATFORM", "quantity": 10}]})  # fmt: skip
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    assert state.quote is not None and state.quote.valid_until is not None
    valid_until = state.quote.valid_until
    state = await advance_until(ts_env, handle, lambda s: s.stage == Stage.QUALIFIED)
    assert state.contract is None
    expired = next(e for e in state.events if e.kind == "quote_expired")
    assert expired.at >= valid_until and "quote v1 not signed by" in expired.detail


async def test_a_new_quote_supersedes_one_awaiting_approval_or_signature(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    small = [{"sku": "PLATFORM", "quantity": 10}]
    await signal(handle, "submit_quote", {**LARGE, "lines": small, "discount_percent": "15"})
    await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    # v2 supersedes v1 while it waits for approval: approvals of v1 no longer count.
    await signal(handle, "submit_quote", {**LARGE, "lines": small, "discount_percent": "20"})
    state = await wait_until(handle, lambda s: s.quote is not None and s.quote.version == 2
                             and s.stage == Stage.AWAITING_APPROVAL)  # fmt: skip
    assert "quote v1 superseded by a new submission" in [
        e.detail for e in state.events if e.kind == "quote_superseded"]  # fmt: skip
    assert "not the one awaiting approval (v2)" in await refused_after(
        handle, "approve_discount", {"approver": "mia.manager", "quote_version": 1})  # fmt: skip
    await signal(handle, "approve_discount", {"approver": "mia.manager", "quote_version": 2})
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    first_contract = state.contract
    assert first_contract is not None
    # v3 supersedes v2 while it waits for signature: v2's contract can no longer be signed.
    await signal(handle, "submit_quote", {**LARGE, "lines": small, "discount_percent": "0"})
    state = await wait_until(handle, lambda s: s.quote is not None and s.quote.version == 3
                             and s.stage == Stage.AWAITING_SIGNATURE)  # fmt: skip
    assert state.contract is not None
    assert state.contract.document_sha256 != first_contract.document_sha256
    await sign(handle, state.model_copy(update={"contract": first_contract}))
    state = await wait_until(handle, lambda s: len(refusals(s, "sign_contract")) == 1)
    assert "does not match contract" in refusals(state, "sign_contract")[0]
    await sign(handle, state)
    state = await wait_for_stage(handle, Stage.ACTIVE)
    assert state.quote is not None and state.quote.version == 3
    assert state.quote.document_sha256 is not None


async def test_updates_refuse_at_once_with_the_reason_and_record_nothing(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    with pytest.raises(WorkflowUpdateFailedError) as refused:  # refused when priced
        await handle.execute_update("submit_quote", {**LARGE, "discount_percent": "60"})
    assert "quote v1 refused: a 60% discount is above the highest approval limit" in str(
        refused.value.cause)  # fmt: skip
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("approve_discount", {"approver": "mia.manager"})
    assert "not accepted in stage qualified" in str(refused.value.cause)
    result = await handle.execute_update(
        "submit_quote", {**LARGE, "lines": [{"sku": "PLATFORM", "quantity": 10}]}
    )
    assert result == "quote v2 priced: net 5100.00 USD over 12 months; awaiting approval: manager"
    await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    for payload, reason in [
        ({"approver": "nora.na"}, "nobody may decide on their own quote"),
        ({"approver": "mia.manager", "quote_version": 1}, "not the one awaiting approval"),
        ({"approver": "mia.manager", "typo": 1}, "malformed payload"),
    ]:
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update("approve_discount", payload)
        assert reason in str(refused.value.cause)
    state = await state_of(handle)
    assert not refusals(state, "approve_discount")  # validators record nothing
    result = await handle.execute_update("approve_discount", {"approver": "mia.manager"})
    assert result == "approved as manager: every approval is given"
    await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)


@pytest.mark.parametrize("first", ["submit_quote", "sign_contract"])
async def test_a_re_quote_and_a_signature_delivered_together_never_both_win(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, rules: BusinessRules, settings: Settings,
    first: str,
) -> None:  # fmt: skip
    """Signals buffered while no worker runs (an outage) reach the deal in one workflow task."""
    small = {**LARGE, "lines": [{"sku": "PLATFORM", "quantity": 10}], "discount_percent": "0"}
    # No sticky cache: the next workflow task goes to whichever worker polls next.
    uncached = settings.model_copy(update={"max_cached_workflows": 0})
    async with build_worker(ts_env.client, sqlite_ledger, rules, uncached):
        handle = await start(ts_env.client, settings.task_queue)
        await wait_for_stage(handle, Stage.QUALIFIED)
        await signal(handle, "submit_quote", small)
        state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    # The worker is down: the re-quote and the signature wait on the server together.
    requote = signal(handle, "submit_quote", {**small, "discount_percent": "5"})
    signature = sign(handle, state)
    for sent in (requote, signature) if first == "submit_quote" else (signature, requote):
        await sent
    async with own_worker(ts_env.client, sqlite_ledger, rules, settings):
        if first == "submit_quote":  # v2 supersedes v1; v1's signature does not count
            state = await wait_until(handle, lambda s: s.quote is not None and s.quote.version == 2
                                     and s.stage == Stage.AWAITING_SIGNATURE)  # fmt: skip
            assert "a new quote supersedes" in refusals(state, "sign_contract")[0]
            assert not any(e.kind == "contract_signed" for e in state.events)
        else:  # v1 is signed; the re-quote comes too late
            state = await wait_for_stage(handle, Stage.ACTIVE)
            assert state.quote is not None and state.quote.version == 1
            assert refusals(state, "submit_quote") == ["the contract is already signed"]


async def test_longer_payment_terms_need_the_cfo_and_set_the_invoices_due_dates(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", {**LARGE, "discount_percent": "0", "payment_terms_days": 45,
                                          "lines": [{"sku": "PLATFORM", "quantity": 10}]})  # fmt: skip
    state = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    assert state.pending_approval is not None
    assert [(r.role, r.rule) for r in state.pending_approval.requirements] == [
        ("cfo", "non-standard payment terms: net 45 payment terms")]  # fmt: skip
    await signal(handle, "approve_discount", {"approver": "carla.cfo"})
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    await sign(handle, state)
    state = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) == 1)
    invoice = state.invoices[0]
    assert invoice.due_date == invoice.issued_on + timedelta(days=45)


async def test_an_approval_already_given_is_not_escalated(
    ts_env: WorkflowEnvironment, deal_worker: Settings, mailbox: MailCatcher
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", LARGE)  # manager (discount) and cfo (large deal)
    await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    await signal(handle, "approve_discount", {"approver": "mia.manager"})
    state = await advance_until(ts_env, handle, lambda s: s.pending_approval is not None
                                and s.pending_approval.requirements[1].escalations == 1,
                                step=timedelta(hours=12))  # fmt: skip
    assert state.pending_approval is not None
    assert state.pending_approval.requirements[0].escalations == 0  # given before its SLA
    reminded = [m["To"] for m in mailbox.messages if m["Subject"].startswith("Approval overdue")]
    assert reminded == ["carla.cfo@seller.example"]  # the top role, reminded again
