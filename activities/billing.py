"""Billing activities: invoices with gap-free numbers, cash application, dunning, write-off."""

from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from l2c.closed_deals import record_chargeback
from l2c.config import TaxTable
from l2c.db import CREDIT_NOTE_SERIES, INVOICE_SERIES, next_document_number
from l2c.documents import render, render_email
from l2c.journal import (
    ACCOUNTS_RECEIVABLE,
    BAD_DEBT_EXPENSE,
    CASH,
    CUSTOMER_CREDIT,
    DEFERRED_REVENUE,
    LATE_FEES,
    REVENUE_USAGE,
    SALES_CREDITS,
    TAX_PAYABLE,
    post_entry,
)
from l2c.mail import Mailer
from l2c.usage import bill_usage
from models.cash import early_payment_discount, settled_status
from models.deal import LeadInput
from models.documents import (
    CreditApplication,
    CreditNoteIssued,
    CreditNoteRequest,
    DisputeClosing,
    DisputeOpening,
    DunningNotice,
    EarlyPaymentTerms,
    InvoiceFinalization,
    InvoiceRequest,
    IssuedInvoice,
    LateFeeRequest,
    LedgerChargeback,
    PaymentRecord,
    ProrationCredit,
    RefundRequest,
    WriteOffRequest,
    WriteOffResult,
)
from models.ledger import (
    CreditNoteRecord,
    DisputeRecord,
    InvoiceLineRecord,
    InvoiceRecord,
    JournalEntry,
    JournalLine,
    PaymentAllocation,
    PaymentRecordRow,
    RefundRecord,
    UsageChargeRecord,
)
from models.money import ZERO, to_cents

HUNDRED = Decimal(100)


def _issued(session: Session, row: InvoiceRecord) -> IssuedInvoice:
    return IssuedInvoice(
        number=row.number,
        amount=row.amount,
        currency=row.currency,
        issued_on=row.issued_on,
        due_date=row.due_date,
        usage_amount=_usage_billed(session, row.number),
        draft=row.status == "draft",
        early_payment_discount=row.early_payment_discount,
        early_payment_until=row.early_payment_until,
    )


def _ledger_conflict(message: str) -> ApplicationError:
    # The workflow validates before it calls; reaching this means the ledger and the deal disagree,
    # which no retry can fix and a person must look at.
    return ApplicationError(message, type="LedgerConflict", non_retryable=True)


def _nonzero(lines: list[tuple[str, Decimal, Decimal]]) -> list[tuple[str, Decimal, Decimal]]:
    return [line for line in lines if line[1] or line[2]]


def _open_or_paid_invoice(
    session: Session, deal_id: str, number: str, currency: str
) -> InvoiceRecord:
    # Locked until commit (PostgreSQL; SQLite's BEGIN IMMEDIATE locks it all): two postings on one
    # invoice never both read the old amounts.
    invoice = session.get(InvoiceRecord, number, with_for_update=True)
    if invoice is None or invoice.deal_id != deal_id:
        raise _ledger_conflict(f"invoice {number} is not this deal's")
    if invoice.currency != currency:
        raise _ledger_conflict(f"{currency} on {number}, which is in {invoice.currency}")
    if invoice.status not in ("open", "paid"):  # e.g. written off: AR was already closed out
        raise _ledger_conflict(f"{number} is {invoice.status}")
    return invoice


def _settle_status(invoice: InvoiceRecord) -> None:
    invoice.status = settled_status(invoice.amount, invoice.amount_credited, invoice.amount_paid)


def _allocate(
    session: Session, deal_id: str, source: str, number: str, amount: Decimal, currency: str
) -> None:
    invoice = _open_or_paid_invoice(session, deal_id, number, currency)
    balance = invoice.amount - invoice.amount_credited - invoice.amount_paid
    if invoice.status != "open" or amount > balance or amount <= 0:
        raise _ledger_conflict(f"{source}: {amount} on {number}, whose balance is {balance}")
    invoice.amount_paid += amount
    _settle_status(invoice)
    session.add(invoice)
    session.add(PaymentAllocation(deal_id=deal_id, source=source, invoice_number=number,
                                  amount=amount))  # fmt: skip


