"""`l2c kpi`: the lead-to-cash KPIs of a window of days as a table, JSON or an HTML report.

Kept light: the ledger, pydantic and matplotlib are imported when the command runs."""

import argparse
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from l2c.kpi import KpiReport

DEFAULT_DAYS = 90


def add_kpi_parser(subparsers: "argparse._SubParsersAction[Any]") -> None:
    kpi = subparsers.add_parser(
        "kpi",
        help="lead-to-cash KPIs: conversions, cycle times, invoice accuracy, DSO, revenue "
        "leakage, as a table, JSON or an HTML report with charts",
    )
    kpi.add_argument("--since", help=f"first day, YYYY-MM-DD (UTC; default: {DEFAULT_DAYS} days "
                                     "ending with --until)")  # fmt: skip
    kpi.add_argument("--until", help="last day, YYYY-MM-DD (UTC; default: today)")
    kpi.add_argument("--currency", help="only deals and documents in this currency (e.g. EUR)")
    kpi.add_argument("--html", metavar="FILE", help="also write the HTML report with charts")
    kpi.add_argument("--json", action="store_true", help="JSON on standard output, not a table")
    kpi.set_defaults(func=run_kpi)


def _fail(message: str, code: int = 2) -> int:
    print(f"l2c: {message}", file=sys.stderr)
    return code


def _day(option: str, text: str) -> date:
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text) is None:
        raise ValueError(f"{option} {text!r}: expected a day as YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"{option} {text!r}: {err}") from None


def run_kpi(args: argparse.Namespace) -> int:
    try:
        until = _day("--until", args.until) if args.until else datetime.now(UTC).date()
        since = (
            _day("--since", args.since) if args.since else until - timedelta(days=DEFAULT_DAYS - 1)
        )
    except ValueError as err:
        return _fail(str(err))
    if since > until:
        return _fail(f"--since {since} is after --until {until}")
    currency = args.currency.strip().upper() if args.currency else None
    if currency is not None and re.fullmatch(r"[A-Z]{3}", currency) is None:
        return _fail(f"--currency {args.currency!r}: expected an ISO 4217 code such as EUR")

    from l2c.config import Settings
    from l2c.kpi import compute_kpis
    from l2c.runtime import read_ledger

    report = compute_kpis(read_ledger(Settings.from_env()), since, until, currency)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print_report(report)
    if args.html:
        from l2c.kpi_report import write_html

        path = Path(args.html)
        try:
            write_html(report, path)
        except OSError as err:
            return _fail(f"--html {path}: {err.strerror or err}", 1)
        # Standard output stays JSON alone with --json.
        print(f"HTML report written to {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def print_report(report: "KpiReport") -> None:
    """The KPIs as aligned tables (rich), then the leakage per currency and what the ledger does
    not record."""
    from rich.console import Console
    from rich.table import Table

    from l2c.kpi import format_basis, format_value

    # No markup: a name with [brackets] is text, not a style.
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False, markup=False,
                      emoji=False)  # fmt: skip
    title = f"Lead-to-cash KPIs, {report.since} to {report.until} ({report.days} days, UTC)"
    if report.currency:
        title += f", {report.currency} only"
    table = Table(title=title, title_justify="left")
    table.add_column("KPI")
    table.add_column("Currency")
    table.add_column("Value", justify="right")
    table.add_column("Basis")
    table.add_column("n", justify="right")
    for kpi in report.kpis:
        table.add_row(kpi.name, kpi.currency or "", format_value(kpi), format_basis(kpi),
                      str(kpi.samples))  # fmt: skip
    console.print(table)

    funnel = report.funnel
    console.print(f"Funnel: {funnel.leads} leads -> {funnel.opportunities} opportunities -> "
                  f"{funnel.quoted} quoted -> {funnel.won} won")  # fmt: skip
    if report.leakage:
        leakage = Table(title="Revenue leakage (before tax)", title_justify="left")
        columns = ["currency", "periods", "contracted", "billed", "collected", "credited",
                   "written off", "still open", "unbilled", "leakage"]  # fmt: skip
        for column in columns:
            leakage.add_column(column, justify="left" if column == "currency" else "right")
        for row in report.leakage:
            leakage.add_row(row.currency, str(row.periods), str(row.contracted), str(row.billed),
                            str(row.collected), str(row.credited), str(row.written_off),
                            str(row.still_open), str(row.unbilled), str(row.leakage))  # fmt: skip
        console.print(leakage)
    console.print("Definitions: docs/kpi.md, or --json / --html.")
