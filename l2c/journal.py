"""Double-entry postings into the ledger: the one place that writes journal entries."""

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from models.calendar import as_utc
from models.ledger import ClosedPeriod, JournalEntry, JournalLine
from models.money import ZERO

CASH = "1000"
ACCOUNTS_RECEIVABLE = "1100"
TAX_PAYABLE = "2200"
CUSTOMER_CREDIT = "2300"
DEFERRED_REVENUE = "2400"
REVENUE_SUBSCRIPTION = "4000"
REVENUE_SERVICES = "4010"
REVENUE_USAGE = "4020"
LATE_FEES = "4800"
SALES_CREDITS = "4900"
BAD_DEBT_EXPENSE = "6100"
CHARGEBACK_LOSSES = "6200"

ACCOUNT_NAMES = {
    CASH: "Cash",
    ACCOUNTS_RECEIVABLE: "Accounts receivable",
    TAX_PAYABLE: "Tax payable",
    CUSTOMER_CREDIT: "Customer credit",
    DEFERRED_REVENUE: "Deferred revenue",
    REVENUE_SUBSCRIPTION: "Subscription revenue",
    REVENUE_SERVICES: "Services revenue",
    REVENUE_USAGE: "Usage revenue",
    LATE_FEES: "Late fees (other income)",
    SALES_CREDITS: "Sales credits (contra revenue)",
    BAD_DEBT_EXPENSE: "Bad debt expense",
    CHARGEBACK_LOSSES: "Chargebacks outside invoices",
}


def period_of(moment: datetime) -> str:
    """The accounting period (a calendar month, UTC) of a moment: YYYY-MM. A moment without a
    time zone is taken as UTC, never as the machine's local time."""
    return as_utc(moment).astimezone(UTC).strftime("%Y-%m")


def next_period(period: str) -> str:
    year, month = map(int, period.split("-"))
    return f"{year + month // 12:04d}-{month % 12 + 1:02d}"


def open_period(session: Session, moment: datetime) -> str:
    """The period a posting for `moment` is booked in: its own, or the first open one after."""
    period = period_of(moment)
    if session.get_bind().dialect.name == "postgresql":
        # Postings share this lock; a close's insert waits for them, and they for it: no entry
        # lands in a month closed while it was being posted.
        session.execute(text("LOCK TABLE closed_periods IN SHARE MODE"))
    closed = set(session.exec(select(ClosedPeriod.period)).all())
    while period in closed:
        period = next_period(period)
    return period


def close_period(session: Session, period: str, closed_by: str) -> bool:
    """Close `period` (YYYY-MM) for postings; False if it was closed already."""
    if session.get(ClosedPeriod, period) is not None:
        return False
    session.add(ClosedPeriod(period=period, closed_at=datetime.now(UTC), closed_by=closed_by))
    try:
        session.flush()
    except IntegrityError:  # closed by someone else at the same moment
        session.rollback()
        return False
    return True


class UnbalancedEntry(ValueError):
    """Debits and credits differ: refused, nothing written."""


def post_entry(
    session: Session,
    *,
    entry_key: str,
    deal_id: str,
    currency: str,
    memo: str,
    posted_at: datetime,
    lines: list[tuple[str, Decimal, Decimal]],
) -> JournalEntry:
    """Post a balanced entry once: a second call with the same key returns the first entry.

    `lines` are (account, debit, credit). Runs inside the caller's transaction.
    """
    existing = session.exec(select(JournalEntry).where(JournalEntry.entry_key == entry_key)).first()
    if existing is not None:
        return existing
    debits = sum((debit for _, debit, _ in lines), ZERO)
    credits = sum((credit for _, _, credit in lines), ZERO)
    if debits != credits or debits <= 0:
        raise UnbalancedEntry(f"{entry_key}: debits {debits} != credits {credits}")
    for account, _, _ in lines:
        if account not in ACCOUNT_NAMES:
            raise UnbalancedEntry(f"{entry_key}: unknown account {account}")
    period = open_period(session, posted_at)
    if period != period_of(posted_at):
        memo = f"{memo[:350]} [booked in {period}: {period_of(posted_at)} is closed]"
    entry = JournalEntry(entry_key=entry_key, deal_id=deal_id, currency=currency, memo=memo,
                         posted_at=posted_at, period=period)  # fmt: skip
    session.add(entry)
    session.flush()
    assert entry.id is not None
    for account, debit, credit in lines:
        session.add(JournalLine(entry_id=entry.id, account=account, debit=debit, credit=credit))
    return entry
