"""Ledger integrity: the invariants a finance team relies on, checked against the database itself.

`l2c audit ledger` runs these, and so do the crash and fault tests after they have done their worst.
"""

import re
from collections import Counter, defaultdict
from decimal import Decimal

from sqlalchemy import Engine
from sqlmodel import Session, select

from l2c.db import CREDIT_NOTE_SERIES, INVOICE_SERIES
from l2c.journal import ACCOUNTS_RECEIVABLE
from models.ledger import (
    CreditNoteRecord,
    InvoiceLineRecord,
    InvoiceRecord,
    JournalEntry,
    JournalLine,
    NumberSeries,
    PaymentAllocation,
    PaymentRecordRow,
)
from models.money import ZERO


def _series_problems(
    kind: str, series: str, numbers: list[str], next_value: int | None
) -> list[str]:
    """Document numbers of one series: gap-free from 1, each used once, and the series pointing
    just past the last."""
    problems = []
    pattern = re.compile(rf"^{series}-(\d+)$")
    taken = []
    for number in numbers:
        match = pattern.match(number)
        if match is None:
            problems.append(f"{kind} number {number!r} is not in the {series} series")
        else:
            taken.append(int(match.group(1)))
    if sorted(taken) != list(range(1, len(taken) + 1)):
        missing = sorted(set(range(1, max(taken, default=0) + 1)) - set(taken))
        problems.append(f"{kind} numbers are not gap-free: missing {missing[:10]}")
    if next_value is not None and next_value != len(taken) + 1:
        problems.append(
            f"number series {series} is at {next_value}, but {len(taken)} {kind}s exist"
        )
    return problems


def check_ledger(engine: Engine) -> list[str]:
    """Every broken invariant, one sentence each; an empty list means the ledger is sound."""
    problems: list[str] = []
    with Session(engine) as session:
        invoices = session.exec(select(InvoiceRecord)).all()
        payments = session.exec(select(PaymentRecordRow)).all()
        allocations = session.exec(select(PaymentAllocation)).all()
        credit_notes = session.exec(select(CreditNoteRecord)).all()
        entries = session.exec(select(JournalEntry)).all()
        lines = session.exec(select(JournalLine)).all()
        invoice_lines = session.exec(select(InvoiceLineRecord)).all()
        next_values = {s.name: s.next_value for s in session.exec(select(NumberSeries)).all()}

    # Document numbers: gap-free from 1 per series, each used once.
    problems += _series_problems("invoice", INVOICE_SERIES, [i.number for i in invoices],
                                 next_values.get(INVOICE_SERIES))  # fmt: skip
    problems += _series_problems("credit note", CREDIT_NOTE_SERIES,
                                 [n.number for n in credit_notes],
                                 next_values.get(CREDIT_NOTE_SERIES))  # fmt: skip
    # A billing period is invoiced once: known by the month it starts (period indexes restart
    # with each renewed term, months since activation do not).
    periods = Counter(
        (invoice.deal_id, invoice.billing_month)
        for invoice in invoices
        if invoice.period_index is not None
    )
    problems += [
        f"{deal} period starting in month {month + 1} invoiced {n} times"
        for (deal, month), n in periods.items()
        if n > 1
    ]

    # Invoice lines add up to the invoice.
    line_totals: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for line in invoice_lines:
        line_totals[line.invoice_number] += line.amount + line.tax_amount
    for invoice in invoices:
        if line_totals[invoice.number] != invoice.amount:
            problems.append(
                f"{invoice.number}: lines add to {line_totals[invoice.number]}, invoice says {invoice.amount}"
            )

    # Payments: each reference once per deal, and what an invoice shows as paid is what was applied.
    references = Counter((p.deal_id, p.reference) for p in payments)
    problems += [
        f"payment {ref} of {deal} applied {n} times"
        for (deal, ref), n in references.items()
        if n > 1
    ]
    paid: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for allocation in allocations:
        paid[allocation.invoice_number] += allocation.amount
    credited: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for note in credit_notes:
        credited[note.invoice_number] += note.amount
    for invoice in invoices:
        if paid[invoice.number] != invoice.amount_paid:
            problems.append(
                f"{invoice.number}: payments add to {paid[invoice.number]}, invoice shows {invoice.amount_paid} paid"
            )
        if credited[invoice.number] != invoice.amount_credited:
            problems.append(
                f"{invoice.number}: credit notes add to {credited[invoice.number]}, invoice shows {invoice.amount_credited}"
            )
        settled = invoice.amount_paid + invoice.amount_credited
        if settled > invoice.amount or invoice.amount_paid < 0:
            problems.append(
                f"{invoice.number}: paid {invoice.amount_paid} and credited "
                f"{invoice.amount_credited} of {invoice.amount}"
            )
        if invoice.status in ("paid", "void") and settled != invoice.amount:
            problems.append(
                f"{invoice.number}: marked {invoice.status} with {settled} of {invoice.amount} settled"
            )
    for payment in payments:
        applied = sum(
            (a.amount for a in allocations if a.source == f"payment:{payment.reference}"
             and a.deal_id == payment.deal_id), ZERO)  # fmt: skip
        if applied + payment.to_credit != payment.amount:
            problems.append(
                f"payment {payment.reference}: {applied} applied and {payment.to_credit} "
                f"to credit of {payment.amount}"
            )

    # Journal: every entry has lines and balances.
    by_entry: dict[int, list[JournalLine]] = defaultdict(list)
    for line in lines:
        by_entry[line.entry_id].append(line)
    for entry in entries:
        assert entry.id is not None
        debit = sum((line.debit for line in by_entry[entry.id]), ZERO)
        credit = sum((line.credit for line in by_entry[entry.id]), ZERO)
        if not by_entry[entry.id]:
            problems.append(f"journal entry {entry.entry_key} has no lines")
        elif debit != credit:
            problems.append(
                f"journal entry {entry.entry_key} does not balance: {debit} != {credit}"
            )
    # Receivables: per deal, the journal's AR is what its open and disputed invoices still owe.
    deal_of = {entry.id: entry.deal_id for entry in entries}
    receivable: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for line in lines:
        if line.account == ACCOUNTS_RECEIVABLE:
            receivable[deal_of[line.entry_id]] += line.debit - line.credit
    owed: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for invoice in invoices:
        if invoice.status in ("open", "disputed"):
            owed[invoice.deal_id] += invoice.amount - invoice.amount_credited - invoice.amount_paid
    for deal in sorted(set(receivable) | set(owed)):
        if receivable[deal] != owed[deal]:
            problems.append(
                f"{deal}: receivables {receivable[deal]} but open invoices owe {owed[deal]}"
            )
    return problems