def _usage_billed(session: Session, invoice_number: str) -> Decimal:
    amounts = session.exec(
        select(col(UsageChargeRecord.amount)).where(
            col(UsageChargeRecord.invoice_number) == invoice_number
        )
    ).all()
    return sum(amounts, ZERO)


def _earned_when_issued(session: Session, invoice: InvoiceRecord) -> Decimal:
    """What of an invoice (before tax) was income when issued, never deferred: usage billed in
    arrears, or all of a late fee."""
    if invoice.kind == "late_fee":
        return invoice.amount - invoice.tax_amount
    return _usage_billed(session, invoice.number)


def _customer_credit(session: Session, deal_id: str) -> Decimal:
    """The credit the ledger holds for the deal's customer (a liability: credit-positive)."""
    lines = session.exec(
        select(JournalLine)
        .join(JournalEntry, JournalEntry.id == JournalLine.entry_id)  # type: ignore[arg-type]
        .where(JournalEntry.deal_id == deal_id, JournalLine.account == CUSTOMER_CREDIT)
    ).all()
    return sum((line.credit - line.debit for line in lines), ZERO)


def _tax_share(invoice: InvoiceRecord, part: Decimal) -> Decimal:
    """The tax inside the next `part` of the invoice's amount taken back after its credit notes,
    in proportion. Rounded as a running total, so the shares of all credit notes and a write-off
    add up to the invoice's tax exactly, and nothing is left on tax payable."""
    if invoice.amount <= 0 or invoice.tax_amount <= 0:
        return ZERO

    def tax_in(amount: Decimal) -> Decimal:
        return to_cents(amount * invoice.tax_amount / invoice.amount)

    return tax_in(invoice.amount_credited + part) - tax_in(invoice.amount_credited)


def _render_invoice(session: Session, row: InvoiceRecord, lead: LeadInput) -> str:
    """The invoice as the customer sees it, from its stored lines (marked DRAFT until final)."""
    lines = session.exec(
        select(InvoiceLineRecord)
        .where(InvoiceLineRecord.invoice_number == row.number)
        .order_by(col(InvoiceLineRecord.line_no))
    ).all()
    return render(
        "invoice.html",
        number=row.number,
        draft=row.status == "draft",
        deal_id=row.deal_id,
        lead=lead,
        lines=lines,
        taxes=[line.tax_amount for line in lines],
        tax_rate=lines[0].tax_rate if lines else ZERO,
        subtotal=row.amount - row.tax_amount,
        tax=row.tax_amount,
        amount=row.amount,
        currency=row.currency,
        issued_on=row.issued_on,
        due_date=row.due_date,
        service_from=row.service_from,
        service_to=row.service_to,
        early_payment_discount=row.early_payment_discount,
        early_payment_until=row.early_payment_until,
    )


def _finalize(
    session: Session, row: InvoiceRecord, lead: LeadInput, early_payment: EarlyPaymentTerms | None
) -> None:
    """Make an invoice final: open (payable), with its early-payment terms if offered, rendered
    as sent, and receivable in the journal."""
    row.status = "open"
    if early_payment is not None and row.amount > 0:
        row.early_payment_discount = early_payment_discount(row.amount, early_payment.percent)
        row.early_payment_until = early_payment.until
    row.html = _render_invoice(session, row, lead)
    session.add(row)
    if row.amount > 0:
        # Billed in advance: deferred until delivered. Usage in arrears: already delivered. A late
        # fee: income once charged.
        usage_amount = _usage_billed(session, row.number)
        fee = row.amount - row.tax_amount if row.kind == "late_fee" else ZERO
        credits = [
            (DEFERRED_REVENUE, ZERO, row.amount - row.tax_amount - usage_amount - fee),
            (REVENUE_USAGE, ZERO, usage_amount),
            (LATE_FEES, ZERO, fee),
            (TAX_PAYABLE, ZERO, row.tax_amount),
        ]
        post_entry(
            session,
            entry_key=f"{row.deal_id}:invoice:{row.number}",
            deal_id=row.deal_id,
            currency=row.currency,
            memo=f"Invoice {row.number} issued",
            posted_at=activity.info().current_attempt_scheduled_time,
            lines=[(ACCOUNTS_RECEIVABLE, row.amount, ZERO), *(c for c in credits if c[2] > 0)],
        )
    session.flush()


