"""Lead-to-cash KPIs from the ledger (`l2c kpi`): conversions, cycle times, invoice accuracy, DSO
and revenue leakage, for a window of days (UTC, both ends included).

The ledger is the only source (moments only a deal's workflow sees, such as a lead's acceptance
or an approval, are kept there as `deal_milestones`). A KPI without data in the window has no
value (None, 0 samples), never a 0. Money is Decimal and per currency: amounts in different currencies are
never added. Definitions and formulas: docs/kpi.md (and each KPI's `definition`).
"""

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal

from pydantic import BaseModel, computed_field
from sqlalchemy import Engine
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from l2c.journal import ACCOUNTS_RECEIVABLE
from l2c.pricing import billing_plan
from models.calendar import as_utc
from models.documents import PricedLine
from models.ledger import (
    ContractRecord,
    CreditNoteRecord,
    DealMilestoneRecord,
    InvoiceRecord,
    JournalEntry,
    JournalLine,
    Lead,
    LeadAssignmentRecord,
    QuoteLineRecord,
    QuoteRecord,
    UsageChargeRecord,
)
from models.money import ZERO, to_cents

DAY_SECONDS = 86_400
RATIO = Decimal("0.0001")
DAYS = Decimal("0.01")
DSO_DAYS = Decimal("0.1")

# Durations (seconds) behind the cycle-time KPIs, by KPI key: the charts draw them.
DURATION_KPIS = (
    "lead_response",
    "sales_cycle",
    "approval_cycle",
    "quote_to_contract",
    "signature_cycle",
)


class Kpi(BaseModel):
    """One KPI: its value with what it was computed from, or why it has none."""

    key: str
    name: str
    unit: str  # "days", "share", "credit notes per invoice", or a currency code
    currency: str | None = None  # money KPIs: one row per currency
    value: Decimal | None = None  # durations: the median
    p90: Decimal | None = None  # durations: the 90th percentile (nearest rank)
    numerator: Decimal | int | None = None
    denominator: Decimal | int | None = None
    samples: int = 0
    definition: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> Literal["ok", "no data"]:
        return "no data" if self.value is None else "ok"


class Funnel(BaseModel):
    """The leads captured in the window, and how far their deals have got (as of now)."""

    leads: int
    opportunities: int
    quoted: int
    won: int


class LeakageRow(BaseModel):
    """Contracted vs billed vs collected for billing periods invoiced in the window, in one
    currency, before tax. `billed - collected` = credited + written off + still open."""

    currency: str
    periods: int
    contracted: Decimal
    billed: Decimal
    credited: Decimal
    written_off: Decimal
    collected: Decimal
    still_open: Decimal

    @computed_field  # type: ignore[prop-decorator]
    @property
    def unbilled(self) -> Decimal:
        """Contracted but not billed (negative: billed above the contract)."""
        return self.contracted - self.billed

    @computed_field  # type: ignore[prop-decorator]
    @property
    def uncollected(self) -> Decimal:
        return self.billed - self.collected

    @computed_field  # type: ignore[prop-decorator]
    @property
    def leakage(self) -> Decimal:
        """What of the contracted amount is lost for good: never billed, credited back or
        written off (amounts still open are not lost yet)."""
        return self.unbilled + self.credited + self.written_off


class DsoRow(BaseModel):
    currency: str | None  # None: no currency had anything billed or owed
    receivables: Decimal  # at the end of the window
    billed: Decimal  # in the window, with tax
    invoices: int
    days: int
    dso: Decimal | None  # None: nothing billed in the window


class KpiReport(BaseModel):
    since: date
    until: date
    days: int
    currency: str | None
    generated_at: datetime
    kpis: list[Kpi]
    funnel: Funnel
    leakage: list[LeakageRow]
    dso: list[DsoRow]
    durations: dict[str, list[int]]  # seconds, per duration KPI


class WindowError(ValueError):
    """The window is empty or upside down."""


# ---------------------------------------------------------------- definitions

