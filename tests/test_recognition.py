"""Revenue recognition rules (ASC 606 / IFRS 15): allocation of the transaction price by relative
standalone selling price, and ratable schedules by day."""

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2c.config import BusinessRules, ConfigError, SspTable, load_business_rules
from l2c.drill import drill_config
from l2c.journal import period_of
from l2c.pricing import price_quote
from models.calendar import add_months
from models.documents import QuoteRequest
from models.money import ZERO, split_in_proportion
from models.revenue import (
    ObligationSchedule,
    modify_prospectively,
    obligation_schedules,
    split_by_time,
)
from models.signals import SubmitQuote

CENT = Decimal("0.01")


def quote(rules: BusinessRules, **fields: object) -> QuoteRequest:
    submission = SubmitQuote.model_validate({
        "submitted_by": "someone.else", "lines": [{"sku": "PLATFORM", "quantity": 10},
                                                  {"sku": "ONBOARDING", "quantity": 1}],
        **fields})  # fmt: skip
    return QuoteRequest(deal_id="d", version=1, currency="USD", submission=submission)


def test_a_discount_is_spread_over_the_obligations_by_standalone_selling_price(
    rules: BusinessRules,
) -> None:
    pricing = price_quote(rules.catalog, rules.approvals,
                          quote(rules, discount_percent="15"), rules.ssp)  # fmt: skip
    priced = pricing.quote
    assert priced is not None and priced.net_total == Decimal("7225.00")
    # Billed: seats 5,100.00 over the year and onboarding 2,125.00 on the first invoice. Sold
    # alone they are worth 5,400.00 (45.00 x 10 x 12) and 3,000.00: the 7,225.00 is allocated
    # in that proportion, so onboarding (recognized at provisioning) carries its fair share.
    assert [(o.sku, o.recognition, o.standalone_value, o.allocated)
            for o in priced.obligations] == [
        ("PLATFORM", "ratable", Decimal("5400.00"), Decimal("4644.64")),
        ("ONBOARDING", "at_provisioning", Decimal("3000.00"), Decimal("2580.36"))]  # fmt: skip


def test_a_product_without_a_standalone_selling_price_is_refused(rules: BusinessRules) -> None:
    partial = SspTable(prices={"PLATFORM": {"USD": Decimal("45.00")}})
    pricing = price_quote(rules.catalog, rules.approvals, quote(rules), partial)
    assert pricing.refusal == (
        "no standalone selling price for ONBOARDING in USD (config/ssp.toml): "
        "its revenue could not be allocated")  # fmt: skip


def test_an_ssp_table_naming_a_bundle_or_missing_a_price_is_refused_at_start(
    tmp_path: Path,
) -> None:
    config = drill_config(tmp_path / "config")
    ssp = config / "ssp.toml"
    ssp.write_text(ssp.read_text() + '\n[prices.GROWTH_BUNDLE]\nUSD = "1000.00"\n')
    with pytest.raises(ConfigError, match=r"ssp\.toml: GROWTH_BUNDLE is a bundle"):
        load_business_rules(config)
    ssp.write_text(
        ssp.read_text()
        .replace('\n[prices.GROWTH_BUNDLE]\nUSD = "1000.00"\n', "")
        .replace('GBP = "560.00"', "")
    )  # premium support loses its GBP price
    with pytest.raises(ConfigError, match="PREMIUM_SUPPORT has no standalone selling price in GBP"):
        load_business_rules(config)
    ssp.unlink()  # no table at all: quotes carry no obligations
    assert load_business_rules(config).ssp.prices == {}


@settings(max_examples=200, deadline=None)
@given(
    quantities=st.tuples(st.integers(1, 5000), st.integers(1, 5)),
    discount=st.decimals(0, 40, places=2),
    term=st.integers(1, 60),
)
def test_allocation_adds_up_and_is_within_a_cent_of_relative_ssp(
    rules: BusinessRules, quantities: tuple[int, int], discount: Decimal, term: int
) -> None:
    lines = [{"sku": "PLATFORM", "quantity": quantities[0]},
             {"sku": "ONBOARDING", "quantity": quantities[1]}]  # fmt: skip
    pricing = price_quote(rules.catalog, rules.approvals, quote(
        rules, lines=lines, discount_percent=str(discount), term_months=term), rules.ssp)  # fmt: skip
    priced = pricing.quote
    if priced is None:  # only the onboarding floor refuses these
        assert pricing.refusal is not None and "rule: floor price" in pricing.refusal
        return
    obligations = priced.obligations
    assert sum((o.allocated for o in obligations), ZERO) == priced.net_total
    whole = sum((o.standalone_value for o in obligations), ZERO)
    for o in obligations:
        assert abs(o.allocated - priced.net_total * o.standalone_value / whole) < CENT


