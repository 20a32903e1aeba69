"""`l2c kpi`: lead-to-cash KPIs from a ledger of known deals, written through the activities and
ledger functions the deals use, and checked to the cent, the count and the second."""

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.testing import ActivityEnvironment

import activities.quotes
from activities.billing import BillingActivities
from activities.leads import LeadActivities
from activities.quotes import QuoteActivities
from l2c.config import BusinessRules, TaxTable
from l2c.identity import record_lead
from l2c.kpi import (
    Kpi,
    KpiReport,
    WindowError,
    compute_kpis,
    contracted_per_period,
    median,
    percentile,
)
from l2c.kpi_report import render_html
from l2c.ledger_check import check_ledger
from l2c.mail import Mailer
from l2c.usage import ingest_usage
from models.cash import Allocation
from models.deal import LeadInput
from models.documents import (
    ContractRequest,
    CreditNoteRequest,
    DealClosing,
    InvoiceLinePlan,
    InvoiceRequest,
    LateFeeRequest,
    Milestone,
    PaymentRecord,
    Quote,
    QuoteRequest,
    SignatureRecord,
    UsageBilling,
    WriteOffRequest,
)
from models.leads import RoutingRequest
from models.ledger import DealMilestoneRecord, InvoiceRecord, QuoteLineRecord, QuoteRecord
from models.money import ZERO
from models.signals import SubmitQuote
from tests.helpers import make_lead, usage_lines

BIN = Path(sys.executable).parent
MARCH = (date(2026, 3, 1), date(2026, 3, 31))


