"""Lead activities: identity resolution and capture into the ledger, enrichment, scoring, routing
to a team's round-robin, nurture e-mails, closing the lead."""

from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from l2c.config import BusinessRules
from l2c.documents import render_email
from l2c.enrichment import EnrichmentClient, EnrichmentRefused, EnrichmentUnavailable
from l2c.identity import record_lead, release_account, resolve_identity
from l2c.lead_model import explain, latest_model, lead_features
from l2c.mail import Mailer
from l2c.scoring import assess_lead, email_domain, rule_points
from models.calendar import as_utc
from models.deal import DealPolicy, LeadInput, workflow_id_for
from models.documents import DealClosing, LeadAssessment, NurtureTouch
from models.leads import (
    Enrichment,
    EnrichmentRequest,
    IdentityRequest,
    IdentityResolution,
    LeadAssignment,
    RoutingRequest,
    ScoreRequest,
    SlaStart,
)
from models.ledger import Lead, LeadAssignmentRecord, RoutingCursor


class LeadActivities:
    def __init__(
        self,
        engine: Engine,
        rules: BusinessRules,
        mailer: Mailer,
        enrichment: EnrichmentClient | None = None,
    ):
        self._engine = engine
        self._rules = rules
        self._mailer = mailer
        self._enrichment = enrichment
        self._free_mail = frozenset(rules.policy.scoring.free_email_domains)

    @activity.defn
    def load_deal_policy(self) -> DealPolicy:
        """The policy a new deal runs under, recorded in its history for replay and audit."""
        return self._rules.policy.deal_policy()

    @activity.defn
    def capture_lead(self, lead: LeadInput) -> None:
        """Deals from before identity resolution: the lead under its e-mail domain's account (a
        free-mail one under the company's name)."""
        domain = email_domain(lead.contact_email)
        account_key = domain
        if domain in self._free_mail:
            account_key = f"name:{lead.company.strip().lower()}"
        with Session(self._engine) as session:
            record_lead(
                session, lead, workflow_id_for(lead.lead_id), account_key, datetime.now(UTC)
            )
            session.commit()

    @activity.defn
    def resolve_identity(self, request: IdentityRequest) -> IdentityResolution:
        """Capture the lead under its person and account; name the open deal it joins, if any."""
        return resolve_identity(
            self._engine, request.deal_id, request.lead, self._free_mail, request.stale_claim
        )

    @activity.defn
    def enrich_lead(self, request: EnrichmentRequest) -> Enrichment:
        """Firmographics of the lead's company. A failing service raises (the deal retries a few
        times, then goes on without it); a refusal (a wrong API key) is not retried."""
        if self._enrichment is None:
            return Enrichment(status="skipped", detail="no enrichment service configured")
        try:
            return self._enrichment.lookup(request.domain)
        except EnrichmentRefused as refused:
            raise ApplicationError(
                str(refused), type="EnrichmentRefused", non_retryable=True
            ) from None
        except EnrichmentUnavailable as down:
            raise ApplicationError(str(down), type="EnrichmentUnavailable") from None

    @activity.defn
    def assess_lead(self, lead: LeadInput) -> LeadAssessment:
        """Deals from before the trained model: rule points and first-match routing."""
        assessment = assess_lead(self._rules.policy, lead)
        self._record_score(lead.lead_id, assessment.score, assessment.owner)
        return assessment

    @activity.defn
    def score_lead(self, request: ScoreRequest) -> LeadAssessment:
        """Rule points plus the latest trained model's (none trained yet: rule points only)."""
        policy = self._rules.policy
        breakdown = rule_points(policy, request.lead, request.firmographics)
        model_score = None
        trained = latest_model(self._engine)
        if trained is not None and policy.scoring.model_weight:
            record, model = trained
            features = lead_features(request.lead, request.firmographics, self._free_mail)
            model_score = explain(model, features, record.version, record.trained_at,
                                  policy.scoring.model_weight)  # fmt: skip
            breakdown["model"] = model_score.points
        score = sum(breakdown.values())
        self._record_score(request.lead.lead_id, score, None)
        return LeadAssessment(score=score, breakdown=breakdown, model=model_score)

    def _record_score(self, lead_id: str, score: int, owner: str | None) -> None:
        with Session(self._engine) as session:
            row = session.get(Lead, lead_id)
            if row is not None:
                row.score = score
                row.owner = owner or row.owner
                session.add(row)
                session.commit()

    @activity.defn
    def route_lead(self, request: RoutingRequest) -> LeadAssignment:
        """The next owner from the lead's team, round-robin, skipping owners who missed its SLA;
        the team's manager once every member has. A retried step returns the owner it chose."""
        routing = self._rules.policy.routing
        with Session(self._engine) as session:
            done = session.get(LeadAssignmentRecord, (request.deal_id, request.assignment))
            if done is None:
                team = routing.team_for(request.country, request.employees)
                now = request.at
                members = [m for m in team.members if m not in request.exclude]
                accept_by = None
                if not request.exclude or members:
                    turn = session.get(RoutingCursor, team.name, with_for_update=True)
                    turn = turn or RoutingCursor(team=team.name, next_index=0)
                    # The team's turn, skipping whoever missed this lead's SLA: the order stays
                    # the team's for the leads after it.
                    ring = team.members
                    skip = next(k for k in range(len(ring))
                                if ring[(turn.next_index + k) % len(ring)] in members)  # fmt: skip
                    owner = ring[(turn.next_index + skip) % len(ring)]
                    turn.next_index += skip + 1
                    session.add(turn)
                    reason = f"team {team.name}, round-robin"
                    if request.sales_ready:
                        accept_by = routing.accept_by(team, now)
                elif team.manager is not None:
                    owner = team.manager
                    reason = f"team {team.name}: every member missed the SLA, to its manager"
                else:  # nobody left to pass it to: the last owner keeps it, with no SLA
                    owner = request.exclude[-1]
                    reason = f"team {team.name}: every member missed the SLA and it has no manager"
                if request.exclude:
                    reason += f" (after {', '.join(request.exclude)} missed the SLA)"
                reason = reason[:300]
                done = LeadAssignmentRecord(deal_id=request.deal_id, assignment=request.assignment,
                                            owner=owner, team=team.name, reason=reason,
                                            assigned_at=now, accept_by=accept_by)  # fmt: skip
                session.add(done)
                lead = session.get(Lead, request.lead_id)
                if lead is not None and lead.deal_id == request.deal_id:
                    lead.owner = owner
                    session.add(lead)
                session.commit()
                session.refresh(done)
            return _assignment(done)

    @activity.defn
    def start_lead_sla(self, start: SlaStart) -> LeadAssignment:
        """A nurtured lead has qualified: its owner's SLA to accept it runs from now."""
        routing = self._rules.policy.routing
        with Session(self._engine) as session:
            row = session.get(LeadAssignmentRecord, (start.deal_id, start.assignment))
            if row is None:
                raise ApplicationError(f"no assignment {start.assignment} of {start.deal_id}",
                                       type="LedgerConflict", non_retryable=True)  # fmt: skip
            if row.accept_by is None:
                team = next((t for t in routing.teams if t.name == start.team), None)
                if team is None or row.owner == team.manager:
                    return _assignment(row)  # a team since removed, or its manager: no SLA
                row.accept_by = routing.accept_by(team, start.at)
                session.add(row)
                session.commit()
                session.refresh(row)
            return _assignment(row)

    @activity.defn
    def release_account(self, deal_id: str) -> None:
        """The deal is signed (or over): a later lead of its account starts a new deal."""
        release_account(self._engine, deal_id)

    @activity.defn
    def send_nurture_touch(self, touch: NurtureTouch) -> bool:
        subject, body = render_email(touch.template, lead=touch.lead,
                                     touch_number=touch.touch_number, owner=touch.owner)  # fmt: skip
        return self._mailer.send_once(
            key=f"{touch.deal_id}:nurture:{touch.touch_number}",
            deal_id=touch.deal_id,
            recipient=touch.lead.contact_email,
            subject=subject,
            body=body,
        )

    @activity.defn
    def close_deal(self, closing: DealClosing) -> None:
        with Session(self._engine) as session:
            row = session.get(Lead, closing.lead_id)
            if row is not None:
                row.status = closing.stage
                row.score = closing.score
                row.close_reason = closing.reason
                row.closed_at = closing.closed_at
                session.add(row)
                session.commit()
        release_account(self._engine, closing.deal_id)


def _assignment(row: LeadAssignmentRecord) -> LeadAssignment:
    return LeadAssignment(assignment=row.assignment, owner=row.owner, team=row.team,
                          reason=row.reason, assigned_at=as_utc(row.assigned_at),
                          accept_by=as_utc(row.accept_by) if row.accept_by else None)  # fmt: skip
