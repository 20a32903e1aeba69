"""Quote pricing, discount approval and the billing plan: pure functions of the configuration.

This module is the one place these rules live. The workflow never prices or decides authority
itself; it receives the result of the `price_quote` activity, which calls `price_quote` here.
"""

from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal

from l2c.config import ApprovalMatrix, ApprovalRule, Catalog, Product, SspTable
from l2c.recognition import MissingSsp, allocate_transaction_price
from models.approvals import assignable
from models.documents import (
    ApprovalRequirement,
    BillingPeriodPlan,
    InvoiceLinePlan,
    PricedLine,
    Quote,
    QuotePricing,
    QuoteRequest,
    UsageTier,
    WaterfallStep,
)
from models.money import ZERO, split_in_proportion, to_cents
from models.signals import BillingPeriod

HUNDRED = Decimal(100)


class QuoteRefused(ValueError):
    """A quote that cannot be priced or approved as submitted; the message says why."""


def graduated_price(product: Product, quantity: int | Decimal, currency: str) -> Decimal:
    """Price of `quantity` units through the product's tiers (graduated: each tier prices the
    units inside it; volume: the tier the whole quantity reaches prices every unit)."""
    return tiered_price(usage_tiers(product, currency), quantity, product.tier_mode)


def usage_tiers(product: Product, currency: str) -> list[UsageTier]:
    return [UsageTier(up_to=tier.up_to, unit_price=tier.prices[currency]) for tier in product.tiers]


def tiered_price(
    tiers: list[UsageTier], quantity: int | Decimal, mode: Literal["graduated", "volume"]
) -> Decimal:
    """`quantity` units priced through `tiers`, unrounded."""
    if mode == "volume":
        # Every unit at the tier the whole quantity reaches, but never less than a smaller
        # quantity costs (no cliff at a tier's end): more usage never lowers a bill, so usage
        # billed in steps (late events) adds up the same as billed at once.
        reached = next(t for t in tiers if t.up_to is None or quantity <= t.up_to)
        ends = [t.up_to * t.unit_price for t in tiers if t.up_to is not None and t.up_to < quantity]
        return max([quantity * reached.unit_price, *ends])
    return _through_tiers(tiers, quantity)


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
    tiers, mode = line.usage_tiers, line.tier_mode
    # Under volume pricing more units can cost less in all; the commitment is never refunded.
    beyond = max(
        Decimal(0), tiered_price(tiers, units, mode) - tiered_price(tiers, line.quantity, mode)
    )
    return _discounted(beyond, discount_percent)


def _price_line(
    product: Product,
    quantity: int,
    request: QuoteRequest,
    term_discount: Decimal,
    bundle: tuple[str, Decimal] | None = None,
) -> PricedLine:
    """One line, priced. `bundle`: the bundle it is a component of, and its allocated share of
    the bundle's price (its price after tiers, before the term and rep discounts)."""
    currency = request.currency
    if currency not in product.currencies():
        raise QuoteRefused(
            f"{product.sku} has no {currency} price (price lists: "
            f"{', '.join(sorted(product.currencies()))})"
        )
    if product.max_quantity is not None and quantity > product.max_quantity:
        raise QuoteRefused(
            f"{product.sku}: quantity {quantity} is above the maximum of {product.max_quantity} "
            "(rule: maximum quantity)"
        )
    discount = request.submission.discount_percent
    term = request.submission.term_months
    monthly_list: Decimal | None = None
    monthly_net: Decimal | None = None
    tiers: list[UsageTier] | None = None
    if product.tiers:
        tiers = usage_tiers(product, currency)
        list_price = to_cents(tiers[0].unit_price * quantity)  # every unit at the first tier
        after_tiers = to_cents(tiered_price(tiers, quantity, product.tier_mode))
    else:
        list_price = after_tiers = to_cents(product.prices[currency] * quantity)
    if bundle is not None:
        after_tiers = bundle[1]
    # The defined rounding point: the discounted amount (a month's, for a recurring or usage
    # line) is rounded once, from the term and rep discounts combined; every invoice and
    # recognition is a whole number of those months, so they add up to the cent.
    combined = 100 - (100 - term_discount) * (100 - discount) / 100
    net = _discounted(after_tiers, combined)
    floor = product.floor_prices.get(currency)
    if floor is not None and net < floor * quantity:
        raise QuoteRefused(
            f"{product.sku}: net {net / quantity:.2f} {currency} per {product.unit} is below its "
            f"floor of {floor} (rule: floor price; a lower price cannot be approved)"
        )
    if product.kind == "one_time":
        list_amount, net_amount = after_tiers, net
    else:
        monthly_list, monthly_net = after_tiers, net
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
        usage_tiers=tiers if product.kind == "usage" else None,
        metered_per_unit=product.metered_per_unit,
        tier_mode=product.tier_mode,
        bundle=bundle[0] if bundle is not None else None,
        waterfall=waterfall(
            list_price, after_tiers, term_discount, discount, net, bundled=bundle is not None
        ),
    )


