"""Revenue schedules per performance obligation (ASC 606 / IFRS 15): pure and deterministic, so
the deal workflow keeps them and an auditor can recompute them."""

import itertools
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel

from models.documents import Quote
from models.money import ZERO, split_in_proportion, to_cents

RevenueStream = Literal["subscription", "services", "usage"]

# The revenue stream (and so the revenue account) of each kind of quote line.
STREAM_OF_LINE_KIND: dict[str, RevenueStream] = {
    "recurring": "subscription",
    "one_time": "services",
    "usage": "usage",
}


class ObligationSchedule(BaseModel):
    """What a performance obligation recognizes at each month end of the term (1-based; 0 is
    the moment provisioning completes), and what it has recognized so far. The amounts still to
    come plus `recognized` always add up to `allocated`."""

    sku: str
    stream: RevenueStream
    allocated: Decimal  # its share of the transaction price, plus the modifications since
    months: dict[int, Decimal]  # month end -> amount still to recognize then
    recognized: Decimal = ZERO
    modifications: int = 0  # contract modifications that re-spread it
    # The latest modification: when, in which month (its end), and what that month had
    # delivered by then; the rest of the month runs at the rate it set.
    modified_at: datetime | None = None
    modified_month: int | None = None
    delivered_by_then: Decimal = ZERO


def obligation_schedules(quote: Quote, month_ends: list[datetime]) -> list[ObligationSchedule]:
    """The revenue schedule of each obligation of a signed quote: ratable ones over the term by
    day (`month_ends`: activation, then the end of each month of the term, as the deal counts
    them), one-time services in full once provisioning completes."""
    kinds = {line.sku: line.kind for line in quote.lines}
    schedules = []
    for obligation in quote.obligations:
        if obligation.recognition == "at_provisioning":
            months = {0: obligation.allocated}
        else:
            shares = split_by_time(obligation.allocated, month_ends)
            months = {n: share for n, share in enumerate(shares, start=1)}
        schedules.append(
            ObligationSchedule(
                sku=obligation.sku,
                stream=STREAM_OF_LINE_KIND[kinds[obligation.sku]],
                allocated=obligation.allocated,
                months=months,
            )
        )
    return schedules


def modify_prospectively(
    schedule: ObligationSchedule,
    added: Decimal,
    after_month: int,
    month_ends: list[datetime],
    at: datetime,
) -> None:
    """A contract modification at `at`, within the month after `after_month` (month ends as
    for obligation_schedules), accounted for prospectively: that month keeps its old revenue for
    the days before `at`; the rest not yet recognized, plus the consideration the change adds
    (negative when it takes some away), is spread by time from `at` to the end of the term.
    Should the change take away more than is left to recognize, the difference is taken back
    at the month's end (a cumulative catch-up): revenue recognized stays recognized.

    Refuses (ValueError) a modification after the term: nothing is left to recognize it in."""
    current = after_month + 1
    if current >= len(month_ends):
        raise ValueError(f"{schedule.sku}: the term is over, no month is left to recognize in")
    # What the month has delivered: at its rate since its start, or since the month's latest
    # modification (before which it delivered `delivered_by_then`).
    mark, by_mark = month_ends[after_month], ZERO
    if schedule.modified_month == current and schedule.modified_at is not None:
        mark, by_mark = schedule.modified_at, schedule.delivered_by_then
    end = month_ends[current]
    start = min(max(at, mark), end)
    old = schedule.months.get(current, ZERO)
    span = Decimal(int((end - mark).total_seconds()))
    elapsed = Decimal(int((start - mark).total_seconds()))
    delivered = by_mark + to_cents((old - by_mark) * elapsed / span) if span > 0 else old
    remaining = sum((v for m, v in schedule.months.items() if m > after_month), ZERO) - delivered
    total = remaining + added
    later = [start, *month_ends[current:]]
    if total >= 0 and any(b > a for a, b in itertools.pairwise(later)):
        shares = split_by_time(total, later)
    else:  # nothing to spread over (a change at the very end), or a catch-up
        shares = [total] + [ZERO] * (len(later) - 2)
    kept = {m: v for m, v in schedule.months.items() if m <= after_month}
    schedule.months = kept | {current + n: share for n, share in enumerate(shares)}
    schedule.months[current] += delivered
    schedule.allocated += added
    schedule.modifications += 1
    schedule.modified_at, schedule.modified_month = start, current
    schedule.delivered_by_then = delivered


def split_by_time(amount: Decimal, bounds: list[datetime]) -> list[Decimal]:
    """`amount` split over the spans between consecutive `bounds` in proportion to their length
    (in seconds: a compressed demo month is shorter than a day), to the cent, adding up."""
    spans = [
        Decimal(int((end - begin).total_seconds())) for begin, end in itertools.pairwise(bounds)
    ]
    return split_in_proportion(amount, spans)
