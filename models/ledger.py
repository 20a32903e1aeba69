"""The SQL ledger: the system of record for leads, quotes, contracts, orders, invoices, payments,
journal entries and outgoing e-mail. Never imported by workflow code.

Every table has a natural key derived from the deal and the step, so an activity that runs twice
finds its first write instead of making a second one.
"""

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, Numeric, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from models.money import CENT


class MoneyType(TypeDecorator[Decimal]):
    """Exact money: NUMERIC(18,2) where the database has it, integer cents on SQLite.

    SQLite's NUMERIC affinity would store a decimal as a binary float, so there the amount is kept
    as a whole number of cents and turned back into a Decimal on the way out.
    """

    impl = Numeric(18, 2)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Integer())
        return dialect.type_descriptor(Numeric(18, 2, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, Decimal):
            raise TypeError(f"money must be a Decimal, got {type(value).__name__}")
        if value != value.quantize(CENT):
            raise ValueError(f"money has more than 2 decimals: {value}")
        if dialect.name == "sqlite":
            return int(value * 100)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return (Decimal(int(value)) / 100).quantize(CENT)
        return Decimal(value).quantize(CENT)


def money(**kwargs: Any) -> Any:
    return Field(sa_type=MoneyType, **kwargs)


def utc_timestamp(**kwargs: Any) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), **kwargs))


class Account(SQLModel, table=True):
    __tablename__ = "accounts"
    account_key: str = Field(primary_key=True, max_length=254)  # the contact's e-mail domain
    name: str = Field(max_length=200)
    country: str = Field(max_length=2)


class Lead(SQLModel, table=True):
    __tablename__ = "leads"
    lead_id: str = Field(primary_key=True, max_length=64)
    deal_id: str = Field(index=True, max_length=80)
    account_key: str = Field(foreign_key="accounts.account_key", max_length=254, index=True)
    company: str = Field(max_length=200)
    contact_name: str = Field(max_length=200)
    contact_email: str = Field(max_length=254)
    source: str = Field(max_length=40)
    country: str = Field(max_length=2)
    employees: int | None = None
    currency: str = Field(max_length=3)
    score: int | None = None
    owner: str | None = Field(default=None, max_length=100)
    status: str = Field(default="open", max_length=20)  # open, or the deal's terminal stage
    close_reason: str | None = None
    captured_at: datetime = utc_timestamp(nullable=False)
    closed_at: datetime | None = utc_timestamp(nullable=True)


class PriceBookRecord(SQLModel, table=True):
    """Every price book version the workers have run with: a deal prices all its quotes on the
    version of its first, long after config/catalog.toml has moved on."""

    __tablename__ = "price_books"
    version: str = Field(primary_key=True, max_length=40)
    sha256: str = Field(max_length=64)  # of `content`: the same version must mean the same prices
    content: str  # the catalog as JSON
    loaded_at: datetime = utc_timestamp()


class QuoteRecord(SQLModel, table=True):
    __tablename__ = "quotes"
    __table_args__ = (UniqueConstraint("deal_id", "version"),)
    quote_id: str = Field(primary_key=True, max_length=100)  # <deal_id>-Q<version>
    deal_id: str = Field(index=True, max_length=80)
    version: int
    price_book_version: str = Field(max_length=40)
    currency: str = Field(max_length=3)
    submitted_by: str = Field(max_length=100)
    discount_percent: Decimal = money()
    term_months: int
    billing_period: str = Field(max_length=10)
    list_total: Decimal = money()
    net_total: Decimal = money()
    created_at: datetime = utc_timestamp(nullable=False)
    document_sha256: str = Field(default="", max_length=64)  # of `html`, the quote as sent
    html: str = ""


class QuoteLineRecord(SQLModel, table=True):
    __tablename__ = "quote_lines"
    quote_id: str = Field(foreign_key="quotes.quote_id", primary_key=True, max_length=100)
    line_no: int = Field(primary_key=True)
    sku: str = Field(max_length=40)
    quantity: int
    monthly_list: Decimal | None = money(default=None)
    monthly_net: Decimal | None = money(default=None)
    list_amount: Decimal = money()
    net_amount: Decimal = money()


