"""What the `state` query returns: the deal as ops staff and auditors see it."""

from datetime import date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field

from models.contract_terms import ContractTerms, RedlineUnderReview
from models.deal import DealPolicy, LeadInput, Stage
from models.documents import InvoiceLinePlan, Quote
from models.leads import AttachedLead, Enrichment, IdentityResolution, LeadRouting, ModelScore
from models.revenue import ObligationSchedule
from models.signals import CardOnFile

InvoiceStatus = Literal["draft", "open", "paid", "void", "uncollectible", "disputed"]


class DealEvent(BaseModel):
    at: datetime
    kind: str  # e.g. "quote_submitted", "discount_approved", "refused:approve_discount"
    actor: str
    detail: str


class RequiredApproval(BaseModel):
    rule: str  # why it is needed: "discount", "large deal", ...
    role: str  # this role or a higher one approves
    eligible_approvers: list[str]
    approved_by: str | None = None
    approved_at: datetime | None = None
    due_at: datetime | None = None  # not given by then: escalated
    escalations: int = 0
    escalated_to: str | None = None  # the role asked (and reminded) since the last escalation


class PendingApproval(BaseModel):
    quote_version: int
    requested_at: datetime | None = None  # when the deal began to wait for it
    discount_percent: Decimal
    submitted_by: str
    # The first approval still needed (all of them: `requirements`).
    required_role: str
    eligible_approvers: list[str]
    requirements: list[RequiredApproval] = []


class ContractView(BaseModel):
    contract_id: str
    version: int
    document_sha256: str
    sent_at: datetime
    signed_by: str | None = None
    signer_email: str | None = None
    signed_at: datetime | None = None
    # Deals with the clause library: the terms of this revision (0: as first sent, +1 for each
    # accepted redline; each revision is a new contract_id and hash), and a redline legal is
    # reviewing. The signed revision's terms are the ones billed (payment terms) and renewed.
    revision: int = 0
    terms: ContractTerms | None = None
    redline_under_review: RedlineUnderReview | None = None


class InvoiceView(BaseModel):
    number: str
    period_index: int | None  # the billing period it bills in advance; None: usage in arrears only
    billing_month: int = 0  # the month boundary it was issued at (0 = activation)
    amount: Decimal
    currency: str
    issued_on: date
    due_date: date
    due_at: datetime | None = None  # the exact moment: reminders and write-off count from it
    status: InvoiceStatus = "open"
    amount_paid: Decimal = Decimal("0.00")  # payments and customer credit applied
    amount_credited: Decimal = Decimal("0.00")  # credit notes
    reminders_sent: int = 0
    card_attempts: int = 0  # card charges started (or skipped, after a hard decline)
    # Dunning pauses while the invoice is disputed; its reminders and write-off move by as long.
    disputed_since: datetime | None = None
    dunning_paused_seconds: int = 0
    late_fee_on: str | None = None  # a late fee: the overdue invoice it was charged on
    # Offered on the invoice: this much off when paid in full by that day (UTC).
    early_payment_discount: Decimal = Decimal("0.00")
    early_payment_until: date | None = None

    @property
    def balance(self) -> Decimal:
        return self.amount - self.amount_credited - self.amount_paid

    def early_payment_discount_for(self, amount: Decimal, received_on: date) -> Decimal:
        """The discount a payment of `amount` received on `received_on` takes: the one offered,
        if the day is not past, nothing was credited yet, and the payment settles what is left
        less the discount (customer credit may have paid part of it); else nothing."""
        applies = (
            self.early_payment_until is not None
            and received_on <= self.early_payment_until
            and self.status == "open"
            and self.amount_credited == 0
            and self.balance > self.early_payment_discount
            and amount >= self.balance - self.early_payment_discount
        )
        return self.early_payment_discount if applies else Decimal("0.00")


class PendingProration(BaseModel):
    """More of a recurring line for the rest of a period: billed on the next invoice, and
    recognized (these month ends' parts) once billed."""

    change: int  # the quantity change's number in the deal
    line: InvoiceLinePlan
    recognition: dict[int, Decimal]


class DisputeView(BaseModel):
    dispute_id: str
    invoice_number: str
    amount: Decimal
    # A chargeback took back a card payment: the gateway's payment reference. None for an invoice
    # the customer contests before paying.
    payment_reference: str | None
    reason: str
    # ledger_only: a chargeback the invoices could not take, recorded in the ledger all the same.
    status: Literal["open", "won", "lost", "written_off", "ledger_only"] = "open"
    from_credit: bool = False  # ledger_only, taken out of the customer's credit
    opened_at: datetime
    closed_at: datetime | None = None


