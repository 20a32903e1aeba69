"""Contract terms in the deal: the clause library's standard terms on the first contract, the
customer's redlines (accepted at once, or by legal within its SLA), a new revision and hash for
each accepted one, and the signed revision's terms billed."""

import json
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings
from l2c.mailcatcher import MailCatcher
from models.deal import Stage
from models.ledger import ContractRecord
from models.search import DEAL_APPROVERS
from models.state import DealState
from tests.helpers import (
    Handle,
    advance_until,
    final_state,
    own_worker,
    refused_after,
    sign,
    signal,
    start,
    wait_for_stage,
    wait_until,
)

QUOTE = {"submitted_by": "nora.na", "lines": [{"sku": "PLATFORM", "quantity": 10}],
         "term_months": 12, "billing_period": "monthly"}  # fmt: skip


async def to_signature(handle: Handle) -> DealState:
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", QUOTE)
    return await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)


async def test_a_safe_redline_makes_a_new_revision_and_its_terms_are_billed(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    first = await to_signature(handle)
    contract = first.contract
    assert contract is not None and contract.revision == 0 and contract.terms is not None
    assert contract.terms.payment_terms_days == 30 and contract.terms.governing_law == "Delaware"
    outcome = await handle.execute_update("propose_terms", {
        "proposed_by": "ada.lovelace", "changes": {"sla_credits": "15",
                                                   "governing_law": "new york"},
        "contract_version": 0})  # fmt: skip
    assert outcome.startswith(f"redline accepted: {handle.id}-C1-R1 sha256 ")
    state = await wait_until(handle, lambda s: s.contract is not None and s.contract.revision == 1)
    revised = state.contract
    assert revised is not None and revised.terms is not None
    assert revised.document_sha256 != contract.document_sha256
    assert (revised.terms.sla_credits_percent, revised.terms.governing_law) == (15, "New York")
    with Session(sqlite_ledger) as session:
        stored = session.get(ContractRecord, revised.contract_id)
        assert stored is not None and stored.document_sha256 == revised.document_sha256
        assert "15 percent of that month" in stored.html and "laws of New York" in stored.html
        assert session.get(ContractRecord, contract.contract_id) is not None  # both revisions kept

    # Only the latest revision may be signed; a stale redline is refused with the reason.
    reason = await refused_after(handle, "sign_contract", {
        "signer_name": "Ada Lovelace", "signer_email": "ada@acme.example",
        "document_sha256": contract.document_sha256})  # fmt: skip
    assert "does not match contract" in reason and revised.contract_id in reason
    with pytest.raises(WorkflowUpdateFailedError) as stale:
        await handle.execute_update("propose_terms", {
            "proposed_by": "ada.lovelace", "changes": {"sla_credits": "15"},
            "contract_version": 0})  # fmt: skip
    assert "revision" in str(stale.value.cause) and "1" in str(stale.value.cause)
    await sign(handle, state)
    state = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) >= 1)
    invoice = state.invoices[0]
    assert (invoice.due_date - invoice.issued_on).days == 30
    assert state.contract is not None and state.contract.signed_by == "Ada Lovelace"
    with Session(sqlite_ledger) as session:
        signed = session.get(ContractRecord, revised.contract_id)
        assert signed is not None and signed.signed_at is not None


