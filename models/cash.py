"""Cash application: where a payment goes. Pure and deterministic, so the deal workflow decides it
and the property tests drive the ledger with exactly the same rule."""

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel

from models.money import ZERO, percent_of


class Allocation(BaseModel):
    invoice_number: str
    amount: Decimal


def allocate(
    amount: Decimal, open_balances: list[tuple[str, Decimal]], named: str | None = None
) -> tuple[list[Allocation], Decimal]:
    """Apply `amount` to the invoice the payer named first, then to the other open invoices, oldest
    first; what is left over is held as customer credit. `open_balances` lists (invoice number,
    balance due) oldest first. Returns the allocations and the amount left for credit."""
    ordered = sorted(open_balances, key=lambda item: item[0] != named)  # stable: oldest first
    allocations = []
    left = amount
    for number, balance in ordered:
        if left <= 0:
            break
        applied = min(left, balance)
        if applied > 0:
            allocations.append(Allocation(invoice_number=number, amount=applied))
            left -= applied
    return allocations, max(left, ZERO)


def settled_status(
    amount: Decimal, credited: Decimal, paid: Decimal
) -> Literal["open", "paid", "void"]:
    """An issued invoice's status from what was credited and paid: `void` when credit notes took
    all of it before any payment, `paid` when nothing is left, else `open`."""
    if credited + paid < amount:
        return "open"
    return "paid" if paid > 0 else "void"


def late_fee(overdue: Decimal, percent: Decimal) -> Decimal:
    """The late fee on an overdue balance: `percent` of it, rounded half-even to the cent."""
    return percent_of(overdue, percent)


def early_payment_discount(amount: Decimal, percent: Decimal) -> Decimal:
    """What an invoice of `amount` takes off when paid early: `percent` of all of it, tax
    included (a credit note takes the tax's share back), rounded half-even to the cent."""
    return percent_of(amount, percent)
