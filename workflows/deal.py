"""DealWorkflow: one durable workflow per deal, from lead to recognized cash.

`run` reads as the business process. Stage methods below it hold the details; signal handlers
only validate what a person sent and hand it to the waiting stage, recording every refusal.
"""

import asyncio
import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.billing import BillingActivities
    from activities.fulfilment import FulfilmentActivities
    from activities.leads import LeadActivities
    from activities.payments import PaymentActivities
    from activities.quotes import QuoteActivities
    from activities.revenue import RevenueActivities
    from models.approvals import assignable
    from models.cash import allocate, late_fee, settled_status
    from models.contract_terms import (
        ApproveTerms,
        ContractTerms,
        LegalReminder,
        ProposeTerms,
        RedlineRequest,
        RedlineReview,
        RedlineUnderReview,
        RejectTerms,
    )
    from models.deal import WORKFLOW_TYPE, ActivityTiming, DealPolicy, LeadInput, Stage
    from models.documents import (
        ApprovalRequirement,
        BillingPeriodPlan,
        ChargeRequest,
        ChargeResult,
        ContractDocument,
        ContractRequest,
        CreditApplication,
        CreditNoteIssued,
        CreditNoteRequest,
        DealClosing,
        DisputeClosing,
        DisputeOpening,
        DunningNotice,
        EarlyPaymentTerms,
        EntitlementChange,
        EscalationRequest,
        InvoiceFinalization,
        InvoiceRequest,
        IssuedInvoice,
        LateFeeRequest,
        LedgerChargeback,
        Milestone,
        NurtureTouch,
        OrderRequest,
        PaymentRecord,
        ProrationCredit,
        QuantityChanged,
        QuantityChangeRequest,
        Quote,
        QuoteRequest,
        RefundRequest,
        RenewalRequest,
        RevenueRecognition,
        SignatureRecord,
        SignedContractCheck,
        UsageBilling,
        WriteOffRequest,
    )
    from models.leads import (
        AttachAnswer,
        AttachedLead,
        Enrichment,
        EnrichmentRequest,
        IdentityRequest,
        LeadAssignment,
        LeadRouting,
        RoutingRequest,
        ScoreRequest,
        SlaStart,
    )
    from models.money import ZERO
    from models.revenue import RevenueStream, modify_prospectively, obligation_schedules
    from models.search import (
        DEAL_AMOUNT,
        DEAL_APPROVERS,
        DEAL_OLDEST_DUE,
        DEAL_OWNER,
        DEAL_STAGE,
        DEAL_STAGE_SINCE,
    )
    from models.signals import (
        AcceptLead,
        ApproveDiscount,
        ChangeQuantity,
        CloseDispute,
        DeclineContract,
        GiveNotice,
        IssueCreditNote,
        LogEngagement,
        MarkLost,
        OpenDispute,
        RecordPayment,
        RefundCredit,
        RejectDiscount,
        SignContract,
        SubmitQuote,
    )
    from models.state import (
        ContractView,
        DealContinuation,
        DealEvent,
        DealState,
        DisputeView,
        InvoiceView,
        NonRenewalNotice,
        PendingApproval,
        PendingProration,
        RenewalAgreed,
        RenewalView,
        RequiredApproval,
    )
    from models.validation import explain

P = TypeVar("P", bound=BaseModel)
L = TypeVar("L", ApproveTerms, RejectTerms)  # legal's decisions on a redline

# A signal sent with no input at all still reaches its handler, which refuses it with a reason.
NO_PAYLOAD = RawValue(Payload())


# The first activity loads the policy, which sets the timing of every later one. It only reads
# configuration the worker holds in memory, so an attempt lost with a crashed worker is retried
# after seconds rather than after the minute the default policy allows.
POLICY_LOAD_TIMING = ActivityTiming(timeout_seconds=5)


def activity_options(timing: ActivityTiming) -> dict[str, Any]:
    """Ledger and mail steps retry until they succeed: an outage delays a deal, never loses a step.

    A LedgerConflict means the ledger disagrees with the deal; retrying cannot fix that.
    """
    return {
        "start_to_close_timeout": timedelta(seconds=timing.timeout_seconds),
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=timing.retry_initial_seconds),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=timing.retry_maximum_seconds),
            non_retryable_error_types=["LedgerConflict", "UnbalancedEntry"],
        ),
    }


# A card charge that gets no answer this long is abandoned (retries included): well within the day
# for which a Stripe-compatible gateway keeps an idempotency key, and long before a next attempt.
CHARGE_GIVE_UP = timedelta(hours=6)

# Version marker (workflow.patched): metered usage is billed in arrears at each month boundary.
USAGE_IN_ARREARS = "usage-billed-in-arrears"

# Version marker: several approvals in parallel with SLAs and escalation, quotes that expire, and
# re-quotes that supersede a quote awaiting approval or signature.
APPROVAL_MATRIX = "approval-matrix"

# Version marker: contracts carry the clause library's terms, and customers may redline them.
CONTRACT_TERMS = "contract-terms"

# Without an auto-renewal clause, a renewal quote opens this many days before the term ends (at
# most half the term): the clause library's standard notice period.
RENEWAL_QUOTE_LEAD_DAYS = 60

# Version marker: payments spread over open invoices, overpayments held as customer credit.
CASH_APPLICATION = "cash-application"

# Version marker: revenue recognized per performance obligation, on schedules of the transaction
# price allocated by relative standalone selling price, rather than as each invoice is delivered.
OBLIGATION_RECOGNITION = "recognition-by-obligation"

# Version marker: the lead front. Identity resolution (a lead of an account with an open deal
# joins it), enrichment, the trained scoring model, routing to teams with an SLA to accept, and
# the nurture cadence.
LEAD_FRONT = "lead-front"

# Version marker: the search attributes behind the ops console's saved list queries (who may
# approve, since when in the stage, the oldest invoice's due moment; models/search.py).
OPS_SEARCH = "ops-search-attributes"
# DealOldestDue of a deal with invoices, none of them open: past any "overdue" query's moment.
NOTHING_DUE = datetime(9999, 12, 31, tzinfo=UTC)

# Enrichment is worth a few tries, not a stalled deal: then the deal goes on without it.
ENRICHMENT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_attempts=3,
                               non_retryable_error_types=["EnrichmentRefused"])  # fmt: skip

# A lead joins another deal only if that deal takes it; a deal that cannot (it was signed or has
# ended meanwhile) loses its claim on the account, and the lead tries again this many times at
# most, then starts its own deal.
ATTACH_ATTEMPTS = 3
# A delivered attach_lead is always answered, once that deal's worker runs: the wait covers a
# long outage; past it the lead starts its own deal (and the other deal's claim passes to it).
ATTACH_ANSWER_WAIT = timedelta(days=1)

# Credit note references the deal itself uses; refused from people.
EARLY_PAYMENT_PREFIX = "early-payment:"
LATE_FEE_WAIVED_PREFIX = "late-fee-waived:"

# Why money signals are refused once the deal is written off.
COLLECTION_ENDED = "collection has ended: the deal's unpaid invoices are written off"

# The latest events a new run carries in its state; the earlier ones stay in the earlier runs.
KEEP_EVENTS = 50

BEFORE_SIGNATURE = (
    Stage.NEW,
    Stage.NURTURING,
    Stage.QUALIFIED,
    Stage.AWAITING_APPROVAL,
    Stage.AWAITING_SIGNATURE,
)


class DealEnded(Exception):
    """Ends the deal early (lost, disqualified); caught once in `run`."""

    def __init__(self, stage: Stage, reason: str):
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