async def test_a_risky_redline_waits_for_legal_who_is_reminded_after_the_sla(
    ts_env: WorkflowEnvironment, deal_worker: Settings, mailbox: MailCatcher
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    first = await to_signature(handle)
    await signal(handle, "propose_terms", {
        "proposed_by": "ada.lovelace", "changes": {"payment_terms": 90},
        "remove": ["liability_cap"], "note": "procurement policy"})  # fmt: skip
    state = await wait_until(handle, lambda s: s.contract is not None
                             and s.contract.redline_under_review is not None)  # fmt: skip
    assert state.contract is not None
    pending = state.contract.redline_under_review
    assert pending is not None and state.contract.revision == 0
    assert sorted(r.clause for r in pending.risks) == ["liability_cap", "payment_terms"]
    assert pending.legal_reviewers == ["lena.legal", "gus.counsel"]
    assert pending.due_at is not None

    # Nobody signs, and nobody but its reviewers decides, while it is under review.
    assert "under review" in await refused_after(handle, "sign_contract", {
        "signer_name": "Ada Lovelace", "signer_email": "ada@acme.example",
        "document_sha256": first.contract.document_sha256 if first.contract else ""})  # fmt: skip
    assert "may not decide on this redline" in await refused_after(
        handle, "approve_terms", {"approver": "mia.manager"})  # fmt: skip
    assert "already under review" in await refused_after(
        handle, "propose_terms", {"proposed_by": "ada.lovelace", "changes": {"sla_credits": "5"}})  # fmt: skip

    # Past the SLA both reviewers are reminded, once each, and the review is due again later.
    state = await advance_until(ts_env, handle, lambda s: s.contract is not None
                                and s.contract.redline_under_review is not None
                                and s.contract.redline_under_review.reminders == 1,
                                step=timedelta(hours=8))  # fmt: skip
    reminders = [m for m in mailbox.messages if m["Subject"].startswith("Review overdue")]
    assert sorted(m["To"] for m in reminders) == [
        "carla.cfo@seller.example", "gus.counsel@seller.example", "lena.legal@seller.example"]  # fmt: skip
    assert state.contract is not None and state.contract.redline_under_review is not None
    assert state.contract.redline_under_review.due_at is not None
    assert state.contract.redline_under_review.due_at > pending.due_at

    # Net 90 is also beyond the net 30 the CFO approves on a quote: legal and the CFO decide.
    assert pending.finance_role == "cfo" and pending.finance_approvers == ["carla.cfo"]
    assert await approvers(handle) == ["carla.cfo", "gus.counsel", "lena.legal"]
    answer = await handle.execute_update("approve_terms", {"approver": "lena.legal",
                                                           "comment": "strategic customer"})  # fmt: skip
    assert answer == "approved as legal; still needed: carla.cfo"
    assert await approvers(handle) == ["carla.cfo"]
    assert "already approved" in await refused_after(handle, "approve_terms",
                                                     {"approver": "lena.legal"})  # fmt: skip
    answer = await handle.execute_update("approve_terms", {"approver": "carla.cfo"})
    assert answer.startswith("approved as cfo: the revision")
    state = await wait_until(handle, lambda s: s.contract is not None and s.contract.revision == 1)
    assert state.contract is not None and state.contract.terms is not None
    assert state.contract.terms.payment_terms_days == 90
    assert state.contract.terms.liability_cap is None  # struck out: uncapped
    assert state.contract.redline_under_review is None
    await sign(handle, state)
    state = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) >= 1)
    assert (state.invoices[0].due_date - state.invoices[0].issued_on).days == 90


