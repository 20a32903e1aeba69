"""Benchmark 6 (issue 4): ingest metered usage events and bill them per deal and month.

    python -m bench.usage_ingest --events 1000000

Writes a JSON Lines file of usage events for 100 deals over 12 months (1% of them sent twice, as a
retried upload would), loads it into a fresh SQLite ledger with `l2c usage ingest`'s function, then
bills every deal's usage for every month as the invoice activity does (`bill_usage`: the month's
total, the check for late events of earlier months, the overage priced into an invoice line). Each size runs in its own process, so its
peak memory is its own. Goal: at least 100,000 events/s, and peak memory that does not grow with
the number of events.
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlmodel import Session

from bench.report import machine, print_table
from l2c.config import load_business_rules
from l2c.db import init_ledger, make_engine
from l2c.pricing import price_quote
from l2c.usage import bill_usage, ingest_usage
from models.calendar import add_months
from models.documents import QuoteRequest, UsageBilling
from models.ledger import Account, Lead
from models.signals import QuoteLineInput, SubmitQuote

DEALS = 100
MONTHS = 12
START = datetime(2026, 1, 1, tzinfo=UTC)


def write_events(path: Path, count: int, shuffled: bool, seed: int = 7) -> None:
    """Events in the order they happened (as a meter sends them), or with times scattered over
    the year (a backfill of many sources: the worst case for the ledger's index)."""
    rng = random.Random(seed)
    span = (add_months(START, MONTHS) - START).total_seconds()
    with path.open("w", encoding="utf-8") as out:
        for n in range(count):
            # 1 in 100 events is a resend of an earlier one (same id), which must be ignored.
            number = rng.randrange(n) if n and rng.random() < 0.01 else n
            deal = number % DEALS
            position = (number * 7919) % count if shuffled else number
            at = START + timedelta(seconds=span * position / count)
            event = {"id": f"evt-{number:09d}", "deal_id": f"deal-B-{deal:03d}", "sku": "API_CALLS",
                     "quantity": 1 + number % 50, "occurred_at": at.isoformat()}  # fmt: skip
            out.write(json.dumps(event) + "\n")


def run_one(count: int, shuffled: bool) -> dict[str, object]:
    rules = load_business_rules()
    with tempfile.TemporaryDirectory() as folder:
        events = Path(folder) / "usage.jsonl"
        write_events(events, count, shuffled)
        engine = make_engine(f"sqlite:///{folder}/ledger.db")
        init_ledger(engine)
        with Session(engine) as session:
            session.add(Account(account_key="bench.example", name="Bench", country="US"))
            for deal in range(DEALS):
                session.add(Lead(lead_id=f"B-{deal:03d}", deal_id=f"deal-B-{deal:03d}",
                                 account_key="bench.example", company="Bench", contact_name="B",
                                 contact_email="b@bench.example", source="web", country="US",
                                 currency="USD", captured_at=START))  # fmt: skip
            session.commit()
        started = time.perf_counter()
        with events.open("rb") as lines:
            report = ingest_usage(engine, lines, rules.catalog)
        ingest_seconds = time.perf_counter() - started
        submission = SubmitQuote(submitted_by="bench", lines=[QuoteLineInput(sku="API_CALLS", quantity=1)],
                                 discount_percent=Decimal(0), term_months=MONTHS,
                                 billing_period="monthly")  # fmt: skip
        quote = price_quote(rules.catalog, rules.approvals, QuoteRequest(
            deal_id="bench", version=1, currency="USD", submission=submission)).quote  # fmt: skip
        assert quote is not None
        usage_lines = 0
        started = time.perf_counter()
        for month in range(1, MONTHS + 1):
            billing = UsageBilling(activated_at=START, month_seconds=0, through_month=month,
                                   lines=quote.lines, discount_percent=Decimal(0))  # fmt: skip
            for deal in range(DEALS):
                with Session(engine) as session:
                    charges = bill_usage(session, f"deal-B-{deal:03d}", billing)
                    for charge in charges:
                        session.add(charge.record)
                    usage_lines += sum(1 for charge in charges if charge.line is not None)
                    session.commit()
        total_seconds = time.perf_counter() - started
    assert report.rejected == 0 and report.accepted + report.duplicates == count
    return {
        "event times": "scattered" if shuffled else "in order",
        "events": count,
        "stored": report.accepted,
        "duplicates": report.duplicates,
        "ingest s": round(ingest_seconds, 2),
        "events/s": round(count / ingest_seconds),
        "bill 1,200 deal-months s": round(total_seconds, 2),
        "usage lines": usage_lines,
        "peak RSS MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--one", choices=["in-order", "scattered"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.events, shuffled=args.one == "scattered")))
        return
    rows = []
    for order in ["in-order", "scattered"]:
        for count in sorted({args.events // 10, args.events}):
            out = subprocess.run([sys.executable, "-m", "bench.usage_ingest", "--one", order,
                                  "--events", str(count)], check=True, capture_output=True,
                                 text=True)  # fmt: skip
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(machine())
    print_table(rows)


if __name__ == "__main__":
    main()
