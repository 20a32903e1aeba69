"""Quote pricing, discount approval and the billing plan: pure functions of the configuration.

This module is the one place these rules live. The workflow never prices or decides authority
itself; it receives the result of the `price_quote` activity, which calls `price_quote` here.
"""

from decimal import Decimal
from typing import Any

from l2c.config import ApprovalMatrix, Catalog, Product
from models.documents import (
    ApprovalRequirement,
    BillingPeriodPlan,
    InvoiceLinePlan,
    PricedLine,
    Quote,
    QuotePricing,
    QuoteRequest,
    UsageTier,
)
from models.money import ZERO, to_cents
from models.signals import BillingPeriod

HUNDRED = Decimal(100)


class QuoteRefused(ValueError):
    """A quote that cannot be priced or approved as submitted; the message says why."""


def graduated_price(product: Product, quantity: int | Decimal, currency: str) -> Decimal:
    """Price of `quantity` units through graduated tiers: each tier prices the units inside it."""
    return _through_tiers(usage_tiers(product, currency), quantity)


def usage_tiers(product: Product, currency: str) -> list[UsageTier]:
    return [UsageTier(up_to=tier.up_to, unit_price=tier.prices[currency]) for tier in product.tiers]


def _through_tiers(tiers: list[UsageTier], quantity: int | Decimal) -> Decimal:
    total = Decimal(0)
    lower = 0
    for tier in tiers:
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        if upper > lower:
            total += (upper - lower) * tier.unit_price
        if tier.up_to is None or quantity <= tier.up_to:
            break
        lower = tier.up_to
    return total


def price_metered_usage(product: Product, metered: int, currency: str) -> Decimal:
    """A period's metered usage (e.g. API calls) priced through the product's tiers, to the cent."""
    if currency not in product.currencies():
        raise ValueError(f"{product.sku} has no {currency} price")
    return to_cents(graduated_price(product, Decimal(metered) / product.metered_per_unit, currency))


def usage_overage(line: PricedLine, discount_percent: Decimal, metered: int) -> Decimal:
    """What a month's metered usage costs beyond the line's monthly commitment, which was billed
    in advance: the tiers locked in the quote, its discount, rounded half-even once.

    Billing the overage of a month in several steps (late events) adds up to this exactly, since
    each step bills `usage_overage(now) - usage_overage(before)`.
    """
    if line.usage_tiers is None:
        raise ValueError(f"{line.sku} is not a usage line")
    units = Decimal(metered) / line.metered_per_unit
    if units <= line.quantity:
        return to_cents(Decimal(0))
    beyond = _through_tiers(line.usage_tiers, units) - _through_tiers(
        line.usage_tiers, line.quantity
    )
    return _discounted(beyond, discount_percent)


def _price_line(product: Product, quantity: int, request: QuoteRequest) -> PricedLine:
    currency = request.currency
    if currency not in product.currencies():
        raise QuoteRefused(
            f"{product.sku} has no {currency} price (price lists: "
            f"{', '.join(sorted(product.currencies()))})"
        )
    discount = request.submission.discount_percent
    term = request.submission.term_months
    monthly_list: Decimal | None = None
    monthly_net: Decimal | None = None
    tiers: list[UsageTier] | None = None
    if product.kind == "one_time":
        list_amount = to_cents(product.prices[currency] * quantity)
        net_amount = _discounted(list_amount, discount)
    else:
        if product.kind == "usage":
            tiers = usage_tiers(product, currency)
            monthly_list = to_cents(_through_tiers(tiers, quantity))
        else:
            monthly_list = to_cents(product.prices[currency] * quantity)
        # The defined rounding point: the discounted monthly amount is rounded once, and every
        # invoice and recognition is a whole number of those months, so they add up to the cent.
        monthly_net = _discounted(monthly_list, discount)
        list_amount, net_amount = monthly_list * term, monthly_net * term
    return PricedLine(
        sku=product.sku,
        name=product.name,
        kind=product.kind,
        unit=product.unit,
        quantity=quantity,
        monthly_list=monthly_list,
        monthly_net=monthly_net,
        list_amount=list_amount,
        net_amount=net_amount,
        usage_tiers=tiers,
        metered_per_unit=product.metered_per_unit,
    )


def approval_requirement(
    matrix: ApprovalMatrix, discount: Decimal, submitted_by: str
) -> ApprovalRequirement | None:
    """Who must approve `discount`: None within the auto-approve limit; refused above the top role."""
    if discount <= matrix.auto_approve_max_percent:
        return None
    role = next((r for r in matrix.roles if r.max_discount_percent >= discount), None)
    if role is None:
        top = matrix.roles[-1]
        raise QuoteRefused(
            f"a {discount}% discount is above the highest approval limit "
            f"({top.name}: {top.max_discount_percent}%)"
        )
    eligible = [
        a.name
        for a in matrix.approvers
        if matrix.role_limit(a.role) >= discount and a.name != submitted_by
    ]
    if not eligible:
        raise QuoteRefused(
            f"nobody but the submitter may approve a {discount}% discount (needs {role.name})"
        )
    return ApprovalRequirement(
        required_role=role.name,
        role_limit_percent=role.max_discount_percent,
        eligible_approvers=eligible,
    )


def _period_lengths(billing_period: BillingPeriod, term_months: int) -> list[int]:
    if billing_period == "upfront":
        return [term_months]
    size = 12 if billing_period == "annual" else 1
    return [min(size, term_months - start) for start in range(0, term_months, size)]


