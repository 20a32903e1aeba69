"""Contract terms: the values of the contract's clauses (config/clauses.toml), a customer's
redlines of them, and legal's decision on a redline that needs review.

These pass through the workflow sandbox and its history: pydantic and the standard library only.
Decimals travel as JSON strings ("2", "12.5"), so terms round-trip exactly.
"""

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StringConstraints

from models.signals import Name, Reason, Text, _Payload

ClauseId = Literal[
    "payment_terms",
    "liability_cap",
    "auto_renewal",
    "termination_for_convenience",
    "sla_credits",
    "governing_law",
]

# Clause id -> the ContractTerms field holding its value, in the order the contract lists them.
CLAUSE_FIELDS: dict[str, str] = {
    "payment_terms": "payment_terms_days",
    "liability_cap": "liability_cap",
    "auto_renewal": "auto_renewal",
    "termination_for_convenience": "termination_for_convenience",
    "sla_credits": "sla_credits_percent",
    "governing_law": "governing_law",
}

Percent = Annotated[Decimal, Field(ge=0, le=100, decimal_places=2)]
# Liability cap: this many times the fees paid in the 12 months before the claim.
FeesMultiple = Annotated[Decimal, Field(gt=0, le=1000, decimal_places=2)]
Uncapped = Literal["uncapped"]


class AutoRenewal(_Payload):
    """The contract renews for another term unless either side gives notice this many days
    before the term ends; the renewal term's prices rise by the uplift."""

    # Strict: a redline's "no" or 60.5 is a mistake to refuse, not to coerce into a contract.
    enabled: StrictBool
    notice_days: StrictInt = Field(ge=0, le=365)
    uplift_percent: Percent


class ContractTerms(BaseModel):
    """Every clause's value in one contract revision. None: the clause was struck out."""

    payment_terms_days: int = Field(ge=0, le=365)
    liability_cap: Uncapped | FeesMultiple | None
    auto_renewal: AutoRenewal | None
    termination_for_convenience: bool  # granted to the customer
    sla_credits_percent: Percent | None  # of the monthly fee, per SLA breach
    governing_law: str

    def value(self, clause: str) -> Any:
        """The value of clause `clause` (an id of CLAUSE_FIELDS)."""
        return getattr(self, CLAUSE_FIELDS[clause])


ClauseKey = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=60)]


class ProposeTerms(_Payload):
    """A customer's redline: new values for some clauses, others struck out. Each value is
    checked against the clause library (config/clauses.toml), so the types here are loose.

    Example (signal `propose_terms`):

        {"proposed_by": "ada.lovelace",
         "changes": {"payment_terms": 90, "liability_cap": "uncapped",
                     "auto_renewal": {"enabled": false}},
         "remove": ["sla_credits"],
         "note": "our procurement policy",
         "contract_version": 0}

    `auto_renewal` changes are merged into the current value, so {"enabled": false} keeps the
    notice days and uplift. `contract_version` is the contract revision the customer redlined
    (0: the first contract; each accepted redline adds one); a stale one is refused.
    """

    proposed_by: Name
    changes: dict[ClauseKey, Any] = Field(default_factory=dict, max_length=20)
    remove: list[ClauseKey] = Field(default_factory=list, max_length=20)
    note: Text = ""
    contract_version: int | None = Field(default=None, ge=0)


class ApproveTerms(_Payload):
    """Legal accepts the redline under review."""

    approver: Name
    comment: Text = ""


class RejectTerms(_Payload):
    """Legal rejects the redline under review; the contract stays as it was."""

    approver: Name
    reason: Reason


class TermsRisk(BaseModel):
    """A clause value legal must review, and why."""

    clause: str
    reason: str


class LegalReminder(BaseModel):
    """A redline's legal review is past its SLA: its reviewers are reminded by e-mail."""

    deal_id: str
    company: str
    contract_id: str  # the revision the redline was proposed on
    proposed_by: str
    risks: list[TermsRisk]
    reviewers: list[str]
    redline: int  # the deal's redline number and
    reminder: int  # 1 for the first reminder: the e-mails' natural key
    reminded_at: datetime


class RedlineUnderReview(BaseModel):
    """A redline waiting for legal: the terms it would make, and why legal must decide."""

    proposed_by: str
    note: str
    changed: list[str]  # clause ids
    risks: list[TermsRisk]
    terms: ContractTerms
    legal_reviewers: list[str]  # any of them decides (signals approve_terms / reject_terms)
    due_at: datetime | None  # past it, the reviewers are reminded (and again one SLA later)
    reminders: int = 0
    # Longer payment terms also need the approval matrix's role (see RedlineReview).
    finance_role: str | None = None
    finance_approvers: list[str] = []
    legal_approved_by: str | None = None
    finance_approved_by: str | None = None
    redline: int = 0  # the deal's redline number: reminders' natural key

    def waiting_for(self) -> list[str]:
        """Who may still give an approval the redline needs."""
        legal = self.legal_reviewers if self.risks and self.legal_approved_by is None else []
        finance = self.finance_approvers if self.finance_approved_by is None else []
        return list(dict.fromkeys([*legal, *finance]))

    def deciders(self) -> list[str]:
        """Who may still decide on it: those waited for, less its proposer and whoever gave one
        of its approvals already (one person gives one approval)."""
        gave = {self.proposed_by, self.legal_approved_by, self.finance_approved_by}
        return [name for name in self.waiting_for() if name not in gave]

    def approved(self) -> bool:
        return (not self.risks or self.legal_approved_by is not None) and (
            self.finance_role is None or self.finance_approved_by is not None
        )


class RedlineRequest(BaseModel):
    deal_id: str
    current: ContractTerms  # the terms of the contract revision in force
    proposal: ProposeTerms
    requested_at: datetime  # legal's review is due from here
    revision: int = 0  # the current contract revision: a proposal naming another is stale


class RedlineReview(BaseModel):
    """Either the reason the redline is refused (nothing changes), or the terms it yields."""

    refused: str | None = None
    terms: ContractTerms | None = None
    # The risks of the changed clauses only: the others were accepted with an earlier revision.
    risks: list[TermsRisk] = []
    changed: list[str] = []  # clause ids, in the contract's order
    legal_reviewers: list[str] = []  # who may decide, the proposer excluded; empty: no risks
    legal_due_at: datetime | None = None  # the review (legal's, finance's) is due by then
    # Payment terms longer than the quote was approved with, beyond what the approval matrix
    # lets through: that rule's role (or a higher one) approves them too, as for a quote.
    finance_role: str | None = None
    finance_approvers: list[str] = []