DEFINITIONS = {
    "lead_response": "Median and p90 time from a lead becoming sales-ready to its owner "
    "accepting it (accept_lead, or a quote), for leads accepted in the window and quoted since.",
    "lead_to_opportunity": "Leads captured in the window (merged duplicates excluded) whose deal "
    "became an opportunity: sales-ready (an owner given an SLA to accept it) or quoted.",
    "quote_to_close": "Deals of a lead whose first quote was priced in the window, and of them "
    "those whose contract is signed (deals still open count as not closed).",
    "sales_cycle": "Median and p90 time from the lead's capture to the deal's contract "
    "signature, for contracts of a lead's deal signed in the window.",
    "approval_cycle": "Median and p90 time from a quote's approvals being asked for to the last "
    "of them being given, for quotes whose approvals were complete in the window.",
    "quote_to_contract": "Median and p90 time from a quote being priced to its first contract "
    "being sent for signature, for contracts first sent in the window: the approval wait "
    "included, about 0 for a quote that needed no approval.",
    "signature_cycle": "Median and p90 time from a quote version's first contract being sent to "
    "its signature (redline revisions included), for contracts signed in the window.",
    "invoice_accuracy": "Credit notes issued in the window on billing invoices, per billing "
    "invoice issued in the window (late fees and drafts left out); lower is better.",
    "dso": "Receivables at the end of the window / invoiced in the window (with tax) x days in "
    "the window, per currency.",
    "revenue_leakage": "For billing periods invoiced in the window (each signed contract's term), "
    "before tax: contracted (the signed quote's plan for the period) - billed (the invoice "
    "without metered usage) + credited + written off. Value: the leakage; basis: collected of "
    "contracted.",
}

NAMES = {
    "lead_response": "Lead response time",
    "lead_to_opportunity": "Lead-to-opportunity conversion",
    "quote_to_close": "Quote-to-close conversion",
    "sales_cycle": "Sales cycle length",
    "approval_cycle": "Approval cycle time",
    "quote_to_contract": "Quote-to-contract time",
    "signature_cycle": "Signature cycle time",
    "invoice_accuracy": "Invoice accuracy (credit notes per invoice)",
    "dso": "DSO (days sales outstanding)",
    "revenue_leakage": "Revenue leakage",
}


# ---------------------------------------------------------------- statistics


def median(values: Iterable[int]) -> Decimal | None:
    """The middle value, or the mean of the middle two; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return Decimal(ordered[middle])
    return (Decimal(ordered[middle - 1]) + Decimal(ordered[middle])) / 2


def percentile(values: Iterable[int], percent: int) -> Decimal | None:
    """The nearest-rank percentile: the smallest value at least `percent`% of the values are at
    or below (always one of the values); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(percent * len(ordered) / 100))
    return Decimal(ordered[rank - 1])


def _days(seconds: Decimal | None) -> Decimal | None:
    if seconds is None:
        return None
    return (seconds / DAY_SECONDS).quantize(DAYS, rounding=ROUND_HALF_EVEN)


def _ratio(numerator: int | Decimal, denominator: int | Decimal) -> Decimal | None:
    if not denominator:
        return None
    return (Decimal(numerator) / Decimal(denominator)).quantize(RATIO, rounding=ROUND_HALF_EVEN)


def _seconds(later: datetime, earlier: datetime) -> int:
    return int((as_utc(later) - as_utc(earlier)).total_seconds())


# ---------------------------------------------------------------- the ledger, read


@dataclass(frozen=True)
class _Lead:
    deal_id: str
    currency: str
    status: str
    captured_at: datetime


@dataclass(frozen=True)
class _Quote:
    quote_id: str
    deal_id: str
    currency: str
    created_at: datetime


@dataclass(frozen=True)
class _Contract:
    deal_id: str
    quote_id: str
    version: int
    issued_at: datetime
    signed_at: datetime | None


@dataclass(frozen=True)
class _CreditNote:
    invoice_number: str
    currency: str
    issued_at: datetime


