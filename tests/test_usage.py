"""Usage metering: events stored once under their id, bad lines named by number, totals per period."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlmodel import Session
from temporalio.testing import ActivityEnvironment

from activities.leads import LeadActivities
from l2c.config import BusinessRules
from l2c.mail import Mailer
from l2c.pricing import price_metered_usage
from l2c.usage import ingest_usage, metered_usage
from models.ledger import UsageEvent
from tests.helpers import make_lead

JAN = datetime(2026, 1, 15, tzinfo=UTC)
FEB = datetime(2026, 2, 15, tzinfo=UTC)


def captured_deal(ledger: Engine, rules: BusinessRules, lead_id: str = "L-USAGE") -> str:
    mailer = Mailer(ledger, None, 25, "x@y.example")
    ActivityEnvironment().run(
        LeadActivities(ledger, rules, mailer).capture_lead, make_lead(lead_id=lead_id)
    )
    return f"deal-{lead_id}"


def event(n: int, deal: str, at: datetime, quantity: int = 1000, **changes: Any) -> str:
    data = {"id": f"evt-{n}", "deal_id": deal, "sku": "API_CALLS", "quantity": quantity,
            "occurred_at": at.isoformat()}  # fmt: skip
    data.update(changes)
    return json.dumps(data)


def stored_events(ledger: Engine) -> int:
    with Session(ledger) as session:
        return session.exec(select(func.count()).select_from(UsageEvent)).one()[0]  # type: ignore[call-overload]


def test_each_event_is_stored_once_and_totalled_in_its_period(
    ledger: Engine, rules: BusinessRules
) -> None:
    deal = captured_deal(ledger, rules)
    lines = [
        event(1, deal, JAN),  # the period's first instant belongs to it
        event(2, deal, JAN + timedelta(days=10), quantity=149_500),
        event(2, deal, JAN + timedelta(days=10), quantity=149_500),  # resent within the file
        # 23:30 in New York on Feb 14 is 04:30 UTC on Feb 15: after the period ends.
        event(3, deal, datetime(2026, 2, 14, 23, 30), occurred_at="2026-02-14T23:30:00-05:00"),
        event(4, deal, FEB - timedelta(microseconds=1), quantity=5),
    ]
    report = ingest_usage(ledger, lines, rules.catalog)
    assert (report.accepted, report.duplicates, report.rejected) == (4, 1, 0)

    calls = metered_usage(ledger, deal, "API_CALLS", JAN, FEB)
    assert calls == 1000 + 149_500 + 5
    assert metered_usage(ledger, deal, "API_CALLS", FEB, FEB + timedelta(days=28)) == 1000
    assert metered_usage(ledger, "deal-other", "API_CALLS", JAN, FEB) == 0
    # 150.505 thousand calls: 100 x 2.00 + 50.505 x 1.50 = 275.7575, rounded half-even once.
    product = rules.catalog.by_sku["API_CALLS"]
    assert price_metered_usage(product, calls, "USD") == Decimal("275.76")

    # The same upload again (a retried request) changes nothing.
    again = ingest_usage(ledger, lines, rules.catalog)
    assert (again.accepted, again.duplicates, again.rejected) == (0, 5, 0)
    assert stored_events(ledger) == 4
    assert metered_usage(ledger, deal, "API_CALLS", JAN, FEB) == calls


def test_bad_lines_are_named_by_number_and_the_rest_still_loads(
    ledger: Engine, rules: BusinessRules
) -> None:
    deal = captured_deal(ledger, rules)
    bad = {
        2: "{not json",
        3: event(3, deal, JAN, quantity="12"),  # type: ignore[arg-type]
        4: event(4, deal, JAN, quantity=1.5),  # type: ignore[arg-type]
        5: event(5, deal, JAN, quantity=0),
        6: event(6, deal, JAN, quantity=True),  # type: ignore[arg-type]
        7: event(7, deal, JAN, occurred_at="2026-01-15T10:00:00"),  # no time zone
        8: event(8, deal, JAN, sku="PLATFORM"),
        9: event(9, deal, JAN, deal_id="deal-nobody"),
        10: event(10, deal, JAN, id="x" * 5000),
        11: event(11, deal, JAN, colour="blue"),
        12: "[1, 2]",
        13: event(13, deal, JAN, quantity=10**30),
        14: event(14, deal, JAN, deal_id="deal-\u0000"),
        15: event(15, deal, JAN, occurred_at="0001-01-01T00:00:00+01:00"),
    }
    lines = [event(1, deal, JAN), *bad.values(), "", event(17, deal, JAN)]
    report = ingest_usage(ledger, lines, rules.catalog)
    assert (report.accepted, report.duplicates, report.rejected) == (2, 0, len(bad))
    reasons = dict(report.problems)
    assert sorted(reasons) == sorted(bad)
    assert reasons[2].startswith("not a JSON object")
    assert reasons[3].startswith("quantity:") and reasons[6].startswith("quantity:")
    assert "timezone" in reasons[7]
    assert "not a metered product" in reasons[8]
    assert "no deal 'deal-nobody'" in reasons[9]
    assert reasons[10].startswith("id:") and len(reasons[10]) < 300
    assert reasons[11].startswith("colour:")
    assert stored_events(ledger) == 2


def test_cli_reports_rejected_lines_and_exits_1(
    ledger: Engine, rules: BusinessRules, tmp_path: Path
) -> None:
    deal = captured_deal(ledger, rules)
    usage = tmp_path / "usage.jsonl"
    usage.write_text("\n".join([event(1, deal, JAN), "{oops", event(2, deal, JAN)]) + "\n")
    env = {**os.environ, "L2C_DATABASE_URL": ledger.url.render_as_string(hide_password=False)}

    def l2c(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "l2c.cli", "usage", "ingest", *args],
                              env=env, capture_output=True, text=True, timeout=60)  # fmt: skip

    first = l2c(str(usage))
    assert first.returncode == 1, first.stderr
    assert "line 2: not a JSON object" in first.stdout
    assert "2 usage events stored, 0 duplicates ignored, 1 lines rejected" in first.stdout
    usage.write_text(event(1, deal, JAN) + "\n")
    second = l2c(str(usage))
    assert second.returncode == 0 and "0 usage events stored, 1 duplicates ignored" in second.stdout
    missing = l2c(str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "no such usage file" in missing.stderr
