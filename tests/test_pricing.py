"""Pricing and approval authority as pure functions: tiers, the waterfall, guardrails, the one
rounding point, the billing plan, and price book versions."""

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from l2c.config import BusinessRules, Catalog, ConfigError, Product
from l2c.price_books import PriceBooks, register_price_book
from l2c.pricing import (
    QuoteRefused,
    approval_requirement,
    expand_bundle,
    graduated_price,
    price_quote,
    tiered_price,
    usage_overage,
    usage_tiers,
)
from models.documents import QuotePricing, QuoteRequest
from models.money import ZERO, to_cents
from models.signals import SubmitQuote


def quote_request(
    currency: str = "USD", country: str | None = None, **fields: object
) -> QuoteRequest:
    submission = {
        "submitted_by": "nora.na",
        "lines": [{"sku": "PLATFORM", "quantity": 10}],
        **fields,
    }
    return QuoteRequest(deal_id="d", version=1, currency=currency, country=country,
                        submission=SubmitQuote.model_validate(submission))  # fmt: skip


def test_graduated_tiers_price_each_unit_in_its_tier(rules: BusinessRules) -> None:
    api = rules.catalog.by_sku["API_CALLS"]
    assert graduated_price(api, 100, "USD") == Decimal("200.00")
    assert graduated_price(api, 101, "USD") == Decimal("201.50")
    assert graduated_price(api, 1000, "USD") == Decimal("1550.00")
    assert graduated_price(api, 1001, "USD") == Decimal("1551.00")
    tiers = usage_tiers(api, "USD")
    # Volume: all 101 at the 2nd tier would be 151.50, but never less than 100 cost (200.00).
    assert tiered_price(tiers, 101, "volume") == Decimal("200.00")
    assert tiered_price(tiers, 150, "volume") == Decimal("225.00")  # all 150 at 1.50


@settings(max_examples=200, deadline=None)
@given(quantity=st.integers(0, 3000), currency=st.sampled_from(["USD", "EUR", "GBP"]))
def test_graduated_tiers_are_continuous_at_their_boundaries(
    rules: BusinessRules, quantity: int, currency: str
) -> None:
    """One more unit costs exactly the price of the tier that unit falls in: no jump anywhere,
    boundaries included."""
    tiers = usage_tiers(rules.catalog.by_sku["API_CALLS"], currency)
    unit = quantity + 1
    tier = next(t for t in tiers if t.up_to is None or unit <= t.up_to)
    step = tiered_price(tiers, unit, "graduated") - tiered_price(tiers, quantity, "graduated")
    assert step == tier.unit_price


SKUS = {"PLATFORM": 10_000, "API_CALLS": 5_000, "ONBOARDING": 5, "PREMIUM_SUPPORT": 1}


@settings(max_examples=150, deadline=None)
@given(
    quantities=st.fixed_dictionaries({}, optional={sku: st.integers(1, top)
                                                   for sku, top in SKUS.items()}),
    discount=st.decimals(0, 50, places=2),
    term=st.integers(1, 60),
    period=st.sampled_from(["upfront", "annual", "monthly"]),
    currency=st.sampled_from(["USD", "EUR", "GBP"]),
)  # fmt: skip
def test_quote_totals_add_up_rounded_once_and_never_below_the_floor(
    rules: BusinessRules, quantities: dict[str, int], discount: Decimal, term: int, period: str,
    currency: str,
) -> None:  # fmt: skip
    quantities.setdefault("PLATFORM", 1)  # the other products require it
    lines = [{"sku": sku, "quantity": q} for sku, q in quantities.items()]
    request = quote_request(currency, lines=lines, discount_percent=str(discount),
                            term_months=term, billing_period=period,
                            submitted_by="someone.else")  # fmt: skip
    pricing = price_quote(rules.catalog, rules.approvals, request)
    catalog = rules.catalog
    term_discount = catalog.term_discount(term)
    combined = (100 - term_discount) * (100 - discount) / 10_000
    if pricing.quote is None:
        # Only a floor refuses these quotes, and only when the net really is below it.
        assert pricing.refusal is not None and "rule: floor price" in pricing.refusal
        sku = pricing.refusal.split(":")[0]
        product = catalog.by_sku[sku]
        list_price = product.prices[currency] * quantities[sku]
        assert to_cents(list_price * combined) < product.floor_prices[currency] * quantities[sku]
        return
    quote = pricing.quote
    # Totals: per billing period, per line, TCV and ACV all from the same lines.
    assert sum((p.amount for p in quote.billing_plan), ZERO) == quote.net_total == quote.tcv
    assert quote.net_total == sum((line.net_amount for line in quote.lines), ZERO)
    assert quote.list_total == sum((line.list_amount for line in quote.lines), ZERO)
    assert quote.net_total == quote.monthly_recurring_net * term + quote.one_time_net
    assert quote.acv == quote.monthly_recurring_net * 12
    assert sum(p.months for p in quote.billing_plan) == term
    assert quote.net_total <= quote.list_total
    assert quote.term_discount_percent == term_discount
    for line in quote.lines:
        product = catalog.by_sku[line.sku]
        net = line.monthly_net if line.monthly_net is not None else line.net_amount
        after_tiers = line.monthly_list if line.monthly_list is not None else line.list_amount
        # The one rounding point: the combined discount on the amount after tiers, half-even.
        assert net == to_cents(after_tiers * combined)
        # The waterfall walks from the list price to exactly that net.
        steps = line.waterfall
        assert steps[0].step == "list" and steps[-1].step == "net" and steps[-1].amount == net
        assert sum((s.amount for s in steps[:-1]), ZERO) == net
        floor = product.floor_prices.get(currency)
        assert floor is None or net >= floor * line.quantity
    assert all(p.amount == p.amount.quantize(Decimal("0.01")) for p in quote.billing_plan)