class ContractRecord(SQLModel, table=True):
    __tablename__ = "contracts"
    contract_id: str = Field(primary_key=True, max_length=100)  # <deal_id>-C<quote version>
    deal_id: str = Field(index=True, max_length=80)
    quote_id: str = Field(foreign_key="quotes.quote_id", max_length=100)
    version: int
    document_sha256: str = Field(max_length=64)
    html: str
    issued_at: datetime = utc_timestamp(nullable=False)
    signed_by: str | None = Field(default=None, max_length=100)
    signer_email: str | None = Field(default=None, max_length=254)
    signed_at: datetime | None = utc_timestamp(nullable=True)


class OrderRecord(SQLModel, table=True):
    __tablename__ = "orders"
    order_id: str = Field(primary_key=True, max_length=100)  # <deal_id>-O1
    deal_id: str = Field(unique=True, max_length=80)
    quote_id: str = Field(foreign_key="quotes.quote_id", max_length=100)
    status: str = Field(default="provisioned", max_length=20)
    created_at: datetime = utc_timestamp(nullable=False)


class Entitlement(SQLModel, table=True):
    __tablename__ = "entitlements"
    order_id: str = Field(foreign_key="orders.order_id", primary_key=True, max_length=100)
    sku: str = Field(primary_key=True, max_length=40)
    quantity: int
    active: bool = True


class NumberSeries(SQLModel, table=True):
    """Gap-free document numbers: a number is taken in the same transaction that uses it."""

    __tablename__ = "number_series"
    name: str = Field(primary_key=True, max_length=20)
    next_value: int = 1


class InvoiceRecord(SQLModel, table=True):
    __tablename__ = "invoices"
    __table_args__ = (UniqueConstraint("deal_id", "billing_month", "kind"),)
    number: str = Field(primary_key=True, max_length=40)
    deal_id: str = Field(index=True, max_length=80)
    # The month boundary it was issued at (0 = activation): one billing invoice each. A late fee
    # (kind "late_fee") has the month of the overdue invoice it was charged on: one fee each.
    billing_month: int
    kind: str = Field(default="billing", max_length=12)
    # Offered on the invoice: this much off when paid in full by this day.
    early_payment_discount: Decimal = money(default=Decimal("0.00"))
    early_payment_until: date | None = None
    period_index: int | None = None  # the billing period it bills in advance; None: usage only
    currency: str = Field(max_length=3)
    amount: Decimal = money()  # what is due: the lines and their tax
    tax_amount: Decimal = money(default=Decimal("0.00"))
    amount_paid: Decimal = money(default=Decimal("0.00"))  # payments and customer credit applied
    amount_credited: Decimal = money(default=Decimal("0.00"))  # credit notes
    status: str = Field(
        default="open", max_length=20
    )  # draft, open, paid, disputed, void, uncollectible
    issued_on: date
    due_date: date
    service_from: date
    service_to: date
    html: str


class InvoiceLineRecord(SQLModel, table=True):
    __tablename__ = "invoice_lines"
    invoice_number: str = Field(foreign_key="invoices.number", primary_key=True, max_length=40)
    line_no: int = Field(primary_key=True)
    sku: str = Field(max_length=40)
    description: str = Field(max_length=200)
    quantity: int
    unit_price: Decimal = money()
    amount: Decimal = money()  # before tax
    tax_rate: Decimal = money(default=Decimal("0.00"))  # percent
    tax_amount: Decimal = money(default=Decimal("0.00"))


class PaymentRecordRow(SQLModel, table=True):
    """Money received, once per reference; where it went is in `payment_allocations`."""

    __tablename__ = "payments"
    __table_args__ = (UniqueConstraint("deal_id", "reference"),)
    id: int | None = Field(default=None, primary_key=True)
    deal_id: str = Field(index=True, max_length=80)
    reference: str = Field(max_length=100)
    # The invoice the payer named, if any.
    invoice_number: str | None = Field(default=None, foreign_key="invoices.number", max_length=40)
    amount: Decimal = money()
    to_credit: Decimal = money(default=Decimal("0.00"))  # what no open invoice needed
    currency: str = Field(max_length=3)
    recorded_by: str = Field(max_length=100)
    received_at: datetime = utc_timestamp(nullable=False)


class PaymentAllocation(SQLModel, table=True):
    """Part of a payment, or of the customer's credit, applied to one invoice."""

    __tablename__ = "payment_allocations"
    deal_id: str = Field(primary_key=True, max_length=80)
    source: str = Field(primary_key=True, max_length=120)  # payment:<reference> | credit:<invoice>
    invoice_number: str = Field(foreign_key="invoices.number", primary_key=True, max_length=40)
    amount: Decimal = money()


