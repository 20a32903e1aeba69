"""The front of the deal: who a lead is (identity resolution), what is known of its company
(enrichment), why it scored what it did (rule points and the trained model), and whom it was
routed to. Activities return these; the deal keeps them in its state and history."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.deal import LeadInput


class Firmographics(BaseModel):
    """What an enrichment service knows of a company, by its web domain."""

    domain: str
    name: str | None = None
    employees: int | None = Field(default=None, ge=1)
    industry: str | None = None
    country: str | None = None  # ISO 3166 alpha-2


class Enrichment(BaseModel):
    """The outcome of enriching a lead. `unavailable` means the service failed (down, too slow,
    an error) and the deal went on with what the lead carried; `detail` says why."""

    status: Literal["enriched", "not_found", "unavailable", "skipped"]
    firmographics: Firmographics | None = None
    cached: bool = False  # answered from the ledger's cache, no call made
    detail: str = ""


class IdentityRequest(BaseModel):
    deal_id: str
    lead: LeadInput
    # A deal that held the account's claim but could not be reached (it ended without releasing
    # it): the claim passes to this deal.
    stale_claim: str | None = None


class EnrichmentRequest(BaseModel):
    deal_id: str
    domain: str


class ScoreRequest(BaseModel):
    deal_id: str
    lead: LeadInput
    firmographics: Firmographics | None = None


class IdentityResolution(BaseModel):
    """Who the lead is, as the ledger knows it. `matched` says what an earlier record shares with
    it; `attach_to` is the open deal of the same account (person or company) it joins instead of
    starting another; `detail` is the merge decision as recorded in the deal's events."""

    identity_key: str  # the normalized e-mail address: the person
    account_key: str  # the company's domain, or the person for a free-mail address
    company_domain: str | None  # None for a free-mail address
    matched: Literal["new", "person", "company"]
    attach_to: str | None = None
    earlier_deals: list[str] = []
    detail: str


class AttachedLead(BaseModel):
    """A lead of the same person or company that joined this deal rather than starting another."""

    model_config = ConfigDict(extra="forbid")

    lead: LeadInput
    deal_id: str  # the workflow the lead was started as; it ended, attached here
    matched: Literal["person", "company"]
    detail: str


class ModelScore(BaseModel):
    """The trained model's part of a score: naive Bayes over closed deals, shown as log-odds
    contributions so a person can see which facts raised or lowered it."""

    version: int
    trained_at: datetime
    won: int  # closed deals it learned from
    lost: int
    prior_log_odds: float
    contributions: dict[str, float]  # "feature=value" -> log-odds it adds
    probability: float  # of winning, from the prior and the contributions
    points: int  # probability x the configured weight


class RoutingRequest(BaseModel):
    deal_id: str
    lead_id: str
    country: str
    employees: int | None  # the lead's, or the enrichment's when the lead gave none
    assignment: int  # 1 for the first owner, +1 for each reassignment
    exclude: list[str] = []  # owners who missed the SLA on this lead
    sales_ready: bool  # the SLA runs from `at`; else from when the lead qualifies (start_lead_sla)
    at: datetime  # the deal's time of the assignment: SLAs count from it, not a worker's clock


class AttachAnswer(BaseModel):
    """A deal's answer to a lead that asked to join it (attach_lead): joined, or refused with why
    (it has been signed or is closing), and the lead then starts a deal of its own."""

    model_config = ConfigDict(extra="forbid")

    deal_id: str  # the deal answering
    joined: bool
    reason: str = ""


class SlaStart(BaseModel):
    deal_id: str
    assignment: int
    team: str
    at: datetime  # the deal's time the lead qualified


class LeadAssignment(BaseModel):
    assignment: int
    owner: str
    team: str
    reason: str  # the routing rule that matched, and the round-robin turn
    assigned_at: datetime
    accept_by: datetime | None  # None: no SLA (a team's last resort, e.g. its manager)
    accepted_at: datetime | None = None
    missed: bool = False


class LeadRouting(BaseModel):
    """The lead's owners so far and how fast one answered (the state query's `routing`)."""

    assignments: list[LeadAssignment] = []
    sla_misses: int = 0
    sales_ready_at: datetime | None = None  # qualified: the owner's SLA runs from here
    accepted_by: str | None = None
    accepted_at: datetime | None = None
    # From the lead becoming sales-ready (qualified) to the owner accepting it.
    response_seconds: int | None = None