def test_the_waterfall_shows_tiers_the_term_discount_and_the_reps(rules: BusinessRules) -> None:
    lines = [{"sku": "PLATFORM", "quantity": 10}, {"sku": "API_CALLS", "quantity": 200}]
    quote = price_quote(rules.catalog, rules.approvals, quote_request(
        lines=lines, discount_percent="15", term_months=36)).quote  # fmt: skip
    assert quote is not None and quote.term_discount_percent == Decimal("5")
    platform, api = quote.lines
    assert [(s.step, s.amount) for s in platform.waterfall] == [
        ("list", Decimal("500.00")), ("term_discount", Decimal("-25.00")),
        ("rep_discount", Decimal("-71.25")), ("net", Decimal("403.75"))]  # fmt: skip
    # 200 thousand calls: 400.00 at the first tier's price, 350.00 through the tiers.
    assert [(s.step, s.amount) for s in api.waterfall] == [
        ("list", Decimal("400.00")), ("tier_discount", Decimal("-50.00")),
        ("term_discount", Decimal("-17.50")), ("rep_discount", Decimal("-49.88")),
        ("net", Decimal("282.62"))]  # 282.625, half-even  # fmt: skip
    assert quote.effective_discount_percent == Decimal("19.25")
    assert quote.acv == (Decimal("403.75") + Decimal("282.62")) * 12
    assert quote.tcv == quote.net_total == (Decimal("403.75") + Decimal("282.62")) * 36


def test_approval_needs_the_lowest_sufficient_role_and_excludes_the_submitter(
    rules: BusinessRules,
) -> None:
    matrix = rules.approvals
    assert approval_requirement(matrix, Decimal("10"), "nora.na") is None
    need = approval_requirement(matrix, Decimal("10.01"), "nora.na")
    assert need is not None and need.required_role == "manager"
    need = approval_requirement(matrix, Decimal("35"), "carla.cfo")
    assert (
        need is not None
        and need.required_role == "vp_sales"
        and need.eligible_approvers == ["victor.vp"]
    )
    with pytest.raises(QuoteRefused, match="highest approval limit"):
        approval_requirement(matrix, Decimal("50.01"), "nora.na")
    with pytest.raises(QuoteRefused, match="nobody but the submitter"):
        approval_requirement(matrix, Decimal("45"), "carla.cfo")


