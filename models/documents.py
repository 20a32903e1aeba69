"""Documents passed between the workflow and its activities: quotes, contracts, invoices, postings.

Each activity takes one of these and returns one, so the workflow history shows exactly what was
asked and what came back.
"""

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field, model_validator

from models.cash import Allocation
from models.contract_terms import ContractTerms
from models.deal import LeadInput
from models.leads import ModelScore
from models.signals import BillingPeriod, SubmitQuote

ProductKind = Literal["recurring", "one_time", "usage"]


class LeadAssessment(BaseModel):
    score: int
    owner: str | None = None  # deals from before routing by teams were routed when scored
    breakdown: dict[str, int]  # feature -> points, so a person can see why the score is what it is
    model: ModelScore | None = None  # the trained model's part ("model" in the breakdown)


class UsageTier(BaseModel):
    """A tier of a usage product, in the quote's currency, locked when it is quoted."""

    up_to: int | None  # in priced units (e.g. thousands of calls); None = no upper bound
    unit_price: Decimal


class WaterfallStep(BaseModel):
    step: Literal[
        "list", "tier_discount", "bundle_discount", "term_discount", "rep_discount", "net"
    ]
    label: str
    amount: Decimal  # a price (list, net) or a discount (negative)


class PricedLine(BaseModel):
    sku: str
    name: str
    kind: ProductKind
    unit: str
    quantity: int
    monthly_list: Decimal | None  # recurring and usage lines: list price of one month
    monthly_net: Decimal | None  # ... after discount, rounded to cents: what each month bills
    list_amount: Decimal  # over the whole term
    net_amount: Decimal  # over the whole term
    # Usage lines: the quantity is a monthly commitment billed in advance; metered usage above it
    # is billed in arrears through these tiers (how many metered units make one priced unit).
    usage_tiers: list[UsageTier] | None = None
    metered_per_unit: int = 1
    tier_mode: Literal["graduated", "volume"] = "graduated"
    bundle: str | None = None  # the bundle SKU this line is a component of
    # How the list price became the net price, step by step (per month for recurring and usage
    # lines, once for one-time ones); the steps add up to the net exactly.
    waterfall: list[WaterfallStep] = []


class InvoiceLinePlan(BaseModel):
    sku: str
    description: str
    quantity: int
    unit_price: Decimal
    amount: Decimal


class BillingPeriodPlan(BaseModel):
    index: int  # 0-based; also the invoice's natural key within the deal
    start_month: int  # months after activation
    months: int
    lines: list[InvoiceLinePlan]
    amount: Decimal


class PerformanceObligation(BaseModel):
    """A promise in the contract that revenue is recognized for (ASC 606 / IFRS 15), with its
    share of the transaction price, allocated by relative standalone selling price."""

    sku: str
    recognition: Literal["ratable", "at_provisioning"]  # over the term by day, or at a point
    standalone_value: Decimal  # its SSP x quantity (x months of the term, if recurring)
    allocated: Decimal  # its share of the quote's net total, in cents


class Quote(BaseModel):
    version: int
    price_book_version: str
    currency: str
    submitted_by: str
    discount_percent: Decimal
    term_months: int
    billing_period: BillingPeriod
    lines: list[PricedLine]
    list_total: Decimal
    net_total: Decimal
    monthly_recurring_net: Decimal  # recognized ratably, one month at a time
    one_time_net: Decimal  # recognized at a point in time, when provisioning completes
    billing_plan: list[BillingPeriodPlan]
    # The standard discount the term earned (before the rep's `discount_percent`).
    term_discount_percent: Decimal = Decimal(0)
    valid_until: datetime | None = None  # not signed by then: the quote expires
    obligations: list[PerformanceObligation] = []  # the net total allocated by relative SSP
    payment_terms_days: int | None = None  # None: the policy's
    document_sha256: str | None = None  # the customer-facing quote document in the ledger

    @computed_field  # type: ignore[prop-decorator]
    @property
    def tcv(self) -> Decimal:
        """Total contract value: everything the quote bills over its term."""
        return self.net_total

    @computed_field  # type: ignore[prop-decorator]
    @property
    def acv(self) -> Decimal:
        """Annual contract value: the recurring net of a year."""
        return self.monthly_recurring_net * 12

    @property
    def effective_discount_percent(self) -> Decimal:
        """The term discount and then the rep's, as one percent (exact: at most 4 decimals)."""
        return 100 - (100 - self.term_discount_percent) * (100 - self.discount_percent) / 100


