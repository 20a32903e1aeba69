"""Deterministic calendar arithmetic shared by the workflow and activities."""

import calendar
from datetime import UTC, datetime, time, timedelta


def add_months(moment: datetime, months: int) -> datetime:
    """The same day-of-month `months` later, clamped to the month's last day (Jan 31 + 1 = Feb 28)."""
    month_index = moment.month - 1 + months
    year = moment.year + month_index // 12
    month = month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def add_business_hours(
    moment: datetime, hours: float, day_start: time, day_end: time, workdays: frozenset[int]
) -> datetime:
    """`hours` of working time after `moment`, counting only `day_start`-`day_end` (UTC) on
    `workdays` (ISO weekdays, 1 = Monday): 24 business hours from Friday 16:00 on 9-17 weekdays
    end on Wednesday 16:00."""
    left = timedelta(hours=hours)
    at = moment
    while True:
        opens = datetime.combine(at.date(), day_start, at.tzinfo)
        closes = datetime.combine(at.date(), day_end, at.tzinfo)
        if at.isoweekday() in workdays and at < closes:
            at = max(at, opens)
            if at + left <= closes:
                return at + left
            left -= closes - at
        at = (at + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def months_after(start: datetime, months: int, month_seconds: int = 0) -> datetime:
    """A billing or recognition boundary: calendar months, or `month_seconds` in a compressed demo."""
    if month_seconds:
        return start + timedelta(seconds=month_seconds * months)
    return add_months(start, months)


def as_utc(moment: datetime) -> datetime:
    """A timestamp read back from the ledger: SQLite drops the zone of what was written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