@dataclass(frozen=True)
class _Posting:
    currency: str
    posted_at: datetime
    debit: Decimal
    credit: Decimal


@dataclass(frozen=True)
class _Invoice:
    number: str
    deal_id: str
    kind: str
    billing_month: int
    period_index: int | None
    currency: str
    amount: Decimal
    tax_amount: Decimal
    amount_paid: Decimal
    amount_credited: Decimal
    status: str
    issued_on: date


@dataclass(frozen=True)
class _SignedQuote:
    quote_id: str
    term_months: int
    billing_period: str


class _Window:
    def __init__(self, since: date, until: date):
        if until < since:
            raise WindowError(f"the window ends ({until}) before it starts ({since})")
        self.since, self.until = since, until
        self.start = datetime.combine(since, time.min, UTC)
        self.end = datetime.combine(until + timedelta(days=1), time.min, UTC)  # exclusive
        self.days = (until - since).days + 1

    def has(self, moment: datetime | date | None) -> bool:
        if moment is None:
            return False
        if isinstance(moment, datetime):
            return self.start <= as_utc(moment) < self.end
        return self.since <= moment <= self.until


def compute_kpis(
    engine: Engine,
    since: date,
    until: date,
    currency: str | None = None,
    now: datetime | None = None,
) -> KpiReport:
    """Every KPI for the days `since` to `until` (UTC, both included), from the ledger as it is;
    `currency` keeps only deals, documents and postings in that currency."""
    window = _Window(since, until)
    with Session(engine) as session:
        leads = [
            _Lead(*row)
            for row in session.execute(
                sa_select(
                    col(Lead.deal_id), col(Lead.currency), col(Lead.status), col(Lead.captured_at)
                )
            ).all()
        ]
        quotes = [
            _Quote(*row)
            for row in session.execute(
                sa_select(
                    col(QuoteRecord.quote_id),
                    col(QuoteRecord.deal_id),
                    col(QuoteRecord.currency),
                    col(QuoteRecord.created_at),
                )
            ).all()
        ]
        contracts = [
            _Contract(*row)
            for row in session.execute(
                sa_select(
                    col(ContractRecord.deal_id),
                    col(ContractRecord.quote_id),
                    col(ContractRecord.version),
                    col(ContractRecord.issued_at),
                    col(ContractRecord.signed_at),
                )
            ).all()
        ]
        sales_ready = set(
            session.execute(
                sa_select(col(LeadAssignmentRecord.deal_id)).where(
                    col(LeadAssignmentRecord.accept_by).is_not(None)
                )
            )
            .scalars()
            .all()
        )
        invoices = [
            _Invoice(*row)
            for row in session.execute(
                sa_select(
                    col(InvoiceRecord.number),
                    col(InvoiceRecord.deal_id),
                    col(InvoiceRecord.kind),
                    col(InvoiceRecord.billing_month),
                    col(InvoiceRecord.period_index),
                    col(InvoiceRecord.currency),
                    col(InvoiceRecord.amount),
                    col(InvoiceRecord.tax_amount),
                    col(InvoiceRecord.amount_paid),
                    col(InvoiceRecord.amount_credited),
                    col(InvoiceRecord.status),
                    col(InvoiceRecord.issued_on),
                ).where(col(InvoiceRecord.status) != "draft")
            ).all()
        ]
        credit_notes = [
            _CreditNote(*row)
            for row in session.execute(
                sa_select(
                    col(CreditNoteRecord.invoice_number),
                    col(CreditNoteRecord.currency),
                    col(CreditNoteRecord.issued_at),
                )
            ).all()
        ]
        receivable_lines = [
            _Posting(*row)
            for row in session.execute(
                sa_select(
                    col(JournalEntry.currency),
                    col(JournalEntry.posted_at),
                    col(JournalLine.debit),
                    col(JournalLine.credit),
                )
                .join(JournalLine, col(JournalLine.entry_id) == col(JournalEntry.id))
                .where(col(JournalLine.account) == ACCOUNTS_RECEIVABLE)
            ).all()
        ]
        usage = session.execute(
            sa_select(col(UsageChargeRecord.invoice_number), col(UsageChargeRecord.amount)).where(
                col(UsageChargeRecord.invoice_number).is_not(None)
            )
        ).all()
        signed_quote_ids = {c.quote_id for c in contracts if c.signed_at is not None}
        signed_quotes = {
            row[0]: _SignedQuote(*row)
            for row in session.execute(
                sa_select(
                    col(QuoteRecord.quote_id),
                    col(QuoteRecord.term_months),
                    col(QuoteRecord.billing_period),
                )
            ).all()
            if row[0] in signed_quote_ids
        }
        milestones = session.exec(select(DealMilestoneRecord)).all()
        quote_lines: dict[str, list[QuoteLineRecord]] = defaultdict(list)
        for line in session.exec(
            select(QuoteLineRecord).order_by(col(QuoteLineRecord.line_no))
        ).all():
            if line.quote_id in signed_quote_ids:
                quote_lines[line.quote_id].append(line)

    def kept(row_currency: str) -> bool:
        return currency is None or row_currency == currency

    quote_currency = {q.quote_id: q.currency for q in quotes}
    quote_created = {q.quote_id: as_utc(q.created_at) for q in quotes}
    leads = [lead for lead in leads if kept(lead.currency)]
    quotes = [q for q in quotes if kept(q.currency)]
    contracts = [c for c in contracts if kept(quote_currency.get(c.quote_id, ""))]
    invoices = [i for i in invoices if kept(i.currency)]
    credit_notes = [n for n in credit_notes if kept(n.currency)]
    receivable_lines = [r for r in receivable_lines if kept(r.currency)]

    captured: dict[str, datetime] = {}
    for lead in leads:
        at = as_utc(lead.captured_at)
        captured[lead.deal_id] = min(at, captured.get(lead.deal_id, at))
    quoted_deals = {q.deal_id for q in quotes}
    signed_at: dict[str, datetime] = {}
    for contract in contracts:
        if contract.signed_at is not None:
            at = as_utc(contract.signed_at)
            signed_at[contract.deal_id] = min(at, signed_at.get(contract.deal_id, at))

    kpis: list[Kpi] = []

    # Lead response and approval cycle: from the milestones deals keep in the ledger.
    deal_kept = {lead.deal_id for lead in leads}
    moments: dict[tuple[str, str, str], datetime] = {
        (m.deal_id, m.kind, m.key): as_utc(m.at) for m in milestones if m.deal_id in deal_kept
    }
    durations_from_milestones = {
        "lead_response": [
            _seconds(accepted, ready)
            for (deal, kind, key), accepted in sorted(moments.items())
            if kind == "lead_accepted"
            and window.has(accepted)
            and (ready := moments.get((deal, "lead_sales_ready", key))) is not None
            and accepted >= ready  # accepted before it was sales-ready: no response time
        ],
        "approval_cycle": _approval_cycles(moments, window),
    }
    kpis.append(_duration("lead_response", durations_from_milestones["lead_response"]))

    # Funnel and lead-to-opportunity: the cohort of leads captured in the window.
    cohort = {
        lead.deal_id for lead in leads if window.has(lead.captured_at) and lead.status != "merged"
    }
    opportunities = {d for d in cohort if d in sales_ready or d in quoted_deals or d in signed_at}
    funnel = Funnel(
        leads=len(cohort),
        opportunities=len(opportunities),
        quoted=len(cohort & quoted_deals),
        won=len(cohort & set(signed_at)),
    )
    kpis.append(_conversion("lead_to_opportunity", len(opportunities), len(cohort)))

    # Quote-to-close: deals of a lead whose first quote was priced in the window.
    first_quote: dict[str, datetime] = {}
    for q in quotes:
        at = as_utc(q.created_at)
        first_quote[q.deal_id] = min(at, first_quote.get(q.deal_id, at))
    quoted = {d for d, at in first_quote.items() if d in captured and window.has(at)}
    kpis.append(_conversion("quote_to_close", len(quoted & set(signed_at)), len(quoted)))

    # Cycle times.
    durations: dict[str, list[int]] = {}
    durations["sales_cycle"] = [
        _seconds(at, captured[deal])
        for deal, at in sorted(signed_at.items())
        if deal in captured and window.has(at)
    ]
    first_sent: dict[tuple[str, int], datetime] = {}
    quote_of: dict[tuple[str, int], str] = {}
    for contract in contracts:
        key = (contract.deal_id, contract.version)
        at = as_utc(contract.issued_at)
        if key not in first_sent or at < first_sent[key]:
            first_sent[key] = at
        quote_of[key] = contract.quote_id
    durations["quote_to_contract"] = [
        _seconds(at, quote_created[quote_of[key]])
        for key, at in sorted(first_sent.items())
        if window.has(at) and quote_of[key] in quote_created
    ]
    durations["signature_cycle"] = [
        _seconds(contract.signed_at, first_sent[(contract.deal_id, contract.version)])
        for contract in sorted(contracts, key=lambda c: (c.deal_id, c.version))
        if contract.signed_at is not None and window.has(contract.signed_at)
    ]
    kpis.append(_duration("sales_cycle", durations["sales_cycle"]))
    kpis.append(_duration("approval_cycle", durations_from_milestones["approval_cycle"]))
    durations.update(durations_from_milestones)
    kpis.append(_duration("quote_to_contract", durations["quote_to_contract"]))
    kpis.append(_duration("signature_cycle", durations["signature_cycle"]))

    # Invoice accuracy: credit notes per billing invoice.
    kind_of = {i.number: i.kind for i in invoices}
    issued = [i for i in invoices if i.kind == "billing" and window.has(i.issued_on)]
    notes = [
        n
        for n in credit_notes
        if kind_of.get(n.invoice_number) == "billing" and window.has(n.issued_at)
    ]
    kpis.append(
        Kpi(
            key="invoice_accuracy",
            name=NAMES["invoice_accuracy"],
            unit="credit notes per invoice",
            value=_ratio(len(notes), len(issued)),
            numerator=len(notes),
            denominator=len(issued),
            samples=len(issued),
            definition=DEFINITIONS["invoice_accuracy"],
        )
    )

    # DSO, per currency.
    dso = _dso(window, invoices, receivable_lines, currency)
    for row in dso:
        kpis.append(
            Kpi(
                key="dso",
                name=NAMES["dso"],
                unit="days",
                currency=row.currency,
                value=row.dso,
                numerator=row.receivables,
                denominator=row.billed,
                samples=row.invoices if row.dso is not None else 0,
                definition=DEFINITIONS["dso"],
            )
        )

    # Revenue leakage, per currency.
    usage_billed: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for number, amount in usage:
        assert number is not None
        usage_billed[number] += amount
    signed_quote_of = {
        c.deal_id: c.quote_id
        for c in sorted(contracts, key=lambda c: as_utc(c.signed_at or c.issued_at), reverse=True)
        if c.signed_at is not None
    }  # a deal signs one contract; were there more, the first signed
    leakage = _leakage(window, invoices, signed_quote_of, signed_quotes, quote_lines, usage_billed)
    for leak in leakage or [None]:  # type: ignore[list-item]
        kpis.append(
            Kpi(
                key="revenue_leakage",
                name=NAMES["revenue_leakage"],
                unit=leak.currency if leak else (currency or "money"),
                currency=leak.currency if leak else currency,
                value=leak.leakage if leak else None,
                numerator=leak.collected if leak else None,
                denominator=leak.contracted if leak else None,
                samples=leak.periods if leak else 0,
                definition=DEFINITIONS["revenue_leakage"],
            )
        )

    return KpiReport(
        since=since,
        until=until,
        days=window.days,
        currency=currency,
        generated_at=now or datetime.now(UTC),
        kpis=kpis,
        funnel=funnel,
        leakage=leakage,
        dso=dso,
        durations=durations,
    )