def waterfall(
    list_price: Decimal, after_tiers: Decimal, term_discount: Decimal, discount: Decimal,
    net: Decimal, bundled: bool = False,
) -> list[WaterfallStep]:  # fmt: skip
    """List price to net price in steps that add up exactly: the term discount's step is rounded,
    and the rep's discount takes what is left to the net (computed once, see `_price_line`)."""
    steps = [WaterfallStep(step="list", label="list price", amount=list_price)]
    if after_tiers != list_price:
        if bundled:
            steps.append(WaterfallStep(step="bundle_discount", label="bundle price",
                                       amount=after_tiers - list_price))  # fmt: skip
        else:
            steps.append(WaterfallStep(step="tier_discount", label="volume tiers",
                                       amount=after_tiers - list_price))  # fmt: skip
    term_step = to_cents(after_tiers * term_discount / HUNDRED)
    if term_step:
        steps.append(WaterfallStep(step="term_discount", label=f"term discount {term_discount}%",
                                   amount=-term_step))  # fmt: skip
    rep_step = net - (after_tiers - term_step)
    if rep_step:
        steps.append(WaterfallStep(step="rep_discount", label=f"discount {discount}%",
                                   amount=rep_step))  # fmt: skip
    steps.append(WaterfallStep(step="net", label="net price", amount=net))
    return steps


def expand_bundle(
    catalog: Catalog, bundle: Product, quantity: int, currency: str
) -> list[tuple[Product, int, Decimal]]:
    """A bundle's components, their quantities, and each one's share of the bundle's monthly
    price: in proportion to its own list price, in cents, adding up to the bundle's price exactly
    (the cents left by rounding down go to the largest remainders, first listed first)."""
    if currency not in bundle.currencies():
        raise QuoteRefused(f"{bundle.sku} has no {currency} price (price lists: "
                           f"{', '.join(sorted(bundle.currencies()))})")  # fmt: skip
    if bundle.max_quantity is not None and quantity > bundle.max_quantity:
        raise QuoteRefused(f"{bundle.sku}: quantity {quantity} is above the maximum of "
                           f"{bundle.max_quantity} (rule: maximum quantity)")  # fmt: skip
    total = to_cents(bundle.prices[currency] * quantity)
    parts = [(catalog.by_sku[c.sku], c.quantity * quantity) for c in bundle.components]
    shares = split_in_proportion(
        total, [product.prices[currency] * units for product, units in parts]
    )
    return [(product, units, share) for (product, units), share in zip(parts, shares, strict=True)]


