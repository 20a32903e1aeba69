"""Signal payloads: what ops staff and systems send to a running deal. One JSON object each."""

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from models.deal import normalize_email
from models.money import Amount, CurrencyCode

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]

BillingPeriod = Literal["upfront", "annual", "monthly"]


class _Payload(BaseModel):
    # A typo in a field name is a mistake worth refusing, not silently ignoring.
    model_config = ConfigDict(extra="forbid")


class QuoteLineInput(_Payload):
    sku: Annotated[
        str, StringConstraints(strip_whitespace=True, to_upper=True, min_length=1, max_length=40)
    ]
    # Whole units only: a fractional seat is refused by the int type.
    quantity: int = Field(gt=0, le=1_000_000)


class SubmitQuote(_Payload):
    submitted_by: Name
    lines: list[QuoteLineInput] = Field(min_length=1, max_length=50)
    discount_percent: Decimal = Field(default=Decimal(0), ge=0, le=100, decimal_places=2)
    term_months: int = Field(default=12, ge=1, le=120)
    billing_period: BillingPeriod = "monthly"
    # Net days for this customer's invoices; default: the policy's (net 30). Other terms may
    # need an approval (config/approvers.toml).
    payment_terms_days: int | None = Field(default=None, ge=0, le=120)


class ApproveDiscount(_Payload):
    approver: Name
    comment: Text = ""
    # Optional: the role the approver acts in when several approvals are needed (default: the
    # highest still needed that they may give), and the quote version they looked at (an
    # approval of a superseded version is refused).
    role: Name | None = None
    quote_version: int | None = Field(default=None, ge=1)


class RejectDiscount(_Payload):
    approver: Name
    reason: Reason
    quote_version: int | None = Field(default=None, ge=1)


class CardOnFile(_Payload):
    """The customer's card at the payment gateway, charged on each invoice's due date."""

    customer: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^cus_\w{1,100}$")]
    payment_method: Annotated[
        str, StringConstraints(strip_whitespace=True, pattern=r"^pm_\w{1,100}$")
    ]


class SignContract(_Payload):
    signer_name: Name
    signer_email: Annotated[str, StringConstraints(max_length=254)]
    document_sha256: Annotated[
        str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[0-9a-f]{64}$")
    ]
    # Optional: without a card on file, invoices wait for record_payment (bank transfers).
    card_on_file: CardOnFile | None = None

    @field_validator("signer_email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        return normalize_email(value)


class DeclineContract(_Payload):
    reason: Reason
    by: Name = "customer"


InvoiceNumber = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)
]


class RecordPayment(_Payload):
    # The invoice the payment is for; what it does not need goes to the other open invoices,
    # oldest first, then to customer credit. Without one, the oldest open invoices come first.
    invoice_number: InvoiceNumber | None = None
    amount: Amount = Field(gt=0)
    reference: Name
    currency: CurrencyCode | None = None  # when given, it must be the deal's currency
    recorded_by: Name = "ops"


class IssueCreditNote(_Payload):
    invoice_number: InvoiceNumber
    amount: Amount = Field(gt=0)
    reason: Reason
    reference: Name  # the same reference twice counts once
    currency: CurrencyCode | None = None
    issued_by: Name


class ChangeQuantity(_Payload):
    sku: Annotated[
        str, StringConstraints(strip_whitespace=True, to_upper=True, min_length=1, max_length=40)
    ]
    quantity: int = Field(gt=0, le=1_000_000)
    by: Name = "ops"


class OpenDispute(_Payload):
    invoice_number: InvoiceNumber
    dispute_id: Name
    amount: Amount = Field(gt=0)
    reason: Reason
    # The card payment a chargeback took back; without it, the customer contests an unpaid amount.
    payment_reference: Name | None = None
    by: Name = "ops"


class CloseDispute(_Payload):
    dispute_id: Name
    outcome: Literal["won", "lost"]  # won: the invoice stands; lost: the amount is credited
    by: Name = "ops"


class RefundCredit(_Payload):
    amount: Amount = Field(gt=0)
    reference: Name
    currency: CurrencyCode | None = None
    recorded_by: Name = "ops"


class LogEngagement(_Payload):
    kind: Annotated[
        str, StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^[a-z_]{1,40}$")
    ]
    by: Name = "marketing"


class AcceptLead(_Payload):
    """The lead's owner takes it on: the routing SLA stops and the response time is measured."""

    by: Name
    note: Text = ""


class MarkLost(_Payload):
    by: Name
    reason: Reason


class GiveNotice(_Payload):
    """Notice that the contract is not to renew: it ends with the term under way (churn)."""

    by: Name
    party: Literal["customer", "seller"]
    reason: Reason