def _approval_cycles(moments: dict[tuple[str, str, str], datetime], window: "_Window") -> list[int]:
    """Per quote version whose approvals were all given in the window: from the first asked for
    to the last given."""
    asked: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    given: dict[tuple[str, str], list[datetime | None]] = defaultdict(list)
    for (deal, kind, key), at in moments.items():
        if kind == "approval_requested":
            version = key.split(":", 1)[0]
            asked[(deal, version)].append(at)
            given[(deal, version)].append(moments.get((deal, "approval_given", key)))
    cycles = []
    for quote, times in sorted(given.items()):
        if times and all(t is not None for t in times):
            done = max(t for t in times if t is not None)
            if window.has(done):
                cycles.append(_seconds(done, min(asked[quote])))
    return cycles


def _conversion(key: str, converted: int, of: int) -> Kpi:
    return Kpi(
        key=key,
        name=NAMES[key],
        unit="share",
        value=_ratio(converted, of),
        numerator=converted,
        denominator=of,
        samples=of,
        definition=DEFINITIONS[key],
    )


def _duration(key: str, seconds: list[int]) -> Kpi:
    return Kpi(
        key=key,
        name=NAMES[key],
        unit="days",
        value=_days(median(seconds)),
        p90=_days(percentile(seconds, 90)),
        samples=len(seconds),
        definition=DEFINITIONS[key],
    )


