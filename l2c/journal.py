"""Double-entry postings into the ledger: the one place that writes journal entries."""

from datetime import datetime
from decimal import Decimal

from sqlmodel import Session, select

from models.ledger import JournalEntry, JournalLine
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
    entry = JournalEntry(
        entry_key=entry_key, deal_id=deal_id, currency=currency, memo=memo, posted_at=posted_at
    )
    session.add(entry)
    session.flush()
    assert entry.id is not None
    for account, debit, credit in lines:
        session.add(JournalLine(entry_id=entry.id, account=account, debit=debit, credit=credit))
    return entry