class ApprovalRequirement(BaseModel):
    required_role: str  # the lowest role whose limit covers the discount, or a rule's role
    role_limit_percent: Decimal
    eligible_approvers: list[str]  # everybody with enough authority, the submitter excluded
    rule: str = "discount"  # why it is needed
    due_at: datetime | None = None  # not given by then: escalated to the next role up
    escalated_to: str | None = None  # the role now asked (and reminded) to give it
    notified: list[str] = []  # who was reminded at the last escalation


class Milestone(BaseModel):
    """A moment of a deal the KPIs measure (docs/kpi.md) that only the workflow sees: it comes
    with the next activity that writes to the ledger, which keeps it (`deal_milestones`)."""

    kind: Literal["lead_sales_ready", "lead_accepted", "approval_requested", "approval_given"]
    key: str = ""  # which one: "" for the lead's, "v<quote version>:<rule>" for approvals
    at: datetime
    actor: str = ""


class QuoteRequest(BaseModel):
    deal_id: str
    version: int
    currency: str
    submission: SubmitQuote
    country: str | None = None  # the customer's: some products are not sold everywhere
    # The price book the deal's first quote was priced on; later quotes use it too. None: the
    # current one.
    price_book_version: str | None = None
    priced_at: datetime | None = None  # approvals are due, and the quote expires, from here
    customer: str = ""  # the company, named on the quote document
    milestones: list[Milestone] = []  # the lead's: sales-ready, accepted


class QuotePricing(BaseModel):
    """Either a priced quote (with the approval it needs, if any) or the reason it was refused."""

    quote: Quote | None = None
    approval: ApprovalRequirement | None = None  # the first of `approvals`
    approvals: list[ApprovalRequirement] = []  # every approval needed, asked for in parallel
    refusal: str | None = None


class EscalationRequest(BaseModel):
    """An approval past its SLA: to the next role up, its approvers reminded."""

    deal_id: str
    lead: LeadInput
    quote_version: int
    submitted_by: str
    rule: str  # the approval's: why it is needed
    role: str  # the lowest role that may give it
    escalated_to: str | None = None  # the role asked at the last escalation, if any
    taken: list[str]  # who filled the quote's other approvals: nobody fills two
    escalated_at: datetime
    escalation: int  # 1 for the first escalation of this approval


class RenewalRequest(BaseModel):
    deal_id: str
    plan: Quote  # the plan in force at the end of the term
    version: int  # the renewal's quote version
    uplift_percent: Decimal
    customer: str  # the company, named on the quote document


class ContractRequest(BaseModel):
    deal_id: str
    lead: LeadInput
    quote: Quote
    issued_at: datetime
    payment_terms_days: int
    # The clauses (config/clauses.toml) and their payment terms, which then replace the field
    # above. None: a contract of before clauses, rendered as it always was.
    terms: ContractTerms | None = None
    revision: int = Field(default=0, ge=0)  # 0: the first contract; +1 per accepted redline
    # No terms yet: render the library's standard ones (with `payment_terms_days`).
    standard_terms: bool = False
    milestones: list[Milestone] = []  # the quote's approvals: asked for, given


class ContractDocument(BaseModel):
    contract_id: str
    version: int
    document_sha256: str
    revision: int = 0
    terms: ContractTerms | None = None  # the clauses it was rendered with


class SignedContractCheck(BaseModel):
    """Is this contract of the deal in the ledger, signed, with this document?"""

    deal_id: str
    contract_id: str
    document_sha256: str
    # ... sent for this quote of the deal, stored with this document and net total.
    quote_version: int
    quote_sha256: str | None
    net_total: Decimal


class SignatureRecord(BaseModel):
    deal_id: str
    contract_id: str
    signer_name: str
    signer_email: str
    signed_at: datetime


class OrderRequest(BaseModel):
    deal_id: str
    quote: Quote
    requested_at: datetime