class RenewalView(BaseModel):
    """The term under way and what happens at its end: the contract renews automatically (its
    auto-renewal clause, with the uplift) unless notice is given by the deadline; without
    auto-renewal, or with notice, the deal ends with the term (churn)."""

    term: int = 1  # the first term, its first renewal (2), ...
    term_start_month: int = 0  # months after activation this term began
    term_ends_at: datetime
    auto_renews: bool
    uplift_percent: Decimal = Decimal(0)
    notice_deadline: datetime | None = None  # non-renewal notice is accepted until then
    outcome: Literal["pending", "quoting", "renewed", "churned"] = "pending"
    # Without auto-renewal: a renewal quote opens (a workflow of its own, this id) in the month
    # of this moment; signed by the end of the term, the deal renews on it.
    renewal_quote_opens_at: datetime | None = None
    renewal_workflow_id: str | None = None


class NonRenewalNotice(BaseModel):
    by: str
    party: str  # customer or seller
    reason: str
    given_at: datetime


class RenewalAgreed(BaseModel):
    """What a renewal quote's workflow tells its deal: the quote and the contract signed."""

    quote: Quote
    contract: ContractView


class DealState(BaseModel):
    deal_id: str
    lead: LeadInput
    stage: Stage = Stage.NEW
    stage_since: datetime | None = None  # when the deal entered `stage` (deals from before: None)
    score: int = 0
    score_breakdown: dict[str, int] = Field(default_factory=dict)  # sums to `score`
    owner: str | None = None
    # The lead front (deals from before it have none of these): who the lead is and which deals
    # share its person or company, what enrichment found, the trained model's part of the score,
    # its owners and their SLA, and leads of the same account that joined this deal.
    identity: IdentityResolution | None = None
    merged_into: str | None = None  # this lead joined that open deal (stage merged)
    enrichment: Enrichment | None = None
    score_model: ModelScore | None = None
    routing: LeadRouting | None = None
    attached_leads: list[AttachedLead] = Field(default_factory=list)
    policy: DealPolicy | None = None
    quote: Quote | None = None
    pending_approval: PendingApproval | None = None
    contract: ContractView | None = None
    order_id: str | None = None
    activated_at: datetime | None = None
    invoices: list[InvoiceView] = Field(default_factory=list)
    balance_due: Decimal = Decimal("0.00")
    revenue_recognized: Decimal = Decimal("0.00")
    payment_references: list[str] = Field(default_factory=list)
    customer_credit: Decimal = Decimal("0.00")  # overpayments and credited payments, not yet used
    credit_note_references: list[str] = Field(default_factory=list)
    refund_references: list[str] = Field(default_factory=list)
    credit_applications: int = 0
    disputes: list[DisputeView] = Field(default_factory=list)
    entitlements_suspended: bool = False
    # Quantity changes: the plan in force (None: the signed quote), what each month end recognizes
    # (month number -> amount), and prorations waiting for the next invoice.
    current_plan: Quote | None = None
    recognition_schedule: dict[int, Decimal] = Field(default_factory=dict)
    pending_adjustments: list[PendingProration] = Field(default_factory=list)
    quantity_changes: int = 0
    # Revenue recognition by performance obligation (deals signed since it exists; earlier ones
    # recognize as billed, by `recognition_schedule`): each obligation's schedule.
    revenue_schedules: list[ObligationSchedule] = Field(default_factory=list)
    # Deals with contract terms: the term under way and its renewal (None: deals from before).
    renewal: RenewalView | None = None
    non_renewal_notice: NonRenewalNotice | None = None  # given: the term under way is the last
    renewal_agreed: RenewalAgreed | None = None  # a renewal quote signed for the next term
    card_on_file: CardOnFile | None = None
    events: list[DealEvent] = Field(default_factory=list)
    # Continue-as-new: the run of the workflow this is, and the events left in earlier runs'
    # state (their histories keep them all) so that the state stays small over a long term.
    run: int = 1
    earlier_events: int = 0


class DealContinuation(BaseModel):
    """The input of a deal's next run (continue-as-new): where the billing loop resumes."""

    continued: DealState
    next_month: int  # the month boundary (months after activation) to bill next
    bills_usage: bool  # whether this deal bills metered usage in arrears (decided in its 1st run)
    cash_application: bool = True  # payments spread over invoices, credit held (ditto)
    quote_versions: int
    # A renewal quote of the deal (its quote, approvals and contract, in a workflow of its own)
    # rather than the deal's next run.
    renewal_quote: bool = False