def check_guardrails(catalog: Catalog, request: QuoteRequest) -> None:
    """The rules a quote as a whole must meet; each refusal names its rule."""
    submission = request.submission
    term = submission.term_months
    if not catalog.min_term_months <= term <= catalog.max_term_months:
        raise QuoteRefused(
            f"a {term}-month term is outside {catalog.min_term_months}-{catalog.max_term_months} "
            "months (rule: term limits)"
        )
    skus = {line.sku for line in submission.lines}
    bundled = {part.sku: line.sku for line in submission.lines
               for part in catalog.by_sku[line.sku].components}  # fmt: skip
    twice = sorted(sku for sku in bundled if sku in skus)
    if twice:
        raise QuoteRefused(f"{twice[0]} is on the quote on its own and in {bundled[twice[0]]}: "
                           "quote it once (rule: bundle components)")  # fmt: skip
    if len(bundled) < sum(len(catalog.by_sku[sku].components) for sku in skus):
        raise QuoteRefused("two bundles on the quote share a component: quote one of them "
                           "(rule: bundle components)")  # fmt: skip
    skus |= set(bundled)
    for sku in sorted(skus):
        product = catalog.by_sku[sku]
        missing = [required for required in product.requires if required not in skus]
        if missing:
            raise QuoteRefused(
                f"{sku} requires {', '.join(missing)} on the same quote (rule: required products)"
            )
        if request.country is not None and request.country in product.not_sold_in:
            raise QuoteRefused(
                f"{sku} is not sold in {request.country} (rule: countries not served)"
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


def approval_requirements(
    matrix: ApprovalMatrix, quote: Quote, submitted_by: str
) -> list[ApprovalRequirement]:
    """Every approval `quote` needs, one per role, lowest role first: its discount's and each
    matching rule's. Refused when they cannot be given by different people (nobody fills two)."""
    needed: dict[str, list[str]] = {}  # role -> why
    discount = approval_requirement(matrix, quote.discount_percent, submitted_by)
    if discount is not None:
        needed[discount.required_role] = [f"discount {quote.discount_percent}%"]
    for rule in matrix.rules:
        why = _rule_applies(rule, quote)
        if why is not None:
            needed.setdefault(rule.role, []).append(f"{rule.name}: {why}")
    requirements = [
        ApprovalRequirement(
            rule="; ".join(reasons),
            required_role=role,
            role_limit_percent=matrix.role_limit(role),
            eligible_approvers=matrix.eligible(role, {submitted_by}),
        )
        for role, reasons in sorted(needed.items(), key=lambda item: matrix.rank(item[0]))
    ]
    for requirement in requirements:
        if not requirement.eligible_approvers:
            raise QuoteRefused(f"nobody but the submitter may approve as "
                               f"{requirement.required_role} ({requirement.rule})")  # fmt: skip
    if not assignable([r.eligible_approvers for r in requirements]):
        roles = ", ".join(r.required_role for r in requirements)
        raise QuoteRefused(
            f"the approvals needed ({roles}) need {len(requirements)} different people, and "
            "not enough are eligible (one person fills one approval)"
        )
    return requirements


def _rule_applies(rule: ApprovalRule, quote: Quote) -> str | None:
    """Why an approval rule applies to the quote, or None."""
    floor = rule.min_tcv.get(quote.currency)
    if floor is not None and quote.tcv >= floor:
        return f"total contract value {quote.tcv} {quote.currency} >= {floor}"
    if rule.min_term_months is not None and quote.term_months >= rule.min_term_months:
        return f"a {quote.term_months}-month term"
    if quote.billing_period in rule.billing_periods:
        return f"billed {quote.billing_period}"
    terms, limit = quote.payment_terms_days, rule.max_payment_terms_days
    if limit is not None and terms is not None and terms > limit:
        return f"net {terms} payment terms"
    return None


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


def price_quote(
    catalog: Catalog, matrix: ApprovalMatrix, request: QuoteRequest, ssp: SspTable | None = None
) -> QuotePricing:
    """Price a submitted quote: lines, guardrails, totals, the approvals it needs and, given the
    SSP table, its performance obligations with their share of the price."""
    submission = request.submission
    try:
        skus = [line.sku for line in submission.lines]
        repeated = sorted({sku for sku in skus if skus.count(sku) > 1})
        if repeated:
            raise QuoteRefused(f"SKU listed more than once: {', '.join(repeated)}")
        unknown = next((ln.sku for ln in submission.lines if ln.sku not in catalog.by_sku), None)
        if unknown is not None:
            raise QuoteRefused(
                f"unknown SKU {unknown!r} (price book {catalog.version} has "
                f"{', '.join(catalog.by_sku)})"
            )
        check_guardrails(catalog, request)
        term_discount = catalog.term_discount(submission.term_months)
        lines = []
        for line in submission.lines:
            product = catalog.by_sku[line.sku]
            if product.kind != "bundle":
                lines.append(_price_line(product, line.quantity, request, term_discount))
                continue
            for component, quantity, share in expand_bundle(catalog, product, line.quantity,
                                                            request.currency):  # fmt: skip
                lines.append(_price_line(component, quantity, request, term_discount,
                                         bundle=(product.sku, share)))  # fmt: skip
    except QuoteRefused as refusal:
        return QuotePricing(refusal=str(refusal))
    priced_at = request.priced_at
    quote = Quote(
        version=request.version,
        price_book_version=catalog.version,
        currency=request.currency,
        submitted_by=submission.submitted_by,
        discount_percent=submission.discount_percent,
        term_months=submission.term_months,
        billing_period=submission.billing_period,
        term_discount_percent=term_discount,
        payment_terms_days=submission.payment_terms_days,
        valid_until=None
        if priced_at is None
        else priced_at + timedelta(days=catalog.quote_valid_days),
        **_derived_from_lines(lines, submission.billing_period, submission.term_months),
    )
    try:
        approvals = approval_requirements(matrix, quote, submission.submitted_by)
        if ssp is not None:
            quote.obligations = allocate_transaction_price(
                quote.lines, quote.net_total, quote.currency, quote.term_months, ssp
            )
    except (QuoteRefused, MissingSsp) as refusal:
        return QuotePricing(refusal=str(refusal))
    if priced_at is not None:
        due = matrix.escalation.due(priced_at)
        approvals = [a.model_copy(update={"due_at": due}) for a in approvals]
    return QuotePricing(quote=quote, approval=approvals[0] if approvals else None,
                        approvals=approvals)  # fmt: skip


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
            monthly_net = _discounted(monthly_list, quote.effective_discount_percent)
            steps = waterfall(monthly_list, monthly_list, quote.term_discount_percent,
                              quote.discount_percent, monthly_net)  # fmt: skip
            line = line.model_copy(update={
                "quantity": quantity, "monthly_list": monthly_list, "monthly_net": monthly_net,
                "list_amount": monthly_list * quote.term_months,
                "net_amount": monthly_net * quote.term_months, "waterfall": steps})  # fmt: skip
        lines.append(line)
    return quote.model_copy(
        update={
            **_derived_from_lines(lines, quote.billing_period, quote.term_months),
            # A modification is allocated prospectively (issue 6); until then the signed
            # allocation no longer describes the plan, so the plan carries none.
            "obligations": [],
        }
    )


def renewal_quote(
    quote: Quote, version: int, uplift_percent: Decimal, ssp: SspTable | None
) -> Quote:
    """The plan in force renewed for another term of the same length (the contract's
    auto-renewal): its recurring lines and usage commitments at the prices the deal locked,
    raised by the uplift, with the same discounts; one-time services are not renewed. Usage
    above a commitment keeps its locked tiers, so the last month of a term, billed in arrears
    on the renewal's first invoice, costs what it would have. Its price is allocated over its
    obligations again, by SSP."""
    factor = 1 + uplift_percent / HUNDRED
    lines = []
    for line in quote.lines:
        if line.kind == "one_time" or line.monthly_list is None:
            continue
        monthly_list = to_cents(line.monthly_list * factor)
        monthly_net = _discounted(monthly_list, quote.effective_discount_percent)
        steps = waterfall(monthly_list, monthly_list, quote.term_discount_percent,
                          quote.discount_percent, monthly_net)  # fmt: skip
        lines.append(line.model_copy(update={
            "monthly_list": monthly_list, "monthly_net": monthly_net,
            "list_amount": monthly_list * quote.term_months,
            "net_amount": monthly_net * quote.term_months, "waterfall": steps}))  # fmt: skip
    if not lines:
        raise QuoteRefused("nothing recurring to renew")
    renewed = quote.model_copy(update={
        **_derived_from_lines(lines, quote.billing_period, quote.term_months),
        "version": version, "valid_until": None, "document_sha256": None, "obligations": []})  # fmt: skip
    if ssp is not None:
        renewed.obligations = allocate_transaction_price(
            renewed.lines, renewed.net_total, renewed.currency, renewed.term_months, ssp
        )
    return renewed


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