@workflow.defn(name=WORKFLOW_TYPE)
class DealWorkflow:
    @workflow.init
    def __init__(self, lead_payload: RawValue) -> None:
        self._lead_error: str | None = None
        self._state: DealState | None = None
        # A later run of a long deal (continue-as-new) starts from its carried state.
        self._resume = _continuation(lead_payload)
        if self._resume is not None:
            self._state = self._resume.continued
        else:
            try:
                lead = workflow.payload_converter().from_payload(lead_payload.payload, LeadInput)
                self._state = DealState(deal_id=workflow.info().workflow_id, lead=lead)
            except (ValidationError, ValueError, TypeError) as err:
                detail = explain(err) if isinstance(err, ValidationError) else str(err)
                self._lead_error = f"invalid lead: {detail}"
        # What people sent, waiting for the stage that consumes it.
        self._quote_submission: SubmitQuote | None = None
        self._approval: ApproveDiscount | RejectDiscount | None = None
        self._signature: SignContract | None = None
        self._decline: DeclineContract | None = None
        self._lost: MarkLost | None = None
        self._quote_versions = self._resume.quote_versions if self._resume else 0
        self._approval_matrix = False  # see agree_quote_and_contract
        self._contract_terms = False  # ditto
        self._redline: ProposeTerms | None = None  # waiting for review
        self._legal_decision: ApproveTerms | RejectTerms | None = None
        self._redlines = 0  # redlines proposed in this run
        self._redline_outcomes: dict[int, str] = {}  # redline number -> what became of it
        self._negotiating = False  # a redline is being reviewed or its revision sent
        self._checking_renewal = 0  # renewal_signed checks under way: the term's end waits
        self._validating: list[str] | None = None  # refusals of an update's validator
        self._priced: dict[int, str | None] = {}  # quote version -> its pricing refusal, if any
        self._escalations_done = 0  # approval escalations that came back
        self._written_off = False
        self._billing_step_running = False
        self._month_end_due: datetime | None = None  # the month end the billing loop waits for
        # The month of the term under way (0-based), and the month ends recognized so far.
        self._month = self._recognized_through = self._resume.next_month if self._resume else 0
        self._changing_quantity = False
        self._collections: list[asyncio.Task[None]] = []
        self._charging: set[str] = set()  # invoices whose card charge is under way
        self._postings_running = 0  # payment postings under way
        self._late_fees_running = 0  # late fees being charged: the deal does not close meanwhile
        self._payments_in_flight: set[str] = set()  # references of payments being applied
        self._posting_order = asyncio.Lock()
        # Deals that reached billing before payments could be spread over invoices and held as
        # credit keep the rules they ran under (see invoice_collect_and_recognize).
        self._cash_application = False
        self._activities_running = 0  # any activity under way, from any coroutine
        self._lead_front = False  # see capture_lead
        self._lead_sla: asyncio.Task[None] | None = None  # reassigns a lead nobody accepted
        self._lead_sla_sleeping = False  # its timer is running
        self._reassigning = False  # a lead whose SLA passed is being passed to the next rep
        self._attach_answer: AttachAnswer | None = None  # from the deal this lead asked to join
        self._closing = False
        self._ops_search = False  # see OPS_SEARCH
        # Quote version -> its approvals as KPI milestones, for the ledger with its contract.
        self._approval_milestones: dict[int, list[Milestone]] = {}
        self._searchable: dict[str, object] = {}  # the ops search attributes as last upserted

    # ------------------------------------------------------------------ the process

    @workflow.run
    async def run(self, lead_payload: RawValue) -> DealState:
        if self._lead_error is not None:
            # A workflow started with a bad lead fails at once and is never retried.
            raise ApplicationError(self._lead_error, type="InvalidLead", non_retryable=True)
        self._ops_search = workflow.patched(OPS_SEARCH)
        if self._resume is not None:
            self._refresh_search()  # a new run: its search attributes as the last run left them
        if self._resume is not None and self._resume.renewal_quote:
            return await self.quote_renewal()
        try:
            if self._resume is None:  # a later run of the deal resumes its billing loop below
                await self.capture_lead()
                await self.score_and_route()
                await self.qualify_or_nurture()
                quote = await self.agree_quote_and_contract()
                await self.fulfil_order(quote)
            outcome = await self.invoice_collect_and_recognize(self._signed_quote())
            await self._close_renewal_quote()  # written off meanwhile: no renewal either
            reason = "term completed and fully paid"
            if outcome != Stage.WON:
                reason = "unpaid invoices written off"
            elif self.deal.renewal is not None and self.deal.renewal.outcome == "churned":
                reason += f"; not renewed after term {self.deal.renewal.term} (churn)"
            await self.close(outcome, reason)
        except DealEnded as ended:
            self._drop_redline("the deal ended first")
            if self.deal.contract is not None:
                self.deal.contract.redline_under_review = None
            await self.close(ended.stage, ended.reason)
        return self.deal

    async def capture_lead(self) -> None:
        self._set_stage(Stage.NEW)
        self.deal.policy = await self._call(LeadActivities.load_deal_policy, None, "load policy")
        # Deals that started before the lead front replay as they ran.
        self._lead_front = workflow.patched(LEAD_FRONT)
        if not self._lead_front:
            await self._call(LeadActivities.capture_lead, self.deal.lead, "capture lead")
        else:
            await self.resolve_identity()
            await self.enrich_lead()
        self._record("lead_captured", self.deal.lead.source, f"{self.deal.lead.company}")

    async def resolve_identity(self) -> None:
        """Record who the lead is; a lead of a person or company with an open deal joins that
        deal (told by signal `attach_lead`) and this one ends `merged`."""
        stale = None
        for _ in range(ATTACH_ATTEMPTS):
            request = IdentityRequest(deal_id=self.deal_id, lead=self.deal.lead, stale_claim=stale)
            identity = await self._call(
                LeadActivities.resolve_identity, request, "resolve identity"
            )
            self.deal.identity = identity
            self._record("identity_resolved", "identity", identity.detail)
            if identity.attach_to is None or identity.matched == "new":
                return
            attached = AttachedLead(lead=self.deal.lead, deal_id=self.deal_id,
                                    matched=identity.matched, detail=identity.detail)  # fmt: skip
            self._attach_answer = None
            try:
                await workflow.get_external_workflow_handle(identity.attach_to).signal(
                    "attach_lead", attached
                )
                # It answers (lead_attach_answer): a deal signed or closing meanwhile refuses.
                await workflow.wait_condition(lambda: self._attach_answer is not None,
                                              timeout=ATTACH_ANSWER_WAIT,
                                              timeout_summary="the open deal's answer")  # fmt: skip
            except Exception as err:  # it ended, or never answered: its claim is stale
                why = "no answer" if isinstance(err, TimeoutError) else str(err)
                self._record("identity_resolved", "identity",
                             f"{identity.attach_to} could not take the lead ({why}); "
                             "its claim on the account is released")  # fmt: skip
                stale = identity.attach_to
                continue
            answer = self._attach_answer
            assert answer is not None
            if not answer.joined:
                self._record("identity_resolved", identity.attach_to, f"{identity.attach_to} "
                             f"refused the lead ({answer.reason}); it starts its own deal")  # fmt: skip
                stale = identity.attach_to
                continue
            self.deal.merged_into = identity.attach_to
            raise DealEnded(
                Stage.MERGED, f"joined open deal {identity.attach_to}: {identity.detail}"
            )
        # Every deal it tried refused or was gone: the lead starts its own deal, claiming the
        # account from the last of them.
        request = IdentityRequest(deal_id=self.deal_id, lead=self.deal.lead, stale_claim=stale)
        identity = await self._call(LeadActivities.resolve_identity, request, "resolve identity")
        if identity.attach_to is not None:
            identity = identity.model_copy(update={"attach_to": None, "detail": (
                f"{identity.detail}; after {ATTACH_ATTEMPTS} tries this lead starts its own deal")})  # fmt: skip
        self.deal.identity = identity
        self._record("identity_resolved", "identity", identity.detail)

    async def enrich_lead(self) -> None:
        """Firmographics of the company (not for a free-mail address); a service that fails
        leaves the deal with what the lead carried, and says so."""
        identity = self.deal.identity
        assert identity is not None
        if identity.company_domain is None:
            self.deal.enrichment = Enrichment(
                status="skipped", detail="free-mail address: no company domain"
            )
        else:
            request = EnrichmentRequest(deal_id=self.deal_id, domain=identity.company_domain)
            try:
                self.deal.enrichment = await workflow.execute_activity_method(
                    LeadActivities.enrich_lead, request, summary="enrich lead",
                    start_to_close_timeout=timedelta(seconds=self.policy.activities.timeout_seconds),
                    retry_policy=ENRICHMENT_RETRY)  # fmt: skip
            except ActivityError as err:
                why = str(err.cause) if err.cause is not None else str(err)
                self.deal.enrichment = Enrichment(status="unavailable", detail=why)
        enrichment = self.deal.enrichment
        found = enrichment.firmographics
        detail = enrichment.detail
        if enrichment.status == "enriched" and found is not None:
            facts = [f"{found.employees} employees" if found.employees else "",
                     found.industry or "", found.country or ""]  # fmt: skip
            detail = f"{found.domain}: {', '.join(f for f in facts if f) or 'no facts'}"
            detail += " (cached)" if enrichment.cached else ""
        self._record(f"enrichment_{enrichment.status}", "enrichment", detail or enrichment.status)

    async def score_and_route(self) -> None:
        if self._lead_front:
            await self.score_lead("lead_scored")
            await self.assign_owner(sales_ready=self.deal.score >= self.policy.qualify_at)
            return
        assessment = await self._call(LeadActivities.assess_lead, self.deal.lead, "score and route")
        self.deal.score = assessment.score
        self.deal.score_breakdown = assessment.breakdown
        self.deal.owner = assessment.owner
        workflow.upsert_search_attributes([DEAL_OWNER.value_set(assessment.owner or "")])
        self._record(
            "lead_scored",
            "scoring",
            f"score {assessment.score} ({_points(assessment.breakdown)}), routed to {assessment.owner}",
        )

    async def score_lead(self, kind: str) -> None:
        """Rule points and the trained model's, plus the engagement points so far."""
        enrichment = self.deal.enrichment
        request = ScoreRequest(deal_id=self.deal_id, lead=self.deal.lead,
                               firmographics=enrichment.firmographics if enrichment else None)  # fmt: skip
        assessment = await self._call(LeadActivities.score_lead, request, "score lead")
        engagement = self.deal.score_breakdown.get("engagement", 0)  # as of now, handlers included
        breakdown = dict(assessment.breakdown)
        if engagement:
            breakdown["engagement"] = engagement
        self.deal.score_breakdown = breakdown
        self.deal.score = sum(breakdown.values())
        self.deal.score_model = model = assessment.model
        detail = f"score {self.deal.score} ({_points(breakdown)})"
        if model is not None:
            detail += (f"; model v{model.version}: win probability {model.probability:.0%} "
                       f"from {model.won} won and {model.lost} lost deals")  # fmt: skip
        else:
            detail += "; no trained model yet (l2c leads train)"
        self._record(kind, "scoring", detail)

    async def assign_owner(self, sales_ready: bool, exclude: list[str] | None = None) -> None:
        """The lead's next owner, from its team's round-robin. Sales-ready, the owner must accept
        it (accept_lead) within the team's SLA."""
        routing = self.deal.routing = self.deal.routing or LeadRouting()
        enrichment = self.deal.enrichment
        employees = self.deal.lead.employees
        if employees is None and enrichment is not None and enrichment.firmographics is not None:
            employees = enrichment.firmographics.employees
        request = RoutingRequest(deal_id=self.deal_id, lead_id=self.deal.lead.lead_id,
                                 country=self.deal.lead.country, employees=employees,
                                 assignment=len(routing.assignments) + 1, exclude=exclude or [],
                                 sales_ready=sales_ready, at=workflow.now())  # fmt: skip
        assignment: LeadAssignment = await self._call(
            LeadActivities.route_lead, request, "route lead"
        )
        if exclude and routing.accepted_by is not None:
            # A quote came in while the lead was being passed on: whoever sent it has it.
            self._record("lead_kept", routing.accepted_by, f"accepted by {routing.accepted_by} "
                         f"before it passed to {assignment.owner}")  # fmt: skip
            return
        routing.assignments.append(assignment)
        self._set_owner(assignment, "lead_reassigned" if exclude else "lead_routed")

    def _set_owner(self, assignment: LeadAssignment, kind: str) -> None:
        self.deal.owner = assignment.owner
        workflow.upsert_search_attributes([DEAL_OWNER.value_set(assignment.owner)])
        detail = f"to {assignment.owner} ({assignment.reason})"
        if assignment.accept_by is not None:
            detail += f"; to accept by {assignment.accept_by.isoformat(timespec='minutes')}"
        self._record(kind, "routing", detail)

    async def qualify_or_nurture(self) -> None:
        policy = self.policy
        if self.deal.score < policy.qualify_at:
            self._set_stage(Stage.NURTURING)
            if self._lead_front and self.policy.nurture_touches:
                await self.nurture()
            else:  # deals from before the cadence, or a policy from a worker without it
                await self._nurture_every_cadence_days()
        if self._lead_front:
            await self._start_lead_sla()  # before the stage shows: no step follows it
        self._set_stage(Stage.QUALIFIED)
        self._record("qualified", "scoring", f"score {self.deal.score} >= {policy.qualify_at}")
        if self._lead_front:
            self._lead_sla = asyncio.create_task(self._reassign_unaccepted_lead())

    async def nurture(self) -> None:
        """The cadence of touches until the lead qualifies (engagement, or a re-score before a
        touch), else disqualification once the cadence is over."""
        policy = self.policy
        started = workflow.now()
        give_up_at = started + timedelta(days=policy.nurture_give_up_after_days)

        def qualified() -> bool:
            return self.deal.score >= policy.qualify_at

        for number, touch in enumerate(policy.nurture_touches, start=1):
            moment = started + timedelta(days=touch.day)
            if await self._wait_until(moment, qualified, f"nurture touch {number}"):
                return
            if number > 1:
                await self.score_lead("lead_rescored")
                if qualified():
                    return
            await self._call(
                LeadActivities.send_nurture_touch,
                NurtureTouch(
                    deal_id=self.deal_id,
                    lead=self.deal.lead,
                    touch_number=number,
                    score=self.deal.score,
                    template=touch.template,
                    owner=self.deal.owner,
                ),
                f"nurture e-mail {number}",
            )
            self._record("nurture_touch", "nurture", f"touch {number} sent ({touch.template})")
        if await self._wait_until(give_up_at, qualified, "end of nurture"):
            return
        await self.score_lead("lead_rescored")
        if not qualified():
            raise DealEnded(Stage.DISQUALIFIED,
                            f"score {self.deal.score} stayed below {policy.qualify_at} through "
                            f"the nurture cadence ({len(policy.nurture_touches)} touches over "
                            f"{policy.nurture_give_up_after_days} days)")  # fmt: skip

    async def _nurture_every_cadence_days(self) -> None:
        """Deals from before the cadence: a touch every cadence_days until giving up."""
        policy = self.policy
        give_up_at = workflow.now() + timedelta(days=policy.nurture_give_up_after_days)
        touches = 0
        while self.deal.score < policy.qualify_at:
            if workflow.now() >= give_up_at:
                raise DealEnded(
                    Stage.DISQUALIFIED,
                    f"score {self.deal.score} stayed below {policy.qualify_at} for "
                    f"{policy.nurture_give_up_after_days} days of nurture",
                )
            touches += 1
            await self._call(
                LeadActivities.send_nurture_touch,
                NurtureTouch(
                    deal_id=self.deal_id,
                    lead=self.deal.lead,
                    touch_number=touches,
                    score=self.deal.score,
                ),
                f"nurture e-mail {touches}",
            )
            self._record("nurture_touch", "nurture", f"touch {touches} sent")
            next_touch = min(
                workflow.now() + timedelta(days=policy.nurture_cadence_days), give_up_at
            )
            await self._wait_until(
                next_touch, lambda: self.deal.score >= policy.qualify_at, "next nurture touch"
            )

    async def _start_lead_sla(self) -> None:
        """The lead is sales-ready: its owner has the team's SLA to accept it. The clock runs in
        the background while the deal goes on (`_reassign_unaccepted_lead`)."""
        routing = self.deal.routing
        assert routing is not None
        routing.sales_ready_at = workflow.now()
        current = routing.assignments[-1]
        if routing.accepted_by is None and current.accept_by is None:
            start = SlaStart(deal_id=self.deal_id, assignment=current.assignment,
                             team=current.team, at=workflow.now())  # fmt: skip
            started: LeadAssignment = await self._call(
                LeadActivities.start_lead_sla, start, "start lead SLA"
            )
            current.accept_by = started.accept_by
            if started.accept_by is not None:
                self._record("lead_sla_started", "routing", f"{current.owner} to accept by "
                             f"{started.accept_by.isoformat(timespec='minutes')}")  # fmt: skip

    async def _reassign_unaccepted_lead(self) -> None:
        """Each owner who lets the SLA pass loses the lead to the next rep of the team."""
        routing = self.deal.routing
        assert routing is not None
        while routing.accepted_by is None and not self._closing:
            current = routing.assignments[-1]
            if current.accept_by is None:
                return  # the team's manager: no SLA
            remaining = current.accept_by - workflow.now()
            if remaining > timedelta(0):
                # A plain timer, never cancelled by an acceptance (only by the deal closing): the
                # test server strands a run that cancels a timer firing at that moment
                # (temporalio/sdk-java#3088), and a timer left to fire costs one quiet task.
                self._lead_sla_sleeping = True
                try:
                    await workflow.sleep(remaining, summary=f"{current.owner} to accept the lead")
                finally:
                    self._lead_sla_sleeping = False
            if routing.accepted_by is not None or self._closing:
                return
            current.missed = True
            routing.sla_misses += 1
            self._record("lead_sla_missed", current.owner,
                         f"not accepted by {current.accept_by.isoformat(timespec='minutes')}")  # fmt: skip
            missed = list(dict.fromkeys(a.owner for a in routing.assignments if a.missed))
            self._reassigning = True
            try:
                await self.assign_owner(sales_ready=True, exclude=missed)
            finally:
                self._reassigning = False

    async def agree_quote_and_contract(self) -> Quote:
        """Quote, approvals and signature, back to `qualified` whenever one of them says no, the
        quote expires, or a new quote supersedes it."""
        # Deals recorded before approvals ran in parallel with SLAs replay as they ran.
        self._approval_matrix = workflow.patched(APPROVAL_MATRIX)
        # Contracts with the clause library, and redlines of them: deals from before do without.
        self._contract_terms = self._approval_matrix and workflow.patched(CONTRACT_TERMS)
        while True:
            self._set_stage(Stage.QUALIFIED)
            await self._wait_for(lambda: self._quote_submission is not None)
            submission = self._quote_submission
            assert submission is not None
            quote, approvals = await self.price_quote(submission)
            self._quote_submission = None  # only now may the next quote be submitted
            if quote is None:
                continue
            if approvals and not await self.get_discount_approved(quote, approvals):
                continue
            if await self.get_contract_signed(quote):
                return quote

    async def price_quote(
        self, submission: SubmitQuote
    ) -> tuple[Quote | None, list[ApprovalRequirement]]:
        self._quote_versions += 1
        request = QuoteRequest(
            deal_id=self.deal_id,
            version=self._quote_versions,
            currency=self.deal.lead.currency,
            submission=submission,
            country=self.deal.lead.country,
            # A deal's quotes are all priced on the price book of its first one (deals quoted
            # before price books were kept in the ledger: on the current one).
            price_book_version=self.deal.quote.price_book_version
            if self.deal.quote is not None and self._approval_matrix
            else None,
            priced_at=workflow.now(),
            customer=self.deal.lead.company,
            milestones=_lead_milestones(self.deal.routing),
        )
        pricing = await self._call(QuoteActivities.price_quote, request, "price quote")
        self._priced[request.version] = pricing.refusal if pricing.quote is None else None
        if pricing.quote is None:
            self._refuse("submit_quote", submission.submitted_by, pricing.refusal or "refused")
            return None, []
        quote = pricing.quote
        self.deal.quote = quote
        workflow.upsert_search_attributes([DEAL_AMOUNT.value_set(float(quote.net_total))])
        self._record(
            "quote_priced",
            submission.submitted_by,
            f"quote v{quote.version}: list {quote.list_total}, net {quote.net_total} "
            f"{quote.currency} at {quote.discount_percent}% over {quote.term_months} months",
        )
        # Pricing recorded before approvals came as a list named just the one.
        return quote, pricing.approvals or ([pricing.approval] if pricing.approval else [])

    async def get_discount_approved(
        self, quote: Quote, approvals: list[ApprovalRequirement]
    ) -> bool:
        """Every required approval, given in parallel by different people; a rejection, expiry
        or a new quote ends the wait. An approval not given in its SLA is escalated."""
        self.deal.pending_approval = PendingApproval(
            quote_version=quote.version,
            requested_at=workflow.now(),
            discount_percent=quote.discount_percent,
            submitted_by=quote.submitted_by,
            required_role=approvals[0].required_role,
            eligible_approvers=approvals[0].eligible_approvers,
            requirements=[
                RequiredApproval(
                    rule=a.rule,
                    role=a.required_role,
                    eligible_approvers=a.eligible_approvers,
                    due_at=a.due_at if self._approval_matrix else None,
                )
                for a in approvals
            ],
        )
        self._set_stage(Stage.AWAITING_APPROVAL)
        if self._approval_matrix:
            await self._await_approvals(quote)
        else:
            await self._wait_for(lambda: self._approval is not None)
        decision, self._approval = self._approval, None
        if isinstance(decision, ApproveDiscount):
            self._approval_milestones[quote.version] = _approval_milestones(
                self.deal.pending_approval
            )
        self.deal.pending_approval = None
        return isinstance(decision, ApproveDiscount)

    async def _await_approvals(self, quote: Quote) -> None:
        """Wait for every approval, a rejection, a new quote or the quote's expiry. Escalations
        run beside the wait (their reminders never hold up a decision) and report back."""
        pending = self.deal.pending_approval
        assert pending is not None
        escalating: set[int] = set()  # requirements whose escalation is under way
        while self._approval is None:
            waiting = [(n, r) for n, r in enumerate(pending.requirements)
                       if r.approved_by is None and n not in escalating]  # fmt: skip
            deadlines = [r.due_at for _, r in waiting if r.due_at is not None]
            if quote.valid_until is not None:
                deadlines.append(quote.valid_until)
            escalated = self._escalations_done

            def decided(escalated: int = escalated) -> bool:
                return (
                    self._approval is not None
                    or self._quote_submission is not None
                    or self._escalations_done != escalated
                )

            if deadlines:
                await self._wait_until(min(deadlines), decided, "approval SLA or quote expiry")
            else:
                await self._wait_for(decided)
            if self._approval is not None or self._quote_ended(quote):
                return
            for n, requirement in waiting:
                due = requirement.due_at
                if requirement.approved_by is None and due is not None and due <= workflow.now():
                    escalating.add(n)
                    self._collections.append(
                        asyncio.create_task(self._escalate(quote, pending, n, escalating))
                    )

    async def _escalate(
        self, quote: Quote, pending: PendingApproval, index: int, escalating: set[int]
    ) -> None:
        """Escalate one approval; whatever happens, the wait loop hears back (and escalates it
        again once it is due again)."""
        try:
            await self._escalate_once(quote, pending, pending.requirements[index])
        finally:
            escalating.discard(index)
            self._escalations_done += 1

    async def _escalate_once(
        self, quote: Quote, pending: PendingApproval, requirement: RequiredApproval
    ) -> None:
        escalated: ApprovalRequirement = await self._call(
            QuoteActivities.escalate_approval,
            EscalationRequest(
                deal_id=self.deal_id,
                lead=self.deal.lead,
                quote_version=quote.version,
                submitted_by=quote.submitted_by,
                rule=requirement.rule,
                role=requirement.role,
                escalated_to=requirement.escalated_to,
                taken=[r.approved_by for r in pending.requirements if r.approved_by],
                escalated_at=workflow.now(),
                escalation=requirement.escalations + 1,
            ),
            f"escalate approval ({requirement.rule})",
        )
        if requirement.approved_by is not None or self.deal.pending_approval is not pending:
            return  # given, or the quote decided or ended, while the reminders went out
        requirement.escalations += 1
        requirement.escalated_to = escalated.escalated_to
        requirement.due_at = escalated.due_at
        self._record("approval_escalated", "system",
                     f"{requirement.rule}: escalated to {escalated.escalated_to} (reminded: "
                     f"{', '.join(escalated.notified) or 'nobody free'}), due {requirement.due_at}")  # fmt: skip

    def _quote_ended(self, quote: Quote) -> bool:
        """Whether a new quote superseded `quote`, or it expired; recorded once, when found."""
        if self._quote_submission is not None:
            self._record("quote_superseded", self._quote_submission.submitted_by,
                         f"quote v{quote.version} superseded by a new submission")  # fmt: skip
            return True
        if _expired(quote):
            self._record("quote_expired", "system",
                         f"quote v{quote.version} not signed by {quote.valid_until}")  # fmt: skip
            return True
        return False

    def _sync_pending_approval(self) -> None:
        """`required_role` and `eligible_approvers` name the first approval still needed."""
        pending = self.deal.pending_approval
        if pending is None:
            return
        first = next((r for r in pending.requirements if r.approved_by is None), None)
        if first is not None:
            pending.required_role = first.role
            pending.eligible_approvers = first.eligible_approvers

    async def get_contract_signed(self, quote: Quote) -> bool:
        """Send the contract and wait for the customer to sign or decline it. Deals with the
        clause library also take redlines here: each accepted one (by legal, if it is risky)
        sends a new revision of the contract, and only the latest may be signed."""
        await self.send_contract(quote, terms=None, revision=0)
        self._set_stage(Stage.AWAITING_SIGNATURE)

        def answered() -> bool:
            return self._signature is not None or self._decline is not None

        if not self._approval_matrix:
            await self._wait_for(answered)
        else:
            while not answered():

                def ended() -> bool:
                    return (answered() or self._quote_submission is not None
                            or self._redline is not None)  # fmt: skip

                if quote.valid_until is not None:
                    await self._wait_until(quote.valid_until, ended, "quote expiry")
                else:
                    await self._wait_for(ended)
                if answered():
                    break
                if self._quote_ended(quote):
                    self._drop_redline("the quote was superseded or expired first")
                    self.deal.contract = None
                    return False
                if self._redline is not None:
                    await self.negotiate_terms(quote)
            self._drop_redline("the contract was declined first")
        if self._decline is not None:
            self._decline = None
            self.deal.contract = None
            return False
        signature = self._signature
        assert signature is not None and self.deal.contract is not None
        await self._call(
            QuoteActivities.record_signature,
            SignatureRecord(
                deal_id=self.deal_id,
                contract_id=self.deal.contract.contract_id,
                signer_name=signature.signer_name,
                signer_email=signature.signer_email,
                signed_at=workflow.now(),
            ),
            "record signature",
        )
        return True

    def _drop_redline(self, why: str) -> None:
        """A redline proposed but never reviewed, because the contract ended first."""
        if self._redline is not None:
            self._redlines += 1
            self._redline_outcomes[self._redlines] = f"dropped: {why}"
            self._record("redline_dropped", self._redline.proposed_by, why)
            self._redline = None

    async def send_contract(self, quote: Quote, terms: ContractTerms | None, revision: int) -> None:
        """Render a revision of the contract into the ledger and send it for signature: the
        first (with the library's standard clauses, for deals that have them), or one with the
        terms of an accepted redline."""
        document: ContractDocument = await self._call(
            QuoteActivities.render_contract,
            ContractRequest(
                deal_id=self.deal_id,
                lead=self.deal.lead,
                quote=quote,
                issued_at=workflow.now(),
                payment_terms_days=self._payment_terms_days(quote),
                terms=terms,
                revision=revision,
                standard_terms=self._contract_terms,
                milestones=self._approval_milestones.get(quote.version, []),
            ),
            "render contract" if revision == 0 else f"render contract revision {revision}",
        )
        self.deal.contract = ContractView(
            contract_id=document.contract_id,
            version=document.version,
            document_sha256=document.document_sha256,
            sent_at=workflow.now(),
            revision=document.revision,
            terms=document.terms,
        )
        self._record(
            "contract_sent", "system", f"{document.contract_id} sha256 {document.document_sha256}"
        )

    async def negotiate_terms(self, quote: Quote) -> None:
        """A customer's redline: refused (with the reason), accepted at once, or, when it makes
        a clause risky (or payment terms longer than approved), accepted or rejected by legal
        (and the approval matrix's role) within its SLA. An accepted one sends a new revision of
        the contract. Nobody signs, and no other redline is taken, until it is decided."""
        proposal, self._redline = self._redline, None
        contract = self.deal.contract
        assert proposal is not None and contract is not None and contract.terms is not None
        self._redlines += 1
        number = self._redlines
        self._negotiating = True
        try:
            outcome = await self._review_redline(quote, contract, proposal, number)
        finally:
            self._negotiating = False
            contract.redline_under_review = None
            self._refresh_search()  # its reviewers are no longer waited for
        self._redline_outcomes.setdefault(number, outcome)

    async def _review_redline(
        self, quote: Quote, contract: ContractView, proposal: ProposeTerms, number: int
    ) -> str:
        review: RedlineReview = await self._call(
            QuoteActivities.review_redline,
            RedlineRequest(
                deal_id=self.deal_id,
                current=contract.terms,
                proposal=proposal,
                requested_at=workflow.now(),
                revision=contract.revision,
            ),
            f"review redline {number}",
        )
        if review.refused is not None or review.terms is None:
            self._refuse("propose_terms", proposal.proposed_by, review.refused or "refused")
            return f"refused: {review.refused}"
        if review.legal_reviewers or review.finance_approvers:
            pending = RedlineUnderReview(
                proposed_by=proposal.proposed_by, note=proposal.note, changed=review.changed,
                risks=review.risks, terms=review.terms, legal_reviewers=review.legal_reviewers,
                due_at=review.legal_due_at, finance_role=review.finance_role,
                finance_approvers=review.finance_approvers, redline=number)  # fmt: skip
            contract.redline_under_review = pending
            reasons = [r.reason for r in review.risks]
            if review.finance_role is not None:
                reasons.append(f"net {review.terms.payment_terms_days} needs a "
                               f"{review.finance_role}'s approval too")  # fmt: skip
            # The update answers now: the decision may take days.
            self._redline_outcomes[number] = (
                f"needs review ({'; '.join(reasons)}) by {', '.join(pending.waiting_for())}, "
                f"due {review.legal_due_at}")  # fmt: skip
            self._record("redline_under_review", proposal.proposed_by,
                         self._redline_outcomes[number])  # fmt: skip
            if not isinstance(await self._await_review(quote, contract, pending), ApproveTerms):
                return "dropped: rejected, or the contract ended first"  # recorded
        if self._contract_ended(quote):
            self._record("redline_dropped", proposal.proposed_by,
                         "the contract ended (declined, superseded or expired) first")  # fmt: skip
            return "dropped: the contract ended (declined, superseded or expired) first"
        await self.send_contract(quote, terms=review.terms, revision=contract.revision + 1)
        sent = self.deal.contract
        assert sent is not None
        self._record("terms_changed", proposal.proposed_by,
                     f"{', '.join(review.changed)} changed: {sent.contract_id} "
                     f"sha256 {sent.document_sha256}")  # fmt: skip
        return f"accepted: {sent.contract_id} sha256 {sent.document_sha256}"

    def _contract_ended(self, quote: Quote) -> bool:
        """Whether the contract out for signature was declined, or its quote superseded or
        expired (without recording it: the signature loop does)."""
        return self._decline is not None or self._quote_submission is not None or _expired(quote)

    async def _await_review(
        self, quote: Quote, contract: ContractView, pending: RedlineUnderReview
    ) -> ApproveTerms | RejectTerms | None:
        """The reviewers' decision on a redline; past its SLA those who may still give an
        approval are reminded by e-mail (and again each SLA after). None: the contract ended
        meanwhile."""

        def over() -> bool:
            return self._legal_decision is not None or self._contract_ended(quote)

        while not over():
            moment = pending.due_at
            if quote.valid_until is not None and (moment is None or quote.valid_until < moment):
                moment = quote.valid_until
            if moment is None:
                await self._wait_for(over)
            elif not await self._wait_until(moment, over, "redline review due") and (
                pending.due_at is not None and workflow.now() >= pending.due_at
            ):
                pending.reminders += 1
                waiting = pending.waiting_for()
                pending.due_at = await self._call(
                    QuoteActivities.remind_legal,
                    LegalReminder(deal_id=self.deal_id, company=self.deal.lead.company,
                                  contract_id=contract.contract_id,
                                  proposed_by=pending.proposed_by, risks=pending.risks,
                                  reviewers=waiting, redline=pending.redline,
                                  reminder=pending.reminders, reminded_at=workflow.now()),
                    "remind reviewers",
                )  # fmt: skip
                self._record("redline_review_overdue", "system",
                             f"reminded {', '.join(waiting)}; due again {pending.due_at}")  # fmt: skip
        decision, self._legal_decision = self._legal_decision, None
        return decision

    async def fulfil_order(self, quote: Quote) -> None:
        self._set_stage(Stage.FULFILLING)
        if self._lead_front:
            # Signed, the deal is no longer an open opportunity: the account's next lead (an
            # expansion, another department) starts a deal of its own.
            await self._call(LeadActivities.release_account, self.deal_id, "release the account")
        order = await self._call(
            FulfilmentActivities.provision_order,
            OrderRequest(deal_id=self.deal_id, quote=quote, requested_at=workflow.now()),
            "create and provision order",
        )
        self.deal.order_id = order.order_id
        self.deal.activated_at = workflow.now()
        self._record("order_provisioned", "provisioning", f"{order.order_id}: {order.entitlements}")

    async def invoice_collect_and_recognize(self, quote: Quote) -> Stage:
        """Month by month over the term: invoice in advance (and metered usage in arrears),
        recognize at month end, collect."""
        self._set_stage(Stage.ACTIVE)
        activated_at = self.deal.activated_at
        assert activated_at is not None
        # Called in every run (runs already recorded carry its marker), but a continued run keeps
        # the rules its deal started with.
        patched = workflow.patched(CASH_APPLICATION)
        self._cash_application = self._resume.cash_application if self._resume else patched
        if self._resume is None:
            first_month = 0
            # Deals that started before usage was billed in arrears replay as they ran, and a
            # quote priced before then has no tiers locked in it to bill usage by.
            bills_usage = _meters_usage(quote) and workflow.patched(USAGE_IN_ARREARS)
            if quote.obligations and workflow.patched(OBLIGATION_RECOGNITION):
                self.deal.revenue_schedules = obligation_schedules(
                    quote, self._month_ends(activated_at, quote.term_months)
                )
            if self.deal.contract is not None and self.deal.contract.terms is not None:
                self.deal.renewal = self._renewal_view(1, 0, quote)
        else:
            first_month, bills_usage = self._resume.next_month, self._resume.bills_usage
            self._seed_recognition(quote, first_month)
            for invoice in self.deal.invoices:  # collection carries on where the last run was
                if invoice.status in ("open", "disputed"):
                    self._collect_in_background(invoice, _due_at(invoice))
            if self.deal.entitlements_suspended:
                self._collections.append(
                    asyncio.create_task(self._restore_entitlements_when_paid())
                )
        self._recognized_through = first_month
        for month in range(first_month, quote.term_months):
            self._month = month
            if await self._billing_stopped():
                break
            if month > first_month and self._time_for_a_new_run(month - first_month):
                await self._continue_as_new(month, bills_usage)
                break  # only reached when a write-off began meanwhile
            await self._open_renewal_quote_if_due(activated_at, month)
            if self.deal.revenue_schedules:
                # A quantity change being priced finishes first: its plan is the one billed
                # from now on, as its modification of the schedule assumes.
                await workflow.wait_condition(lambda: not self._changing_quantity)
            # The plan in force: the signed quote, or as a quantity change re-priced it.
            plan = self._plan()
            period = next((p for p in plan.billing_plan if p.start_month == month), None)
            # Usage is billed in arrears from the second month on (of the deal: a renewed term's
            # first invoice bills the last month of the term before).
            in_arrears = bills_usage and self._term_start() + month > 0
            if period is not None or in_arrears or self.deal.pending_adjustments:
                await self.issue_invoice(plan, month, period, activated_at, bills_usage)
            if month == 0 and self.deal.revenue_schedules:
                # Point in time: one-time services are delivered once provisioning completes.
                await self.recognize_obligations(0)
            elif month == 0 and quote.one_time_net > 0:
                self._billing_step_running = True
                await self.recognize("onboarding", "services", quote.one_time_net, quote.currency)
                self._billing_step_running = False
            month_end = self._boundary(activated_at, month + 1)
            self._month_end_due = month_end
            # A write-off ends the wait early, unless this month has already ended: then its timer
            # has fired (or is about to) and the month is recognized as delivered.
            await self._wait_until(
                month_end, self._write_off_before(month_end), f"end of month {month + 1}"
            )
            if workflow.now() < month_end:
                break  # written off before this month was delivered
            if self.deal.revenue_schedules:
                # A quantity change under way modifies the schedule of the month ending first.
                await workflow.wait_condition(lambda: not self._changing_quantity)
                self._recognized_through = month + 1
                await self.recognize_obligations(month + 1)
                self._month_end_due = None
                continue
            # What this month delivered: its share of the period billed for it, and of prorations.
            delivered = self.deal.recognition_schedule.pop(month + 1, ZERO)
            self._recognized_through = month + 1  # a change from now on spreads over later months
            if delivered > 0:
                self._billing_step_running = True
                await self.recognize(  # keys count months from activation, across terms
                    f"month-{self._term_start() + month + 1}",
                    "subscription",
                    delivered,
                    quote.currency,
                )
                self._billing_step_running = False
            self._month_end_due = None
        else:
            await workflow.wait_condition(lambda: self._checking_renewal == 0)
            if await self._renews():
                await self.renew_term(activated_at, bills_usage)  # returns only if written off
            await self._close_renewal_quote()
            pending = bills_usage or self.deal.pending_adjustments
            if pending and not await self._billing_stopped():
                # The last month's usage (in arrears) and any late proration, once the term is over.
                await self.issue_invoice(
                    self._plan(), quote.term_months, None, activated_at, bills_usage
                )
            self._record_churn()
        await workflow.wait_condition(
            lambda: (
                self._written_off
                or (
                    self._late_fees_running == 0
                    and all(i.status not in ("open", "disputed") for i in self.deal.invoices)
                    # Credit still held is owed to the customer: the deal waits for its refund.
                    and self.deal.customer_credit == 0
                )
            )
        )
        await asyncio.gather(*self._collections)
        return Stage.WRITTEN_OFF if self._written_off else Stage.WON

    def _renewal_view(self, term: int, start_month: int, quote: Quote) -> RenewalView:
        """A term of the contract and its end: renewed automatically (the signed terms' clause)
        unless notice is given by the deadline."""
        contract, activated_at = self.deal.contract, self.deal.activated_at
        assert contract is not None and contract.terms is not None and activated_at is not None
        ends_at = self.policy.months_after(activated_at, start_month + quote.term_months)
        clause = contract.terms.auto_renewal
        # The notice period, but never more than half the term (the contract says so): a short
        # term can still be ended during it. Without the clause, a renewal quote opens as long
        # before the end as the standard notice period would be.
        starts_at = self.policy.months_after(activated_at, start_month)
        days = clause.notice_days if clause is not None else RENEWAL_QUOTE_LEAD_DAYS
        notice = min(timedelta(days=days), (ends_at - starts_at) / 2)
        if clause is None or not clause.enabled:
            return RenewalView(term=term, term_start_month=start_month, term_ends_at=ends_at,
                               auto_renews=False, renewal_quote_opens_at=ends_at - notice)  # fmt: skip
        return RenewalView(term=term, term_start_month=start_month, term_ends_at=ends_at,
                           auto_renews=True, uplift_percent=clause.uplift_percent,
                           notice_deadline=ends_at - notice)  # fmt: skip

    async def _renews(self) -> bool:
        """Whether the term just ended renews: automatically without notice, or on a renewal
        quote signed in time; and not written off."""
        renewal = self.deal.renewal
        if renewal is None:
            return False
        if not renewal.auto_renews and self.deal.renewal_agreed is None:
            return False
        if renewal.auto_renews and self.deal.non_renewal_notice is not None:
            return False
        return not await self._billing_stopped()

    async def _open_renewal_quote_if_due(self, activated_at: datetime, month: int) -> None:
        """A contract without auto-renewal: in the month its renewal quote opens, a workflow of
        its own (`<deal>-renewal-<term>`) runs the quote, approvals and contract for the next
        term on the deal's price book; ops act on it as on a new deal. Signed, it tells the
        deal (signal `renewal_signed`), which renews on it at the end of the term."""
        renewal = self.deal.renewal
        if (renewal is None or renewal.outcome != "pending" or renewal.renewal_quote_opens_at is None
                or self._boundary(activated_at, month + 1) <= renewal.renewal_quote_opens_at):  # fmt: skip
            return
        state = self.deal.model_copy(deep=True)
        # The renewal starts from the deal's lead, owner, policy and price book; its contract
        # and money stay with the deal.
        state.contract = None
        state.pending_approval = None
        state.invoices, state.events, state.disputes = [], [], []
        state.attached_leads = []
        child_id = f"{self.deal_id}-renewal-{renewal.term + 1}"
        try:
            await workflow.start_child_workflow(
                WORKFLOW_TYPE,
                DealContinuation(continued=state, next_month=0, bills_usage=False,
                                 quote_versions=self._quote_versions, renewal_quote=True),
                id=child_id,
                parent_close_policy=ParentClosePolicy.ABANDON,  # it outlives this run
            )  # fmt: skip
        except Exception as err:  # the id is taken (a workflow left by a reset, or another's)
            renewal.renewal_quote_opens_at = None  # not tried again: the term ends, the deal churns
            self._record("renewal_quote_failed", "system", f"{child_id} could not start: {err}")
            return
        renewal.outcome, renewal.renewal_workflow_id = "quoting", child_id
        self._record("renewal_quote_opened", "system",
                     f"{child_id}: quote term {renewal.term + 1} there (submit_quote, approvals, "
                     f"sign_contract) by {renewal.term_ends_at}")  # fmt: skip

    async def _close_renewal_quote(self) -> None:
        """The deal's term ends, or the deal does, without a renewal signed: the renewal
        quote's workflow is cancelled (the deal then churns, or is written off)."""
        renewal = self.deal.renewal
        if (renewal is None or renewal.outcome != "quoting" or renewal.renewal_workflow_id is None
                or self.deal.renewal_agreed is not None):  # fmt: skip
            return
        try:
            await workflow.get_external_workflow_handle(renewal.renewal_workflow_id).cancel()
        except Exception as err:  # it ended meanwhile (lost, or signed too late): nothing to stop
            workflow.logger.info(
                "renewal quote %s not cancelled: %s", renewal.renewal_workflow_id, err
            )
        self._record("renewal_quote_closed", "system",
                     f"{renewal.renewal_workflow_id}: not signed in time")  # fmt: skip

    async def quote_renewal(self) -> DealState:
        """A renewal quote's own workflow: quote, approvals and contract as for a new deal,
        then the signed quote and contract go to the deal. Marked lost, it ends lost without
        touching the deal, which then ends with its term."""
        try:
            quote = await self.agree_quote_and_contract()
        except DealEnded as ended:
            self._drop_redline("the renewal ended first")
            self.deal.pending_approval = None
            self._set_stage(ended.stage)
            self._record(f"renewal_{ended.stage.value}", "system", ended.reason)
            return self.deal
        contract = self.deal.contract
        assert contract is not None
        try:
            await workflow.get_external_workflow_handle(self.deal_id).signal(
                "renewal_signed", RenewalAgreed(quote=quote, contract=contract)
            )
        except Exception as err:  # the deal has ended meanwhile: the renewal has no deal to renew
            self._set_stage(Stage.LOST)
            self._record("renewal_lost", "system", f"{self.deal_id} could not take it: {err}")
            return self.deal
        self._set_stage(Stage.WON)
        self._record("renewal_signed", contract.signed_by or "customer",
                     f"{contract.contract_id}: quote v{quote.version} sent to {self.deal_id}")  # fmt: skip
        return self.deal

    async def renew_term(self, activated_at: datetime, bills_usage: bool) -> None:
        """The contract renews for another term: the plan in force, priced with the uplift
        (a new quote version in the ledger), allocated over its obligations again, and billed in
        a new run of the same workflow (continue-as-new: one deal, its runs chained). Invoices
        still open are collected by the new run. Returns if the renewal could not be priced, or
        a write-off began meanwhile (the deal then ends with this term)."""
        renewal = self.deal.renewal
        assert renewal is not None
        plan = self._plan()
        version = self._quote_versions + 1
        agreed = self.deal.renewal_agreed
        try:
            renewed: Quote = (
                agreed.quote
                if agreed is not None
                else await self._call(
                    QuoteActivities.renew_quote,
                    RenewalRequest(
                        deal_id=self.deal_id,
                        plan=plan,
                        version=version,
                        uplift_percent=renewal.uplift_percent,
                        customer=self.deal.lead.company,
                    ),
                    f"price renewal term {renewal.term + 1}",
                )
            )
        except ActivityError as err:  # the catalog or SSP table lost a product meanwhile
            cause = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            self._record("renewal_failed", "system", f"{cause}; the contract ends with its term")
            return

        def renew() -> None:  # only once nothing can change this run's state any more
            self._quote_versions = renewed.version
            renewal.outcome = "renewed"
            if agreed is not None:  # its own contract, signed for the new term
                self.deal.contract = agreed.contract
                self.deal.renewal_agreed = None
            self.deal.quote = renewed
            self.deal.current_plan = None
            self.deal.recognition_schedule = {}
            for pending in self.deal.pending_adjustments:  # billed next: delivered already
                pending.recognition = {0: sum(pending.recognition.values(), ZERO)}
            self.deal.renewal = self._renewal_view(
                renewal.term + 1, renewal.term_start_month + plan.term_months, renewed
            )
            self.deal.revenue_schedules = (
                obligation_schedules(renewed, self._month_ends(activated_at, renewed.term_months))
                if renewed.obligations
                else []
            )
            how = (f"contract {agreed.contract.contract_id} signed" if agreed is not None
                   else f"{renewal.uplift_percent}% uplift")  # fmt: skip
            self._record("contract_renewed", "system",
                         f"term {renewal.term + 1} from {renewal.term_ends_at.date()}: quote "
                         f"v{renewed.version}, net {renewed.net_total} {renewed.currency} ({how})")  # fmt: skip

        if agreed is not None:  # what the customer is entitled to follows the renewal sold
            await self._call(FulfilmentActivities.renew_entitlements,
                             OrderRequest(deal_id=self.deal_id, quote=renewed,
                                          requested_at=workflow.now()),
                             "renew entitlements")  # fmt: skip
            bills_usage = bills_usage or _meters_usage(renewed)
        await self._continue_as_new(0, bills_usage, before=renew)
        self._record("renewal_failed", "system", "written off before the renewal began")

    def _record_churn(self) -> None:
        """A term ended without renewal: the customer is lost to churn (recorded at the term's
        end; the deal closes once it is paid up, or is written off)."""
        renewal = self.deal.renewal
        if renewal is None or renewal.outcome not in ("pending", "quoting") or self._written_off:
            return
        quoted = renewal.outcome == "quoting"
        renewal.outcome = "churned"
        notice = self.deal.non_renewal_notice
        why = (f"notice by {notice.by} ({notice.party}): {notice.reason}" if notice is not None
               else "its renewal quote was not signed in time" if quoted
               else "the contract does not renew automatically")  # fmt: skip
        self._record("churned", notice.by if notice is not None else "system",
                     f"term {renewal.term} ended {renewal.term_ends_at.date()}, not renewed: {why}")  # fmt: skip

    def _term_start(self) -> int:
        """Months after activation the term under way began (renewals follow the first)."""
        return self.deal.renewal.term_start_month if self.deal.renewal is not None else 0

    def _boundary(self, activated_at: datetime, month: int) -> datetime:
        """The start of month `month` of the term under way (0-based), counted from activation
        so that calendar months never drift across terms."""
        return self.policy.months_after(activated_at, self._term_start() + month)

    def _seed_recognition(self, quote: Quote, first_month: int) -> None:
        """A run continued from one recorded before the recognition schedule existed: the months
        left in the period under way, billed in the earlier run, are recognized as before."""
        if self.deal.recognition_schedule or self.deal.quantity_changes:
            return
        if self.deal.revenue_schedules:
            return  # recognized by obligation, whatever was billed
        for period in quote.billing_plan:
            if period.start_month < first_month < period.start_month + period.months:
                for month in range(first_month + 1, period.start_month + period.months + 1):
                    self.deal.recognition_schedule[month] = quote.monthly_recurring_net

    def _month_ends(self, activated_at: datetime, term_months: int) -> list[datetime]:
        """Activation and the end of each month of the term, as the deal's timers count them."""
        return [self._boundary(activated_at, m) for m in range(term_months + 1)]

    def _invoiced(self, period_index: int) -> bool:
        """Whether the period of the term under way was invoiced (period indexes restart with
        each term; billing months do not)."""
        start = self._term_start()
        return any(invoice.period_index == period_index and invoice.billing_month >= start
                   for invoice in self.deal.invoices)  # fmt: skip

    def _plan(self) -> Quote:
        return self.deal.current_plan or self._signed_quote()

    def _signed_quote(self) -> Quote:
        quote = self.deal.quote
        assert quote is not None and self.deal.contract is not None
        return quote

    def _time_for_a_new_run(self, months_in_this_run: int) -> bool:
        """Keep each run's history small: a new run every so many months, or when Temporal
        suggests one (the history is getting long or large)."""
        return (
            months_in_this_run >= self.policy.continue_as_new_every_months
            or workflow.info().is_continue_as_new_suggested()
        )

    async def _continue_as_new(
        self, next_month: int, bills_usage: bool, before: Callable[[], None] | None = None
    ) -> None:
        """Carry the deal into a new run at a month boundary, once nothing is under way: no
        activity (a card charge, a reminder, a posting) and no signal handler; `before` changes
        the state carried at that moment. Invoices still open are collected by the new run from
        the reminder and card attempt they reached. Returns only if a write-off began meanwhile,
        which this run finishes."""
        await workflow.wait_condition(
            lambda: self._activities_running == 0 and workflow.all_handlers_finished()
        )
        if self._written_off:
            return
        if before is not None:
            before()
        state = self.deal.model_copy(deep=True)
        kept = state.events[-KEEP_EVENTS:]
        state.earlier_events += len(state.events) - len(kept)
        state.events = kept
        state.run += 1
        workflow.continue_as_new(
            DealContinuation(
                continued=state,
                cash_application=self._cash_application,
                next_month=next_month,
                bills_usage=bills_usage,
                quote_versions=self._quote_versions,
            )
        )

    async def _billing_stopped(self) -> bool:
        """Whether a write-off ended billing. An invoice may have reached its write-off moment
        though its timer has not fired yet (timers due together fire in an order the server
        chooses): nothing new is billed until it is either written off or, paid just in time, no
        longer due."""
        if self._write_off_due():
            await workflow.wait_condition(lambda: self._written_off or not self._write_off_due())
        return self._written_off

    async def issue_invoice(
        self,
        quote: Quote,
        billing_month: int,
        period: BillingPeriodPlan | None,
        activated_at: datetime,
        bills_usage: bool,
    ) -> None:
        """The invoice of a month boundary: the billing period starting there, in advance, and
        (`bills_usage`) the metered usage of the months before it, in arrears."""
        issued_at = workflow.now()
        due_at = self._due_at(issued_at)
        if period is not None:
            first, last = period.start_month, period.start_month + period.months
        else:
            first, last = billing_month - 1, billing_month  # the usage month just ended
        service_from = self._boundary(activated_at, first).date()
        # The last day of service is the day before the next period starts (the same day when a
        # compressed demo month is shorter than a day).
        period_end = self._boundary(activated_at, last)
        service_to = max(service_from, (period_end - timedelta(days=1)).date())
        # The ledger counts billing months from activation, across renewed terms.
        ledger_month = self._term_start() + billing_month
        usage = None
        if bills_usage and ledger_month > 0:
            usage = UsageBilling(
                activated_at=activated_at,
                month_seconds=self.policy.month_seconds,
                through_month=ledger_month,
                lines=[line for line in quote.lines if line.kind == "usage"],
                discount_percent=quote.effective_discount_percent,
            )
        adjustments = list(self.deal.pending_adjustments)
        drafted = self.policy.invoice_draft_hours > 0  # terms are set once the draft is final
        self._billing_step_running = True
        try:
            issued: IssuedInvoice | None = await self._call(
                BillingActivities.issue_invoice,
                InvoiceRequest(
                    deal_id=self.deal_id,
                    lead=self.deal.lead,
                    billing_month=ledger_month,
                    period=period,
                    usage=usage,
                    adjustments=[pending.line for pending in adjustments],
                    currency=quote.currency,
                    issued_on=issued_at.date(),
                    due_date=due_at.date(),
                    service_from=service_from,
                    service_to=service_to,
                    draft=drafted,
                    early_payment=None if drafted else self._early_payment_terms(issued_at),
                ),
                f"issue invoice for period {period.index + 1}"
                if period is not None
                else f"bill usage of month {ledger_month}",
            )
        finally:
            self._billing_step_running = False
        if issued is not None and issued.draft:
            issued, due_at = await self.finalize_after_review(issued, period, ledger_month)
        billed = self.deal.pending_adjustments[: len(adjustments)]
        del self.deal.pending_adjustments[: len(adjustments)]
        # Deals recognizing by obligation follow their schedules, whatever is billed.
        delivered = [] if self.deal.revenue_schedules else self._schedule_as_billed(
            quote, period, billed)  # fmt: skip
        if issued is None:
            return  # usage within the commitment and no period starting: nothing to bill
        # Usage billed in arrears was delivered: it is revenue as soon as it is invoiced.
        self.deal.revenue_recognized += issued.usage_amount
        invoice = _invoice_view(issued, period, ledger_month, due_at)
        self.deal.invoices.append(invoice)
        self._refresh_balance()
        self._record(
            "invoice_issued",
            "billing",
            f"{invoice.number}: {invoice.amount} {invoice.currency}, due {invoice.due_date}",
        )
        if invoice.status == "open":
            # Credit the customer holds pays the new invoice first (all of it, perhaps).
            await self._apply_held_credit()
        if invoice.status == "open":
            self._collect_in_background(invoice, due_at)
        for change, amount in delivered:
            if amount:
                self._billing_step_running = True  # a write-off waits for it
                await self.recognize(f"proration-{change}", "subscription", amount, quote.currency)
                self._billing_step_running = False

    def _schedule_as_billed(
        self, quote: Quote, period: BillingPeriodPlan | None, billed: list[PendingProration]
    ) -> list[tuple[int, Decimal]]:
        """Revenue recognized as billed (deals from before recognition by obligation): each month
        of a period at its end. A proration is revenue once billed: the months it covered that
        already ended now (the parts returned, by quantity change), the rest at their month ends.
        Never billed (a write-off first), never recognized."""
        schedule = self.deal.recognition_schedule
        if period is not None:
            for month in range(period.start_month + 1, period.start_month + period.months + 1):
                schedule[month] = schedule.get(month, ZERO) + quote.monthly_recurring_net
        delivered: list[tuple[int, Decimal]] = []
        for pending in billed:
            for month, part in pending.recognition.items():
                schedule[month] = schedule.get(month, ZERO) + part
            ended = [m for m in schedule if m <= self._recognized_through]
            delivered.append((pending.change, sum((schedule.pop(m) for m in ended), ZERO)))
        return delivered

    async def finalize_after_review(
        self, draft: IssuedInvoice, period: BillingPeriodPlan | None, billing_month: int
    ) -> tuple[IssuedInvoice, datetime]:
        """A draft is in the deal's view (not payable) for its review window, then made final:
        dated that day and due by the payment terms from then. A write-off that begins meanwhile
        makes it final at once, so it is written off with the rest."""
        view = _invoice_view(draft, period, billing_month, due_at=None)
        self.deal.invoices.append(view)
        final_at = workflow.now() + timedelta(hours=self.policy.invoice_draft_hours)
        self._record("invoice_drafted", "billing",
                     f"{draft.number}: {draft.amount} {draft.currency}, final at {final_at}")  # fmt: skip
        self._billing_step_running = True  # a write-off waits for it to be final
        try:
            await self._wait_until(final_at, lambda: self._written_off, f"{draft.number} draft")
            issued_at = workflow.now()
            due_at = self._due_at(issued_at)
            final: IssuedInvoice = await self._call(
                BillingActivities.finalize_invoice,
                InvoiceFinalization(
                    deal_id=self.deal_id,
                    invoice_number=draft.number,
                    lead=self.deal.lead,
                    issued_on=issued_at.date(),
                    due_date=due_at.date(),
                    early_payment=self._early_payment_terms(issued_at),
                ),
                f"finalize {draft.number}",
            )
        finally:
            self._billing_step_running = False
        self.deal.invoices.remove(view)  # the final one takes its place below
        return final, due_at

    def _payment_terms_days(self, quote: Quote) -> int:
        """Net days: the signed contract's terms, else the quote's, or the policy's (net 30)
        when it named none."""
        contract = self.deal.contract
        if contract is not None and contract.signed_at is not None and contract.terms is not None:
            return contract.terms.payment_terms_days
        if quote.payment_terms_days is not None:
            return quote.payment_terms_days
        return self.policy.payment_terms_days

    def _due_at(self, issued_at: datetime) -> datetime:
        """When an invoice made final at `issued_at` is due, by the deal's payment terms."""
        return issued_at + timedelta(days=self._payment_terms_days(self._signed_quote()))

    def _early_payment_terms(self, issued_at: datetime) -> EarlyPaymentTerms | None:
        until = self.policy.early_payment_until(issued_at)
        if until is None:
            return None
        until = min(until, self._due_at(issued_at).date())  # never past the due date
        return EarlyPaymentTerms(percent=self.policy.early_payment_discount_percent, until=until)

    def _collect_in_background(self, invoice: InvoiceView, due_at: datetime) -> None:
        """Dunning and, with a card on file, card charges for an open invoice."""
        self._collections.append(asyncio.create_task(self.collect(invoice, due_at)))
        if self.deal.card_on_file is not None:
            self._collections.append(asyncio.create_task(self.charge_card(invoice, due_at)))

    async def collect(self, invoice: InvoiceView, due_at: datetime) -> None:
        """Dunning for one invoice: reminders on durable timers after the due date, then write-off."""
        policy = self.policy
        levels = policy.reminder_days_after_due
        for level, days in enumerate(levels, start=1):
            if level <= invoice.reminders_sent:
                continue  # sent in an earlier run of the deal
            if await self._wait_for_dunning(
                invoice, due_at, days, f"{invoice.number} reminder {level}"
            ):
                return
            fee = None
            if level == policy.late_fee_at_level and invoice.late_fee_on is None:
                fee = await self.charge_late_fee(invoice)
                # Paid, disputed or written off while the fee was charged: as at any step.
                if await self._wait_for_dunning(
                    invoice, due_at, days, f"{invoice.number} reminder {level}"
                ):
                    return
            await self._call(
                BillingActivities.send_dunning_reminder,
                DunningNotice(
                    deal_id=self.deal_id,
                    lead=self.deal.lead,
                    invoice_number=invoice.number,
                    amount_due=invoice.balance,
                    currency=invoice.currency,
                    due_date=invoice.due_date,
                    level=level,
                    final_level=len(levels),
                    days_overdue=days,
                    suspends_service=self._suspends_at(invoice, level),
                    write_off_on=self._dunning_moment(
                        invoice, due_at, policy.write_off_days_after_due
                    ).date(),
                    late_fee=fee.amount if fee is not None else None,
                    late_fee_invoice=fee.number if fee is not None else None,
                ),
                f"dunning reminder {level} for {invoice.number}",
            )
            invoice.reminders_sent = level
            self._record(
                "dunning_reminder",
                "collections",
                f"{invoice.number}: level {level}, {days} days overdue",
            )
            if self._suspends_at(invoice, level) and invoice.status == "open":
                await self.suspend_entitlements(invoice)
        if await self._wait_for_dunning(
            invoice, due_at, policy.write_off_days_after_due, f"{invoice.number} write-off"
        ):
            return
        if invoice.late_fee_on is not None:
            # An unpaid late fee alone never ends the contract: it is waived, taking its income
            # back.
            await self._credit_invoice(invoice, invoice.balance, f"{LATE_FEE_WAIVED_PREFIX}{invoice.number}",
                                       f"late fee unpaid {policy.write_off_days_after_due} days "
                                       "after due: waived", "collections")  # fmt: skip
            return
        await self.write_off(
            f"{invoice.number} unpaid {policy.write_off_days_after_due} days after due"
        )

    async def charge_late_fee(self, overdue: InvoiceView) -> InvoiceView | None:
        """A late fee (policy percent of what the overdue invoice still owes) on an invoice of its
        own, collected like any other. None when the policy charges none.

        Decided in turn with the deal's payment postings (a payment decided first counts), on the
        balance then; the deal does not close and a write-off does not start while it is under
        way, nor before the fee is in the deal's view with its dunning started."""
        self._postings_running += 1
        self._late_fees_running += 1
        try:
            async with self._posting_order:
                if (
                    overdue.status != "open"
                    or overdue.number in self._charging  # the card may settle it any moment
                    or self._written_off
                ):
                    return None
                balance = overdue.balance
                amount = late_fee(balance, self.policy.late_fee_percent)
                if amount <= 0:
                    return None
                issued_at = workflow.now()
                due_at = self._due_at(issued_at)
                issued: IssuedInvoice = await self._call(
                    BillingActivities.issue_late_fee,
                    LateFeeRequest(
                        deal_id=self.deal_id,
                        lead=self.deal.lead,
                        overdue_invoice=overdue.number,
                        billing_month=overdue.billing_month,
                        overdue=balance,
                        percent=self.policy.late_fee_percent,
                        amount=amount,
                        currency=overdue.currency,
                        issued_on=issued_at.date(),
                        due_date=due_at.date(),
                    ),
                    f"late fee on {overdue.number}",
                )
                fee = _invoice_view(issued, None, overdue.billing_month, due_at)
                fee.late_fee_on = overdue.number
                self.deal.invoices.append(fee)
                self._refresh_balance()
                self._record("late_fee_charged", "collections",
                             f"{fee.number}: {fee.amount} {fee.currency} on {overdue.number}")  # fmt: skip
                self._collect_in_background(fee, due_at)
                return fee
        finally:
            self._postings_running -= 1
            self._late_fees_running -= 1

    def _suspends_at(self, invoice: InvoiceView, level: int) -> bool:
        """Whether this reminder suspends service: at the policy's level, not for a late fee."""
        return (
            level == self.policy.suspend_at_level
            and invoice.late_fee_on is None
            and not self.deal.entitlements_suspended
        )

    async def suspend_entitlements(self, invoice: InvoiceView) -> None:
        """Service stops while an invoice is this far overdue; it resumes once none is."""
        if self.deal.entitlements_suspended or self._written_off:
            return
        self.deal.entitlements_suspended = True
        self._record("entitlements_suspended", "collections",
                     f"{invoice.number} reached reminder level {invoice.reminders_sent}")  # fmt: skip
        await self._set_entitlements(active=False, reason=f"{invoice.number} overdue")
        self._collections.append(asyncio.create_task(self._restore_entitlements_when_paid()))

    async def _restore_entitlements_when_paid(self) -> None:
        await workflow.wait_condition(lambda: self._written_off or not self._overdue_to_suspend())
        if self._written_off:
            return  # the deal ends; its service stays suspended
        self.deal.entitlements_suspended = False
        self._record("entitlements_restored", "collections", "no invoice is that overdue now")
        await self._set_entitlements(active=True, reason="overdue invoices settled")

    def _overdue_to_suspend(self) -> bool:
        level = self.policy.suspend_at_level
        # A contested invoice keeps service suspended until the dispute is decided.
        return any(
            i.status in ("open", "disputed") and i.reminders_sent >= level and i.late_fee_on is None
            for i in self.deal.invoices
        )

    async def _set_entitlements(self, active: bool, reason: str) -> None:
        assert self.deal.order_id is not None
        # In decision order with the deal's postings: a restore never overtakes its suspension.
        await self._post(
            FulfilmentActivities.set_entitlements_active,
            EntitlementChange(
                deal_id=self.deal_id, order_id=self.deal.order_id, active=active, reason=reason
            ),
            "restore entitlements" if active else "suspend entitlements",
        )

    def _dunning_moment(self, invoice: InvoiceView, due_at: datetime, days: int) -> datetime:
        """`days` after the due date, not counting the time the invoice spent disputed."""
        return due_at + timedelta(days=days, seconds=invoice.dunning_paused_seconds)

    async def _wait_for_dunning(
        self, invoice: InvoiceView, due_at: datetime, days: int, summary: str
    ) -> bool:
        """Wait for a dunning step; True if collecting the invoice is over. A dispute pauses the
        wait, which then resumes for as long as it had left."""
        over = self._settled(invoice)
        while True:
            moment = self._dunning_moment(invoice, due_at, days)
            await self._wait_until(moment, over, summary)
            if invoice.status != "disputed":
                return over()
            await workflow.wait_condition(lambda: invoice.status != "disputed" or self._written_off)
            if self._written_off:
                return True

    async def charge_card(self, invoice: InvoiceView, due_at: datetime) -> None:
        """Card on file: charged on the due date, again after a soft decline. A hard decline, a
        refusal by the gateway or an unanswered charge leaves the invoice to the reminders, bank
        transfers and (for a charge whose answer was lost) the gateway's webhook."""
        card = self.deal.card_on_file
        assert card is not None
        settled = self._settled(invoice)
        schedule = self.policy.card_retry_days_after_due
        for attempt, days in enumerate(schedule, start=1):
            if attempt <= invoice.card_attempts:
                continue  # made in an earlier run of the deal
            moment = due_at + timedelta(days=days)
            if await self._wait_until(moment, settled, f"{invoice.number} card attempt {attempt}"):
                return
            request = ChargeRequest(deal_id=self.deal_id, invoice_number=invoice.number,
                                    attempt_series=attempt, amount=invoice.balance,
                                    currency=invoice.currency, customer=card.customer,
                                    payment_method=card.payment_method)  # fmt: skip
            # While the charge is under way, other payments of this invoice are refused and a
            # write-off waits: the card's answer is applied before anything else touches it.
            invoice.card_attempts = attempt
            self._charging.add(invoice.number)
            try:
                result: ChargeResult = await self._call(
                    PaymentActivities.charge_card,
                    request,
                    f"charge card for {invoice.number}, attempt {attempt}",
                    give_up_after=CHARGE_GIVE_UP,
                )
                if result.status == "succeeded" and result.payment_intent_id is not None:
                    if result.payment_intent_id not in self.deal.payment_references:
                        await self._apply_payment(
                            result.amount, result.payment_intent_id, "gateway", invoice
                        )
                    return
            except ActivityError as failed:
                # Refused by the gateway, or no answer within CHARGE_GIVE_UP: a new attempt could
                # charge twice (the gateway keeps idempotency keys for a day), so none is made.
                # A charge that did go through arrives as the gateway's webhook.
                reason = str(failed.cause or failed)[:300]
                self._record("card_not_charged", "gateway", f"{invoice.number}: {reason}")
                invoice.card_attempts = len(schedule)  # a later run makes none either
                await self._apply_held_credit()  # credit that arrived during the charge
                return
            finally:
                self._charging.discard(invoice.number)
            hard = " (hard decline: no more attempts)" if result.hard_decline else ""
            self._record(
                "card_declined", "gateway", f"{invoice.number}: {result.decline_code}{hard}"
            )
            await self._apply_held_credit()  # credit that arrived during the charge
            if result.hard_decline:
                invoice.card_attempts = len(schedule)
                return

    async def write_off(self, reason: str) -> None:
        if self._written_off:
            return  # another invoice's write-off, due at the same moment, is already under way
        # At once: billing stops, payments are refused, every other invoice's dunning ends.
        self._written_off = True
        # An invoice, card charge or payment posting under way finishes first, so the write-off
        # sees it. So does the recognition of a month that ended at this very moment: that month
        # was delivered, whichever of two timers due together the server fires first.
        await workflow.wait_condition(
            lambda: (
                not self._billing_step_running
                and not self._charging
                and self._postings_running == 0
                and (self._month_end_due is None or self._month_end_due > workflow.now())
            )
        )
        result = await self._call(
            BillingActivities.write_off_deal,
            WriteOffRequest(
                deal_id=self.deal_id,
                currency=self.deal.lead.currency,
                written_off_at=workflow.now(),
                reason=reason,
            ),
            "write off unpaid invoices",
        )
        for invoice in self.deal.invoices:
            if invoice.number in result.invoice_numbers:
                invoice.status = "uncollectible"
        for dispute in self.deal.disputes:
            if dispute.status == "open":
                dispute.status = "written_off"
                dispute.closed_at = workflow.now()
        self._refresh_balance()
        self._record(
            "written_off",
            "collections",
            f"{reason}; {', '.join(result.invoice_numbers)}: bad debt {result.bad_debt}, "
            f"unearned billing reversed {result.reversed_deferred}",
        )

    async def recognize(
        self, key: str, stream: RevenueStream, amount: Decimal, currency: str, memo: str = ""
    ) -> None:
        await self._call(
            RevenueActivities.recognize_revenue,
            RevenueRecognition(
                deal_id=self.deal_id,
                key=key,
                stream=stream,
                amount=amount,
                currency=currency,
                recognized_at=workflow.now(),
                memo=memo or f"Revenue recognized: {key}",
            ),
            f"recognize revenue {key}",
        )
        self.deal.revenue_recognized += amount

    async def recognize_obligations(self, month_end: int) -> None:
        """Each performance obligation's revenue due at this month end (0: provisioning
        completed): Dr deferred revenue, Cr its revenue account, one entry per obligation."""
        currency = self._signed_quote().currency
        self._billing_step_running = True  # a write-off waits for it
        for schedule in self.deal.revenue_schedules:
            amount = schedule.months.get(month_end, ZERO)
            if amount == 0:
                schedule.months.pop(month_end, None)
                continue
            # Keys count months from activation, across renewed terms.
            month = self._term_start() + month_end
            key = f"provisioning:{schedule.sku}" if month == 0 else f"month-{month}:{schedule.sku}"
            when = "at provisioning" if month == 0 else f"month {month}"
            await self.recognize(key, schedule.stream, amount, currency,
                                 f"Revenue recognized: {schedule.sku} ({schedule.stream}), {when}")  # fmt: skip
            del schedule.months[month_end]
            schedule.recognized += amount
        self._billing_step_running = False

    async def close(self, stage: Stage, reason: str) -> None:
        self._closing = True  # from here on, no lead joins the deal
        # Let payment handlers finish their ledger postings before the deal closes.
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._lead_sla is not None:
            if self._lead_sla_sleeping:
                self._lead_sla.cancel()  # its timer: nobody is left to reassign the lead to
            with contextlib.suppress(asyncio.CancelledError):
                await self._lead_sla  # a reassignment under way finishes first
        self.deal.pending_approval = None
        self._set_stage(stage)
        self._record(f"deal_{stage.value}", "system", reason)
        await self._call(
            LeadActivities.close_deal,
            DealClosing(
                deal_id=self.deal_id,
                lead_id=self.deal.lead.lead_id,
                stage=stage.value,
                score=self.deal.score,
                reason=reason,
                closed_at=workflow.now(),
            ),
            "close deal in the ledger",
        )
        # An answer to a lead refused meanwhile (attach_lead) is delivered before the deal ends.
        await workflow.wait_condition(workflow.all_handlers_finished)

    # ------------------------------------------------------------------ signals

    # The quote stage's human actions are signals (fire and forget; a refusal is recorded in
    # `events`) and, under the same names, updates (Web UI "Send an Update", `temporal workflow
    # update execute`): their validators run the same checks and reject at once with the reason,
    # recording nothing; an accepted update does what the signal does and says what it did.

    @workflow.signal(
        description="Submit a quote for pricing. Stage qualified, or awaiting approval or "
        "signature to supersede the quote there. "
        '{"submitted_by": "sam.rep", "lines": [{"sku": "PLATFORM", "quantity": 25}], '
        '"discount_percent": "15", "term_months": 12, "billing_period": "monthly"}'
    )
    def submit_quote(self, payload: RawValue = NO_PAYLOAD) -> None:
        quote = self._check_quote_submission(payload)
        if quote is not None:
            self._take_quote_submission(quote)

    @workflow.update(
        name="submit_quote",
        description="As the submit_quote signal, validated; answers once the quote is priced "
        "(its net and what it waits for) or fails with the pricing refusal.",
    )
    async def submit_quote_update(self, payload: RawValue = NO_PAYLOAD) -> str:
        self._take_quote_submission(_checked(self._check_quote_submission(payload)))
        version = self._quote_versions + 1  # the one pending submission is priced next
        await workflow.wait_condition(lambda: version in self._priced)
        refusal = self._priced[version]
        if refusal is not None:
            raise ApplicationError(f"quote v{version} refused: {refusal}", non_retryable=True)
        quote = self.deal.quote
        assert quote is not None
        pending = self.deal.pending_approval
        waits = (f"awaiting approval: {', '.join(r.role for r in pending.requirements)}"
                 if pending is not None and pending.quote_version == version
                 else "sent for signature")  # fmt: skip
        return (f"quote v{version} priced: net {quote.net_total} {quote.currency} over "
                f"{quote.term_months} months; {waits}")  # fmt: skip

    @submit_quote_update.validator
    def _validate_quote_submission(self, payload: RawValue = NO_PAYLOAD) -> None:
        self._validate(self._check_quote_submission, payload)

    def _check_quote_submission(self, payload: RawValue) -> SubmitQuote | None:
        # A new quote supersedes one awaiting approval or signature (deals that started before
        # this was possible keep refusing it there).
        stages: tuple[Stage, ...] = (Stage.QUALIFIED,)
        if self._approval_matrix:
            stages = (Stage.QUALIFIED, Stage.AWAITING_APPROVAL, Stage.AWAITING_SIGNATURE)
        quote = self._accept("submit_quote", payload, SubmitQuote, stages)
        if quote is None:
            return None
        if quote.payment_terms_days is not None and not self._approval_matrix:
            # As this deal's code refused it when it started: a field it did not know.
            self._refuse("submit_quote", quote.submitted_by, "malformed payload: "
                         "payment_terms_days is not accepted by deals started before quotes had it")  # fmt: skip
            return None
        if self._quote_submission is not None:
            self._refuse(
                "submit_quote", quote.submitted_by, "another quote is already being priced"
            )
            return None
        if self._signature is not None:
            self._refuse("submit_quote", quote.submitted_by, "the contract is already signed")
            return None
        return quote

    def _take_quote_submission(self, quote: SubmitQuote) -> None:
        self._quote_submission = quote
        routing = self.deal.routing
        if routing is not None and routing.accepted_by is None:
            # A quote is the surest sign somebody has taken the lead on.
            self._take_acceptance(quote.submitted_by, "submitted a quote")
        superseding = ""
        if self.deal.stage != Stage.QUALIFIED and self.deal.quote is not None:
            superseding = f"; supersedes quote v{self.deal.quote.version}"
        self._record(
            "quote_submitted",
            quote.submitted_by,
            f"{len(quote.lines)} line(s), {quote.discount_percent}% discount{superseding}",
        )

    @workflow.signal(
        description="Approve the pending discount. Stage awaiting_approval; only an "
        'eligible approver who did not submit the quote. {"approver": "mia.manager", "comment": "ok"}'
        '; optional "role" (which required approval to give) and "quote_version"'
    )
    def approve_discount(self, payload: RawValue = NO_PAYLOAD) -> None:
        checked = self._check_approval(payload)
        if checked is not None:
            self._give_approval(*checked)

    @workflow.update(
        name="approve_discount", description="As the approve_discount signal, validated."
    )
    async def approve_discount_update(self, payload: RawValue = NO_PAYLOAD) -> str:
        return self._give_approval(*_checked(self._check_approval(payload)))

    @approve_discount_update.validator
    def _validate_approval(self, payload: RawValue = NO_PAYLOAD) -> None:
        self._validate(self._check_approval, payload)

    def _check_approval(self, payload: RawValue) -> tuple[ApproveDiscount, RequiredApproval] | None:
        approval = self._accept(
            "approve_discount", payload, ApproveDiscount, (Stage.AWAITING_APPROVAL,)
        )
        if approval is None:
            return None
        requirement = self._may_decide("approve_discount", approval.approver,
                                       approval.quote_version, approval.role)  # fmt: skip
        return None if requirement is None else (approval, requirement)

    def _give_approval(self, approval: ApproveDiscount, requirement: RequiredApproval) -> str:
        pending = self.deal.pending_approval
        assert pending is not None
        requirement.approved_by, requirement.approved_at = approval.approver, workflow.now()
        detail = approval.comment or "approved"
        if len(pending.requirements) > 1:
            detail = f"as {requirement.role} ({requirement.rule}): {detail}"
        self._record("discount_approved", approval.approver, detail)
        if all(r.approved_by is not None for r in pending.requirements):
            self._approval = approval
            return f"approved as {requirement.role}: every approval is given"
        self._sync_pending_approval()
        return f"approved as {requirement.role}; still needed: {pending.required_role}"

    @workflow.signal(
        description="Reject the pending discount; the deal returns to qualified. "
        '{"approver": "mia.manager", "reason": "too deep"}'
    )
    def reject_discount(self, payload: RawValue = NO_PAYLOAD) -> None:
        rejection = self._check_rejection(payload)
        if rejection is not None:
            self._take_rejection(rejection)

    @workflow.update(
        name="reject_discount", description="As the reject_discount signal, validated."
    )
    async def reject_discount_update(self, payload: RawValue = NO_PAYLOAD) -> str:
        return self._take_rejection(_checked(self._check_rejection(payload)))

    @reject_discount_update.validator
    def _validate_rejection(self, payload: RawValue = NO_PAYLOAD) -> None:
        self._validate(self._check_rejection, payload)

    def _check_rejection(self, payload: RawValue) -> RejectDiscount | None:
        rejection = self._accept(
            "reject_discount", payload, RejectDiscount, (Stage.AWAITING_APPROVAL,)
        )
        if (
            rejection is None
            or self._may_decide(
                "reject_discount", rejection.approver, rejection.quote_version, None
            )
            is None
        ):
            return None
        return rejection

    def _take_rejection(self, rejection: RejectDiscount) -> str:
        self._approval = rejection
        self._record("discount_rejected", rejection.approver, rejection.reason)
        return "rejected: the deal returns to qualified"

    def _validate(self, check: Callable[[RawValue], Any], payload: RawValue) -> None:
        """Run a handler's checks for an update's validator: nothing is recorded; a refusal
        rejects the update with its reason."""
        self._validating = []
        try:
            check(payload)
            refusals = self._validating
        finally:
            self._validating = None
        if refusals:
            raise ApplicationError(refusals[0], type="Refused", non_retryable=True)

    @workflow.signal(
        description="Record the customer's signature; document_sha256 must be the sent "
        'contract\'s (see the state query). {"signer_name": "Ada Lovelace", '
        '"signer_email": "ada@acme.example", "document_sha256": "<64 hex>"}; optional '
        '"card_on_file": {"customer": "cus_...", "payment_method": "pm_..."} to charge invoices '
        "on their due dates"
    )
    def sign_contract(self, payload: RawValue = NO_PAYLOAD) -> None:
        signature = self._accept(
            "sign_contract", payload, SignContract, (Stage.AWAITING_SIGNATURE,)
        )
        if signature is None:
            return
        contract = self.deal.contract
        if self._signature is not None or self._decline is not None or contract is None:
            self._refuse(
                "sign_contract",
                signature.signer_name,
                "the contract was already signed or declined",
            )
        elif self._quote_submission is not None:
            self._refuse("sign_contract", signature.signer_name,
                         f"a new quote supersedes the one contract {contract.contract_id} was "
                         "sent for; sign the contract sent for it")  # fmt: skip
        elif self._redline is not None or self._negotiating:
            self._refuse("sign_contract", signature.signer_name,
                         f"a redline of {contract.contract_id} is under review; sign the "
                         "revision sent once it is decided")  # fmt: skip
        elif signature.document_sha256 != contract.document_sha256:
            self._refuse(
                "sign_contract",
                signature.signer_name,
                f"document_sha256 does not match contract {contract.contract_id} "
                f"({contract.document_sha256})",
            )
        else:
            self._signature = signature
            self.deal.card_on_file = signature.card_on_file
            contract.signed_by = signature.signer_name
            contract.signer_email = signature.signer_email
            contract.signed_at = workflow.now()
            self._record(
                "contract_signed",
                signature.signer_name,
                f"{contract.contract_id} sha256 {contract.document_sha256}",
            )

    @workflow.signal(
        description='Customer declines the contract; back to qualified. {"reason": "budget"}'
    )
    def decline_contract(self, payload: RawValue = NO_PAYLOAD) -> None:
        decline = self._accept(
            "decline_contract", payload, DeclineContract, (Stage.AWAITING_SIGNATURE,)
        )
        if decline is None:
            return
        if self._signature is not None or self._decline is not None:
            self._refuse(
                "decline_contract", decline.by, "the contract was already signed or declined"
            )
            return
        self._decline = decline
        self._record("contract_declined", decline.by, decline.reason)

    @workflow.signal(
        description="The customer's redline of the contract awaiting signature: new values for "
        "clauses, or clauses struck out (config/clauses.toml). Accepted at once, or after legal "
        "review when it makes a clause risky; each accepted one sends a new revision to sign. "
        '{"proposed_by": "ada.lovelace", "changes": {"payment_terms": 45, "governing_law": '
        '"New York"}, "remove": ["sla_credits"], "note": "procurement", "contract_version": 0}'
    )
    def propose_terms(self, payload: RawValue = NO_PAYLOAD) -> None:
        proposal = self._check_redline(payload)
        if proposal is not None:
            self._take_redline(proposal)

    @workflow.update(
        name="propose_terms",
        description="As the propose_terms signal, validated; answers once the redline is "
        "reviewed (the new revision, or who in legal must decide) or fails with the refusal.",
    )
    async def propose_terms_update(self, payload: RawValue = NO_PAYLOAD) -> str:
        self._take_redline(_checked(self._check_redline(payload)))
        number = self._redlines + 1  # the one pending redline is reviewed next
        await workflow.wait_condition(lambda: number in self._redline_outcomes)
        outcome = self._redline_outcomes[number]
        if not outcome.startswith(("accepted", "needs review")):
            raise ApplicationError(f"redline {outcome}", non_retryable=True)
        return f"redline {outcome}"

    @propose_terms_update.validator
    def _validate_redline(self, payload: RawValue = NO_PAYLOAD) -> None:
        self._validate(self._check_redline, payload)

    def _check_redline(self, payload: RawValue) -> ProposeTerms | None:
        proposal = self._accept("propose_terms", payload, ProposeTerms, (Stage.AWAITING_SIGNATURE,))
        if proposal is None:
            return None
        contract = self.deal.contract
        reason = None
        if not self._contract_terms or contract is None or contract.terms is None:
            reason = "this deal's contract has no clauses to redline (it started before them)"
        elif self._signature is not None or self._decline is not None:
            reason = "the contract was already signed or declined"
        elif self._quote_submission is not None:
            reason = "a new quote supersedes this contract; redline the one sent for it"
        elif self._redline is not None or self._negotiating:
            reason = (f"a redline of {contract.contract_id} is already under review; propose "
                      "more once it is decided")  # fmt: skip
        if reason is not None:
            self._refuse("propose_terms", proposal.proposed_by, reason)
            return None
        return proposal

    def _take_redline(self, proposal: ProposeTerms) -> None:
        self._redline = proposal
        changes = [*proposal.changes, *(f"strike {c}" for c in proposal.remove)]
        self._record("terms_proposed", proposal.proposed_by, ", ".join(changes) or "no change")

    @workflow.signal(
        description="Legal accepts the redline under review: the revision with it is sent for "
        'signature. Only a legal reviewer who did not propose it. {"approver": "lena.legal", '
        '"comment": "ok for this customer"}'
    )
    def approve_terms(self, payload: RawValue = NO_PAYLOAD) -> None:
        decision = self._check_legal_decision("approve_terms", payload, ApproveTerms)
        if decision is not None:
            self._take_legal_decision(decision)

    @workflow.update(name="approve_terms", description="As the approve_terms signal, validated.")
    async def approve_terms_update(self, payload: RawValue = NO_PAYLOAD) -> str:
        return self._take_legal_decision(
            _checked(self._check_legal_decision("approve_terms", payload, ApproveTerms))
        )

    @approve_terms_update.validator
    def _validate_terms_approval(self, payload: RawValue = NO_PAYLOAD) -> None:
        self._validate(lambda p: self._check_legal_decision("approve_terms", p, ApproveTerms),
                       payload)  # fmt: skip

    @workflow.signal(
        description="Legal rejects the redline under review; the contract stays as sent. "
        '{"approver": "lena.legal", "reason": "uncapped liability is never accepted"}'
    )
    def reject_terms(self, payload: RawValue = NO_PAYLOAD) -> None:
        decision = self._check_legal_decision("reject_terms", payload, RejectTerms)
        if decision is not None:
            self._take_legal_decision(decision)

    @workflow.update(name="reject_terms", description="As the reject_terms signal, validated.")
    async def reject_terms_update(self, payload: RawValue = NO_PAYLOAD) -> str:
        return self._take_legal_decision(
            _checked(self._check_legal_decision("reject_terms", payload, RejectTerms))
        )

    @reject_terms_update.validator
    def _validate_terms_rejection(self, payload: RawValue = NO_PAYLOAD) -> None:
        self._validate(lambda p: self._check_legal_decision("reject_terms", p, RejectTerms),
                       payload)  # fmt: skip

    def _check_legal_decision(self, signal: str, payload: RawValue, model: type[L]) -> L | None:
        decision = self._accept(signal, payload, model, (Stage.AWAITING_SIGNATURE,))
        if decision is None:
            return None
        contract = self.deal.contract
        pending = contract.redline_under_review if contract is not None else None
        who = decision.approver
        reason = None
        if pending is None or self._legal_decision is not None:
            reason = "no redline is waiting for review"
        elif who == pending.proposed_by:
            reason = "nobody may decide on their own redline"
        elif who in (pending.legal_approved_by, pending.finance_approved_by):
            reason = f"{who} already approved it (one person gives one of its approvals)"
        elif who not in pending.waiting_for():
            reason = (f"{who} may not decide on this redline "
                      f"({', '.join(pending.waiting_for())})")  # fmt: skip
        if reason is not None:
            self._refuse(signal, who, reason)
            return None
        return decision

    def _take_legal_decision(self, decision: ApproveTerms | RejectTerms) -> str:
        pending = self.deal.contract.redline_under_review if self.deal.contract else None
        assert pending is not None
        if isinstance(decision, RejectTerms):
            self._legal_decision = decision
            self._record("redline_rejected", decision.approver, decision.reason)
            return "rejected: the contract stays as sent"
        who = decision.approver
        legal = (
            pending.risks and pending.legal_approved_by is None and who in pending.legal_reviewers
        )
        finance = pending.finance_approved_by is None and who in pending.finance_approvers
        if legal and finance:  # either: take the one nobody else could give
            legal = any(p != who for p in pending.finance_approvers)
        if legal:
            pending.legal_approved_by = who
            part = "legal"
        else:
            pending.finance_approved_by = decision.approver
            part = pending.finance_role or "finance"
        self._record("redline_approved", decision.approver,
                     f"as {part}: {decision.comment or 'approved'}")  # fmt: skip
        if not pending.approved():
            return f"approved as {part}; still needed: {', '.join(pending.waiting_for())}"
        self._legal_decision = decision
        return f"approved as {part}: the revision with the redline is sent for signature"

    @workflow.signal(
        description="Record a payment received by hand; the same reference counts once. "
        '{"invoice_number": "INV-000001", "amount": "1250.00", "reference": "BANK-123"}. '
        "What the named invoice does not need pays the other open invoices, oldest first, then "
        "is held as customer credit; without invoice_number the oldest open invoice comes first"
    )
    async def record_payment(self, payload: RawValue = NO_PAYLOAD) -> None:
        payment = self._accept("record_payment", payload, RecordPayment, (Stage.ACTIVE,))
        if payment is None:
            return
        named = None
        reason = None
        if payment.invoice_number is not None:
            named = self._invoice(payment.invoice_number)
        if self._written_off:
            reason = COLLECTION_ENDED
        elif (
            payment.reference in self.deal.payment_references
            or payment.reference in self._payments_in_flight
        ):
            reason = f"reference {payment.reference} was already applied; counted once"
        elif (wrong_currency := self._wrong_currency(payment.currency)) is not None:
            reason = wrong_currency
        elif payment.invoice_number is not None and named is None:
            reason = self._unknown_invoice(payment.invoice_number)
        elif named is not None and named.status not in ("open", "paid", "disputed"):
            reason = f"{named.number} is {named.status}"
        elif named is not None and named.number in self._charging:
            reason = _being_charged(named)
        elif not self._cash_application:
            reason = _before_cash_application(payment, named)
        if reason is not None:
            self._refuse("record_payment", payment.recorded_by, reason)
            return
        discount_reference = f"{EARLY_PAYMENT_PREFIX}{named.number}" if named else ""
        if (
            named is not None
            and discount_reference not in self.deal.credit_note_references
            and (
                discount := named.early_payment_discount_for(payment.amount, workflow.now().date())
            )
        ):
            # Paid early: the discount offered on the invoice is a credit note, then the payment
            # settles the rest. The reference is taken meanwhile: a resent one counts once.
            self._payments_in_flight.add(payment.reference)
            try:
                await self._credit_invoice(named, discount, discount_reference,
                                           "early-payment discount", payment.recorded_by)  # fmt: skip
            finally:
                self._payments_in_flight.discard(payment.reference)
            if self._written_off:  # not reached: a write-off waits for postings under way
                self._refuse("record_payment", payment.recorded_by, COLLECTION_ENDED)
                return
        await self._apply_payment(payment.amount, payment.reference, payment.recorded_by, named)

    async def _apply_payment(
        self, amount: Decimal, reference: str, by: str, named: InvoiceView | None
    ) -> None:
        """Cash to the named invoice, then the other open invoices oldest first (not those whose
        card is being charged), the rest to customer credit: money received is never turned away
        because its invoice was paid meanwhile (a transfer and a card charge, say). The deal's view changes at once so
        dunning stops; the ledger posting follows durably."""
        candidates = [
            (i.number, i.balance)
            for i in self.deal.invoices
            if i.status == "open" and (i is named or i.number not in self._charging)
        ]
        allocations, to_credit = allocate(amount, candidates, named.number if named else None)
        for allocation in allocations:
            self._settle(self._invoice_of(allocation.invoice_number), paid=allocation.amount)
        self.deal.customer_credit += to_credit
        self.deal.payment_references.append(reference)
        self._refresh_balance()
        applied = [f"{a.amount} on {a.invoice_number}" for a in allocations]
        if to_credit > 0:
            applied.append(f"{to_credit} held as customer credit")
        self._record(
            "payment_recorded",
            by,
            f"{amount} {self.deal.lead.currency} ref {reference}: {', '.join(applied)}",
        )
        await self._post(
            BillingActivities.apply_payment,
            PaymentRecord(
                deal_id=self.deal_id,
                invoice_number=named.number if named else None,
                amount=amount,
                allocations=allocations,
                to_credit=to_credit,
                currency=self.deal.lead.currency,
                reference=reference,
                recorded_by=by,
                received_at=workflow.now(),
            ),
            f"apply payment {reference}",
        )

    async def _apply_held_credit(self) -> None:
        """Customer credit pays open invoices, oldest first, as soon as there is both."""
        for invoice in self.deal.invoices:
            credit = self.deal.customer_credit
            if credit <= 0:
                return
            if invoice.status != "open" or invoice.number in self._charging:
                continue
            amount = min(credit, invoice.balance)
            self.deal.customer_credit -= amount
            self._settle(invoice, paid=amount)
            self.deal.credit_applications += 1
            key = f"{self.deal.credit_applications}"
            self._refresh_balance()
            self._record(
                "credit_applied", "billing", f"{amount} {invoice.currency} on {invoice.number}"
            )
            await self._post(
                BillingActivities.apply_credit,
                CreditApplication(
                    deal_id=self.deal_id,
                    key=key,
                    invoice_number=invoice.number,
                    amount=amount,
                    currency=invoice.currency,
                    applied_at=workflow.now(),
                ),
                f"apply customer credit to {invoice.number}",
            )

    @workflow.signal(
        description="Credit an issued invoice (never edited): its open balance first, the rest of "
        "what was paid becomes customer credit; all of an unpaid invoice voids it. "
        '{"invoice_number": "INV-000001", "amount": "100.00", "reason": "outage credit", '
        '"reference": "CN-REQ-7", "issued_by": "fay.finance"}'
    )
    async def issue_credit_note(self, payload: RawValue = NO_PAYLOAD) -> None:
        note = self._accept("issue_credit_note", payload, IssueCreditNote, (Stage.ACTIVE,))
        if note is None:
            return
        invoice = self._invoice(note.invoice_number)
        reason = None
        if self._written_off:
            reason = COLLECTION_ENDED
        elif note.reference in self.deal.credit_note_references:
            reason = f"reference {note.reference} was already used; counted once"
        elif note.reference.startswith((EARLY_PAYMENT_PREFIX, LATE_FEE_WAIVED_PREFIX)):
            reason = f"references starting {note.reference.split(':')[0]}: are the deal's own"
        elif (wrong_currency := self._wrong_currency(note.currency)) is not None:
            reason = wrong_currency
        elif invoice is None:
            reason = self._unknown_invoice(note.invoice_number)
        elif invoice.status not in ("open", "paid"):
            reason = f"{invoice.number} is {invoice.status}"
        elif invoice.number in self._charging:
            reason = _being_charged(invoice)
        elif note.amount > invoice.amount - invoice.amount_credited:
            reason = (
                f"{note.amount} exceeds what {invoice.number} can still be credited "
                f"({invoice.amount - invoice.amount_credited})"
            )
        if reason is not None or invoice is None:
            self._refuse("issue_credit_note", note.issued_by, reason or "refused")
            return
        await self._credit_invoice(
            invoice, note.amount, note.reference, note.reason, note.issued_by
        )

    async def _credit_invoice(
        self, invoice: InvoiceView, amount: Decimal, reference: str, reason: str, by: str
    ) -> None:
        """A credit note: the open balance first, the rest of what was paid to customer credit."""
        to_credit = max(ZERO, amount - invoice.balance)
        self._settle(invoice, credited=amount, paid=-to_credit)
        self.deal.customer_credit += to_credit
        self.deal.credit_note_references.append(reference)
        self._refresh_balance()
        moved = f", {to_credit} of it to customer credit" if to_credit > 0 else ""
        self._record(
            "credit_note",
            by,
            f"{amount} {invoice.currency} on {invoice.number}{moved} ({invoice.status}): {reason}",
        )
        issued: CreditNoteIssued = await self._post(
            BillingActivities.issue_credit_note,
            CreditNoteRequest(
                deal_id=self.deal_id,
                invoice_number=invoice.number,
                amount=amount,
                to_credit=to_credit,
                currency=invoice.currency,
                reference=reference,
                reason=reason,
                issued_by=by,
                issued_at=workflow.now(),
            ),
            f"issue credit note {reference}",
        )
        self._record("credit_note_issued", "billing", f"{issued.number} on {invoice.number}")
        await self._apply_held_credit()

    @workflow.signal(
        description="Change a recurring line's quantity now (seats). The rest of the billing "
        "period under way is prorated: more goes on the next invoice, less becomes customer "
        'credit; later periods bill the new quantity. {"sku": "PLATFORM", "quantity": 15}'
    )
    async def change_quantity(self, payload: RawValue = NO_PAYLOAD) -> None:
        change = self._accept("change_quantity", payload, ChangeQuantity, (Stage.ACTIVE,))
        if change is None:
            return
        plan = self._plan()
        line = next((ln for ln in plan.lines if ln.sku == change.sku), None)
        period = next(
            (p for p in plan.billing_plan
             if p.start_month <= self._month < p.start_month + p.months), None)  # fmt: skip
        reason = None
        if self._written_off:
            reason = COLLECTION_ENDED
        elif self._changing_quantity:
            reason = "another quantity change is being priced; send again after it"
        elif line is None or line.kind != "recurring":
            recurring = ", ".join(ln.sku for ln in plan.lines if ln.kind == "recurring") or "none"
            reason = f"{change.sku} is not a recurring line of this deal (recurring: {recurring})"
        elif line.bundle is not None:
            reason = (f"{change.sku} is part of {line.bundle}: its quantity changes only with "
                      "the bundle, by a new quote")  # fmt: skip
        elif line.quantity == change.quantity:
            reason = f"{change.sku} is already at {change.quantity}"
        elif period is None or self._recognized_through >= plan.term_months:
            reason = "the term is over"
        elif self._billing_step_running or not self._invoiced(period.index):
            reason = "the period starting now is being invoiced; send again after it"
        if reason is not None or period is None or line is None:
            self._refuse("change_quantity", change.by, reason or "refused")
            return
        activated_at = self.deal.activated_at
        assert activated_at is not None and self.deal.order_id is not None
        start = self._boundary(activated_at, period.start_month)
        end = self._boundary(activated_at, period.start_month + period.months)
        left = max(0, int((end - workflow.now()).total_seconds()))
        remaining = min(Decimal(1), Decimal(left) / Decimal(int((end - start).total_seconds())))
        # The month ends left in the period deliver the proration.
        months = list(range(self._recognized_through + 1, period.start_month + period.months + 1))
        self._changing_quantity = True
        try:
            changed: QuantityChanged = await self._call(
                FulfilmentActivities.change_quantity,
                QuantityChangeRequest(
                    deal_id=self.deal_id,
                    order_id=self.deal.order_id,
                    quote=plan,
                    sku=change.sku,
                    quantity=change.quantity,
                    period_months=period.months,
                    remaining=remaining,
                    months_left=months,
                    changed_at=workflow.now(),
                ),
                f"change {change.sku} to {change.quantity}",
            )
        finally:
            self._changing_quantity = False
        self.deal.current_plan = changed.quote
        self.deal.quantity_changes += 1
        amount = changed.proration
        if self.deal.revenue_schedules:
            self._modify_prospectively(change.sku, plan, changed, period)
        self._record("quantity_changed", change.by,
                     f"{change.sku} {line.quantity} -> {change.quantity}; proration {amount} "
                     f"{plan.currency} for {remaining:.4f} of the period")  # fmt: skip
        if changed.line is not None:  # recognized as it is billed (see issue_invoice)
            self.deal.pending_adjustments.append(
                PendingProration(
                    change=self.deal.quantity_changes,
                    line=changed.line,
                    recognition=changed.recognition,
                )
            )
        elif amount < 0:
            # Credited at once, so the months left in the period recognize less from now on.
            schedule = self.deal.recognition_schedule
            for month, part in changed.recognition.items():
                if not self.deal.revenue_schedules:
                    schedule[month] = schedule.get(month, ZERO) + part
            self.deal.customer_credit += -amount
            self._refresh_balance()
            await self._post(
                BillingActivities.credit_proration,
                ProrationCredit(
                    deal_id=self.deal_id,
                    key=str(self.deal.quantity_changes),
                    amount=-amount,
                    currency=plan.currency,
                    credited_at=workflow.now(),
                ),
                f"credit proration {self.deal.quantity_changes}",
            )
            await self._apply_held_credit()

    def _modify_prospectively(
        self, sku: str, before: Quote, changed: QuantityChanged, period: BillingPeriodPlan
    ) -> None:
        """A quantity change is a contract modification, accounted for prospectively: the
        consideration it adds (the proration and the change in every later period's billing) and
        what the obligation has not yet recognized are spread over the rest of the term."""
        later_periods = sum(
            (new.amount - old.amount
             for old, new in zip(before.billing_plan, changed.quote.billing_plan, strict=True)
             if old.start_month > period.start_month),
            ZERO,
        )  # fmt: skip
        schedule = next(s for s in self.deal.revenue_schedules if s.sku == sku)
        activated_at = self.deal.activated_at
        assert activated_at is not None
        modify_prospectively(schedule, changed.proration + later_periods, self._recognized_through,
                             self._month_ends(activated_at, before.term_months), workflow.now())  # fmt: skip
        self._record("contract_modified", "revenue",
                     f"{sku}: {changed.proration + later_periods:+} {before.currency} allocated, "
                     f"{schedule.allocated} in all, recognized over the months left")  # fmt: skip

    @workflow.signal(
        description="A customer disputes an invoice: a chargeback of a card payment (with "
        "payment_reference; the gateway's webhook sends it) or an unpaid amount contested. Dunning "
        'pauses. {"invoice_number": "INV-000001", "dispute_id": "dp_123", "amount": "500.00", '
        '"reason": "fraudulent", "payment_reference": "pi_123"}'
    )
    async def open_dispute(self, payload: RawValue = NO_PAYLOAD) -> None:
        opening = self._accept("open_dispute", payload, OpenDispute, (Stage.ACTIVE,))
        if opening is None:
            return
        invoice = self._invoice(opening.invoice_number)
        chargeback = opening.payment_reference
        reason = None
        if self._written_off:
            reason = COLLECTION_ENDED
        elif any(d.dispute_id == opening.dispute_id for d in self.deal.disputes):
            reason = f"dispute {opening.dispute_id} is already recorded; counted once"
        elif invoice is None:
            reason = self._unknown_invoice(opening.invoice_number)
        elif invoice.status not in ("open", "paid"):
            reason = f"{invoice.number} is {invoice.status}"
        elif invoice.number in self._charging:
            reason = _being_charged(invoice)
        elif chargeback is not None and chargeback not in self.deal.payment_references:
            reason = f"no payment {chargeback} was applied on this deal"
        elif chargeback is not None and opening.amount > invoice.amount_paid:
            reason = f"a chargeback of {opening.amount}, but {invoice.number} was paid {invoice.amount_paid}"
        elif chargeback is None and opening.amount > invoice.balance:
            reason = (
                f"{opening.amount} exceeds the balance due of {invoice.number} ({invoice.balance})"
            )
        if reason is not None or invoice is None:
            duplicate = any(d.dispute_id == opening.dispute_id for d in self.deal.disputes)
            if chargeback in self.deal.payment_references and not duplicate and invoice:
                # The gateway took this deal's money back whatever the invoices say: the ledger
                # records it outside them, so nothing it moved is lost.
                await self._chargeback_outside_invoices(opening, reason or "refused")
            else:
                self._refuse("open_dispute", opening.by, reason or "refused")
            return
        if chargeback is not None:
            invoice.amount_paid -= opening.amount  # the gateway took the money back
        invoice.status = "disputed"
        invoice.disputed_since = workflow.now()
        self._add_dispute(opening, "open")
        self._refresh_balance()
        kind = f"chargeback of {chargeback}" if chargeback else "contested"
        self._record("dispute_opened", opening.by,
                     f"{opening.dispute_id} on {invoice.number}: {opening.amount} {kind}: "
                     f"{opening.reason}")  # fmt: skip
        await self._post(
            BillingActivities.open_dispute,
            DisputeOpening(
                deal_id=self.deal_id,
                dispute_id=opening.dispute_id,
                invoice_number=invoice.number,
                amount=opening.amount,
                currency=invoice.currency,
                payment_reference=chargeback,
                reason=opening.reason,
                opened_at=workflow.now(),
            ),
            f"open dispute {opening.dispute_id}",
        )

    def _add_dispute(self, opening: OpenDispute, status: Literal["open", "ledger_only"]) -> None:
        self.deal.disputes.append(
            DisputeView(
                dispute_id=opening.dispute_id,
                invoice_number=opening.invoice_number,
                amount=opening.amount,
                payment_reference=opening.payment_reference,
                reason=opening.reason,
                status=status,
                opened_at=workflow.now(),
            )
        )

    async def _chargeback_outside_invoices(self, opening: OpenDispute, why: str) -> None:
        assert opening.payment_reference is not None
        self._add_dispute(opening, "ledger_only")
        # The money had become the customer's credit (a void invoice, say): the chargeback pays
        # that credit back, as a refund would. Otherwise it is a loss outside the invoices.
        from_credit = self.deal.customer_credit >= opening.amount
        self._record("dispute_outside_invoices", opening.by,
                     f"chargeback {opening.dispute_id} of {opening.amount} on "
                     f"{opening.payment_reference}: the invoices cannot take it ({why}); "
                     + ("it pays back the customer's credit" if from_credit
                        else "recorded in the ledger as a chargeback loss"))  # fmt: skip
        if from_credit:
            self.deal.disputes[-1].from_credit = True
            self.deal.customer_credit -= opening.amount
            await self._post(
                BillingActivities.refund_credit,
                RefundRequest(
                    deal_id=self.deal_id,
                    amount=opening.amount,
                    currency=self.deal.lead.currency,
                    reference=f"chargeback:{opening.dispute_id}",
                    recorded_by=opening.by,
                    refunded_at=workflow.now(),
                ),
                f"chargeback {opening.dispute_id} from customer credit",
            )
            return
        await self._post(
            BillingActivities.record_chargeback,
            LedgerChargeback(
                deal_id=self.deal_id,
                signal="open_dispute",
                at=workflow.now(),
                body={
                    "dispute_id": opening.dispute_id,
                    "invoice_number": opening.invoice_number,
                    "amount": str(opening.amount),
                    "reason": opening.reason,
                    "payment_reference": opening.payment_reference,
                },
            ),
            f"record chargeback {opening.dispute_id} in the ledger",
        )

    @workflow.signal(
        description="Close a dispute: won (the invoice stands; a chargeback's money returns) or "
        'lost (its amount is credited). {"dispute_id": "dp_123", "outcome": "won"}'
    )
    async def close_dispute(self, payload: RawValue = NO_PAYLOAD) -> None:
        closing = self._accept("close_dispute", payload, CloseDispute, (Stage.ACTIVE,))
        if closing is None:
            return
        dispute = next((d for d in self.deal.disputes if d.dispute_id == closing.dispute_id), None)
        if dispute is not None and dispute.status == "ledger_only":
            dispute.status = closing.outcome
            dispute.closed_at = workflow.now()
            self._record("dispute_closed", closing.by,
                         f"{dispute.dispute_id}: {closing.outcome} (outside the invoices)")  # fmt: skip
            if dispute.from_credit:
                if closing.outcome == "won":  # the money comes back, as a payment would
                    await self._apply_payment(
                        dispute.amount, f"chargeback-reversed:{dispute.dispute_id}",
                        closing.by, None,
                    )  # fmt: skip
                return
            await self._post(
                BillingActivities.record_chargeback,
                LedgerChargeback(
                    deal_id=self.deal_id,
                    signal="close_dispute",
                    at=workflow.now(),
                    body={"dispute_id": dispute.dispute_id, "outcome": closing.outcome},
                ),
                f"close chargeback {dispute.dispute_id} in the ledger",
            )
            return
        if dispute is None or dispute.status != "open":
            reason = (
                f"no dispute {closing.dispute_id} on this deal"
                if dispute is None
                else f"dispute {closing.dispute_id} was already closed ({dispute.status})"
            )
            self._refuse("close_dispute", closing.by, reason)
            return
        invoice = self._invoice_of(dispute.invoice_number)
        dispute.status = closing.outcome
        dispute.closed_at = workflow.now()
        if closing.outcome == "won" and dispute.payment_reference is not None:
            invoice.amount_paid += dispute.amount  # the money comes back
        since = invoice.disputed_since or workflow.now()
        invoice.dunning_paused_seconds += int((workflow.now() - since).total_seconds())
        invoice.disputed_since = None
        self._settle(invoice)
        self._refresh_balance()
        self._record("dispute_closed", closing.by,
                     f"{dispute.dispute_id} on {invoice.number}: {closing.outcome}")  # fmt: skip
        await self._post(
            BillingActivities.close_dispute,
            DisputeClosing(
                deal_id=self.deal_id,
                dispute_id=dispute.dispute_id,
                outcome=closing.outcome,
                closed_at=workflow.now(),
            ),
            f"close dispute {dispute.dispute_id}",
        )
        if closing.outcome == "lost":
            await self._credit_invoice(invoice, dispute.amount, f"dispute:{dispute.dispute_id}",
                                       f"dispute {dispute.dispute_id} lost", closing.by)  # fmt: skip

    @workflow.signal(
        description="Pay customer credit back to the customer. "
        '{"amount": "50.00", "reference": "REFUND-1", "recorded_by": "fay.finance"}'
    )
    async def refund_credit(self, payload: RawValue = NO_PAYLOAD) -> None:
        refund = self._accept("refund_credit", payload, RefundCredit, (Stage.ACTIVE,))
        if refund is None:
            return
        reason = None
        if refund.reference in self.deal.refund_references:
            reason = f"reference {refund.reference} was already used; counted once"
        elif (wrong_currency := self._wrong_currency(refund.currency)) is not None:
            reason = wrong_currency
        elif refund.amount > self.deal.customer_credit:
            reason = (
                f"{refund.amount} exceeds the customer credit held ({self.deal.customer_credit})"
            )
        if reason is not None:
            self._refuse("refund_credit", refund.recorded_by, reason)
            return
        self.deal.customer_credit -= refund.amount
        self.deal.refund_references.append(refund.reference)
        self._record(
            "credit_refunded", refund.recorded_by, f"{refund.amount} ref {refund.reference}"
        )
        await self._post(
            BillingActivities.refund_credit,
            RefundRequest(
                deal_id=self.deal_id,
                amount=refund.amount,
                currency=self.deal.lead.currency,
                reference=refund.reference,
                recorded_by=refund.recorded_by,
                refunded_at=workflow.now(),
            ),
            f"refund credit {refund.reference}",
        )

    async def _post(self, activity: Callable[..., Any], arg: Any, summary: str) -> Any:
        """A ledger posting for money that moved. Postings run one at a time in the order the deal
        decided them (the lock serves waiters first come, first served): a refund never reaches the
        ledger before the overpayment that made the credit, even when that posting is retried.
        A write-off waits until none is under way or waiting."""
        self._postings_running += 1
        try:
            async with self._posting_order:
                return await self._call(activity, arg, summary)
        finally:
            self._postings_running -= 1

    @workflow.signal(
        description='Engagement by a nurtured lead raises its score. {"kind": "demo_request"}'
    )
    def log_engagement(self, payload: RawValue = NO_PAYLOAD) -> None:
        engagement = self._accept("log_engagement", payload, LogEngagement, (Stage.NURTURING,))
        if engagement is None:
            return
        points = self.policy.engagement_points.get(engagement.kind)
        if points is None:
            known = ", ".join(sorted(self.policy.engagement_points))
            self._refuse(
                "log_engagement",
                engagement.by,
                f"unknown engagement kind {engagement.kind!r} ({known})",
            )
            return
        self.deal.score += points
        breakdown = self.deal.score_breakdown
        breakdown["engagement"] = breakdown.get("engagement", 0) + points
        self._record(
            "engagement", engagement.by, f"{engagement.kind} +{points} -> score {self.deal.score}"
        )

    @workflow.signal(
        description="The lead's owner takes it on: stops the routing SLA (a lead not accepted in "
        "time goes to the next rep) and measures the response time; submitting a quote counts "
        'too. {"by": "nora.na", "note": "calling tomorrow"}'
    )
    def accept_lead(self, payload: RawValue = NO_PAYLOAD) -> None:
        acceptance = self._check_acceptance(payload)
        if acceptance is not None:
            self._take_acceptance(acceptance.by, acceptance.note or "accepted")

    @workflow.update(name="accept_lead", description="As the accept_lead signal, validated.")
    async def accept_lead_update(self, payload: RawValue = NO_PAYLOAD) -> str:
        acceptance = _checked(self._check_acceptance(payload))
        return self._take_acceptance(acceptance.by, acceptance.note or "accepted")

    @accept_lead_update.validator
    def _validate_acceptance(self, payload: RawValue = NO_PAYLOAD) -> None:
        self._validate(self._check_acceptance, payload)

    def _check_acceptance(self, payload: RawValue) -> AcceptLead | None:
        acceptance = self._accept("accept_lead", payload, AcceptLead, BEFORE_SIGNATURE)
        if acceptance is None:
            return None
        routing = self.deal.routing
        if routing is None or not routing.assignments:
            self._refuse("accept_lead", acceptance.by, "the lead is not routed to an owner yet"
                         if self._lead_front else "deals started before routing by teams "
                         "have no SLA to accept the lead in")  # fmt: skip
            return None
        if routing.accepted_by is not None:
            self._refuse("accept_lead", acceptance.by, f"already accepted by {routing.accepted_by}")
            return None
        if self._reassigning:
            self._refuse("accept_lead", acceptance.by, f"the SLA of {self.deal.owner} passed and "
                         "the lead is being passed to the next rep; the new owner accepts it")  # fmt: skip
            return None
        if acceptance.by != self.deal.owner:
            self._refuse("accept_lead", acceptance.by, f"the lead is routed to {self.deal.owner}; "
                                                       "only its owner accepts it")  # fmt: skip
            return None
        return acceptance

    def _take_acceptance(self, by: str, note: str) -> str:
        routing = self.deal.routing
        assert routing is not None
        now = workflow.now()
        routing.accepted_by, routing.accepted_at = by, now
        routing.assignments[-1].accepted_at = now
        if routing.sales_ready_at is None:
            response = "before it was sales-ready"
        else:
            routing.response_seconds = max(0, int((now - routing.sales_ready_at).total_seconds()))
            response = f"response time {timedelta(seconds=routing.response_seconds)}"
        self._record("lead_accepted", by, f"{note}; {response}")
        return f"lead accepted by {by}; {response}"

    @workflow.signal(
        description="Sent by a new lead's deal (not by people): a lead of the same person or "
        "company joins this deal while it is an open opportunity (before signature); the deal "
        "answers with lead_attach_answer."
    )
    async def attach_lead(self, payload: RawValue = NO_PAYLOAD) -> None:
        attached = self._accept("attach_lead", payload, AttachedLead, tuple(Stage))
        if attached is None:
            return
        reason = ""
        if any(a.deal_id == attached.deal_id for a in self.deal.attached_leads):
            pass  # asked again: it has joined, and hears so again
        elif self.deal.stage not in BEFORE_SIGNATURE or self._closing or self._signature:
            reason = f"the deal is {self.deal.stage.value}: no longer an open opportunity"
            self._refuse("attach_lead", attached.deal_id, reason)
        else:
            self.deal.attached_leads.append(attached)
            lead = attached.lead
            self._record("lead_attached", attached.deal_id,
                         f"{lead.contact_name} <{lead.contact_email}> of {lead.company} "
                         f"(lead {lead.lead_id}, {lead.source}) joined: {attached.detail}")  # fmt: skip
        answer = AttachAnswer(deal_id=self.deal_id, joined=not reason, reason=reason)
        with contextlib.suppress(Exception):  # the asking deal has gone: nothing to tell
            await workflow.get_external_workflow_handle(attached.deal_id).signal(
                "lead_attach_answer", answer
            )

    @workflow.signal(
        description="Sent by a deal this lead asked to join (attach_lead), not by people."
    )
    def lead_attach_answer(self, payload: RawValue = NO_PAYLOAD) -> None:
        answer = self._accept("lead_attach_answer", payload, AttachAnswer, (Stage.NEW,))
        identity = self.deal.identity if answer is not None else None
        if answer is None or identity is None or identity.attach_to != answer.deal_id:
            if answer is not None:
                self._refuse("lead_attach_answer", answer.deal_id, "this deal did not ask it")
            return
        self._attach_answer = answer

    @workflow.signal(
        description="Notice that the contract is not to renew: it ends with the term under way "
        "(churn). Accepted from signature until the notice deadline of the contract's auto-renewal "
        "clause (see `renewal` in the state query). "
        '{"by": "ada.lovelace", "party": "customer", '
        '"reason": "moving to another vendor"}'
    )
    def give_notice(self, payload: RawValue = NO_PAYLOAD) -> None:
        notice = self._accept("give_notice", payload, GiveNotice,
                              (Stage.AWAITING_SIGNATURE, Stage.FULFILLING, Stage.ACTIVE))  # fmt: skip
        if notice is None:
            return
        contract, renewal = self.deal.contract, self.deal.renewal
        given = self.deal.non_renewal_notice
        reason = None
        if contract is None or (self._signature is None and contract.signed_at is None):
            reason = "the contract is not signed yet"
        elif contract.terms is None:
            reason = "this deal's contract has no renewal clause (it started before them)"
        elif contract.terms.auto_renewal is None or not contract.terms.auto_renewal.enabled:
            reason = "this contract does not renew automatically: it ends with its term"
        elif given is not None:
            reason = f"notice was already given by {given.by} on {given.given_at.date()}"
        elif (
            renewal is not None
            and renewal.notice_deadline is not None
            and (workflow.now() >= renewal.notice_deadline)
        ):
            reason = (f"notice had to be given by {renewal.notice_deadline} (the contract's "
                      f"notice period); term {renewal.term + 1} is committed")  # fmt: skip
        elif self._written_off:
            reason = COLLECTION_ENDED
        if reason is not None:
            self._refuse("give_notice", notice.by, reason)
            return
        self.deal.non_renewal_notice = NonRenewalNotice(
            by=notice.by, party=notice.party, reason=notice.reason, given_at=workflow.now()
        )
        ends = f"; the contract ends {renewal.term_ends_at.date()}" if renewal else ""
        self._record("notice_given", notice.by, f"{notice.party}: {notice.reason}{ends}")

    @workflow.signal(
        description="Sent by the deal's renewal quote workflow once its contract is signed: the "
        "deal renews on that quote and contract at the end of the term. Not for people."
    )
    async def renewal_signed(self, payload: RawValue = NO_PAYLOAD) -> None:
        agreed = self._accept("renewal_signed", payload, RenewalAgreed, (Stage.ACTIVE,))
        if agreed is None:
            return
        renewal, contract = self.deal.renewal, agreed.contract
        if renewal is None or renewal.outcome != "quoting" or self.deal.renewal_agreed is not None:
            self._refuse("renewal_signed", "unknown", "no renewal quote is open for this deal")
            return
        # The signal names a contract and its quote: the ledger must hold them, signed, for
        # this deal (the term's end waits for the check).
        self._checking_renewal += 1
        try:
            signed = agreed.quote.version > self._quote_versions and await self._call(
                QuoteActivities.is_signed_contract,
                SignedContractCheck(deal_id=self.deal_id, contract_id=contract.contract_id,
                                    document_sha256=contract.document_sha256,
                                    quote_version=agreed.quote.version,
                                    quote_sha256=agreed.quote.document_sha256,
                                    net_total=agreed.quote.net_total),
                f"check renewal contract {contract.contract_id}",
            )  # fmt: skip
        finally:
            self._checking_renewal -= 1
        if not signed or self.deal.renewal_agreed is not None or renewal.outcome != "quoting":
            self._refuse("renewal_signed", "unknown",
                         f"{contract.contract_id} is not a signed renewal of this deal")  # fmt: skip
            return
        self.deal.renewal_agreed = agreed
        self._record("renewal_agreed", contract.signed_by or "customer",
                     f"{contract.contract_id}: quote v{agreed.quote.version}, net "
                     f"{agreed.quote.net_total} {agreed.quote.currency} from "
                     f"{renewal.term_ends_at.date()}")  # fmt: skip

    @workflow.signal(
        description='Mark the deal lost (not after signature). {"by": "sam.rep", "reason": "chose a competitor"}'
    )
    def mark_lost(self, payload: RawValue = NO_PAYLOAD) -> None:
        lost = self._accept("mark_lost", payload, MarkLost, BEFORE_SIGNATURE)
        if lost is None:
            return
        if self._signature is not None:
            self._refuse("mark_lost", lost.by, "the contract is already signed")
            return
        if self._lost is None:
            self._lost = lost
            self._record("marked_lost", lost.by, lost.reason)

    @workflow.query(
        description="The deal: stage, score, owner, quote, approval, contract, invoices, events."
    )
    def state(self) -> DealState:
        if self._state is None:
            raise ApplicationError(self._lead_error or "deal not started")
        return self._state

    # ------------------------------------------------------------------ helpers

    @property
    def deal_id(self) -> str:
        return self.deal.deal_id

    @property
    def policy(self) -> DealPolicy:
        assert self.deal.policy is not None
        return self.deal.policy

    def _may_decide(
        self, signal: str, approver: str, quote_version: int | None, role: str | None
    ) -> RequiredApproval | None:
        """The required approval `approver` may decide on now, or None (refused, with why). An
        approval fills one requirement, and only one that leaves the others to other people."""
        pending = self.deal.pending_approval
        if self._approval is not None or pending is None:
            self._refuse(signal, approver, "the discount was already decided")
            return None
        if not self._approval_matrix and (quote_version is not None or role is not None):
            # As this deal's code refused them when it started: fields it did not know.
            self._refuse(signal, approver, "malformed payload: role and quote_version are not "
                                           "accepted by deals started before approvals had them")  # fmt: skip
            return None
        if self._quote_submission is not None:
            self._refuse(signal, approver, "a new quote was submitted and supersedes this one; "
                                           "decide on the new one")  # fmt: skip
            return None
        quote = self.deal.quote
        if self._approval_matrix and quote is not None and _expired(quote):
            self._refuse(signal, approver, f"quote v{pending.quote_version} has expired")
            return None
        if quote_version is not None and quote_version != pending.quote_version:
            self._refuse(signal, approver,
                         f"quote v{quote_version} is not the one awaiting approval "
                         f"(v{pending.quote_version}): a decision on it does not count")  # fmt: skip
            return None
        if approver == pending.submitted_by:
            self._refuse(signal, approver, "nobody may decide on their own quote")
            return None
        filled = next((r for r in pending.requirements if r.approved_by == approver), None)
        if filled is not None:
            self._refuse(signal, approver, f"{approver} already approved as {filled.role} "
                                           "(one person gives one of the approvals)")  # fmt: skip
            return None
        still = [r for r in pending.requirements if r.approved_by is None]
        candidates = [r for r in still if approver in r.eligible_approvers
                      and (role is None or r.role == role)]  # fmt: skip
        if not candidates:
            if len(pending.requirements) == 1:
                reason = (f"{approver} has no authority for a {pending.discount_percent}% discount "
                          f"(needs {pending.required_role} or above: "
                          f"{', '.join(pending.eligible_approvers)})")  # fmt: skip
            else:
                needs = "; ".join(f"{r.role} for {r.rule}: {', '.join(r.eligible_approvers)}"
                                  for r in still)  # fmt: skip
                reason = f"{approver} may not give {'that' if role else 'any'} approval still needed ({needs})"
            self._refuse(signal, approver, reason)
            return None
        if signal == "reject_discount":
            return candidates[0]
        taken = frozenset(
            {approver, *(r.approved_by for r in pending.requirements if r.approved_by)}
        )
        for requirement in reversed(candidates):  # the highest role still needed first
            others = [r.eligible_approvers for r in still if r is not requirement]
            if assignable(others, taken):
                return requirement
        self._refuse(signal, approver, f"{approver} approving would leave an approval with "
                                       "nobody else eligible (one person gives one of them)")  # fmt: skip
        return None

    def _accept(
        self, signal: str, payload: RawValue, model: type[P], stages: tuple[Stage, ...]
    ) -> P | None:
        """Parse and stage-check a signal; a refusal is recorded with its reason and changes nothing."""
        if self._state is None:
            return None  # the deal failed on its input; nothing to record into
        if payload is NO_PAYLOAD:
            self._refuse(signal, "unknown", "the signal carried no JSON payload")
            return None
        try:
            parsed = workflow.payload_converter().from_payload(payload.payload, model)
        except ValidationError as err:
            self._refuse(signal, _actor_of(payload), f"malformed payload: {explain(err)}")
            return None
        except Exception as err:  # undecodable bytes or not JSON at all
            self._refuse(signal, "unknown", f"malformed payload: {type(err).__name__}")
            return None
        if self.deal.stage not in stages:
            allowed = ", ".join(stage.value for stage in stages)
            self._refuse(
                signal,
                _actor_of(payload),
                f"not accepted in stage {self.deal.stage.value} (only in {allowed})",
            )
            return None
        return parsed

    async def _wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait for a person; ends the deal if it is marked lost meanwhile."""
        await workflow.wait_condition(lambda: condition() or self._lost is not None)
        self._end_if_lost()

    async def _wait_until(
        self, moment: datetime, condition: Callable[[], bool], summary: str
    ) -> bool:
        """Wait on a durable timer until `moment` or `condition`; True if the condition came first."""
        remaining = moment - workflow.now()
        if not condition() and remaining > timedelta(0):
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: condition() or self._lost is not None,
                    timeout=remaining,
                    timeout_summary=summary,
                )
        self._end_if_lost()
        return condition()

    def _end_if_lost(self) -> None:
        if self._lost is not None and self.deal.stage in BEFORE_SIGNATURE:
            raise DealEnded(Stage.LOST, f"marked lost by {self._lost.by}: {self._lost.reason}")

    async def _call(
        self,
        activity: Callable[..., Any],
        arg: Any,
        summary: str,
        give_up_after: timedelta | None = None,
    ) -> Any:
        args = [] if arg is None else [arg]
        policy = self.deal.policy
        timing = policy.activities if policy is not None else POLICY_LOAD_TIMING
        self._activities_running += 1
        try:
            return await workflow.execute_activity_method(
                activity,
                args=args,
                summary=summary,
                schedule_to_close_timeout=give_up_after,
                **activity_options(timing),
            )
        finally:
            self._activities_running -= 1

    @property
    def deal(self) -> DealState:
        assert self._state is not None
        return self._state

    def _set_stage(self, stage: Stage) -> None:
        if stage != self.deal.stage or not self.deal.events:
            self.deal.stage = stage
            self.deal.stage_since = workflow.now()
            workflow.upsert_search_attributes([DEAL_STAGE.value_set(stage.value)])
        self._refresh_details()

    def _invoice(self, number: str) -> InvoiceView | None:
        return next((i for i in self.deal.invoices if i.number == number), None)

    def _invoice_of(self, number: str) -> InvoiceView:
        invoice = self._invoice(number)
        assert invoice is not None
        return invoice

    def _unknown_invoice(self, number: str) -> str:
        known = ", ".join(i.number for i in self.deal.invoices) or "none yet"
        return f"unknown invoice {number} (this deal's invoices: {known})"

    def _wrong_currency(self, currency: str | None) -> str | None:
        deal_currency = self.deal.lead.currency
        if currency is None or currency == deal_currency:
            return None
        return f"sent in {currency}, but this deal bills in {deal_currency}"

    def _settle(self, invoice: InvoiceView, paid: Decimal = ZERO, credited: Decimal = ZERO) -> None:
        invoice.amount_paid += paid
        invoice.amount_credited += credited
        invoice.status = settled_status(
            invoice.amount, invoice.amount_credited, invoice.amount_paid
        )

    def _settled(self, invoice: InvoiceView) -> Callable[[], bool]:
        """Whether collecting `invoice` is over: it is paid, or the deal is being written off."""
        return lambda: invoice.status != "open" or self._written_off

    def _write_off_before(self, moment: datetime) -> Callable[[], bool]:
        return lambda: self._written_off and workflow.now() < moment

    def _write_off_due(self) -> bool:
        """An open invoice has reached its write-off moment (computed from the invoice, so a new
        run, or an invoice reopened by a dispute, needs nothing remembered)."""
        now = workflow.now()
        days = self.policy.write_off_days_after_due
        return any(
            invoice.status == "open"
            and self._dunning_moment(invoice, _due_at(invoice), days) <= now
            for invoice in self.deal.invoices
        )

    def _refresh_balance(self) -> None:
        self.deal.balance_due = sum(
            (i.balance for i in self.deal.invoices if i.status in ("open", "disputed")), ZERO
        )

    def _record(self, kind: str, actor: str, detail: str) -> None:
        self.deal.events.append(DealEvent(at=workflow.now(), kind=kind, actor=actor, detail=detail))
        self._refresh_details()

    def _refuse(self, signal: str, actor: str, reason: str) -> None:
        if self._validating is not None:  # an update's validator: the caller hears it at once
            self._validating.append(reason)
            return
        workflow.logger.info("refused %s from %s: %s", signal, actor, reason)
        self._record(f"refused:{signal}", actor, reason)

    def _refresh_details(self) -> None:
        """The Web UI's 'current details': where the deal is, what it waits for, who may act."""
        state = self.deal
        lines = [
            f"**{state.lead.company}**: stage `{state.stage.value}`, owner {state.owner or '-'}, score {state.score}"
        ]
        if state.quote is not None:
            lines[0] += (
                f", quote v{state.quote.version} net {state.quote.net_total} {state.quote.currency}"
            )
        waiting = _WAITING_FOR.get(state.stage)
        if waiting:
            lines.append(f"Waiting for: {waiting}")
        if state.stage == Stage.QUALIFIED and state.owner:
            lines.append(_paste("submit_quote", {
                "submitted_by": state.owner, "lines": [{"sku": "PLATFORM", "quantity": 10}],
                "discount_percent": "0", "term_months": 12, "billing_period": "monthly"}))  # fmt: skip
        if state.pending_approval is not None:
            pending = state.pending_approval
            lines.append(
                f"Needs `{pending.required_role}` approval of {pending.discount_percent}%: "
                f"{', '.join(pending.eligible_approvers)} (signal `approve_discount`)"
            )
            approver = next(iter(_still_to_approve(pending)), "")
            lines.append(_paste("approve_discount", {"approver": approver, "comment": "ok"}))
        if state.stage == Stage.AWAITING_SIGNATURE and state.contract is not None:
            lines.append(
                f"Contract sha256 `{state.contract.document_sha256}` (signal `sign_contract`)"
            )
            redline = state.contract.redline_under_review
            if redline is not None:
                lines.append(
                    f"Redline by {redline.proposed_by} needs review: "
                    f"{', '.join(redline.waiting_for())} (signal `approve_terms` / "
                    f"`reject_terms`), due {redline.due_at}"
                )
                reviewer = next(iter(redline.deciders()), "")
                lines.append(_paste("approve_terms", {"approver": reviewer, "comment": "ok"}))
            else:
                lines.append(_paste("sign_contract", {
                    "signer_name": state.lead.contact_name,
                    "signer_email": state.lead.contact_email,
                    "document_sha256": state.contract.document_sha256}))  # fmt: skip
        oldest_open = next((i for i in state.invoices if i.status == "open"), None)
        if oldest_open is not None:
            lines.append(_paste("record_payment", {
                "invoice_number": oldest_open.number, "amount": str(oldest_open.balance),
                "reference": "<the bank's reference>"}))  # fmt: skip
        if state.invoices:
            lines.append(
                f"Invoices: {len(state.invoices)}, balance due {state.balance_due} {state.lead.currency}"
            )
        if state.customer_credit > 0:
            lines.append(
                f"Customer credit held: {state.customer_credit} {state.lead.currency} "
                "(pays the next invoice; signal `refund_credit` to pay it back)"
            )
        if state.events:
            last = state.events[-1]
            lines.append(f"Last: {last.kind} by {last.actor}: {last.detail}")
        workflow.set_current_details("\n\n".join(lines))
        self._refresh_search()

    def _refresh_search(self) -> None:
        """Keep the ops search attributes in step with the deal; only changes are upserted."""
        if not self._ops_search:
            return
        state = self.deal
        approvers: list[str] = []
        pending = state.pending_approval
        if state.stage == Stage.AWAITING_APPROVAL and pending is not None:
            approvers += _still_to_approve(pending)
        redline = state.contract.redline_under_review if state.contract is not None else None
        if redline is not None:
            approvers += redline.deciders()
        oldest_due = None  # never invoiced: not set
        if state.invoices:
            open_dues = [
                invoice.due_at or datetime.combine(invoice.due_date, time(0), UTC)
                for invoice in state.invoices
                if invoice.status == "open"
            ]
            oldest_due = min(open_dues, default=NOTHING_DUE)
        # Values are replaced, never unset: the time-skipping test server keeps an unset value
        # as a null the SDK cannot read back.
        wanted: list[tuple[Any, object]] = [
            (DEAL_APPROVERS, sorted(set(approvers))),
            (DEAL_STAGE_SINCE, state.stage_since),
            (DEAL_OLDEST_DUE, oldest_due),
        ]
        updates = []
        for key, value in wanted:
            if value is not None and self._searchable.get(key.name) != value:
                self._searchable[key.name] = value
                updates.append(key.value_set(value))
        if updates:
            workflow.upsert_search_attributes(updates)


