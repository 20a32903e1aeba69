"""Activities against a real ledger (SQLite file; PostgreSQL too when L2C_TEST_POSTGRES_URL is set):
retries and repeats never create a second invoice, payment, posting or e-mail."""

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import build_activities
from activities.billing import BillingActivities
from activities.fulfilment import FulfilmentActivities
from activities.leads import LeadActivities
from activities.payments import PaymentActivities
from activities.quotes import QuoteActivities
from activities.revenue import RevenueActivities
from l2c.config import BusinessRules
from l2c.db import LedgerSchemaOutdated, init_ledger, make_engine
from l2c.journal import (
    ACCOUNTS_RECEIVABLE,
    BAD_DEBT_EXPENSE,
    CUSTOMER_CREDIT,
    DEFERRED_REVENUE,
    UnbalancedEntry,
    post_entry,
)
from l2c.ledger_check import check_ledger
from l2c.mail import Mailer
from l2c.mailcatcher import MailCatcher
from models.cash import Allocation, allocate, settled_status
from models.documents import (
    ContractRequest,
    CreditApplication,
    CreditNoteRequest,
    InvoiceRequest,
    PaymentRecord,
    QuoteRequest,
    RefundRequest,
    RevenueRecognition,
    WriteOffRequest,
)
from models.ledger import (
    InvoiceRecord,
    JournalEntry,
    JournalLine,
    NumberSeries,
    OutboxEmail,
    PaymentRecordRow,
)
from models.money import ZERO
from models.signals import SubmitQuote
from tests.helpers import account_balances, make_lead

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
env = ActivityEnvironment()


def priced(rules: BusinessRules, ledger: Engine, deal_id: str, **quote: object):  # type: ignore[no-untyped-def]
    submission = SubmitQuote.model_validate(
        {"submitted_by": "nora.na", "lines": [{"sku": "PLATFORM", "quantity": 10}], **quote}
    )
    request = QuoteRequest(deal_id=deal_id, version=1, currency="USD", submission=submission)
    pricing = env.run(QuoteActivities(ledger, rules).price_quote, request)
    assert pricing.quote is not None
    return pricing.quote


def invoice_request(
    rules: BusinessRules, ledger: Engine, deal_id: str, period: int = 0, **quote: object
) -> InvoiceRequest:
    lead = make_lead()
    env.run(
        LeadActivities(ledger, rules, Mailer(ledger, None, 25, "x@y.example")).capture_lead, lead
    )
    q = priced(rules, ledger, deal_id, **quote)
    plan = q.billing_plan[period]
    return InvoiceRequest(deal_id=deal_id, lead=lead, billing_month=plan.start_month, period=plan,
                          currency="USD",
                          issued_on=date(2026, 1, 15), due_date=date(2026, 2, 14),
                          service_from=date(2026, 1, 15), service_to=date(2026, 2, 14))  # fmt: skip


def test_invoice_issued_twice_is_one_invoice_and_numbers_have_no_gaps(
    ledger: Engine, rules: BusinessRules
) -> None:
    billing = BillingActivities(ledger, Mailer(ledger, None, 25, "x@y.example"))
    first = env.run(billing.issue_invoice, invoice_request(rules, ledger, "deal-A"))
    again = env.run(billing.issue_invoice, invoice_request(rules, ledger, "deal-A"))
    assert first == again
    second_period = env.run(
        billing.issue_invoice, invoice_request(rules, ledger, "deal-A", period=1)
    )
    other_deal = env.run(billing.issue_invoice, invoice_request(rules, ledger, "deal-B"))
    numbers = [first.number, second_period.number, other_deal.number]
    assert numbers == ["INV-000001", "INV-000002", "INV-000003"]
    with Session(ledger) as session:
        assert len(session.exec(select(InvoiceRecord)).all()) == 3
        assert len(session.exec(select(JournalEntry)).all()) == 3
    assert account_balances(ledger)[ACCOUNTS_RECEIVABLE] == Decimal("1500.00")