def test_quote_refusals_name_the_rule(rules: BusinessRules) -> None:
    def refuse(**fields: object) -> str:
        return str(price_quote(rules.catalog, rules.approvals, quote_request(**fields)).refusal)

    assert "unknown SKU 'NOPE'" in refuse(lines=[{"sku": "NOPE", "quantity": 1}])
    assert "more than once" in refuse(
        lines=[{"sku": "PLATFORM", "quantity": 1}, {"sku": "platform", "quantity": 2}]
    )
    assert "no JPY price" in refuse(currency="JPY")
    assert "rule: term limits" in refuse(term_months=61)
    assert "rule: maximum quantity" in refuse(lines=[{"sku": "PLATFORM", "quantity": 10_001}])
    assert refuse(lines=[{"sku": "ONBOARDING", "quantity": 1}]) == (
        "ONBOARDING requires PLATFORM on the same quote (rule: required products)")  # fmt: skip
    support = [{"sku": "PLATFORM", "quantity": 5}, {"sku": "PREMIUM_SUPPORT", "quantity": 1}]
    assert refuse(lines=support, country="AU") == (
        "PREMIUM_SUPPORT is not sold in AU (rule: countries not served)")  # fmt: skip
    assert price_quote(rules.catalog, rules.approvals,
                       quote_request(lines=support, country="US")).quote is not None  # fmt: skip
    # 45% off onboarding is below its floor: refused, not sent to the CFO for approval.
    onboarding = [{"sku": "PLATFORM", "quantity": 5}, {"sku": "ONBOARDING", "quantity": 1}]
    assert refuse(lines=onboarding, discount_percent="45") == (
        "ONBOARDING: net 1375.00 USD per package is below its floor of 1500.00 "
        "(rule: floor price; a lower price cannot be approved)")  # fmt: skip


def test_a_deal_prices_on_the_price_book_it_was_first_quoted_on(
    rules: BusinessRules, ledger: Engine, tmp_path: Path
) -> None:
    register_price_book(ledger, rules.catalog)
    register_price_book(ledger, rules.catalog)  # a restart: the same version, the same prices
    raised = rules.catalog.model_dump()
    raised["products"][0]["prices"]["USD"] = Decimal("55.00")
    changed = Catalog.model_validate(raised)
    with pytest.raises(ConfigError, match="already in the ledger with other prices"):
        register_price_book(ledger, changed)
    newer = Catalog.model_validate({**raised, "version": "2027.1"})
    register_price_book(ledger, newer)
    # A worker on the new price book still prices an older deal's quotes on the deal's version.
    books = PriceBooks(ledger, newer)
    assert books.version(None) == newer
    assert books.version(rules.catalog.version) == rules.catalog
    assert books.version("1999.9") is None
    old = price_quote(books.version(rules.catalog.version) or newer, rules.approvals,
                      quote_request()).quote  # fmt: skip
    assert old is not None and old.lines[0].monthly_list == Decimal("500.00")
    assert old.price_book_version == rules.catalog.version
    new = price_quote(newer, rules.approvals, quote_request()).quote
    assert new is not None and new.lines[0].monthly_list == Decimal("550.00")


def test_the_readme_worked_example(rules: BusinessRules) -> None:
    """The figures of the README's worked example (Initech, GBP, 4 years)."""
    lines = [{"sku": "PLATFORM", "quantity": 150}, {"sku": "ONBOARDING", "quantity": 1},
             {"sku": "PREMIUM_SUPPORT", "quantity": 1}]  # fmt: skip

    def priced(discount: str) -> QuotePricing:
        request = quote_request("GBP", "GB", lines=lines, discount_percent=discount,
                                term_months=48, billing_period="annual",
                                submitted_by="emil.emea")  # fmt: skip
        return price_quote(rules.catalog, rules.approvals, request)

    assert priced("25").refusal == (
        "PREMIUM_SUPPORT: net 456.00 GBP per account / month is below its floor of 480.00 "
        "(rule: floor price; a lower price cannot be approved)")  # fmt: skip
    pricing = priced("20")
    quote = pricing.quote
    assert quote is not None
    assert [[str(s.amount) for s in line.waterfall] for line in quote.lines] == [
        ["6000.00", "-300.00", "-1140.00", "4560.00"],
        ["2000.00", "-100.00", "-380.00", "1520.00"],
        ["640.00", "-32.00", "-121.60", "486.40"]]  # fmt: skip
    assert [line.net_amount for line in quote.lines] == [
        Decimal("218880.00"), Decimal("1520.00"), Decimal("23347.20")]  # fmt: skip
    assert (quote.list_total, quote.tcv, quote.acv) == (
        Decimal("320720.00"), Decimal("243747.20"), Decimal("60556.80"))  # fmt: skip
    assert [p.amount for p in quote.billing_plan] == [Decimal("62076.80")] + [
        Decimal("60556.80")] * 3  # fmt: skip
    assert [(a.required_role, a.rule, a.eligible_approvers) for a in pricing.approvals] == [
        ("manager", "discount 20%", ["mia.manager", "victor.vp", "carla.cfo"]),
        ("vp_sales", "non-standard term: a 48-month term", ["victor.vp", "carla.cfo"]),
        ("cfo", "large deal: total contract value 243747.20 GBP >= 80000", ["carla.cfo"])]  # fmt: skip


