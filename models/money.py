"""Money is a Decimal with a currency, rounded half-even to cents at defined points, never float."""

from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
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


def split_in_proportion(total: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """`total` (in cents) split in proportion to `weights`, in cents, adding up to it exactly:
    each share rounded down, the cents left over to the largest remainders (first listed first).
    Every share is within a cent of the exact proportion."""
    whole = sum(weights, Decimal(0))
    if whole <= 0 or any(weight < 0 for weight in weights):
        raise ValueError("weights must not be negative, and not all zero")
    if total < 0 or total != to_cents(total):
        raise ValueError(f"{total}: only a whole number of cents, not negative, can be split")
    exact = [total * weight / whole for weight in weights]
    shares = [share.quantize(CENT, rounding=ROUND_DOWN) for share in exact]
    left = int((total - sum(shares, Decimal(0))) / CENT)
    for n in sorted(range(len(shares)), key=lambda n: shares[n] - exact[n])[:left]:
        shares[n] += CENT
    return shares


def percent_of(amount: Decimal, percent: Decimal) -> Decimal:
    """`percent` of `amount`, rounded to cents."""
    return to_cents(amount * percent / 100)


def format_money(amount: Decimal, currency: str) -> str:
    return f"{currency} {amount:,.2f}"
