"""Money is a Decimal with a currency, rounded half-even to cents at defined points, never float."""

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated

from pydantic import Field, StringConstraints

CENT = Decimal("0.01")
ZERO = Decimal("0.00")

# An amount of money: exact, at most 2 decimals, no NaN or infinity (pydantic refuses those).
Amount = Annotated[Decimal, Field(max_digits=16, decimal_places=2)]
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]


def to_cents(value: Decimal) -> Decimal:
    """Round to cents, half-even (banker's rounding): the one rounding rule of the project."""
    return value.quantize(CENT, rounding=ROUND_HALF_EVEN)


def percent_of(amount: Decimal, percent: Decimal) -> Decimal:
    """`percent` of `amount`, rounded to cents."""
    return to_cents(amount * percent / 100)


def format_money(amount: Decimal, currency: str) -> str:
    return f"{currency} {amount:,.2f}"