def test_a_bundle_expands_into_its_components_at_allocated_prices(rules: BusinessRules) -> None:
    def priced(**fields: object) -> QuotePricing:
        return price_quote(rules.catalog, rules.approvals, quote_request(**fields))

    quote = priced(lines=[{"sku": "GROWTH_BUNDLE", "quantity": 1}], term_months=12).quote
    assert quote is not None
    # 1,100.00 a month shared by list price: 500.00 of seats and 800.00 of support (1,300.00).
    assert [(line.sku, line.quantity, line.bundle, line.monthly_net) for line in quote.lines] == [
        ("PLATFORM", 10, "GROWTH_BUNDLE", Decimal("423.08")),
        ("PREMIUM_SUPPORT", 1, "GROWTH_BUNDLE", Decimal("676.92"))]  # fmt: skip
    assert quote.monthly_recurring_net == Decimal("1100.00")
    assert [(s.step, s.amount) for s in quote.lines[0].waterfall] == [
        ("list", Decimal("500.00")), ("bundle_discount", Decimal("-76.92")),
        ("net", Decimal("423.08"))]  # fmt: skip
    # The components' rules hold inside a bundle: floors, countries, no component twice.
    assert "PREMIUM_SUPPORT: net 541.54 USD per account / month is below its floor" in str(
        priced(lines=[{"sku": "GROWTH_BUNDLE", "quantity": 1}], discount_percent="20").refusal)  # fmt: skip
    assert "PREMIUM_SUPPORT is not sold in AU" in str(
        priced(lines=[{"sku": "GROWTH_BUNDLE", "quantity": 1}], country="AU").refusal)  # fmt: skip
    assert "PLATFORM is on the quote on its own and in GROWTH_BUNDLE" in str(priced(
        lines=[{"sku": "GROWTH_BUNDLE", "quantity": 1}, {"sku": "PLATFORM", "quantity": 5}]).refusal)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(quantity=st.integers(1, 500), price=st.decimals("0.01", "99999.99", places=2),
       currency=st.sampled_from(["USD", "EUR", "GBP"]))  # fmt: skip
def test_bundle_shares_add_up_to_the_bundle_price_to_the_cent(
    rules: BusinessRules, quantity: int, price: Decimal, currency: str
) -> None:
    data = rules.catalog.by_sku["GROWTH_BUNDLE"].model_dump()
    bundle = Product.model_validate({**data, "prices": {**data["prices"], currency: price},
                                     "max_quantity": None})  # fmt: skip
    parts = expand_bundle(rules.catalog, bundle, quantity, currency)
    assert sum((share for _, _, share in parts), ZERO) == to_cents(price * quantity)
    assert all(share == share.quantize(Decimal("0.01")) and share >= 0 for _, _, share in parts)


def test_volume_tiers_price_every_unit_at_the_tier_reached(rules: BusinessRules) -> None:
    lines = [{"sku": "PLATFORM", "quantity": 1}, {"sku": "STORAGE", "quantity": 2000}]
    quote = price_quote(rules.catalog, rules.approvals, quote_request(lines=lines)).quote
    assert quote is not None
    storage = quote.lines[1]
    assert storage.tier_mode == "volume" and storage.monthly_net == Decimal("160.00")  # 2000 x 0.08
    assert [(s.step, s.amount) for s in storage.waterfall] == [
        ("list", Decimal("200.00")), ("tier_discount", Decimal("-40.00")),
        ("net", Decimal("160.00"))]  # fmt: skip
    # Metered usage above the commitment: the month's total at the tier it reaches, less the
    # commitment already billed; never below nothing.
    # 12,000 GB at 0.05 would be 600.00, less than 10,000 GB cost (800.00): never less for more.
    assert usage_overage(storage, Decimal(0), 12_000) == Decimal("640.00")  # 800.00 - 160.00
    assert usage_overage(storage, Decimal(0), 17_000) == Decimal("690.00")  # 17000 x 0.05 - 160
    assert usage_overage(storage, Decimal(0), 2_500) == Decimal("40.00")  # 2500 x 0.08 - 160


@settings(max_examples=200, deadline=None)
@given(quantity=st.integers(0, 30_000), more=st.integers(1, 5_000))
def test_volume_tiers_never_charge_less_for_more(rules: BusinessRules, quantity: int,
                                                 more: int) -> None:  # fmt: skip
    """So usage billed in steps (late events) adds up the same as usage billed at once."""
    tiers = usage_tiers(rules.catalog.by_sku["STORAGE"], "USD")
    assert tiered_price(tiers, quantity + more, "volume") >= tiered_price(tiers, quantity, "volume")