def _dso(
    window: _Window,
    invoices: list[_Invoice],
    receivable_lines: Iterable[_Posting],
    currency: str | None,
) -> list[DsoRow]:
    """Receivables at the end of the window (the journal's, by when each posting happened) over
    what was invoiced in it (every final invoice, with tax, as receivables hold it)."""
    billed: dict[str, Decimal] = defaultdict(lambda: ZERO)
    count: dict[str, int] = defaultdict(int)
    for invoice in invoices:
        if window.has(invoice.issued_on):
            billed[invoice.currency] += invoice.amount
            count[invoice.currency] += 1
    owed: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for line in receivable_lines:
        if as_utc(line.posted_at) < window.end:
            owed[line.currency] += line.debit - line.credit
    currencies = sorted({c for c, b in billed.items() if b} | {c for c, o in owed.items() if o})
    if not currencies:
        return [
            DsoRow(
                currency=currency,
                receivables=ZERO,
                billed=ZERO,
                invoices=0,
                days=window.days,
                dso=None,
            )
        ]
    rows = []
    for cur in currencies:
        dso = None
        if billed[cur] > 0:
            dso = (owed[cur] / billed[cur] * window.days).quantize(DSO_DAYS, ROUND_HALF_EVEN)
        rows.append(
            DsoRow(
                currency=cur,
                receivables=owed[cur],
                billed=billed[cur],
                invoices=count[cur],
                days=window.days,
                dso=dso,
            )
        )
    return rows


