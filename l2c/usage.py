"""Usage metering: each usage event is stored once under its sender's id, then totalled per period.

Events arrive as JSON Lines, one event per line:

    {"id": "evt-0001", "deal_id": "deal-L-1001", "sku": "API_CALLS", "quantity": 120,
     "occurred_at": "2026-11-23T10:15:00Z"}

`id` is the sender's idempotency id: an event sent again (a retried upload, the same file loaded
twice) is counted as a duplicate and changes nothing. A line that is not a valid event is reported
with its line number and the reason, and the rest of the file still loads.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
)
from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from l2c.config import Catalog
from l2c.pricing import usage_overage
from models.calendar import months_after
from models.documents import InvoiceLinePlan, UsageBilling
from models.ledger import Lead, UsageChargeRecord, UsageEvent
from models.validation import explain

BATCH = 10_000
MAX_REPORTED = 100  # rejected lines listed one by one; beyond that they are only counted


class UsageEventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
    deal_id: Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[^\x00-\x1f\x7f]+$")]
    sku: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Z][A-Z0-9_]*$")]
    quantity: Annotated[StrictInt, Field(ge=1, le=10**12)]
    occurred_at: AwareDatetime

    @field_validator("occurred_at")
    @classmethod
    def _in_utc(cls, value: datetime) -> datetime:
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError("out of range once converted to UTC") from None


@dataclass
class IngestReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)

    def reject(self, line_number: int, reason: str) -> None:
        self.rejected += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append((line_number, reason))


def read_events(
    lines: Iterable[str | bytes], report: IngestReport
) -> Iterator[tuple[int, UsageEventIn]]:
    """The valid events of a JSON Lines stream with their line numbers; bad lines go to `report`."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, UsageEventIn.model_validate_json(line)
        except ValidationError as err:
            reason = explain(err)
            if err.errors()[0]["type"] == "json_invalid":
                reason = "not a JSON object: " + err.errors()[0]["msg"][:200]
            report.reject(number, reason)


def ingest_usage(engine: Engine, lines: Iterable[str | bytes], catalog: Catalog) -> IngestReport:
    """Store each new event once; count resent ones as duplicates; report invalid lines.

    Streams: memory stays flat whatever the number of events. Each batch commits on its own, so an
    interrupted load keeps what it stored and loading the same file again completes it.
    """
    report = IngestReport()
    metered = {p.sku for p in catalog.products if p.kind == "usage"}
    known_deals: set[str] = set()
    # The driver's executemany, not the ORM: this is the hot path (see bench/usage_ingest.py). Its
    # rowcount counts only the rows really inserted, so duplicates are counted exactly.
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    insert = (
        "INSERT INTO usage_events (event_id, deal_id, sku, quantity, occurred_at) "
        f"VALUES ({', '.join([mark] * 5)}) ON CONFLICT (event_id) DO NOTHING"
    )
    # Timestamps are written exactly as SQLAlchemy writes them, so its queries compare them right.
    column_type = UsageEvent.__table__.c.occurred_at.type.dialect_impl(engine.dialect)  # type: ignore[attr-defined]
    to_column = column_type.bind_processor(engine.dialect) or (lambda value: value)
    events = read_events(lines, report)
    while batch := list(islice(events, BATCH)):
        with engine.begin() as connection:
            new_deals = {event.deal_id for _, event in batch} - known_deals
            if new_deals:
                found = connection.execute(
                    select(col(Lead.deal_id)).where(col(Lead.deal_id).in_(new_deals))
                )
                known_deals.update(found.scalars())
            rows: list[tuple[str, str, str, int, Any]] = []
            for number, event in batch:
                if event.sku not in metered:
                    report.reject(number, f"sku: {event.sku[:40]!r} is not a metered product "
                                          f"(metered: {', '.join(sorted(metered))})")  # fmt: skip
                elif event.deal_id not in known_deals:
                    report.reject(number, f"deal_id: no deal {event.deal_id[:80]!r} in the ledger")
                else:
                    at = to_column(event.occurred_at)  # in UTC, see UsageEventIn
                    rows.append((event.id, event.deal_id, event.sku, event.quantity, at))
            if rows:
                inserted = connection.exec_driver_sql(insert, rows).rowcount
                report.accepted += inserted
                report.duplicates += len(rows) - inserted
    return report


def metered_usage(engine: Engine, deal_id: str, sku: str, start: datetime, end: datetime) -> int:
    """The usage a deal metered of a product from `start` (inclusive) to `end` (exclusive)."""
    with Session(engine) as session:
        return _metered(session, deal_id, sku, start, end)


def _metered(session: Session, deal_id: str, sku: str, start: datetime, end: datetime) -> int:
    total = session.execute(
        select(func.coalesce(func.sum(col(UsageEvent.quantity)), 0)).where(
            col(UsageEvent.deal_id) == deal_id,
            col(UsageEvent.sku) == sku,
            col(UsageEvent.occurred_at) >= start.astimezone(UTC),
            col(UsageEvent.occurred_at) < end.astimezone(UTC),
        )
    ).scalar_one()
    return int(total)


@dataclass
class UsageCharge:
    line: InvoiceLinePlan | None  # None: the usage stayed within the commitment
    record: UsageChargeRecord


def bill_usage(session: Session, deal_id: str, billing: UsageBilling) -> list[UsageCharge]:
    """The metered usage not billed yet, as invoice lines, inside the caller's transaction.

    Normally that is the usage of the month just ended. Events that arrived after their month was
    invoiced are billed too, at what they would have cost in their own month: the month's overage
    now, less what was billed for it. Events before activation or after the term are not billed.
    """

    def boundary(month: int) -> datetime:
        return months_after(billing.activated_at, month, billing.month_seconds)

    charges = []
    for line in billing.lines:
        billed: dict[int, int] = {}
        for month, through in session.execute(
            select(col(UsageChargeRecord.month), func.max(col(UsageChargeRecord.metered_through)))
            .where(
                col(UsageChargeRecord.deal_id) == deal_id, col(UsageChargeRecord.sku) == line.sku
            )
            .group_by(col(UsageChargeRecord.month))
        ).all():
            billed[month] = int(through)
        last = billing.through_month
        months = [last]
        # One range total tells whether any earlier month got late events; only then look at each.
        if last > 1 and _metered(
            session, deal_id, line.sku, boundary(0), boundary(last - 1)
        ) != sum(through for month, through in billed.items() if month < last):
            months = list(range(1, last + 1))
        for month in months:
            metered = _metered(session, deal_id, line.sku, boundary(month - 1), boundary(month))
            before = billed.get(month, 0)
            if metered <= before:
                continue
            amount = usage_overage(line, billing.discount_percent, metered) - usage_overage(
                line, billing.discount_percent, before
            )
            record = UsageChargeRecord(deal_id=deal_id, sku=line.sku, month=month,
                                       metered_through=metered, metered_before=before,
                                       amount=amount)  # fmt: skip
            invoice_line = None
            if amount > 0:
                committed = line.quantity * line.metered_per_unit
                counted = (
                    f"{metered - before:,} more metered after it was invoiced (late usage)"
                    if before
                    else f"{metered:,} metered, {committed:,} committed; overage in arrears"
                )
                invoice_line = InvoiceLinePlan(
                    sku=line.sku,
                    description=f"{line.name}, month {month}: {counted}",
                    quantity=1,
                    unit_price=amount,
                    amount=amount,
                )
            charges.append(UsageCharge(line=invoice_line, record=record))
    return charges
