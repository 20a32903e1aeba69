"""Deterministic calendar arithmetic shared by the workflow and activities."""

import calendar
from datetime import datetime, timedelta


def add_months(moment: datetime, months: int) -> datetime:
    """The same day-of-month `months` later, clamped to the month's last day (Jan 31 + 1 = Feb 28)."""
    month_index = moment.month - 1 + months
    year = moment.year + month_index // 12
    month = month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def months_after(start: datetime, months: int, month_seconds: int = 0) -> datetime:
    """A billing or recognition boundary: calendar months, or `month_seconds` in a compressed demo."""
    if month_seconds:
        return start + timedelta(seconds=month_seconds * months)
    return add_months(start, months)