def contracted_per_period(
    quote: _SignedQuote | QuoteRecord, lines: list[QuoteLineRecord]
) -> list[Decimal]:
    """What a signed quote bills in each period of its term, before tax: its billing plan, as
    the deal bills it (l2c.pricing.billing_plan), from the quote lines in the ledger."""
    priced = [
        PricedLine(
            sku=line.sku,
            name=line.sku,
            unit="",
            kind="recurring" if line.monthly_net is not None else "one_time",
            quantity=line.quantity,
            monthly_list=line.monthly_list,
            monthly_net=line.monthly_net,
            list_amount=line.list_amount,
            net_amount=line.net_amount,
        )
        for line in lines
    ]
    plan = billing_plan(priced, quote.billing_period, quote.term_months)  # type: ignore[arg-type]
    return [period.amount for period in plan]


def _share(amount: Decimal, part: Decimal, whole: Decimal) -> Decimal:
    """`part`/`whole` of `amount`, in cents (as credit notes take their tax share)."""
    if whole <= 0:
        return ZERO
    return to_cents(amount * part / whole)


def _leakage(
    window: _Window,
    invoices: list[_Invoice],
    signed_quote_of: dict[str, str],
    signed_quotes: dict[str, _SignedQuote],
    quote_lines: dict[str, list[QuoteLineRecord]],
    usage_billed: dict[str, Decimal],
) -> list[LeakageRow]:
    """Per currency, over the billing invoices issued in the window for a period of the signed
    contract's term (renewed terms are priced by renewal quotes no one signs: left out)."""
    plans: dict[str, list[Decimal]] = {}
    totals: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(lambda: ZERO))
    periods: dict[str, int] = defaultdict(int)
    for invoice in sorted(invoices, key=lambda i: i.number):
        quote_id = signed_quote_of.get(invoice.deal_id)
        if (
            invoice.kind != "billing"
            or invoice.period_index is None
            or quote_id is None
            or quote_id not in signed_quotes
            or not window.has(invoice.issued_on)
        ):
            continue
        quote = signed_quotes[quote_id]
        if invoice.billing_month >= quote.term_months:
            continue  # a renewed term
        if quote_id not in plans:
            plans[quote_id] = contracted_per_period(quote, quote_lines[quote_id])
        plan = plans[quote_id]
        if invoice.period_index >= len(plan):
            continue
        # The invoice's part that bills the contract: no tax, no metered usage in arrears.
        scope = invoice.amount - invoice.tax_amount - usage_billed[invoice.number]
        total = totals[invoice.currency]
        periods[invoice.currency] += 1
        total["contracted"] += plan[invoice.period_index]
        total["billed"] += scope
        total["collected"] += _share(invoice.amount_paid, scope, invoice.amount)
        total["credited"] += _share(invoice.amount_credited, scope, invoice.amount)
        if invoice.status == "uncollectible":
            balance = invoice.amount - invoice.amount_credited - invoice.amount_paid
            total["written_off"] += _share(balance, scope, invoice.amount)
    rows = []
    for cur in sorted(totals):
        t = totals[cur]
        still_open = t["billed"] - t["collected"] - t["credited"] - t["written_off"]
        rows.append(
            LeakageRow(
                currency=cur,
                periods=periods[cur],
                contracted=t["contracted"],
                billed=t["billed"],
                credited=t["credited"],
                written_off=t["written_off"],
                collected=t["collected"],
                still_open=still_open,
            )
        )
    return rows