class EntitlementChange(BaseModel):
    deal_id: str
    order_id: str
    active: bool
    reason: str


class QuantityChangeRequest(BaseModel):
    deal_id: str
    order_id: str
    quote: Quote  # the plan in force
    sku: str
    quantity: int
    period_months: int  # the billing period under way, already invoiced
    remaining: Decimal  # the part of it still to come, 0..1
    months_left: list[int]  # the month ends (1-based) left in it, which deliver the proration
    changed_at: datetime


class QuantityChanged(BaseModel):
    quote: Quote  # the plan from now on
    proration: Decimal  # > 0: billed on the next invoice; < 0: held as customer credit
    line: InvoiceLinePlan | None  # the proration as an invoice line
    recognition: dict[int, Decimal]  # month end -> part of the proration it recognizes


class ProrationCredit(BaseModel):
    deal_id: str
    key: str
    amount: Decimal  # > 0: unused service paid in advance, returned as customer credit
    currency: str
    credited_at: datetime


class OrderProvisioned(BaseModel):
    order_id: str
    entitlements: dict[str, int]


class UsageBilling(BaseModel):
    """Metered usage to bill in arrears on an invoice: the usage of the term's months up to
    `through_month`, less what earlier invoices billed (so late events of a month are billed too)."""

    activated_at: datetime  # month boundaries count from here, as the deal's timers do
    month_seconds: int  # 0 = calendar months (see DealPolicy.months_after)
    through_month: int  # 1-based: months 1..through_month have ended
    lines: list[PricedLine]  # the quote's usage lines: commitment and locked tiers
    discount_percent: Decimal


class EarlyPaymentTerms(BaseModel):
    """A discount of `percent` of the invoice for payment in full by `until` (inclusive)."""

    percent: Decimal
    until: date