class CreditNoteRecord(SQLModel, table=True):
    """Reduces an issued invoice (never edited): its open balance, or, once paid, as credit."""

    __tablename__ = "credit_notes"
    __table_args__ = (UniqueConstraint("deal_id", "reference"),)
    number: str = Field(primary_key=True, max_length=40)
    deal_id: str = Field(index=True, max_length=80)
    reference: str = Field(max_length=100)  # the sender's: the same reference twice counts once
    invoice_number: str = Field(foreign_key="invoices.number", max_length=40)
    amount: Decimal = money()
    to_credit: Decimal = money(default=Decimal("0.00"))  # the part the invoice had been paid
    currency: str = Field(max_length=3)
    reason: str = Field(max_length=2000)
    issued_by: str = Field(max_length=100)
    issued_at: datetime = utc_timestamp(nullable=False)


class DisputeRecord(SQLModel, table=True):
    """A contested invoice: a chargeback of a card payment, or an amount contested before payment."""

    __tablename__ = "disputes"
    dispute_id: str = Field(primary_key=True, max_length=100)
    deal_id: str = Field(index=True, max_length=80)
    invoice_number: str = Field(foreign_key="invoices.number", max_length=40)
    amount: Decimal = money()
    currency: str = Field(max_length=3)
    payment_reference: str | None = Field(default=None, max_length=100)
    reason: str = Field(max_length=2000)
    status: str = Field(default="open", max_length=12)  # open, won, lost, written_off
    opened_at: datetime = utc_timestamp(nullable=False)
    closed_at: datetime | None = utc_timestamp(nullable=True)


class RefundRecord(SQLModel, table=True):
    """Customer credit paid back to the customer."""

    __tablename__ = "refunds"
    __table_args__ = (UniqueConstraint("deal_id", "reference"),)
    id: int | None = Field(default=None, primary_key=True)
    deal_id: str = Field(index=True, max_length=80)
    reference: str = Field(max_length=100)
    amount: Decimal = money()
    currency: str = Field(max_length=3)
    recorded_by: str = Field(max_length=100)
    refunded_at: datetime = utc_timestamp(nullable=False)


class JournalEntry(SQLModel, table=True):
    __tablename__ = "journal_entries"
    id: int | None = Field(default=None, primary_key=True)
    entry_key: str = Field(unique=True, max_length=200)  # <deal_id>:<what>:<which>
    deal_id: str = Field(index=True, max_length=80)
    currency: str = Field(max_length=3)
    memo: str = Field(max_length=400)
    posted_at: datetime = utc_timestamp(nullable=False)  # when it happened
    # The accounting period (YYYY-MM) it is booked in: posted_at's month, or the next open one
    # when that month was closed (the memo says so).
    period: str = Field(default="", max_length=7, index=True)


class ClosedPeriod(SQLModel, table=True):
    """An accounting month closed for postings: later postings for it go to the next open one."""

    __tablename__ = "closed_periods"
    period: str = Field(primary_key=True, max_length=7)  # YYYY-MM
    closed_at: datetime = utc_timestamp(nullable=False)
    closed_by: str = Field(max_length=100)


class JournalLine(SQLModel, table=True):
    __tablename__ = "journal_lines"
    id: int | None = Field(default=None, primary_key=True)
    entry_id: int = Field(foreign_key="journal_entries.id", index=True)
    account: str = Field(max_length=40)
    debit: Decimal = money(default=Decimal("0.00"))
    credit: Decimal = money(default=Decimal("0.00"))


class OutboxEmail(SQLModel, table=True):
    """Every e-mail is written here first under a natural key, then delivered once."""

    __tablename__ = "outbox_emails"
    key: str = Field(primary_key=True, max_length=200)
    deal_id: str = Field(index=True, max_length=80)
    recipient: str = Field(max_length=254)
    subject: str = Field(max_length=300)
    body: str
    message_id: str = Field(max_length=300)
    created_at: datetime = utc_timestamp(nullable=False)
    sent_at: datetime | None = utc_timestamp(nullable=True)


class UsageEvent(SQLModel, table=True):
    """A metered usage event, stored once under the sender's id: a resent event is ignored."""

    __tablename__ = "usage_events"
    __table_args__ = (Index("ix_usage_events_deal_sku_time", "deal_id", "sku", "occurred_at"),)
    event_id: str = Field(primary_key=True, max_length=128)
    deal_id: str = Field(max_length=80)
    sku: str = Field(max_length=40)
    quantity: int = Field(sa_type=BigInteger)  # in the product's metered unit, e.g. one API call
    occurred_at: datetime = utc_timestamp(nullable=False)


