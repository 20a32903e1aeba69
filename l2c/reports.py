"""Ledger reports for finance: trial balance, deferred-revenue waterfall, revenue by obligation,
AR aging. Each is a list of rows (one dict per row) printed as a table or written as CSV by
`l2c ledger ...`; amounts are per currency, never added across currencies."""

import csv
import sys
from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from l2c.journal import (
    ACCOUNT_NAMES,
    ACCOUNTS_RECEIVABLE,
    DEFERRED_REVENUE,
    LATE_FEES,
    REVENUE_SERVICES,
    REVENUE_SUBSCRIPTION,
    REVENUE_USAGE,
    SALES_CREDITS,
)
from models.ledger import InvoiceRecord, JournalEntry, JournalLine
from models.money import ZERO

Row = dict[str, Any]

# What each revenue account recognizes: the performance obligation behind it.
OBLIGATIONS = {
    REVENUE_SUBSCRIPTION: "subscription access (ratable)",
    REVENUE_SERVICES: "onboarding (at provisioning)",
    REVENUE_USAGE: "usage (as consumed)",
    LATE_FEES: "late fees (other income)",
    SALES_CREDITS: "credits given (contra revenue)",
}
RECOGNIZED_IN = (REVENUE_SUBSCRIPTION, REVENUE_SERVICES, REVENUE_USAGE)
AGING_BUCKETS = [(0, "current"), (30, "1-30"), (60, "31-60"), (90, "61-90")]


def _lines(engine: Engine, through: str | None = None) -> list[tuple[JournalEntry, JournalLine]]:
    with Session(engine) as session:
        query = select(JournalEntry, JournalLine).join(
            JournalLine,
            JournalLine.entry_id == JournalEntry.id,  # type: ignore[arg-type]
        )
        if through is not None:
            query = query.where(JournalEntry.period <= through)
        return list(session.exec(query).all())