class InvoiceRequest(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _period_start(cls, data: Any) -> Any:
        # A request scheduled before invoices were keyed by month boundary: its period's start.
        if isinstance(data, dict) and "billing_month" not in data and data.get("period"):
            period = data["period"]
            start = period.get("start_month") if isinstance(period, dict) else None
            data = {**data, "billing_month": start}
        return data

    deal_id: str
    lead: LeadInput
    # The month boundary the invoice is issued at (0 = activation): its natural key in the deal.
    billing_month: int
    period: BillingPeriodPlan | None  # the billing period invoiced in advance, if one starts here
    usage: UsageBilling | None = None
    # Billed in advance with the period, e.g. the proration of a quantity change.
    adjustments: list[InvoiceLinePlan] = []
    currency: str
    issued_on: date
    due_date: date
    service_from: date
    service_to: date
    # A draft is numbered and stored but not yet payable or receivable: it waits for its review
    # window, then `finalize_invoice` dates it and makes it final.
    draft: bool = False
    early_payment: EarlyPaymentTerms | None = None  # for a final invoice; a draft gets it later


class InvoiceFinalization(BaseModel):
    deal_id: str
    invoice_number: str
    lead: LeadInput
    issued_on: date  # the day it is sent: its terms count from here
    due_date: date
    early_payment: EarlyPaymentTerms | None = None


class LateFeeRequest(BaseModel):
    """A late fee on an overdue invoice, on an invoice of its own: once per overdue invoice."""

    deal_id: str
    lead: LeadInput
    overdue_invoice: str
    billing_month: int  # the overdue invoice's: with the kind, the fee invoice's natural key
    overdue: Decimal  # what the overdue invoice still owed
    percent: Decimal
    amount: Decimal
    currency: str
    issued_on: date
    due_date: date


class IssuedInvoice(BaseModel):
    number: str
    amount: Decimal
    currency: str
    issued_on: date
    due_date: date
    usage_amount: Decimal = Decimal("0.00")  # billed in arrears: delivered, so revenue at once
    draft: bool = False
    early_payment_discount: Decimal = Decimal("0.00")  # off, if paid in full by the day below
    early_payment_until: date | None = None


class PaymentRecord(BaseModel):
    """Money received and where it goes: invoices (as `allocations`) and customer credit."""

    deal_id: str
    invoice_number: str | None  # the invoice the payer named, if any
    amount: Decimal  # everything received
    allocations: list[Allocation]
    to_credit: Decimal = Decimal("0.00")
    currency: str
    reference: str
    recorded_by: str
    received_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _one_invoice(cls, data: Any) -> Any:
        # A payment scheduled before allocations existed paid its one invoice in full.
        if isinstance(data, dict) and "allocations" not in data and data.get("invoice_number"):
            data = {**data, "allocations": [
                {"invoice_number": data["invoice_number"], "amount": data["amount"]}]}  # fmt: skip
        return data


class CreditApplication(BaseModel):
    """Customer credit applied to an invoice."""

    deal_id: str
    key: str  # which application of credit this is within the deal: counted once
    invoice_number: str
    amount: Decimal
    currency: str
    applied_at: datetime


class CreditNoteRequest(BaseModel):
    deal_id: str
    invoice_number: str
    amount: Decimal
    to_credit: Decimal  # the part of `amount` the invoice had already been paid
    currency: str
    reference: str
    reason: str
    issued_by: str
    issued_at: datetime


class DisputeOpening(BaseModel):
    deal_id: str
    dispute_id: str
    invoice_number: str
    amount: Decimal
    currency: str
    payment_reference: str | None  # a chargeback: the gateway took this payment back
    reason: str
    opened_at: datetime


class LedgerChargeback(BaseModel):
    """A chargeback the deal's invoices cannot take, recorded in the ledger all the same (see
    l2c/closed_deals.py): `signal` and `body` as the webhook would have sent them."""

    deal_id: str
    signal: Literal["open_dispute", "close_dispute"]
    body: dict[str, str]
    at: datetime


class DisputeClosing(BaseModel):
    deal_id: str
    dispute_id: str
    outcome: Literal["won", "lost"]
    closed_at: datetime


class CreditNoteIssued(BaseModel):
    number: str
    amount: Decimal


class RefundRequest(BaseModel):
    deal_id: str
    amount: Decimal
    currency: str
    reference: str
    recorded_by: str
    refunded_at: datetime


class DunningNotice(BaseModel):
    deal_id: str
    lead: LeadInput
    invoice_number: str
    amount_due: Decimal
    currency: str
    due_date: date
    level: int  # 1-based
    final_level: int
    days_overdue: int
    write_off_on: date
    suspends_service: bool = False  # this reminder's level suspends the customer's entitlements
    late_fee: Decimal | None = None  # charged at this level, on invoice `late_fee_invoice`
    late_fee_invoice: str | None = None


class NurtureTouch(BaseModel):
    deal_id: str
    lead: LeadInput
    touch_number: int
    score: int
    template: str = "nurture_touch.txt"  # deals from before the cadence had one template
    owner: str | None = None  # signs the e-mail


class RevenueRecognition(BaseModel):
    deal_id: str
    key: str  # natural key of the posting within the deal, e.g. "month-3:PLATFORM"
    stream: Literal["subscription", "services", "usage"]
    amount: Decimal
    currency: str
    recognized_at: datetime
    memo: str


class WriteOffRequest(BaseModel):
    deal_id: str
    currency: str
    written_off_at: datetime
    reason: str


class WriteOffResult(BaseModel):
    invoice_numbers: list[str]
    bad_debt: Decimal  # unpaid and already recognized: an expense
    reversed_deferred: Decimal  # unpaid and never delivered: the billing is reversed


class DealClosing(BaseModel):
    deal_id: str
    lead_id: str
    stage: str
    score: int
    reason: str
    closed_at: datetime


class ChargeRequest(BaseModel):
    """One charge of a card on file. The gateway's idempotency key comes from the invoice and the
    attempt series, so a retried activity never charges twice."""

    deal_id: str  # in the payment's metadata, so the gateway's webhook finds the deal
    invoice_number: str
    attempt_series: int
    amount: Decimal
    currency: str
    customer: str
    payment_method: str


class ChargeResult(BaseModel):
    status: Literal["succeeded", "declined"]
    payment_intent_id: str | None = None
    amount: Decimal
    currency: str
    decline_code: str | None = None
    hard_decline: bool = False
    replayed: bool = False  # the gateway answered from its idempotency store