class UsageChargeRecord(SQLModel, table=True):
    """Metered usage billed in arrears: one row per invoice step of a deal's product and month.

    `metered_through` of the latest row is how much of the month's usage has been billed, so
    events that arrive after their month was invoiced are billed on the next invoice, once.
    """

    __tablename__ = "usage_charges"
    deal_id: str = Field(primary_key=True, max_length=80)
    sku: str = Field(primary_key=True, max_length=40)
    month: int = Field(primary_key=True)  # 1-based month of the term
    metered_through: int = Field(primary_key=True, sa_type=BigInteger)
    metered_before: int = Field(sa_type=BigInteger)
    # None when the step billed nothing (usage within the commitment) and no invoice was issued.
    invoice_number: str | None = Field(default=None, foreign_key="invoices.number", max_length=40)
    amount: Decimal = money()


# ---------------------------------------------------------------- the front of the deal (leads)


class ContactIdentity(SQLModel, table=True):
    """A person, by normalized e-mail address (see l2c/identity.py), and the latest deal of theirs."""

    __tablename__ = "contact_identities"
    identity_key: str = Field(primary_key=True, max_length=254)
    account_key: str = Field(max_length=254)
    first_lead_id: str = Field(max_length=64)
    latest_deal_id: str = Field(max_length=80)
    seen_at: datetime = utc_timestamp(nullable=False)


class AccountOpenDeal(SQLModel, table=True):
    """The one open deal of an account: a later lead of the account (same person, or the same
    company domain) joins it instead of starting another. Claimed by inserting the row (the
    primary key makes two leads racing for one account a conflict, never two deals) and released
    when that deal closes."""

    __tablename__ = "account_open_deals"
    account_key: str = Field(primary_key=True, max_length=254)
    deal_id: str = Field(max_length=80)
    claimed_at: datetime = utc_timestamp(nullable=False)


class EnrichmentCacheEntry(SQLModel, table=True):
    """An enrichment service's answer for a domain (`found` False: it knows no such company),
    kept so that leads of a company ask the service once per time-to-live."""

    __tablename__ = "enrichment_cache"
    domain: str = Field(primary_key=True, max_length=254)
    found: bool
    firmographics: str  # models.leads.Firmographics as JSON; "{}" when not found
    fetched_at: datetime = utc_timestamp(nullable=False)


class LeadScoreModelRecord(SQLModel, table=True):
    """A lead-scoring model trained on the ledger's closed deals (`l2c leads train`); the latest
    version scores new leads, and each deal records the version it was scored with."""

    __tablename__ = "lead_score_models"
    version: int = Field(primary_key=True)
    trained_at: datetime = utc_timestamp(nullable=False)
    won: int
    lost: int
    model: str  # the model's parameters as JSON


class RoutingCursor(SQLModel, table=True):
    """Whose turn it is in a team's round-robin."""

    __tablename__ = "routing_cursors"
    team: str = Field(primary_key=True, max_length=80)
    next_index: int = 0


class DealMilestoneRecord(SQLModel, table=True):
    """Moments of a deal the KPIs measure that no document records: a lead becoming sales-ready
    and being accepted, an approval asked for and given (models.documents.Milestone). Keyed by
    what they are, so a retried or repeated activity stores each once, at its first time."""

    __tablename__ = "deal_milestones"
    deal_id: str = Field(primary_key=True, max_length=80)
    kind: str = Field(primary_key=True, max_length=40)
    key: str = Field(primary_key=True, max_length=120)
    at: datetime = utc_timestamp(nullable=False)
    actor: str = Field(default="", max_length=100)


class LeadAssignmentRecord(SQLModel, table=True):
    """Each owner a deal's lead was assigned to: the natural key (deal, assignment number) makes a
    retried routing step return the owner it already chose, without taking another turn."""

    __tablename__ = "lead_assignments"
    deal_id: str = Field(primary_key=True, max_length=80)
    assignment: int = Field(primary_key=True)
    owner: str = Field(max_length=100)
    team: str = Field(max_length=80)
    reason: str = Field(max_length=300)
    assigned_at: datetime = utc_timestamp(nullable=False)
    accept_by: datetime | None = utc_timestamp(nullable=True)