def at(day: int, hour: int = 9, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


class Books:
    """Writes deals into a ledger the way the deal workflow does, at the times a test names."""

    def __init__(self, engine: Engine, rules: BusinessRules, monkeypatch: pytest.MonkeyPatch):
        self.engine = engine
        self.rules = rules
        self.monkeypatch = monkeypatch
        mailer = Mailer(engine, None, 25, "x@y.example")
        self.leads = LeadActivities(engine, rules, mailer)
        self.quotes = QuoteActivities(engine, rules)
        self.billing = BillingActivities(engine, mailer, TaxTable(rates={"DE": Decimal("19")}))

    def run(self, fn: Any, arg: Any, when: datetime | None = None) -> Any:
        env = ActivityEnvironment()
        if when is not None:  # what postings take as "now" (an invoice's journal entry)
            env.info = dataclasses.replace(env.info, current_attempt_scheduled_time=when)
        return env.run(fn, arg)

    def lead(self, lead_id: str, captured: datetime, sales_ready: bool = True,
             **overrides: Any) -> LeadInput:  # fmt: skip
        lead = make_lead(lead_id=lead_id, **overrides)
        deal_id = f"deal-{lead_id}"
        with Session(self.engine) as session:
            record_lead(session, lead, deal_id, f"{lead_id.lower()}.example", captured)
            session.commit()
        request = RoutingRequest(deal_id=deal_id, lead_id=lead_id, country=lead.country,
                                 employees=lead.employees, assignment=1,
                                 sales_ready=sales_ready, at=captured)  # fmt: skip
        assignment = self.run(self.leads.route_lead, request)
        assert (assignment.accept_by is not None) == sales_ready
        return lead

    def quote(self, lead: LeadInput, priced: datetime, lines: list[dict[str, Any]],
              term_months: int = 3, milestones: list[Milestone] | None = None) -> Quote:  # fmt: skip
        frozen = type("Frozen", (datetime,), {"now": classmethod(lambda cls, tz=None: priced)})
        self.monkeypatch.setattr(activities.quotes, "datetime", frozen)
        submission = SubmitQuote.model_validate(
            {"submitted_by": "nora.na", "lines": lines, "term_months": term_months}
        )
        request = QuoteRequest(deal_id=f"deal-{lead.lead_id}", version=1,
                               currency=lead.currency, submission=submission,
                               country=lead.country, milestones=milestones or [])  # fmt: skip
        pricing = self.run(self.quotes.price_quote, request)
        self.monkeypatch.undo()
        assert pricing.quote is not None, pricing.refusal
        return pricing.quote  # type: ignore[no-any-return]

    def send(self, lead: LeadInput, quote: Quote, sent: datetime, revision: int = 0,
             milestones: list[Milestone] | None = None) -> str:  # fmt: skip
        request = ContractRequest(deal_id=f"deal-{lead.lead_id}", lead=lead, quote=quote,
                                  issued_at=sent, payment_terms_days=30, revision=revision,
                                  milestones=milestones or [])  # fmt: skip
        return str(self.run(self.quotes.render_contract, request).contract_id)

    def sign(self, lead: LeadInput, contract_id: str, signed: datetime) -> None:
        self.run(self.quotes.record_signature,
                 SignatureRecord(deal_id=f"deal-{lead.lead_id}", contract_id=contract_id,
                                 signer_name=lead.contact_name, signer_email=lead.contact_email,
                                 signed_at=signed))  # fmt: skip

    def invoice(self, lead: LeadInput, quote: Quote, period: int, issued: datetime,
                billing_month: int | None = None, **changes: Any) -> str:  # fmt: skip
        plan = quote.billing_plan[period]
        if "lines" in changes:  # a billing mistake: not every contracted line billed
            plan = plan.model_copy(update={"lines": changes.pop("lines")})
        request = InvoiceRequest(deal_id=f"deal-{lead.lead_id}", lead=lead,
                                 billing_month=plan.start_month if billing_month is None
                                 else billing_month, period=plan,
                                 currency=lead.currency, issued_on=issued.date(),
                                 due_date=issued.date() + timedelta(days=30),
                                 service_from=issued.date(),
                                 service_to=issued.date() + timedelta(days=30), **changes)  # fmt: skip
        return str(self.run(self.billing.issue_invoice, request, when=issued).number)

    def late_fee(self, lead: LeadInput, overdue: str, issued: datetime) -> str:
        request = LateFeeRequest(deal_id=f"deal-{lead.lead_id}", lead=lead,
                                 overdue_invoice=overdue, billing_month=0,
                                 overdue=Decimal("500.00"), percent=Decimal("2"),
                                 amount=Decimal("10.00"), currency=lead.currency,
                                 issued_on=issued.date(),
                                 due_date=issued.date() + timedelta(days=30))  # fmt: skip
        return str(self.run(self.billing.issue_late_fee, request, when=issued).number)

    def pay(self, lead: LeadInput, number: str, amount: str, received: datetime) -> None:
        self.run(self.billing.apply_payment,
                 PaymentRecord(deal_id=f"deal-{lead.lead_id}", invoice_number=number,
                               amount=Decimal(amount),
                               allocations=[Allocation(invoice_number=number,
                                                       amount=Decimal(amount))],
                               currency=lead.currency, reference=f"PAY-{number}",
                               recorded_by="fay.finance", received_at=received))  # fmt: skip

    def credit(self, lead: LeadInput, number: str, amount: str, issued: datetime) -> None:
        self.run(self.billing.issue_credit_note,
                 CreditNoteRequest(deal_id=f"deal-{lead.lead_id}", invoice_number=number,
                                   amount=Decimal(amount), to_credit=Decimal("0.00"),
                                   currency=lead.currency, reference=f"CN-{number}",
                                   reason="billed 2 seats too many", issued_by="fay.finance",
                                   issued_at=issued))  # fmt: skip

    def write_off(self, lead: LeadInput, when: datetime) -> None:
        self.run(self.billing.write_off_deal,
                 WriteOffRequest(deal_id=f"deal-{lead.lead_id}", currency=lead.currency,
                                 written_off_at=when, reason="customer insolvent"))  # fmt: skip

    def close(self, lead: LeadInput, stage: str, when: datetime) -> None:
        self.run(self.leads.close_deal,
                 DealClosing(deal_id=f"deal-{lead.lead_id}", lead_id=lead.lead_id, stage=stage,
                             score=0, reason=stage, closed_at=when))  # fmt: skip


PLATFORM = [{"sku": "PLATFORM", "quantity": 10}]


def accepted(ready: datetime, at: datetime) -> list[Milestone]:
    return [Milestone(kind="lead_sales_ready", at=ready),
            Milestone(kind="lead_accepted", at=at, actor="nora.na")]  # fmt: skip


def approval_asked(key: str, at: datetime) -> Milestone:
    return Milestone(kind="approval_requested", key=key, at=at)


def approval_given(key: str, at: datetime) -> Milestone:
    return Milestone(kind="approval_given", key=key, at=at, actor="mia.manager")


def build_march(books: Books) -> dict[str, Quote]:
    """Known deals around March 2026 (USD, untaxed, and EUR, taxed 19% in DE):

    A: lead 3 Mar, quoted 3rd, sent 4th, signed 6th; March invoiced 500 and paid; April's too.
    B: lead 5th, quoted 6th, sent 6th 21:00, redlined (revision sent 8th), signed the 12th;
       invoiced 500, credited 100, paid 300.
    C: lead 10th, quoted 11th, sent 12th, never signed.  D: lead 1 March 00:00, not
    sales-ready.  E: lead 25th, merged into another deal.  H: lead 1 April 00:00.  I: lead
    21st, sales-ready, not quoted.  F: February deal; its second period invoiced 20
       March with a 50 proration, then written off.  G (EUR): lead 3rd, quoted 4th with
       onboarding, sent 4th 12:00, signed 9th 12:00; invoiced without the onboarding (a billing
       mistake), 460 + 87.40 tax, half of it paid.
    """
    quotes = {}
    a = books.lead("A", at(2))
    # Accepted 2 hours after it became sales-ready (the deal passes that along with its quote).
    quotes["A"] = qa = books.quote(a, at(3), PLATFORM, milestones=accepted(at(2, 10), at(2, 12)))
    books.sign(a, books.send(a, qa, at(4)), at(6))
    books.pay(a, books.invoice(a, qa, 0, at(6)), "500.00", at(10))
    books.invoice(a, qa, 1, at(6, month=4))

    b = books.lead("B", at(5))
    quotes["B"] = qb = books.quote(b, at(6), PLATFORM, milestones=accepted(at(5), at(6)))
    # Its discount asked for at 09:00 and approved at 20:00; the same milestones again with the
    # revision change nothing.
    approval = [approval_asked("v1:discount", at(6)), approval_given("v1:discount", at(6, 20))]
    books.send(b, qb, at(6, 21), milestones=approval)
    books.sign(b, books.send(b, qb, at(8), revision=1, milestones=approval), at(12))
    invoice = books.invoice(b, qb, 0, at(12))
    books.credit(b, invoice, "100.00", at(15))
    books.pay(b, invoice, "300.00", at(20))

    c = books.lead("C", at(10))
    quotes["C"] = qc = books.quote(c, at(11), PLATFORM)
    # Two approvals asked for at once: the cycle ends with the later one, a day on.
    books.send(c, qc, at(12), milestones=[
        approval_asked("v1:discount", at(11)), approval_given("v1:discount", at(11, 12)),
        approval_asked("v1:large deal", at(11)), approval_given("v1:large deal", at(12)),
    ])  # fmt: skip

    books.lead(
        "D", datetime(2026, 3, 1, tzinfo=UTC), sales_ready=False
    )  # the window's first instant
    books.lead("H", datetime(2026, 4, 1, tzinfo=UTC))  # the first instant after it
    books.lead("I", at(21))  # sales-ready, not quoted yet: an opportunity
    books.close(books.lead("E", at(25)), "merged", at(25, 10))

    f = books.lead("F", at(10, month=2))
    quotes["F"] = qf = books.quote(f, at(11, month=2), PLATFORM)
    books.sign(f, books.send(f, qf, at(12, month=2)), at(20, month=2))
    books.pay(f, books.invoice(f, qf, 0, at(20, month=2)), "500.00", at(25, month=2))
    proration = InvoiceLinePlan(sku="PLATFORM", description="1 more seat, prorated",
                                quantity=1, unit_price=Decimal("50.00"),
                                amount=Decimal("50.00"))  # fmt: skip
    books.invoice(f, qf, 1, at(20), adjustments=[proration])
    books.write_off(f, at(28))

    g = books.lead("G", at(3), country="DE", currency="EUR")
    # Accepted before it was sales-ready: no response time.
    quotes["G"] = qg = books.quote(g, at(4), [*PLATFORM, {"sku": "ONBOARDING", "quantity": 1}],
                                   milestones=accepted(at(3, 12), at(3, 10)))  # fmt: skip
    books.sign(g, books.send(g, qg, at(4, 12)), at(9, 12))
    platform_only = [line for line in qg.billing_plan[0].lines if line.sku == "PLATFORM"]
    invoice = books.invoice(g, qg, 0, at(9, 12), lines=platform_only)
    books.pay(g, invoice, "273.70", at(15))
    assert check_ledger(books.engine) == []
    return quotes


@pytest.fixture
def march(
    ledger: Engine, rules: BusinessRules, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    build_march(Books(ledger, rules, monkeypatch))
    yield ledger


def kpi(report: KpiReport, key: str, currency: str | None = None) -> Kpi:
    (found,) = [k for k in report.kpis if k.key == key and k.currency == currency]
    return found


DAY = 86_400


def test_conversions_and_funnel_count_the_march_cohort(march: Engine) -> None:
    report = compute_kpis(march, *MARCH)
    # A, B, C, D, G and I (E merged into another deal, F and H captured outside March); all
    # but D sales-ready or quoted.
    assert report.funnel.model_dump() == {"leads": 6, "opportunities": 5, "quoted": 4, "won": 3}
    to_opportunity = kpi(report, "lead_to_opportunity")
    assert (to_opportunity.numerator, to_opportunity.denominator) == (5, 6)
    assert to_opportunity.value == Decimal("0.8333")
    to_close = kpi(report, "quote_to_close")  # A, B, C, G first quoted in March; C unsigned
    assert (to_close.numerator, to_close.denominator, to_close.value) == (3, 4, Decimal("0.7500"))


def test_cycle_times_are_medians_and_p90_of_the_window(march: Engine) -> None:
    report = compute_kpis(march, *MARCH)
    # Lead to signature: A 4 days, B 7 days, G 6 days 3 hours (F signed in February).
    assert report.durations["sales_cycle"] == [4 * DAY, 7 * DAY, 6 * DAY + 3 * 3600]
    sales = kpi(report, "sales_cycle")
    assert (sales.value, sales.p90, sales.samples) == (Decimal("6.12"), Decimal("7.00"), 3)
    # Priced to first sent: A 1 day, B 12 hours, C 1 day, G 3 hours; median of an even count.
    assert sorted(report.durations["quote_to_contract"]) == [3 * 3600, 12 * 3600, DAY, DAY]
    priced = kpi(report, "quote_to_contract")
    assert (priced.value, priced.p90, priced.samples) == (Decimal("0.75"), Decimal("1.00"), 4)
    # First sent to signed: A 2 days, B 5.5 days (across its redline revision), G 5 days.
    assert report.durations["signature_cycle"] == [2 * DAY, 5 * DAY + 12 * 3600, 5 * DAY]
    signature = kpi(report, "signature_cycle")
    assert (signature.value, signature.p90) == (Decimal("5.00"), Decimal("5.50"))


def test_lead_response_and_approval_cycle_come_from_the_deals_milestones(march: Engine) -> None:
    report = compute_kpis(march, *MARCH)
    # A: 2 hours, B: a day; G was accepted before it was sales-ready: no response time.
    assert report.durations["lead_response"] == [2 * 3600, DAY]
    response = kpi(report, "lead_response")
    assert (response.value, response.p90, response.samples) == (Decimal("0.54"), Decimal("1.00"), 2)
    # B: 11 hours; C: its later approval, a day after both were asked for.
    assert report.durations["approval_cycle"] == [11 * 3600, DAY]
    approvals = kpi(report, "approval_cycle")
    assert (approvals.value, approvals.samples) == (Decimal("0.73"), 2)
    with Session(march) as session:  # each milestone once, though B's came with two contracts
        assert len(session.exec(select(DealMilestoneRecord)).all()) == 12


def test_invoice_accuracy_dso_and_leakage_per_currency(march: Engine) -> None:
    report = compute_kpis(march, *MARCH)
    # March billing invoices: A, B, F's second period, G (A's April one is not in the window).
    accuracy = kpi(report, "invoice_accuracy")
    assert (accuracy.numerator, accuracy.denominator, accuracy.value) == (1, 4, Decimal("0.2500"))

    # USD: 1,550.00 invoiced (F's with its proration); owed at the end: B's 100.00.
    usd = kpi(report, "dso", "USD")
    assert (usd.numerator, usd.denominator) == (Decimal("100.00"), Decimal("1550.00"))
    assert usd.value == Decimal("2.0")  # 100 / 1550 x 31 days
    eur = kpi(report, "dso", "EUR")  # 547.40 invoiced, half paid: half of 31 days
    assert (eur.numerator, eur.denominator, eur.value) == (
        Decimal("273.70"), Decimal("547.40"), Decimal("15.5"))  # fmt: skip

    rows = {row.currency: row for row in report.leakage}
    assert set(rows) == {"USD", "EUR"}
    assert rows["USD"].model_dump() == {
        "currency": "USD", "periods": 3, "contracted": Decimal("1500.00"),
        "billed": Decimal("1550.00"), "credited": Decimal("100.00"),
        "written_off": Decimal("550.00"), "collected": Decimal("800.00"),
        "still_open": Decimal("100.00"), "unbilled": Decimal("-50.00"),
        "uncollected": Decimal("750.00"), "leakage": Decimal("600.00"),
    }  # fmt: skip
    # EUR: the onboarding (2,300.00) was contracted and never billed; collected before tax is
    # the paid half of 460.00, the 19% tax taken out in proportion.
    assert rows["EUR"].model_dump() == {
        "currency": "EUR", "periods": 1, "contracted": Decimal("2760.00"),
        "billed": Decimal("460.00"), "credited": Decimal("0.00"),
        "written_off": Decimal("0.00"), "collected": Decimal("230.00"),
        "still_open": Decimal("230.00"), "unbilled": Decimal("2300.00"),
        "uncollected": Decimal("230.00"), "leakage": Decimal("2300.00"),
    }  # fmt: skip
    assert kpi(report, "revenue_leakage", "EUR").value == Decimal("2300.00")


def test_one_currency_keeps_only_its_deals_and_documents(march: Engine) -> None:
    report = compute_kpis(march, *MARCH, currency="EUR")
    assert report.funnel.model_dump() == {"leads": 1, "opportunities": 1, "quoted": 1, "won": 1}
    assert [row.currency for row in report.dso] == ["EUR"]
    assert [row.currency for row in report.leakage] == ["EUR"]
    assert report.durations["sales_cycle"] == [6 * DAY + 3 * 3600]
    assert kpi(report, "invoice_accuracy").denominator == 1
    usd_only = compute_kpis(march, *MARCH, currency="USD")
    assert usd_only.leakage[0].contracted == Decimal("1500.00")
    assert usd_only.funnel.leads == 5


def test_no_data_is_none_with_no_samples_never_a_zero(ledger: Engine) -> None:
    report = compute_kpis(ledger, *MARCH)
    assert report.funnel.model_dump() == {"leads": 0, "opportunities": 0, "quoted": 0, "won": 0}
    assert report.leakage == []
    for item in report.kpis:
        assert item.value is None and item.samples == 0, item
        assert item.status == "no data"
    assert {k.key for k in report.kpis} >= {"dso", "revenue_leakage", "sales_cycle"}
    html = render_html(report)  # the report says so too, chart by chart
    for message in ["no leads captured in the window", "no cycle times in the window",
                    "DSO: nothing billed", "No data: no billing period"]:  # fmt: skip
        assert message in html, message


def test_a_window_with_nothing_in_it_has_no_data(march: Engine) -> None:
    report = compute_kpis(march, date(2025, 1, 1), date(2025, 1, 31))
    assert kpi(report, "sales_cycle").status == "no data"
    assert kpi(report, "lead_to_opportunity").denominator == 0
    assert kpi(report, "invoice_accuracy").value is None
    # Nothing billed in January 2025 and nothing owed at its end.
    assert [(row.currency, row.dso) for row in report.dso] == [(None, None)]
    with pytest.raises(WindowError, match="before it starts"):
        compute_kpis(march, date(2026, 3, 2), date(2026, 3, 1))


def test_late_fees_and_renewed_terms_are_left_out_where_the_definitions_say(
    ledger: Engine, rules: BusinessRules, monkeypatch: pytest.MonkeyPatch
) -> None:
    books = Books(ledger, rules, monkeypatch)
    r = books.lead("R", at(1))
    quote = books.quote(r, at(1, 10), PLATFORM, term_months=1)
    books.sign(r, books.send(r, quote, at(1, 11)), at(1, 12))
    first = books.invoice(r, quote, 0, at(2))
    fee = books.late_fee(r, first, at(10))
    books.credit(r, fee, "10.00", at(11))  # the fee waived: not a billing mistake
    books.invoice(r, quote, 0, at(20), billing_month=1)  # the renewed term's first month
    # A renewal quote's own workflow (no lead of its own) quoted in March: not a new deal.
    books.quote(make_lead(lead_id="R-renewal-2"), at(21), PLATFORM, term_months=1)
    report = compute_kpis(ledger, *MARCH)
    to_close = kpi(report, "quote_to_close")
    assert (to_close.numerator, to_close.denominator) == (1, 1)
    accuracy = kpi(report, "invoice_accuracy")
    assert (accuracy.numerator, accuracy.denominator) == (0, 2)
    assert kpi(report, "dso", "USD").denominator == Decimal("1010.00")  # the fee is owed too
    # The signed contract covers one month; the renewal's month is priced by no signed quote.
    (usd,) = report.leakage
    assert (usd.periods, usd.contracted, usd.billed) == (1, Decimal("500.00"), Decimal("500.00"))


def test_metered_usage_is_owed_but_not_counted_against_the_contract(
    ledger: Engine, rules: BusinessRules, monkeypatch: pytest.MonkeyPatch
) -> None:
    books = Books(ledger, rules, monkeypatch)
    u = books.lead("U", at(1, month=2), country="GB", currency="GBP")  # untaxed in these books
    lines = [*PLATFORM, {"sku": "API_CALLS", "quantity": 100}]  # 100,000 calls a month committed
    quote = books.quote(u, at(1, 10, month=2), lines)
    books.sign(u, books.send(u, quote, at(1, 11, month=2)), at(1, 12, month=2))
    activated = datetime(2026, 2, 2, tzinfo=UTC)
    books.invoice(u, quote, 0, activated)
    events = usage_lines("deal-U", ("e-1", at(10, month=2), 150_000))
    assert ingest_usage(ledger, events, rules.catalog).accepted == 1
    usage = UsageBilling(activated_at=activated, month_seconds=0, through_month=1,
                         lines=[line for line in quote.lines if line.kind == "usage"],
                         discount_percent=quote.discount_percent)  # fmt: skip
    number = books.invoice(u, quote, 1, datetime(2026, 3, 2, tzinfo=UTC), usage=usage)
    with Session(ledger) as session:
        invoice = session.get(InvoiceRecord, number)
        assert invoice is not None
    planned = quote.billing_plan[1].amount
    assert invoice.amount > planned  # February's overage, billed in arrears
    report = compute_kpis(ledger, *MARCH)
    (gbp,) = report.leakage
    assert (gbp.contracted, gbp.billed, gbp.unbilled) == (planned, planned, ZERO)
    assert kpi(report, "dso", "GBP").denominator == invoice.amount  # all of it is owed


def test_contracted_per_period_is_the_plan_the_deal_bills(
    ledger: Engine, rules: BusinessRules, monkeypatch: pytest.MonkeyPatch
) -> None:
    books = Books(ledger, rules, monkeypatch)
    lead = books.lead("G", at(3), country="DE", currency="EUR")
    lines = [{"sku": "GROWTH_BUNDLE", "quantity": 1}, {"sku": "ONBOARDING", "quantity": 1}]
    quote = books.quote(lead, at(4), lines)
    with Session(ledger) as session:
        stored = session.get(QuoteRecord, "deal-G-Q1")
        assert stored is not None
        stored_lines = list(
            session.exec(select(QuoteLineRecord).where(QuoteLineRecord.quote_id == "deal-G-Q1"))
        )
    planned = [period.amount for period in quote.billing_plan]
    assert contracted_per_period(stored, stored_lines) == planned
    assert len(planned) == 3 and planned[0] > planned[1] == planned[2] > 0


def test_statistics() -> None:
    assert median([4, 1, 3, 2]) == Decimal("2.5") and median([3, 1, 2]) == 2
    assert median([]) is None and percentile([], 90) is None
    assert percentile(range(1, 11), 90) == 9 and percentile(range(1, 12), 90) == 10
    assert percentile([7], 90) == 7
    # Nearest rank: the smallest value with at least the percent at or below it, never rounded.
    assert percentile(range(1, 7), 90) == 6 and percentile(range(1, 6), 50) == 3


def test_the_report_escapes_text_and_loads_nothing(march: Engine) -> None:
    report = compute_kpis(march, *MARCH)
    report.kpis[0] = report.kpis[0].model_copy(update={"name": "<b onclick=x>bold</b>"})
    html = render_html(report)
    assert "<b onclick=x>" not in html and "&lt;b onclick=x&gt;bold&lt;/b&gt;" in html
    assert html.count("<svg") == 5  # funnel, cycles, USD and EUR leakage, receivables
    _assert_self_contained(html)


def _assert_self_contained(html: str) -> None:
    assert "<script" not in html and "<link" not in html and "@import" not in html
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html)
    assert all(ref.startswith("#") for ref in refs), refs  # only the SVGs' own fragments
    assert "url(http" not in html


# ---------------------------------------------------------------- the command


def l2c(ledger_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"L2C_DATABASE_URL": ledger_url, "PATH": str(BIN)}
    return subprocess.run([str(BIN / "l2c"), "kpi", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


@pytest.fixture
def march_sqlite(
    sqlite_ledger: Engine, rules: BusinessRules, monkeypatch: pytest.MonkeyPatch
) -> str:
    build_march(Books(sqlite_ledger, rules, monkeypatch))
    return sqlite_ledger.url.render_as_string(hide_password=False)


def test_the_command_prints_a_table_json_and_an_html_report(
    march_sqlite: str, tmp_path: Path
) -> None:
    window = ["--since", "2026-03-01", "--until", "2026-03-31"]
    table = l2c(march_sqlite, *window)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    row = next(line for line in lines if "Sales cycle length" in line)
    assert "6.12 d" in row and "median of 3; p90 7.00 d" in row
    row = next(line for line in lines if "Lead-to-opportunity" in line)
    assert "83.3%" in row and "5 of 6" in row
    row = next(line for line in lines if "DSO" in line and "EUR" in line)
    assert "15.5" in row
    assert "Funnel: 6 leads -> 5 opportunities -> 4 quoted -> 3 won" in table.stdout
    assert any("Lead response time" in line and "0.54 d" in line for line in lines)

    as_json = l2c(march_sqlite, *window, "--json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    by_key = {(k["key"], k["currency"]): k for k in data["kpis"]}
    assert by_key[("revenue_leakage", "USD")]["value"] == "600.00"  # money as exact strings
    assert by_key[("approval_cycle", None)]["value"] == "0.73"

    out = tmp_path / "kpi.html"
    written = l2c(march_sqlite, *window, "--html", str(out))
    assert written.returncode == 0, written.stderr
    html = out.read_text(encoding="utf-8")
    assert "<svg" in html
    for name in ["Lead response time", "Lead-to-opportunity conversion", "Quote-to-close "
                 "conversion", "Sales cycle length", "Approval cycle time", "Signature cycle "
                 "time", "Invoice accuracy (credit notes per invoice)", "DSO (days sales "
                 "outstanding)", "Revenue leakage"]:  # fmt: skip
        assert name in html, name
    _assert_self_contained(html)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)


def test_bad_days_exit_2_with_the_reason(march_sqlite: str) -> None:
    for args, reason in [
        (["--since", "2026-13-01"], "--since '2026-13-01': month must be in 1..12"),
        (["--since", "yesterday"], "--since 'yesterday': expected a day as YYYY-MM-DD"),
        (["--until", "2026-02-30"], "--until '2026-02-30': day is out of range for month"),
        (["--since", "2026-04-01", "--until", "2026-03-01"], "is after --until"),
        (["--currency", "euro"], "--currency 'euro': expected an ISO 4217 code"),
    ]:
        bad = l2c(march_sqlite, *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert reason in bad.stderr, (args, bad.stderr)
        assert bad.stdout == ""