class BillingActivities:
    def __init__(self, engine: Engine, mailer: Mailer, tax: TaxTable | None = None):
        self._engine = engine
        self._mailer = mailer
        self._tax = tax or TaxTable(rates={})  # no table: nothing is taxed

    def _find_invoice(
        self, session: Session, deal_id: str, billing_month: int, kind: str = "billing"
    ) -> InvoiceRecord | None:
        return session.exec(
            select(InvoiceRecord).where(
                InvoiceRecord.deal_id == deal_id,
                InvoiceRecord.billing_month == billing_month,
                InvoiceRecord.kind == kind,
            )
        ).first()

    @activity.defn
    def issue_invoice(self, request: InvoiceRequest) -> IssuedInvoice | None:
        """Issue the invoice of one month boundary once: the billing period starting there (in
        advance) and the metered usage not billed yet (in arrears). Its number is taken in the same
        transaction. None when there is nothing to bill: no period starts and no usage is due."""
        return self._issue_once(request.deal_id, request.billing_month, "billing",
                                lambda session: self._issue_invoice(session, request))  # fmt: skip

    def _issue_once(
        self,
        deal_id: str,
        billing_month: int,
        kind: str,
        issue: Callable[[Session], IssuedInvoice | None],
    ) -> IssuedInvoice | None:
        """Issue an invoice under its natural key (deal, month boundary, kind) once: a second
        attempt finds the first one's, and of two attempts at once, the one that committed first
        is the invoice."""
        try:
            with Session(self._engine) as session:
                existing = self._find_invoice(session, deal_id, billing_month, kind)
                if existing is not None:
                    return _issued(session, existing)
                return issue(session)
        except IntegrityError:
            with Session(self._engine) as session:
                row = self._find_invoice(session, deal_id, billing_month, kind)
                if row is None:
                    raise
                return _issued(session, row)

    @activity.defn
    def finalize_invoice(self, request: InvoiceFinalization) -> IssuedInvoice:
        """Make a draft final once its review window is over: dated as sent, due by its terms,
        receivable in the journal. Its number was taken with the draft, and every draft is made
        final, so the series stays gap-free. A second attempt finds it final and changes nothing."""
        with Session(self._engine) as session:
            row = session.get(InvoiceRecord, request.invoice_number, with_for_update=True)
            if row is None or row.deal_id != request.deal_id:
                raise _ledger_conflict(f"invoice {request.invoice_number} is not this deal's")
            if row.status == "draft":
                row.issued_on, row.due_date = request.issued_on, request.due_date
                _finalize(session, row, request.lead, request.early_payment)
            issued = _issued(session, row)
            session.commit()
            return issued

    @activity.defn
    def issue_late_fee(self, request: LateFeeRequest) -> IssuedInvoice:
        """A late fee on an overdue invoice, on an invoice of its own (untaxed, final at once),
        once per overdue invoice: a second attempt returns the first."""
        issued = self._issue_once(request.deal_id, request.billing_month, "late_fee",
                                  lambda session: self._issue_late_fee(session, request))  # fmt: skip
        assert issued is not None
        return issued

    def _issue_late_fee(self, session: Session, request: LateFeeRequest) -> IssuedInvoice:
        number = next_document_number(session, INVOICE_SERIES)
        overdue = session.get(InvoiceRecord, request.overdue_invoice)
        if overdue is None or overdue.deal_id != request.deal_id:
            raise _ledger_conflict(f"invoice {request.overdue_invoice} is not this deal's")
        row = InvoiceRecord(
            number=number,
            deal_id=request.deal_id,
            billing_month=request.billing_month,
            kind="late_fee",
            currency=request.currency,
            amount=request.amount,
            issued_on=request.issued_on,
            due_date=request.due_date,
            service_from=overdue.service_from,
            service_to=overdue.service_to,
            html="",
        )
        session.add(row)
        session.flush()
        description = (f"Late fee: {request.percent}% of {request.overdue} "
                       f"{request.currency} overdue on {request.overdue_invoice}")  # fmt: skip
        session.add(InvoiceLineRecord(invoice_number=number, line_no=1, sku="LATE_FEE",
                                      description=description, quantity=1,
                                      unit_price=request.amount, amount=request.amount))  # fmt: skip
        session.flush()
        _finalize(session, row, request.lead, early_payment=None)
        issued = _issued(session, row)
        session.commit()
        return issued

    def _issue_invoice(self, session: Session, request: InvoiceRequest) -> IssuedInvoice | None:
        period = request.period
        usage = bill_usage(session, request.deal_id, request.usage) if request.usage else []
        usage_lines = [charge.line for charge in usage if charge.line is not None]
        if period is None and not usage_lines and not request.adjustments:
            # Usage within the commitment: remembered as billed, so it is not looked at again.
            for charge in usage:
                session.add(charge.record)
            session.commit()
            return None
        lines = [*(period.lines if period else []), *request.adjustments, *usage_lines]
        # Tax at the rate in force when the invoice is issued, rounded per line. (What of the
        # amount is deferred and what is revenue at once: `_finalize`.)
        rate = self._tax.rate_for(request.lead)
        taxes = [to_cents(line.amount * rate / HUNDRED) for line in lines]
        tax = sum(taxes, ZERO)
        amount = sum((line.amount for line in lines), ZERO) + tax
        number = next_document_number(session, INVOICE_SERIES)
        row = InvoiceRecord(
            number=number,
            deal_id=request.deal_id,
            billing_month=request.billing_month,
            period_index=period.index if period else None,
            currency=request.currency,
            amount=amount,
            tax_amount=tax,
            status="draft" if request.draft else "open",
            issued_on=request.issued_on,
            due_date=request.due_date,
            service_from=request.service_from,
            service_to=request.service_to,
            html="",
        )
        session.add(row)
        session.flush()
        for line_no, (line, line_tax) in enumerate(zip(lines, taxes, strict=True), start=1):
            session.add(
                InvoiceLineRecord(
                    invoice_number=number,
                    line_no=line_no,
                    sku=line.sku,
                    description=line.description,
                    quantity=line.quantity,
                    unit_price=line.unit_price,
                    amount=line.amount,
                    tax_rate=rate,
                    tax_amount=line_tax,
                )
            )
        for charge in usage:
            charge.record.invoice_number = number if charge.line is not None else None
            session.add(charge.record)
        session.flush()
        if request.draft:
            row.html = _render_invoice(session, row, request.lead)
        else:
            _finalize(session, row, request.lead, request.early_payment)
        session.flush()
        issued = _issued(session, row)
        session.commit()
        return issued

    @activity.defn
    def apply_payment(self, payment: PaymentRecord) -> None:
        """Apply cash once per reference: Dr cash; Cr receivables for what invoices take, Cr
        customer credit for the rest."""
        with Session(self._engine) as session:
            duplicate = session.exec(
                select(PaymentRecordRow).where(
                    PaymentRecordRow.deal_id == payment.deal_id,
                    PaymentRecordRow.reference == payment.reference,
                )
            ).first()
            if duplicate is not None:
                return
            applied = sum((a.amount for a in payment.allocations), ZERO)
            if applied + payment.to_credit != payment.amount or payment.to_credit < 0:
                raise _ledger_conflict(
                    f"payment {payment.reference}: {applied} to invoices and {payment.to_credit} "
                    f"to credit do not make {payment.amount}"
                )
            for allocation in payment.allocations:
                _allocate(session, payment.deal_id, f"payment:{payment.reference}",
                          allocation.invoice_number, allocation.amount, payment.currency)  # fmt: skip
            session.add(PaymentRecordRow(**payment.model_dump(exclude={"allocations"})))
            where = ", ".join(a.invoice_number for a in payment.allocations) or "customer credit"
            post_entry(
                session,
                entry_key=f"{payment.deal_id}:payment:{payment.reference}",
                deal_id=payment.deal_id,
                currency=payment.currency,
                memo=f"Payment {payment.reference} applied to {where}",
                posted_at=payment.received_at,
                lines=_nonzero(
                    [
                        (CASH, payment.amount, ZERO),
                        (ACCOUNTS_RECEIVABLE, ZERO, applied),
                        (CUSTOMER_CREDIT, ZERO, payment.to_credit),
                    ]
                ),
            )
            session.commit()

    @activity.defn
    def apply_credit(self, credit: CreditApplication) -> None:
        """Customer credit applied to an invoice once per key: Dr customer credit, Cr receivables."""
        source = f"credit:{credit.key}"
        with Session(self._engine) as session:
            done = session.get(PaymentAllocation, (credit.deal_id, source, credit.invoice_number))
            if done is not None:
                return
            held = _customer_credit(session, credit.deal_id)
            if credit.amount > held:
                raise _ledger_conflict(
                    f"{credit.amount} of credit applied to {credit.invoice_number}, {held} held"
                )
            _allocate(session, credit.deal_id, source, credit.invoice_number, credit.amount,
                      credit.currency)  # fmt: skip
            post_entry(
                session,
                entry_key=f"{credit.deal_id}:{source}:{credit.invoice_number}",
                deal_id=credit.deal_id,
                currency=credit.currency,
                memo=f"Customer credit applied to {credit.invoice_number}",
                posted_at=credit.applied_at,
                lines=[
                    (CUSTOMER_CREDIT, credit.amount, ZERO),
                    (ACCOUNTS_RECEIVABLE, ZERO, credit.amount),
                ],
            )
            session.commit()

    @activity.defn
    def issue_credit_note(self, request: CreditNoteRequest) -> CreditNoteIssued:
        """A credit note reduces an issued invoice, which is never edited: first its open balance
        (Cr receivables); what the invoice had already been paid becomes customer credit. Either
        way it is a sales credit (contra revenue). A fully credited unpaid invoice is void."""
        with Session(self._engine) as session:
            existing = session.exec(
                select(CreditNoteRecord).where(
                    CreditNoteRecord.deal_id == request.deal_id,
                    CreditNoteRecord.reference == request.reference,
                )
            ).first()
            if existing is not None:
                return CreditNoteIssued(number=existing.number, amount=existing.amount)
            invoice = _open_or_paid_invoice(session, request.deal_id, request.invoice_number,
                                            request.currency)  # fmt: skip
            off_balance = request.amount - request.to_credit
            balance = invoice.amount - invoice.amount_credited - invoice.amount_paid
            if not (ZERO <= request.to_credit <= invoice.amount_paid) or off_balance > balance:
                raise _ledger_conflict(
                    f"credit note {request.reference}: {request.amount} with {request.to_credit} "
                    f"to credit does not fit {invoice.number} (balance {balance})"
                )
            number = next_document_number(session, CREDIT_NOTE_SERIES)
            credited_tax = _tax_share(invoice, request.amount)
            invoice.amount_credited += request.amount
            if request.to_credit > 0:
                # The payment stays; the part the invoice no longer needs moves to credit.
                invoice.amount_paid -= request.to_credit
                session.add(PaymentAllocation(deal_id=request.deal_id,
                                              source=f"credit-note:{number}",
                                              invoice_number=invoice.number,
                                              amount=-request.to_credit))  # fmt: skip
            _settle_status(invoice)
            session.add(invoice)
            session.add(CreditNoteRecord(number=number, **request.model_dump()))
            post_entry(
                session,
                entry_key=f"{request.deal_id}:credit-note:{request.reference}",
                deal_id=request.deal_id,
                currency=request.currency,
                memo=f"Credit note {number} on {invoice.number}: {request.reason}"[:400],
                posted_at=request.issued_at,
                lines=_nonzero(
                    [
                        # The tax in the credited amount is no longer owed to the tax authority.
                        (TAX_PAYABLE, credited_tax, ZERO),
                        # Waiving a late fee takes back fee income; other credits reduce sales.
                        (
                            LATE_FEES if invoice.kind == "late_fee" else SALES_CREDITS,
                            request.amount - credited_tax,
                            ZERO,
                        ),
                        (ACCOUNTS_RECEIVABLE, ZERO, off_balance),
                        (CUSTOMER_CREDIT, ZERO, request.to_credit),
                    ]
                ),
            )
            session.commit()
            return CreditNoteIssued(number=number, amount=request.amount)

    @activity.defn
    def open_dispute(self, dispute: DisputeOpening) -> None:
        """Record a dispute once; a chargeback also takes the payment back: Dr receivables, Cr
        cash. The invoice is `disputed` until the dispute closes."""
        with Session(self._engine) as session:
            if session.get(DisputeRecord, dispute.dispute_id) is not None:
                return
            invoice = _open_or_paid_invoice(session, dispute.deal_id, dispute.invoice_number,
                                            dispute.currency)  # fmt: skip
            session.add(DisputeRecord(**dispute.model_dump()))
            if dispute.payment_reference is not None:
                if dispute.amount > invoice.amount_paid:
                    raise _ledger_conflict(
                        f"chargeback {dispute.dispute_id} of {dispute.amount}, "
                        f"{invoice.number} was paid {invoice.amount_paid}"
                    )
                invoice.amount_paid -= dispute.amount
                session.add(PaymentAllocation(deal_id=dispute.deal_id,
                                              source=f"chargeback:{dispute.dispute_id}",
                                              invoice_number=invoice.number,
                                              amount=-dispute.amount))  # fmt: skip
                post_entry(
                    session,
                    entry_key=f"{dispute.deal_id}:chargeback:{dispute.dispute_id}",
                    deal_id=dispute.deal_id,
                    currency=dispute.currency,
                    memo=f"Chargeback {dispute.dispute_id} on {invoice.number}",
                    posted_at=dispute.opened_at,
                    lines=[
                        (ACCOUNTS_RECEIVABLE, dispute.amount, ZERO),
                        (CASH, ZERO, dispute.amount),
                    ],
                )
            invoice.status = "disputed"
            session.add(invoice)
            session.commit()

    @activity.defn
    def record_chargeback(self, chargeback: LedgerChargeback) -> str:
        """A chargeback the deal's invoices cannot take: the money still moved, so the ledger
        records it (once per dispute id)."""
        return record_chargeback(self._engine, chargeback.deal_id, chargeback.signal,
                                 chargeback.body, chargeback.at)  # fmt: skip

    @activity.defn
    def close_dispute(self, closing: DisputeClosing) -> None:
        """Close a dispute once. A chargeback won returns the money: Dr cash, Cr receivables. A
        dispute lost is followed by a credit note for its amount (issued by the deal)."""
        with Session(self._engine) as session:
            dispute = session.get(DisputeRecord, closing.dispute_id, with_for_update=True)
            if dispute is None or dispute.deal_id != closing.deal_id:
                raise _ledger_conflict(f"dispute {closing.dispute_id} is not this deal's")
            if dispute.status != "open":
                return
            invoice = session.get(InvoiceRecord, dispute.invoice_number, with_for_update=True)
            assert invoice is not None
            if closing.outcome == "won" and dispute.payment_reference is not None:
                invoice.amount_paid += dispute.amount
                session.add(PaymentAllocation(deal_id=dispute.deal_id,
                                              source=f"chargeback-reversed:{dispute.dispute_id}",
                                              invoice_number=invoice.number,
                                              amount=dispute.amount))  # fmt: skip
                post_entry(
                    session,
                    entry_key=f"{dispute.deal_id}:chargeback-reversed:{dispute.dispute_id}",
                    deal_id=dispute.deal_id,
                    currency=dispute.currency,
                    memo=f"Chargeback {dispute.dispute_id} won: funds returned",
                    posted_at=closing.closed_at,
                    lines=[
                        (CASH, dispute.amount, ZERO),
                        (ACCOUNTS_RECEIVABLE, ZERO, dispute.amount),
                    ],
                )
            dispute.status = closing.outcome
            dispute.closed_at = closing.closed_at
            _settle_status(invoice)
            session.add(dispute)
            session.add(invoice)
            session.commit()

    @activity.defn
    def credit_proration(self, credit: ProrationCredit) -> None:
        """Service paid in advance and no longer delivered (fewer seats), returned as customer
        credit once per key: Dr deferred revenue, Cr customer credit."""
        with Session(self._engine) as session:
            post_entry(
                session,
                entry_key=f"{credit.deal_id}:proration:{credit.key}",
                deal_id=credit.deal_id,
                currency=credit.currency,
                memo=f"Proration credit {credit.key}",
                posted_at=credit.credited_at,
                lines=[
                    (DEFERRED_REVENUE, credit.amount, ZERO),
                    (CUSTOMER_CREDIT, ZERO, credit.amount),
                ],
            )
            session.commit()

    @activity.defn
    def refund_credit(self, refund: RefundRequest) -> None:
        """Customer credit paid back once per reference: Dr customer credit, Cr cash."""
        with Session(self._engine) as session:
            done = session.exec(
                select(RefundRecord).where(
                    RefundRecord.deal_id == refund.deal_id,
                    RefundRecord.reference == refund.reference,
                )
            ).first()
            if done is not None:
                return
            held = _customer_credit(session, refund.deal_id)
            if refund.amount > held:
                raise _ledger_conflict(f"refund {refund.reference} of {refund.amount}, {held} held")
            session.add(RefundRecord(**refund.model_dump()))
            post_entry(
                session,
                entry_key=f"{refund.deal_id}:refund:{refund.reference}",
                deal_id=refund.deal_id,
                currency=refund.currency,
                memo=f"Refund {refund.reference} of customer credit",
                posted_at=refund.refunded_at,
                lines=[(CUSTOMER_CREDIT, refund.amount, ZERO), (CASH, ZERO, refund.amount)],
            )
            session.commit()

    @activity.defn
    def send_dunning_reminder(self, notice: DunningNotice) -> bool:
        subject, body = render_email(
            "dunning_reminder.txt",
            lead=notice.lead,
            invoice_number=notice.invoice_number,
            amount_due=notice.amount_due,
            currency=notice.currency,
            due_date=notice.due_date,
            days_overdue=notice.days_overdue,
            level=notice.level,
            final_level=notice.final_level,
            write_off_on=notice.write_off_on,
            suspends_service=notice.suspends_service,
            late_fee=notice.late_fee,
            late_fee_invoice=notice.late_fee_invoice,
        )
        return self._mailer.send_once(
            key=f"{notice.deal_id}:dunning:{notice.invoice_number}:{notice.level}",
            deal_id=notice.deal_id,
            recipient=notice.lead.contact_email,
            subject=subject,
            body=body,
        )

    @activity.defn
    def write_off_deal(self, request: WriteOffRequest) -> WriteOffResult:
        """Terminate collection: unpaid invoices become uncollectible.

        What was billed but never delivered (still deferred) is reversed against receivables; the
        rest of the unpaid amount was earned and is a bad-debt expense.
        """
        entry_key = f"{request.deal_id}:write-off"
        with Session(self._engine) as session:
            invoices = session.exec(
                select(InvoiceRecord)
                .where(InvoiceRecord.deal_id == request.deal_id)
                .order_by(col(InvoiceRecord.billing_month))
            ).all()
            done = session.exec(
                select(JournalEntry).where(JournalEntry.entry_key == entry_key)
            ).first()
            if done is not None:
                lines = session.exec(
                    select(JournalLine).where(JournalLine.entry_id == done.id)
                ).all()
                return WriteOffResult(
                    invoice_numbers=[i.number for i in invoices if i.status == "uncollectible"],
                    bad_debt=sum(
                        (ln.debit for ln in lines if ln.account == BAD_DEBT_EXPENSE), ZERO
                    ),
                    reversed_deferred=sum(
                        (ln.debit for ln in lines if ln.account == DEFERRED_REVENUE), ZERO
                    ),
                )
            # Disputed invoices go too: collection is over, and their disputes with it.
            unpaid_invoices = [i for i in invoices if i.status in ("open", "disputed")]
            for dispute in session.exec(
                select(DisputeRecord).where(
                    DisputeRecord.deal_id == request.deal_id, DisputeRecord.status == "open"
                )
            ).all():
                dispute.status = "written_off"
                dispute.closed_at = request.written_off_at
                session.add(dispute)
            unpaid = sum(
                (i.amount - i.amount_credited - i.amount_paid for i in unpaid_invoices), ZERO
            )
            deferred_lines = session.exec(
                select(JournalLine)
                .join(JournalEntry, JournalEntry.id == JournalLine.entry_id)  # type: ignore[arg-type]
                .where(
                    JournalEntry.deal_id == request.deal_id, JournalLine.account == DEFERRED_REVENUE
                )
            ).all()
            deferred_balance = sum((ln.credit - ln.debit for ln in deferred_lines), ZERO)
            # Usage billed in arrears and late fees were never deferred: unpaid, they are bad debt.
            # Only the unpaid
            # part of what was billed in advance can still be undelivered.
            # The tax in what is never paid is reclaimed from the tax authority (bad-debt relief).
            unpaid_tax = sum(
                (_tax_share(i, i.amount - i.amount_credited - i.amount_paid)
                 for i in unpaid_invoices), ZERO)  # fmt: skip
            in_advance = sum(
                (min(i.amount - i.amount_credited - i.amount_paid - _tax_share(
                         i, i.amount - i.amount_credited - i.amount_paid),
                     i.amount - i.tax_amount - _earned_when_issued(session, i))
                 for i in unpaid_invoices),
                ZERO,
            )  # fmt: skip
            reversal = max(ZERO, min(in_advance, deferred_balance))
            # Revenue recognized ahead of billing (by obligation: a contract asset, the deal's
            # deferred revenue below zero) will never be billed now: it is lost with the rest.
            contract_asset = max(ZERO, -deferred_balance)
            bad_debt = unpaid - unpaid_tax - reversal
            for invoice in unpaid_invoices:
                invoice.status = "uncollectible"
                session.add(invoice)
            if unpaid > 0:
                lines_to_post = [(ACCOUNTS_RECEIVABLE, ZERO, unpaid)]
                if unpaid_tax > 0:
                    lines_to_post.append((TAX_PAYABLE, unpaid_tax, ZERO))
                if reversal > 0:
                    lines_to_post.append((DEFERRED_REVENUE, reversal, ZERO))
                if contract_asset > 0:
                    lines_to_post.append((DEFERRED_REVENUE, ZERO, contract_asset))
                if bad_debt + contract_asset > 0:
                    lines_to_post.append((BAD_DEBT_EXPENSE, bad_debt + contract_asset, ZERO))
                post_entry(
                    session,
                    entry_key=entry_key,
                    deal_id=request.deal_id,
                    currency=request.currency,
                    memo=f"Write-off: {request.reason}",
                    posted_at=request.written_off_at,
                    lines=lines_to_post,
                )
            session.commit()
            return WriteOffResult(
                invoice_numbers=[i.number for i in unpaid_invoices],
                bad_debt=bad_debt + contract_asset,
                reversed_deferred=reversal,
            )