# ---------------------------------------------------------------- presentation


def format_value(kpi: Kpi) -> str:
    """The KPI's headline as people read it."""
    if kpi.value is None:
        return "no data"
    if kpi.unit == "share":
        return f"{kpi.value * 100:.1f}%"
    if kpi.unit == "days":
        return f"{kpi.value} d"
    if kpi.currency is not None and kpi.unit == kpi.currency:
        return f"{kpi.currency} {kpi.value:,.2f}"
    return str(kpi.value)


def format_basis(kpi: Kpi) -> str:
    """What the value was computed from."""
    if kpi.key in DURATION_KPIS:
        if not kpi.samples:
            return "0 samples"
        return f"median of {kpi.samples}; p90 {kpi.p90} d"
    if kpi.key in ("lead_to_opportunity", "quote_to_close"):
        return f"{kpi.numerator} of {kpi.denominator}"
    if kpi.key == "invoice_accuracy":
        return f"credit notes {kpi.numerator} / invoices {kpi.denominator}"
    if kpi.key == "dso":
        return f"AR {kpi.numerator} / billed {kpi.denominator}"
    if kpi.key == "revenue_leakage":
        if kpi.value is None:
            return "0 billing periods"
        return f"collected {kpi.numerator} of {kpi.denominator} contracted; {kpi.samples} periods"
    return f"{kpi.samples} samples"