def _still_to_approve(pending: PendingApproval) -> list[str]:
    """Who may still give one of the pending quote's approvals: one person gives one approval,
    never for their own quote (deals from before the approval matrix have a single one)."""
    eligible = [pending.eligible_approvers]
    if pending.requirements:
        eligible = [r.eligible_approvers for r in pending.requirements if not r.approved_by]
    gave = {r.approved_by for r in pending.requirements} | {pending.submitted_by}
    return [name for names in eligible for name in dict.fromkeys(names) if name not in gave]


def _paste(signal: str, payload: dict[str, Any]) -> str:
    """A signal's JSON for this deal as it stands, to paste into the Web UI's Send a Signal."""
    return f"Signal `{signal}`, for example:\n\n```json\n{json.dumps(payload)}\n```"


_WAITING_FOR = {
    Stage.NURTURING: "engagement (`log_engagement`) or the next nurture touch",
    Stage.QUALIFIED: "a quote (`submit_quote`) from the owner",
    Stage.AWAITING_APPROVAL: "a discount decision (`approve_discount` / `reject_discount`)",
    Stage.AWAITING_SIGNATURE: "the customer's signature (`sign_contract` / `decline_contract`) "
    "or redline (`propose_terms`)",
    Stage.ACTIVE: "billing periods and payments (`record_payment`)",
}


