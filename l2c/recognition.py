"""Revenue recognition rules (ASC 606 / IFRS 15) as pure functions: identify a quote's
performance obligations and allocate its transaction price by relative standalone selling price.
Spreading an obligation over its term is in models.revenue, which the deal workflow runs too."""

from decimal import Decimal

from l2c.config import SspTable
from models.documents import PerformanceObligation, PricedLine
from models.money import split_in_proportion


class MissingSsp(ValueError):
    """A product on the quote has no standalone selling price in its currency."""


def allocate_transaction_price(
    lines: list[PricedLine], net_total: Decimal, currency: str, term_months: int, ssp: SspTable
) -> list[PerformanceObligation]:
    """One obligation per line: subscriptions and usage commitments ratable over the term,
    one-time services at provisioning. The net total (the transaction price, discounts and all)
    is split in proportion to each one's standalone value, to the cent, adding up exactly."""
    values = []
    for line in lines:
        price = ssp.price(line.sku, currency)
        if price is None:
            raise MissingSsp(
                f"no standalone selling price for {line.sku} in {currency} (config/ssp.toml): "
                "its revenue could not be allocated"
            )
        months = 1 if line.kind == "one_time" else term_months
        values.append(price * line.quantity * months)
    allocated = split_in_proportion(net_total, values)
    return [
        PerformanceObligation(
            sku=line.sku,
            recognition="at_provisioning" if line.kind == "one_time" else "ratable",
            standalone_value=value,
            allocated=share,
        )
        for line, value, share in zip(lines, values, allocated, strict=True)
    ]