def billing_plan(
    lines: list[PricedLine], billing_period: BillingPeriod, term_months: int
) -> list[BillingPeriodPlan]:
    """Invoices in advance, one per billing period; one-time charges on the first."""
    plan = []
    start = 0
    for index, months in enumerate(_period_lengths(billing_period, term_months)):
        invoice_lines = []
        for line in lines:
            if line.monthly_net is not None:
                invoice_lines.append(
                    InvoiceLinePlan(
                        sku=line.sku,
                        description=(
                            f"{line.name}: {line.quantity} x {line.unit}, "
                            f"months {start + 1}-{start + months} of {term_months}"
                        ),
                        quantity=months,
                        unit_price=line.monthly_net,
                        amount=line.monthly_net * months,
                    )
                )
            elif index == 0:
                invoice_lines.append(
                    InvoiceLinePlan(
                        sku=line.sku,
                        description=f"{line.name}: {line.quantity} x {line.unit}",
                        quantity=1,
                        unit_price=line.net_amount,
                        amount=line.net_amount,
                    )
                )
        plan.append(
            BillingPeriodPlan(
                index=index,
                start_month=start,
                months=months,
                lines=invoice_lines,
                amount=sum((il.amount for il in invoice_lines), ZERO),
            )
        )
        start += months
    return plan


def price_quote(catalog: Catalog, matrix: ApprovalMatrix, request: QuoteRequest) -> QuotePricing:
    submission = request.submission
    try:
        skus = [line.sku for line in submission.lines]
        repeated = sorted({sku for sku in skus if skus.count(sku) > 1})
        if repeated:
            raise QuoteRefused(f"SKU listed more than once: {', '.join(repeated)}")
        lines = []
        for line in submission.lines:
            product = catalog.by_sku.get(line.sku)
            if product is None:
                raise QuoteRefused(
                    f"unknown SKU {line.sku!r} (price book {catalog.version} has "
                    f"{', '.join(catalog.by_sku)})"
                )
            lines.append(_price_line(product, line.quantity, request))
        approval = approval_requirement(
            matrix, submission.discount_percent, submission.submitted_by
        )
    except QuoteRefused as refusal:
        return QuotePricing(refusal=str(refusal))
    quote = Quote(
        version=request.version,
        price_book_version=catalog.version,
        currency=request.currency,
        submitted_by=submission.submitted_by,
        discount_percent=submission.discount_percent,
        term_months=submission.term_months,
        billing_period=submission.billing_period,
        **_derived_from_lines(lines, submission.billing_period, submission.term_months),
    )
    return QuotePricing(quote=quote, approval=approval)


def _derived_from_lines(
    lines: list[PricedLine], billing_period: BillingPeriod, term_months: int
) -> dict[str, Any]:
    """A quote's totals and billing plan, which follow from its lines."""
    return {
        "lines": lines,
        "list_total": sum((line.list_amount for line in lines), ZERO),
        "net_total": sum((line.net_amount for line in lines), ZERO),
        "monthly_recurring_net": sum((line.monthly_net or ZERO for line in lines), ZERO),
        "one_time_net": sum((line.net_amount for line in lines if line.kind == "one_time"), ZERO),
        "billing_plan": billing_plan(lines, billing_period, term_months),
    }


def _discounted(amount: Decimal, discount_percent: Decimal) -> Decimal:
    """The defined rounding point: a discounted amount, rounded once, half-even."""
    return to_cents(amount * (HUNDRED - discount_percent) / HUNDRED)


def change_quantity(quote: Quote, sku: str, quantity: int) -> Quote:
    """The quote with one recurring line at a new quantity, at the unit price and discount the
    signed quote locked, its billing plan rebuilt; the deal bills its later periods from this."""
    lines = []
    for line in quote.lines:
        if line.sku == sku:
            if line.kind != "recurring" or line.monthly_list is None:
                raise QuoteRefused(f"{sku} is not a recurring line")
            monthly_list = to_cents(line.monthly_list / line.quantity * quantity)
            monthly_net = _discounted(monthly_list, quote.discount_percent)
            line = line.model_copy(update={
                "quantity": quantity, "monthly_list": monthly_list, "monthly_net": monthly_net,
                "list_amount": monthly_list * quote.term_months,
                "net_amount": monthly_net * quote.term_months})  # fmt: skip
        lines.append(line)
    return quote.model_copy(
        update={
            **_derived_from_lines(lines, quote.billing_period, quote.term_months),
        }
    )


def proration(old: Quote, new: Quote, sku: str, months: int, remaining: Decimal) -> Decimal:
    """What a quantity change costs (or, negative, returns) for the rest of a billing period of
    `months` months already invoiced, `remaining` (0..1) of which is still to come."""
    before = next(line.monthly_net for line in old.lines if line.sku == sku) or ZERO
    after = next(line.monthly_net for line in new.lines if line.sku == sku) or ZERO
    return to_cents((after - before) * months * remaining)


def spread(amount: Decimal, months: list[int]) -> dict[int, Decimal]:
    """`amount` in equal monthly parts to the cent, the last part taking the rounding."""
    if not months:
        return {}
    share = to_cents(amount / len(months))
    parts = dict.fromkeys(months, share)
    parts[months[-1]] = amount - share * (len(months) - 1)
    return parts