def _lead_milestones(routing: LeadRouting | None) -> list[Milestone]:
    """When the lead became sales-ready and was accepted, for the lead response KPI."""
    if routing is None:
        return []
    milestones = []
    if routing.sales_ready_at is not None:
        milestones.append(Milestone(kind="lead_sales_ready", at=routing.sales_ready_at))
    if routing.accepted_at is not None:
        milestones.append(Milestone(kind="lead_accepted", at=routing.accepted_at,
                                    actor=routing.accepted_by or ""))  # fmt: skip
    return milestones


def _approval_milestones(pending: PendingApproval | None) -> list[Milestone]:
    """When each approval of a quote was asked for and given, for the approval cycle KPI."""
    if pending is None or pending.requested_at is None:
        return []
    milestones = []
    for requirement in pending.requirements:
        key = f"v{pending.quote_version}:{requirement.rule}"[:120]  # the ledger's key length
        milestones.append(Milestone(kind="approval_requested", key=key, at=pending.requested_at))
        if requirement.approved_at is not None:
            milestones.append(Milestone(kind="approval_given", key=key, at=requirement.approved_at,
                                        actor=requirement.approved_by or ""))  # fmt: skip
    return milestones


def _continuation(payload: RawValue) -> DealContinuation | None:
    """The carried state when this run continues a deal, None when it starts one."""
    try:
        return workflow.payload_converter().from_payload(payload.payload, DealContinuation)
    except Exception:  # a lead (or a bad input, which the lead's validation reports)
        return None