async def test_bad_redlines_are_refused_with_the_reason_and_rejected_ones_change_nothing(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    first = await to_signature(handle)
    assert first.contract is not None
    with pytest.raises(WorkflowUpdateFailedError) as unknown:
        await handle.execute_update("propose_terms", {
            "proposed_by": "ada.lovelace", "changes": {"indemnity": "none"}})  # fmt: skip
    assert "indemnity" in str(unknown.value.cause) and "payment_terms" in str(unknown.value.cause)
    reason = await refused_after(handle, "propose_terms", {
        "proposed_by": "ada.lovelace", "changes": {"termination_for_convenience": "yes"}})  # fmt: skip
    assert "termination_for_convenience" in reason
    assert "malformed payload" in await refused_after(handle, "propose_terms", {
        "proposed_by": "ada.lovelace", "change": {"payment_terms": 45}})  # fmt: skip
    with pytest.raises(WorkflowUpdateFailedError) as nobody:  # rejected by the validator
        await handle.execute_update("approve_terms", {"approver": "lena.legal"})
    assert "no redline is waiting" in str(nobody.value.cause)

    # Net 45 is no risk to legal, but longer than the net 30 approved: the CFO decides.
    outcome = await handle.execute_update("propose_terms", {
        "proposed_by": "ada.lovelace", "changes": {"payment_terms": 45}})  # fmt: skip
    assert outcome.startswith("redline needs review (net 45 needs a cfo's approval too) by "
                              "carla.cfo, due ")  # fmt: skip
    await signal(handle, "reject_terms", {"approver": "carla.cfo", "reason": "net 30 only"})
    await wait_until(handle, lambda s: s.contract is not None
                     and s.contract.redline_under_review is None)  # fmt: skip

    await signal(handle, "propose_terms", {"proposed_by": "lena.legal",
                                           "changes": {"termination_for_convenience": True}})  # fmt: skip
    state = await wait_until(handle, lambda s: s.contract is not None
                             and s.contract.redline_under_review is not None)  # fmt: skip
    assert state.contract is not None and state.contract.redline_under_review is not None
    assert state.contract.redline_under_review.legal_reviewers == ["gus.counsel"]
    assert "own redline" in await refused_after(handle, "reject_terms",
                                                {"approver": "lena.legal", "reason": "no"})  # fmt: skip
    assert await approvers(handle) == ["gus.counsel"]
    await signal(handle, "reject_terms", {"approver": "gus.counsel", "reason": "never granted"})
    state = await wait_until(handle, lambda s: s.contract is not None
                             and s.contract.redline_under_review is None)  # fmt: skip
    assert await approvers(handle) == []  # nobody is waited for once it is rejected
    assert state.contract == first.contract.model_copy(update={"redline_under_review": None})
    kinds = [e.kind for e in state.events]
    assert "redline_rejected" in kinds and "terms_changed" not in kinds
    await sign(handle, state)  # the contract as first sent
    await wait_for_stage(handle, Stage.ACTIVE)


async def approvers(handle: Handle) -> list[str] | None:
    """Whom "waiting for my approval" (the DealApprovers search attribute) shows the deal to."""
    return (await handle.describe()).typed_search_attributes.get(DEAL_APPROVERS)


def slow_review(settings: Settings) -> Settings:
    """The redline review takes 3 seconds (real time, which the test server does not skip)."""
    faults = {"review_redline": {"kind": "slow", "seconds": 3}}
    return settings.model_copy(update={"faults_json": json.dumps(faults)})


async def test_nobody_signs_or_redlines_while_a_redline_is_reviewed_and_a_lost_deal_ends(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, rules: BusinessRules
) -> None:
    settings = slow_review(settings)
    async with own_worker(ts_env.client, sqlite_ledger, rules, settings):
        handle = await start(ts_env.client, settings.task_queue)
        first = await to_signature(handle)
        assert first.contract is not None
        await signal(handle, "propose_terms", {"proposed_by": "ada",
                                               "changes": {"governing_law": "Ireland"}})  # fmt: skip
        await wait_until(handle, lambda s: s.events[-1].kind == "terms_proposed")
        # While the review runs: the revision out may not be signed, nor redlined again.
        assert "under review" in await refused_after(handle, "sign_contract", {
            "signer_name": "Ada Lovelace", "signer_email": "ada@acme.example",
            "document_sha256": first.contract.document_sha256})  # fmt: skip
        with pytest.raises(WorkflowUpdateFailedError) as again:
            await handle.execute_update("propose_terms", {"proposed_by": "ada",
                                                          "changes": {"sla_credits": "15"}})  # fmt: skip
        assert "already under review" in str(again.value.cause)
        await wait_until(handle, lambda s: s.contract is not None
                                 and s.contract.redline_under_review is not None, timeout=30)  # fmt: skip
        # Marked lost while legal reviews: the deal ends lost, nothing left waiting.
        await signal(handle, "mark_lost", {"by": "nora.na", "reason": "went quiet"})
        final = await final_state(handle)
    assert final.stage == Stage.LOST
    assert final.contract is not None and final.contract.redline_under_review is None
    with Session(sqlite_ledger) as session:
        stored = session.get(ContractRecord, first.contract.contract_id)
        assert stored is not None and stored.signed_at is None
