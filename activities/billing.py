"""Billing activities: invoices with gap-free numbers, cash application, dunning, write-off."""

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from l2c.db import INVOICE_SERIES, take_next_number
from l2c.documents import render, render_email
from l2c.journal import (
    ACCOUNTS_RECEIVABLE,
    BAD_DEBT_EXPENSE,
    CASH,
    DEFERRED_REVENUE,
    REVENUE_USAGE,
    post_entry,
)
from l2c.mail import Mailer
from l2c.usage import bill_usage
from models.documents import (
    DunningNotice,
    InvoiceRequest,
    IssuedInvoice,
    PaymentRecord,
    WriteOffRequest,
    WriteOffResult,
)
from models.ledger import (
    InvoiceLineRecord,
    InvoiceRecord,
    JournalEntry,
    JournalLine,
    PaymentRecordRow,
    UsageChargeRecord,
)
from models.money import ZERO


def _issued(session: Session, row: InvoiceRecord) -> IssuedInvoice:
    usage = session.exec(
        select(col(UsageChargeRecord.amount)).where(
            col(UsageChargeRecord.invoice_number) == row.number
        )
    ).all()
    return IssuedInvoice(
        number=row.number,
        amount=row.amount,
        currency=row.currency,
        issued_on=row.issued_on,
        due_date=row.due_date,
        usage_amount=sum(usage, ZERO),
    )


def _ledger_conflict(message: str) -> ApplicationError:
    # The workflow validates before it calls; reaching this means the ledger and the deal disagree,
    # which no retry can fix and a person must look at.
    return ApplicationError(message, type="LedgerConflict", non_retryable=True)