def _being_charged(invoice: InvoiceView) -> str:
    return f"the card on file is being charged for {invoice.number}; send again after it"


def _before_cash_application(payment: RecordPayment, named: InvoiceView | None) -> str | None:
    """The refusals of deals that reached billing before cash application: one invoice per
    payment, never more than its balance."""
    if named is None:
        return "invoice_number: Field required"
    if named.status != "open":
        return f"{named.number} is {named.status}"
    if payment.amount > named.balance:
        return (
            f"{payment.amount} exceeds the balance due of {named.number} ({named.balance}); "
            "overpayments are not accepted yet"
        )
    return None


def _expired(quote: Quote) -> bool:
    """Whether `quote` was not signed by its valid_until."""
    return quote.valid_until is not None and workflow.now() >= quote.valid_until


def _meters_usage(quote: Quote) -> bool:
    """Whether `quote` has usage lines, all with their tiers locked in, to bill usage by."""
    usage_lines = [line for line in quote.lines if line.kind == "usage"]
    return bool(usage_lines) and all(line.usage_tiers is not None for line in usage_lines)


def _due_at(invoice: InvoiceView) -> datetime:
    # Invoices issued before the exact moment was kept fall due at the start of their due date.
    if invoice.due_at is not None:
        return invoice.due_at
    return datetime.combine(invoice.due_date, time(0), tzinfo=UTC)