def trial_balance(engine: Engine, through: str | None = None) -> list[Row]:
    """Per currency and account: debits, credits and the balance (debit-positive), with a total
    per currency that must be zero; `through` a period (YYYY-MM) or everything."""
    totals: dict[tuple[str, str], list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    for entry, line in _lines(engine, through):
        total = totals[(entry.currency, line.account)]
        total[0] += line.debit
        total[1] += line.credit
    rows: list[Row] = []
    for currency in sorted({c for c, _ in totals}):
        debits = credits = ZERO
        for (cur, account), (debit, credit) in sorted(totals.items()):
            if cur != currency:
                continue
            rows.append({"currency": currency, "account": account,
                         "name": ACCOUNT_NAMES.get(account, account), "debit": debit,
                         "credit": credit, "balance": debit - credit})  # fmt: skip
            debits, credits = debits + debit, credits + credit
        rows.append({"currency": currency, "account": "", "name": "total", "debit": debits,
                     "credit": credits, "balance": debits - credits})  # fmt: skip
    return rows


def deferred_revenue_waterfall(engine: Engine) -> list[Row]:
    """Per currency and period: deferred revenue at the start, billed into it, recognized out of
    it, reversed (write-offs and credits), and at the end. At the end it is also split per deal
    (ASC 606 nets each contract on its own): deals billed ahead of revenue owe service (a contract
    liability), deals whose revenue ran ahead of billing are owed the difference (a contract
    asset, which recognition by obligation can create, e.g. for onboarding billed below its SSP)."""
    moves: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(
        lambda: {"billed": ZERO, "recognized": ZERO, "reversed": ZERO}
    )
    per_deal: dict[tuple[str, str], dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    by_entry: dict[int, list[JournalLine]] = defaultdict(list)
    entries: dict[int, JournalEntry] = {}
    for entry, line in _lines(engine):
        assert entry.id is not None
        by_entry[entry.id].append(line)
        entries[entry.id] = entry
    for entry_id, lines in by_entry.items():
        entry = entries[entry_id]
        # Recognition, or a modification's catch-up taking some back (revenue debited).
        to_revenue = any(ln.account in RECOGNIZED_IN for ln in lines)
        invoiced = any(ln.account == ACCOUNTS_RECEIVABLE and ln.debit > 0 for ln in lines)
        for line in lines:
            if line.account != DEFERRED_REVENUE:
                continue
            move = moves[(entry.currency, entry.period)]
            if invoiced:
                move["billed"] += line.credit - line.debit
            elif to_revenue:
                move["recognized"] += line.debit - line.credit
            else:  # write-offs, proration credits, a contract asset written off
                move["reversed"] += line.debit - line.credit
            per_deal[(entry.currency, entry.period)][entry.deal_id] += line.credit - line.debit
    rows: list[Row] = []
    balance: dict[str, Decimal] = defaultdict(lambda: ZERO)
    deals: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for (currency, period), move in sorted(moves.items()):
        opening = balance[currency]
        closing = opening + move["billed"] - move["recognized"] - move["reversed"]
        balance[currency] = closing
        for deal_id, change in per_deal[(currency, period)].items():
            deals[currency][deal_id] += change
        liability = sum((b for b in deals[currency].values() if b > 0), ZERO)
        asset = -sum((b for b in deals[currency].values() if b < 0), ZERO)
        rows.append({"currency": currency, "period": period, "opening": opening, **move,
                     "closing": closing, "contract_liabilities": liability,
                     "contract_assets": asset})  # fmt: skip
    return rows


def revenue_by_obligation(engine: Engine) -> list[Row]:
    """Per currency, period and performance obligation: what was recognized. Deals recognized by
    obligation name it (the product, from the posting's key); the others, and income outside
    any obligation, show the revenue account's."""
    amounts: dict[tuple[str, str, str, str], Decimal] = defaultdict(lambda: ZERO)
    for entry, line in _lines(engine):
        if line.account in OBLIGATIONS:
            obligation = OBLIGATIONS[line.account]
            prefix = f"{entry.deal_id}:recognize:"  # then month-3:PLATFORM, or month-3 alone
            which = entry.entry_key.removeprefix(prefix).split(":")
            if entry.entry_key.startswith(prefix) and len(which) == 2:
                obligation = which[1]
            amounts[(entry.currency, entry.period, line.account, obligation)] += (
                line.credit - line.debit
            )
    return [
        {"currency": currency, "period": period, "account": account,
         "obligation": obligation, "recognized": amount}
        for (currency, period, account, obligation), amount in sorted(amounts.items())
    ]  # fmt: skip


def ar_aging(engine: Engine, as_of: date) -> list[Row]:
    """What each invoice issued by `as_of` still owes today, by how long past due it is on
    `as_of`, then a total per currency and bucket. With `as_of` today the totals agree with the
    journal's receivables; an earlier day moves the aging clock only (balances are today's)."""
    with Session(engine) as session:
        invoices = session.exec(
            select(InvoiceRecord).where(
                InvoiceRecord.status.in_(["open", "disputed"]),  # type: ignore[attr-defined]
                InvoiceRecord.issued_on <= as_of,
            )
        ).all()
    rows: list[Row] = []
    totals: dict[tuple[str, str], Decimal] = defaultdict(lambda: ZERO)
    for invoice in sorted(invoices, key=lambda i: (i.currency, i.due_date, i.number)):
        owed = invoice.amount - invoice.amount_credited - invoice.amount_paid
        if owed == 0:
            continue
        late = (as_of - invoice.due_date).days
        bucket = next((name for limit, name in AGING_BUCKETS if late <= limit), "over 90")
        totals[(invoice.currency, bucket)] += owed
        rows.append({"currency": invoice.currency, "deal": invoice.deal_id,
                     "invoice": invoice.number, "status": invoice.status,
                     "due": invoice.due_date.isoformat(), "days late": max(late, 0),
                     "bucket": bucket, "owed": owed})  # fmt: skip
    order = [name for _, name in AGING_BUCKETS] + ["over 90"]
    for (currency, bucket), owed in sorted(
        totals.items(), key=lambda t: (t[0][0], order.index(t[0][1]))
    ):
        rows.append({"currency": currency, "deal": "total", "invoice": "", "status": "",
                     "due": "", "days late": "", "bucket": bucket, "owed": owed})  # fmt: skip
    return rows


def receivables(engine: Engine) -> dict[str, Decimal]:
    """The journal's receivables per currency (debit-positive)."""
    owed: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for entry, line in _lines(engine):
        if line.account == ACCOUNTS_RECEIVABLE:
            owed[entry.currency] += line.debit - line.credit
    return dict(owed)


def print_table(rows: list[Row]) -> None:
    """Rows as a right-aligned text table (headers from the first row)."""
    if not rows:
        print("(nothing)")
        return
    headers = list(rows[0])
    cells = [[_cell(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for line in cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


def write_csv(rows: Iterable[Row], out: Any = None) -> None:
    rows = list(rows)
    writer = csv.writer(out or sys.stdout)
    if rows:
        writer.writerow(list(rows[0]))
        writer.writerows([[_cell(v) for v in row.values()] for row in rows])


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
