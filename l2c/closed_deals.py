"""Chargebacks the deal's invoices cannot take: ones that arrive after the deal has closed (a card
dispute can come months later; the webhook records them), and ones a running deal refuses (a void
invoice, say; the deal records them through an activity).

The ledger records the money the gateway took back, and its return if the dispute is won, as a
chargeback loss outside the invoices. Nothing the gateway moved is lost.
"""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import Engine
from sqlmodel import Session

from l2c.journal import CASH, CHARGEBACK_LOSSES, post_entry
from models.ledger import DisputeRecord, InvoiceRecord
from models.money import ZERO


def record_chargeback(
    engine: Engine, deal_id: str, signal: str, body: dict[str, str], at: datetime
) -> str:
    """Apply an `open_dispute` or `close_dispute` the closed deal can no longer take; once per
    dispute id. Returns what was done, for the webhook's answer."""
    with Session(engine) as session:
        dispute = session.get(DisputeRecord, body["dispute_id"], with_for_update=True)
        if signal == "open_dispute":
            if dispute is not None:
                return f"dispute {body['dispute_id']} already recorded"
            amount = Decimal(body["amount"])
            invoice_currency = _currency_of(session, body["invoice_number"])
            session.add(DisputeRecord(dispute_id=body["dispute_id"], deal_id=deal_id,
                                      invoice_number=body["invoice_number"], amount=amount,
                                      currency=invoice_currency,
                                      payment_reference=body.get("payment_reference"),
                                      reason=body["reason"], opened_at=at))  # fmt: skip
            post_entry(session, entry_key=f"{deal_id}:chargeback:{body['dispute_id']}",
                       deal_id=deal_id, currency=invoice_currency, posted_at=at,
                       memo=f"Chargeback {body['dispute_id']} outside the deal's invoices",
                       lines=[(CHARGEBACK_LOSSES, amount, ZERO), (CASH, ZERO, amount)])  # fmt: skip
            session.commit()
            return "chargeback recorded in the ledger, outside the deal's invoices"
        if dispute is None or dispute.deal_id != deal_id or dispute.status != "open":
            return f"no open dispute {body['dispute_id']} outside the deal's invoices"
        dispute.status = body["outcome"]
        dispute.closed_at = at
        session.add(dispute)
        if body["outcome"] == "won":
            post_entry(session, entry_key=f"{deal_id}:chargeback-reversed:{dispute.dispute_id}",
                       deal_id=deal_id, currency=dispute.currency, posted_at=at,
                       memo=f"Chargeback {dispute.dispute_id} won, outside the deal's invoices",
                       lines=[(CASH, dispute.amount, ZERO),
                              (CHARGEBACK_LOSSES, ZERO, dispute.amount)])  # fmt: skip
        session.commit()
        return f"dispute {dispute.dispute_id} {body['outcome']}, recorded in the ledger"


def _currency_of(session: Session, invoice_number: str) -> str:
    invoice = session.get(InvoiceRecord, invoice_number)
    if invoice is None:
        raise LookupError(f"no invoice {invoice_number}")
    return invoice.currency