def _points(breakdown: dict[str, int]) -> str:
    return ", ".join(f"{feature} +{points}" for feature, points in breakdown.items()) or "no points"


def _actor_of(payload: RawValue) -> str:
    """Best effort at who sent a payload, for the refusal record, even when it does not parse."""
    try:
        data = workflow.payload_converter().from_payload(payload.payload, dict)
    except Exception:
        return "unknown"
    for field in ("approver", "submitted_by", "proposed_by", "signer_name", "recorded_by", "by"):
        value = data.get(field)
        if isinstance(value, str) and value.strip():
            return value.strip()[:100]
    return "unknown"


def _invoice_view(
    issued: IssuedInvoice,
    period: BillingPeriodPlan | None,
    billing_month: int,
    due_at: datetime | None,
) -> InvoiceView:
    """The deal's view of an invoice the ledger issued: a draft, or final (nothing due: paid)."""
    return InvoiceView(
        number=issued.number,
        period_index=period.index if period is not None else None,
        billing_month=billing_month,
        amount=issued.amount,
        currency=issued.currency,
        issued_on=issued.issued_on,
        due_date=issued.due_date,
        due_at=due_at,
        status="draft" if issued.draft else "open" if issued.amount > 0 else "paid",
        early_payment_discount=issued.early_payment_discount,
        early_payment_until=issued.early_payment_until,
    )


C = TypeVar("C")


def _checked(value: C | None) -> C:
    """An update handler's checks, which its validator has just passed in the same activation."""
    if value is None:
        raise ApplicationError("refused; see the deal's events")
    return value