def test_concurrent_invoice_attempts_issue_once_with_gap_free_numbers(
    ledger: Engine, rules: BusinessRules
) -> None:
    billing = BillingActivities(ledger, Mailer(ledger, None, 25, "x@y.example"))
    requests = [invoice_request(rules, ledger, f"deal-{n % 5}", period=0) for n in range(20)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        issued = list(pool.map(lambda r: env.run(billing.issue_invoice, r), requests))
    by_deal = {r.deal_id: i.number for r, i in zip(requests, issued, strict=True)}
    assert all(by_deal[r.deal_id] == i.number for r, i in zip(requests, issued, strict=True))
    assert sorted(by_deal.values()) == [f"INV-{n:06d}" for n in range(1, 6)]


def test_payment_with_the_same_reference_applies_once(ledger: Engine, rules: BusinessRules) -> None:
    billing = BillingActivities(ledger, Mailer(ledger, None, 25, "x@y.example"))
    invoice = env.run(billing.issue_invoice, invoice_request(rules, ledger, "deal-P"))
    payment = PaymentRecord(deal_id="deal-P", invoice_number=invoice.number, amount=Decimal("200.00"),
                            currency="USD", reference="BANK-7", recorded_by="ops", received_at=NOW)  # fmt: skip
    env.run(billing.apply_payment, payment)
    env.run(billing.apply_payment, payment)
    with Session(ledger) as session:
        assert len(session.exec(select(PaymentRecordRow)).all()) == 1
        row = session.get(InvoiceRecord, invoice.number)
        assert row is not None and row.amount_paid == Decimal("200.00") and row.status == "open"
    assert account_balances(ledger)[ACCOUNTS_RECEIVABLE] == Decimal("300.00")
    over = Decimal("300.01")  # the workflow would hold the cent as credit; it never reaches here
    with pytest.raises(ApplicationError, match=r"whose balance is 300\.00"):
        env.run(billing.apply_payment, payment.model_copy(update={
            "reference": "BANK-8", "amount": over,
            "allocations": [Allocation(invoice_number=invoice.number, amount=over)]}))  # fmt: skip
    with pytest.raises(ApplicationError, match="do not make"):
        env.run(
            billing.apply_payment,
            payment.model_copy(update={"reference": "BANK-9", "amount": over}),
        )


def test_write_off_reverses_undelivered_billing_and_expenses_the_rest(
    ledger: Engine, rules: BusinessRules
) -> None:
    billing = BillingActivities(ledger, Mailer(ledger, None, 25, "x@y.example"))
    invoice = env.run(
        billing.issue_invoice, invoice_request(rules, ledger, "deal-W", billing_period="upfront")
    )
    assert invoice.amount == Decimal("6000.00")
    revenue = RevenueActivities(ledger)
    for month in (1, 2, 3):
        recognition = RevenueRecognition(deal_id="deal-W", key=f"month-{month}", stream="subscription",
                                         amount=Decimal("500.00"), currency="USD", recognized_at=NOW, memo="m")  # fmt: skip
        env.run(revenue.recognize_revenue, recognition)
        env.run(revenue.recognize_revenue, recognition)  # a retry posts nothing more
    request = WriteOffRequest(deal_id="deal-W", currency="USD", written_off_at=NOW, reason="unpaid")
    result = env.run(billing.write_off_deal, request)
    assert result.bad_debt == Decimal("1500.00") and result.reversed_deferred == Decimal("4500.00")
    assert env.run(billing.write_off_deal, request) == result
    balances = account_balances(ledger, "deal-W")
    assert balances[ACCOUNTS_RECEIVABLE] == ZERO and balances[DEFERRED_REVENUE] == ZERO
    assert balances[BAD_DEBT_EXPENSE] == Decimal("1500.00")
    # A payment posting that comes after the write-off is refused: AR was closed out already.
    late = PaymentRecord(deal_id="deal-W", invoice_number=invoice.number, amount=Decimal("100.00"),
                         currency="USD", reference="LATE-1", recorded_by="ops", received_at=NOW)  # fmt: skip
    with pytest.raises(ApplicationError, match="is uncollectible"):
        env.run(billing.apply_payment, late)
    assert account_balances(ledger, "deal-W")[ACCOUNTS_RECEIVABLE] == ZERO


def test_unbalanced_entry_is_refused_and_nothing_is_written(ledger: Engine) -> None:
    with Session(ledger) as session, pytest.raises(UnbalancedEntry):
        post_entry(session, entry_key="k", deal_id="d", currency="USD", memo="m", posted_at=NOW,
                   lines=[(ACCOUNTS_RECEIVABLE, Decimal("1.00"), ZERO), (DEFERRED_REVENUE, ZERO, Decimal("0.99"))])  # fmt: skip
    with Session(ledger) as session:
        assert session.exec(select(JournalEntry)).all() == []


def test_money_round_trips_exactly(ledger: Engine, rules: BusinessRules) -> None:
    quote = priced(rules, ledger, "deal-M", discount_percent="7.33")
    assert quote.net_total == Decimal("5560.20")  # 500 x 0.9267 = 463.35 a month, x 12
    with Session(ledger) as session:
        from models.ledger import QuoteRecord

        row = session.get(QuoteRecord, "deal-M-Q1")
        assert row is not None
        assert row.net_total == Decimal("5560.20") and isinstance(row.net_total, Decimal)
        assert row.discount_percent == Decimal("7.33")


def test_contract_rendering_is_deterministic_and_stored_once(
    ledger: Engine, rules: BusinessRules
) -> None:
    quotes = QuoteActivities(ledger, rules)
    quote = priced(rules, ledger, "deal-C")
    request = ContractRequest(
        deal_id="deal-C", lead=make_lead(), quote=quote, issued_at=NOW, payment_terms_days=30
    )
    first = env.run(quotes.render_contract, request)
    assert env.run(quotes.render_contract, request) == first
    assert len(first.document_sha256) == 64


def test_email_is_delivered_once_over_smtp(ledger: Engine, mailbox: MailCatcher) -> None:
    mailer = Mailer(ledger, "127.0.0.1", mailbox.port, "billing@seller.example")
    for _ in range(3):
        assert mailer.send_once(key="deal-E:dunning:INV-1:1", deal_id="deal-E", recipient="ada@acme.example",
                                subject="Reminder", body="Please pay")  # fmt: skip
    assert len(mailbox.messages) == 1
    assert mailbox.messages[0]["Message-ID"] == "<deal-E.dunning.INV-1.1@lead-to-cash>"
    with Session(ledger) as session:
        row = session.get(OutboxEmail, "deal-E:dunning:INV-1:1")
        assert row is not None and row.sent_at is not None


def test_email_waits_in_the_outbox_without_a_mail_server(ledger: Engine) -> None:
    mailer = Mailer(ledger, None, 25, "billing@seller.example")
    assert not mailer.send_once(
        key="k1", deal_id="d", recipient="a@b.example", subject="s", body="b"
    )
    with Session(ledger) as session:
        row = session.get(OutboxEmail, "k1")
        assert row is not None and row.sent_at is None


def test_ledger_audit_names_each_broken_invariant(ledger: Engine, rules: BusinessRules) -> None:
    billing = BillingActivities(ledger, Mailer(ledger, None, 25, "x@y.example"))
    first = env.run(billing.issue_invoice, invoice_request(rules, ledger, "deal-A"))
    env.run(billing.issue_invoice, invoice_request(rules, ledger, "deal-B"))
    env.run(billing.apply_payment, PaymentRecord(
        deal_id="deal-A", invoice_number=first.number, amount=Decimal("100.00"), currency="USD",
        reference="R-1", recorded_by="ar", received_at=NOW))  # fmt: skip
    assert check_ledger(ledger) == []

    with Session(ledger) as session:  # what no activity may ever do: edit the ledger behind it
        gone = session.get(InvoiceRecord, first.number)
        assert gone is not None
        gone.amount_paid = Decimal("50.00")
        session.add(gone)
        entry = session.exec(select(JournalEntry)).first()
        assert entry is not None
        entry_key = entry.entry_key
        line = session.exec(select(JournalLine).where(JournalLine.entry_id == entry.id)).first()
        assert line is not None
        line.debit += Decimal("0.01")
        session.add(line)
        series = session.get(NumberSeries, "INV")
        assert series is not None
        series.next_value = 5
        session.add(series)
        notes = session.get(NumberSeries, "CN")  # a credit note number taken and never used
        assert notes is not None
        notes.next_value = 2
        session.add(notes)
        session.commit()
    problems = check_ledger(ledger)
    assert any("payments add to 100.00, invoice shows 50.00 paid" in p for p in problems), problems
    assert any(f"journal entry {entry_key} does not balance" in p for p in problems), problems
    assert any("number series INV is at 5, but 2 invoices exist" in p for p in problems), problems
    assert "number series CN is at 2, but 0 credit notes exist" in problems


def test_a_ledger_from_an_older_version_is_refused_with_what_it_lacks(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as connection:  # the invoices table as it was before usage billing
        connection.exec_driver_sql(
            "CREATE TABLE invoices (number VARCHAR(40) PRIMARY KEY, deal_id VARCHAR(80), "
            "period_index INTEGER, currency VARCHAR(3), amount INTEGER, amount_paid INTEGER, "
            "status VARCHAR(20), issued_on DATE, due_date DATE, service_from DATE, "
            "service_to DATE, html TEXT)"
        )
    with pytest.raises(LedgerSchemaOutdated, match="table invoices lacks billing_month"):
        init_ledger(engine)


CENTS = st.integers(min_value=1, max_value=80_000).map(lambda c: Decimal(c) / 100)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("pay"), st.one_of(st.none(), st.integers(0, 2)), CENTS),
        st.tuples(st.just("credit_note"), st.integers(0, 2), CENTS),
        st.tuples(st.just("refund"), st.none(), CENTS),
    ),
    max_size=8,
)


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(operations=OPERATIONS)
def test_invoice_balances_and_customer_credit_add_up_to_the_ledger(
    ledger: Engine, rules: BusinessRules, operations: list[tuple[str, int | None, Decimal]]
) -> None:
    """Property: whatever payments, credit notes and refunds arrive, applied with the deal's own
    rules (models.cash), the open invoice balances are the ledger's receivables and the credit the
    deal holds is the ledger's customer credit."""
    billing = BillingActivities(ledger, Mailer(ledger, None, 25, "x@y.example"))
    deal = f"deal-{uuid.uuid4().hex[:8]}"
    invoices = [env.run(billing.issue_invoice, invoice_request(rules, ledger, deal, period=n))
                for n in range(3)]  # fmt: skip
    amount = {i.number: i.amount for i in invoices}
    paid = {i.number: ZERO for i in invoices}
    credited = {i.number: ZERO for i in invoices}
    credit = ZERO

    def status(number: str) -> str:
        return settled_status(amount[number], credited[number], paid[number])

    for n, (kind, which, value) in enumerate(operations):
        number = invoices[which].number if which is not None else None
        if kind == "pay":
            if number is not None and status(number) == "void":
                continue  # refused by the deal: it names a void invoice
            balances = [(i.number, amount[i.number] - credited[i.number] - paid[i.number])
                        for i in invoices if status(i.number) == "open"]  # fmt: skip
            allocations, to_credit = allocate(value, balances, number)
            for allocation in allocations:
                paid[allocation.invoice_number] += allocation.amount
            credit += to_credit
            env.run(billing.apply_payment, PaymentRecord(
                deal_id=deal, invoice_number=number, amount=value, allocations=allocations,
                to_credit=to_credit, currency="USD", reference=f"P{n}", recorded_by="ops",
                received_at=NOW))  # fmt: skip
        elif kind == "credit_note":
            assert number is not None
            if status(number) == "void" or value > amount[number] - credited[number]:
                continue  # refused by the deal
            to_credit = max(ZERO, value - (amount[number] - credited[number] - paid[number]))
            credited[number] += value
            paid[number] -= to_credit
            credit += to_credit
            env.run(billing.issue_credit_note, CreditNoteRequest(
                deal_id=deal, invoice_number=number, amount=value, to_credit=to_credit,
                currency="USD", reference=f"C{n}", reason="goodwill", issued_by="fay",
                issued_at=NOW))  # fmt: skip
        else:
            if value > credit:
                continue  # refused by the deal
            credit -= value
            env.run(billing.refund_credit, RefundRequest(
                deal_id=deal, amount=value, currency="USD", reference=f"R{n}",
                recorded_by="fay", refunded_at=NOW))  # fmt: skip
        # Held credit pays open invoices at once, oldest first, as the deal does.
        for invoice in invoices:
            balance = amount[invoice.number] - credited[invoice.number] - paid[invoice.number]
            if credit > 0 and status(invoice.number) == "open":
                applied = min(credit, balance)
                credit -= applied
                paid[invoice.number] += applied
                env.run(billing.apply_credit, CreditApplication(
                    deal_id=deal, key=f"{n}-{invoice.number}", invoice_number=invoice.number,
                    amount=applied, currency="USD", applied_at=NOW))  # fmt: skip

    balances = account_balances(ledger, deal)
    open_balances = sum((amount[k] - credited[k] - paid[k] for k in amount), ZERO)
    assert balances.get(ACCOUNTS_RECEIVABLE, ZERO) == open_balances
    assert -balances.get(CUSTOMER_CREDIT, ZERO) == credit
    with Session(ledger) as session:
        for number in amount:
            row = session.get(InvoiceRecord, number)
            assert row is not None
            assert (row.amount_paid, row.amount_credited, row.status) == (
                paid[number],
                credited[number],
                status(number),
            )
    assert check_ledger(ledger) == []


def test_every_activity_is_registered_with_the_worker(ledger: Engine, rules: BusinessRules) -> None:
    """A deal calling an activity no worker offers retries it for ever; the ledger falls behind."""
    classes = [BillingActivities, LeadActivities, QuoteActivities, RevenueActivities,
               FulfilmentActivities, PaymentActivities]  # fmt: skip
    defined = {name for cls in classes for name, member in vars(cls).items()
               if hasattr(member, "__temporal_activity_definition")}  # fmt: skip
    registered = {
        fn.__name__
        for fn in build_activities(ledger, rules, Mailer(ledger, None, 25, "x@y.example"))
    }
    assert defined and defined == registered