@settings(max_examples=200, deadline=None)
@given(
    cents=st.integers(0, 10**9),
    start=st.datetimes(datetime(2020, 1, 1), datetime(2035, 12, 31), timezones=st.just(UTC)),
    months=st.integers(1, 120),
)
def test_a_ratable_split_adds_up_by_day(cents: int, start: datetime, months: int) -> None:
    amount = Decimal(cents) / 100
    bounds = [add_months(start, m) for m in range(months + 1)]
    shares = split_by_time(amount, bounds)
    assert len(shares) == months
    assert sum(shares, ZERO) == amount
    total_days = (bounds[-1] - bounds[0]).days
    for share, (begin, end) in zip(shares, itertools.pairwise(bounds), strict=True):
        assert abs(share - amount * (end - begin).days / total_days) < CENT


@settings(max_examples=100, deadline=None)
@given(
    term=st.integers(1, 60),
    seats=st.integers(1, 500),
    discount=st.integers(0, 30),
    data=st.data(),
)
def test_each_obligation_s_schedule_sums_to_its_allocation_through_modifications(
    rules: BusinessRules, term: int, seats: int, discount: int, data: st.DataObject
) -> None:
    request = quote(rules, term_months=term, discount_percent=str(discount),
                    lines=[{"sku": "PLATFORM", "quantity": seats}, {"sku": "ONBOARDING", "quantity": 1}])  # fmt: skip
    priced = price_quote(rules.catalog, rules.approvals, request, rules.ssp).quote
    assert priced is not None
    start = datetime(2026, 1, 31, 9, tzinfo=UTC)
    month_ends = [add_months(start, m) for m in range(term + 1)]
    schedules = obligation_schedules(priced, month_ends)
    assert [s.sku for s in schedules] == ["PLATFORM", "ONBOARDING"]
    assert sum((s.allocated for s in schedules), ZERO) == priced.net_total
    for schedule in schedules:
        assert sum(schedule.months.values(), ZERO) == schedule.allocated
    seats_line = schedules[0]
    assert sorted(seats_line.months) == list(range(1, term + 1))
    assert schedules[1].months == {0: schedules[1].allocated}  # at provisioning
    # Seat changes later in the term: recognized months stay, the rest plus the change re-spread
    # from the moment of the change; a change taking away more than is left is caught up at once.
    for _ in range(data.draw(st.integers(0, 3))):
        after = data.draw(st.integers(0, term - 1))
        at = month_ends[after] + (month_ends[after + 1] - month_ends[after]) * data.draw(
            st.floats(0, 1))  # fmt: skip
        still = sum((v for m, v in seats_line.months.items() if m > after), ZERO)
        added = Decimal(data.draw(st.integers(-int(still * 100) - 10**6, 10**7))) / 100
        before = {m: v for m, v in seats_line.months.items() if m <= after}
        allocated = seats_line.allocated
        modify_prospectively(seats_line, added, after, month_ends, at)
        assert {m: v for m, v in seats_line.months.items() if m <= after} == before
        assert seats_line.allocated == allocated + added
        assert sum(seats_line.months.values(), ZERO) == seats_line.allocated
        if added >= -still + CENT * term:  # nothing to catch up: every later month is >= 0
            assert all(v >= 0 for m, v in seats_line.months.items() if m > after + 1)
    with pytest.raises(ValueError, match="term is over"):
        modify_prospectively(seats_line, CENT, term, month_ends, month_ends[-1])


def test_a_split_refuses_what_it_could_not_add_up_exactly() -> None:
    assert split_in_proportion(Decimal("1.00"), [Decimal(1)] * 3) == [
        Decimal("0.34"), Decimal("0.33"), Decimal("0.33")]  # fmt: skip
    for total, weights in [(Decimal("-1.00"), [Decimal(1)]), (Decimal("1.005"), [Decimal(1)]),
                           (Decimal("1.00"), [Decimal(-1), Decimal(2)]),
                           (Decimal("1.00"), [Decimal(0)])]:  # fmt: skip
        with pytest.raises(ValueError):
            split_in_proportion(total, weights)
    assert period_of(datetime(2026, 1, 31, 23, 30)) == "2026-01"  # no time zone: UTC


def test_a_second_change_in_a_month_keeps_what_each_rate_delivered() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    month_ends = [start, start + timedelta(days=30), start + timedelta(days=60)]
    seats = ObligationSchedule(sku="PLATFORM", stream="subscription", allocated=Decimal("200.00"),
                               months={1: Decimal("100.00"), 2: Decimal("100.00")})  # fmt: skip
    # Mid-month the rate triples: 50.00 delivered, 150.00 left plus 300.00 over 45 days.
    modify_prospectively(seats, Decimal("300.00"), 0, month_ends, start + timedelta(days=15))
    assert seats.months == {1: Decimal("200.00"), 2: Decimal("300.00")}
    # A change adding nothing at three quarters of the month leaves the schedule as it is:
    # 50.00 at the old rate and 75.00 at the new one were delivered by then.
    modify_prospectively(seats, ZERO, 0, month_ends, start + timedelta(days=22, hours=12))
    assert seats.delivered_by_then == Decimal("125.00")
    assert seats.months == {1: Decimal("200.00"), 2: Decimal("300.00")}
    assert seats.allocated == Decimal("500.00") and seats.modifications == 2