class BillingActivities:
    def __init__(self, engine: Engine, mailer: Mailer):
        self._engine = engine
        self._mailer = mailer

    def _find_invoice(
        self, session: Session, deal_id: str, billing_month: int
    ) -> InvoiceRecord | None:
        return session.exec(
            select(InvoiceRecord).where(
                InvoiceRecord.deal_id == deal_id, InvoiceRecord.billing_month == billing_month
            )
        ).first()

    @activity.defn
    def issue_invoice(self, request: InvoiceRequest) -> IssuedInvoice | None:
        """Issue the invoice of one month boundary once: the billing period starting there (in
        advance) and the metered usage not billed yet (in arrears). Its number is taken in the same
        transaction. None when there is nothing to bill: no period starts and no usage is due."""
        try:
            return self._issue_invoice(request)
        except IntegrityError:
            # Another attempt of this same step committed first: its invoice is the invoice.
            with Session(self._engine) as session:
                row = self._find_invoice(session, request.deal_id, request.billing_month)
                if row is None:
                    raise
                return _issued(session, row)

    def _issue_invoice(self, request: InvoiceRequest) -> IssuedInvoice | None:
        period = request.period
        with Session(self._engine) as session:
            existing = self._find_invoice(session, request.deal_id, request.billing_month)
            if existing is not None:
                return _issued(session, existing)
            usage = bill_usage(session, request.deal_id, request.usage) if request.usage else []
            usage_lines = [charge.line for charge in usage if charge.line is not None]
            if period is None and not usage_lines:
                # Usage within the commitment: remembered as billed, so it is not looked at again.
                for charge in usage:
                    session.add(charge.record)
                session.commit()
                return None
            lines = [*(period.lines if period else []), *usage_lines]
            period_amount = period.amount if period else ZERO
            usage_amount = sum((line.amount for line in usage_lines), ZERO)
            amount = period_amount + usage_amount
            number = f"{INVOICE_SERIES}-{take_next_number(session, INVOICE_SERIES):06d}"
            html = render(
                "invoice.html",
                number=number,
                deal_id=request.deal_id,
                lead=request.lead,
                lines=lines,
                amount=amount,
                currency=request.currency,
                issued_on=request.issued_on,
                due_date=request.due_date,
                service_from=request.service_from,
                service_to=request.service_to,
            )
            row = InvoiceRecord(
                number=number,
                deal_id=request.deal_id,
                billing_month=request.billing_month,
                period_index=period.index if period else None,
                currency=request.currency,
                amount=amount,
                issued_on=request.issued_on,
                due_date=request.due_date,
                service_from=request.service_from,
                service_to=request.service_to,
                html=html,
            )
            session.add(row)
            session.flush()
            for line_no, line in enumerate(lines, start=1):
                session.add(
                    InvoiceLineRecord(
                        invoice_number=number,
                        line_no=line_no,
                        sku=line.sku,
                        description=line.description,
                        quantity=line.quantity,
                        unit_price=line.unit_price,
                        amount=line.amount,
                    )
                )
            for charge in usage:
                charge.record.invoice_number = number if charge.line is not None else None
                session.add(charge.record)
            if amount > 0:
                # Billed in advance: deferred until delivered. Usage in arrears: already delivered.
                credits = [
                    (DEFERRED_REVENUE, ZERO, period_amount),
                    (REVENUE_USAGE, ZERO, usage_amount),
                ]
                post_entry(
                    session,
                    entry_key=f"{request.deal_id}:invoice:{number}",
                    deal_id=request.deal_id,
                    currency=request.currency,
                    memo=f"Invoice {number} issued",
                    posted_at=activity.info().current_attempt_scheduled_time,
                    lines=[(ACCOUNTS_RECEIVABLE, amount, ZERO), *(c for c in credits if c[2] > 0)],
                )
            session.flush()
            issued = _issued(session, row)
            session.commit()
            return issued

    @activity.defn
    def apply_payment(self, payment: PaymentRecord) -> None:
        """Apply cash to an invoice once per reference: Dr cash, Cr accounts receivable."""
        with Session(self._engine) as session:
            duplicate = session.exec(
                select(PaymentRecordRow).where(
                    PaymentRecordRow.deal_id == payment.deal_id,
                    PaymentRecordRow.reference == payment.reference,
                )
            ).first()
            if duplicate is not None:
                return
            invoice = session.get(InvoiceRecord, payment.invoice_number)
            if invoice is None or invoice.deal_id != payment.deal_id:
                raise _ledger_conflict(f"invoice {payment.invoice_number} is not this deal's")
            if invoice.currency != payment.currency:
                raise _ledger_conflict(
                    f"payment in {payment.currency}, invoice in {invoice.currency}"
                )
            if invoice.status != "open":  # e.g. written off: AR was already closed out
                raise _ledger_conflict(
                    f"payment {payment.reference}: {invoice.number} is {invoice.status}"
                )
            paid = invoice.amount_paid + payment.amount
            if paid > invoice.amount:
                raise _ledger_conflict(
                    f"payment {payment.reference} would overpay {invoice.number} ({paid} > {invoice.amount})"
                )
            invoice.amount_paid = paid
            if paid == invoice.amount:
                invoice.status = "paid"
            session.add(invoice)
            session.add(
                PaymentRecordRow(
                    deal_id=payment.deal_id,
                    reference=payment.reference,
                    invoice_number=payment.invoice_number,
                    amount=payment.amount,
                    currency=payment.currency,
                    recorded_by=payment.recorded_by,
                    received_at=payment.received_at,
                )
            )
            post_entry(
                session,
                entry_key=f"{payment.deal_id}:payment:{payment.reference}",
                deal_id=payment.deal_id,
                currency=payment.currency,
                memo=f"Payment {payment.reference} applied to {payment.invoice_number}",
                posted_at=payment.received_at,
                lines=[(CASH, payment.amount, ZERO), (ACCOUNTS_RECEIVABLE, ZERO, payment.amount)],
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
            unpaid_invoices = [i for i in invoices if i.status == "open"]
            unpaid = sum((i.amount - i.amount_paid for i in unpaid_invoices), ZERO)
            deferred_lines = session.exec(
                select(JournalLine)
                .join(JournalEntry, JournalEntry.id == JournalLine.entry_id)  # type: ignore[arg-type]
                .where(
                    JournalEntry.deal_id == request.deal_id, JournalLine.account == DEFERRED_REVENUE
                )
            ).all()
            deferred_balance = sum((ln.credit - ln.debit for ln in deferred_lines), ZERO)
            reversal = max(ZERO, min(unpaid, deferred_balance))
            bad_debt = unpaid - reversal
            for invoice in unpaid_invoices:
                invoice.status = "uncollectible"
                session.add(invoice)
            if unpaid > 0:
                lines_to_post = [(ACCOUNTS_RECEIVABLE, ZERO, unpaid)]
                if reversal > 0:
                    lines_to_post.append((DEFERRED_REVENUE, reversal, ZERO))
                if bad_debt > 0:
                    lines_to_post.append((BAD_DEBT_EXPENSE, bad_debt, ZERO))
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
                bad_debt=bad_debt,
                reversed_deferred=reversal,
            )
