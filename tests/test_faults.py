"""Fault injection: activities that fail, hang past their timeout or answer slowly on their first
attempts must leave exactly the ledger a clean run leaves, row by row.

Each run gets its own time-skipping server, so the same leads (and so the same deal ids) are
played twice: once clean, once with every activity faulted.
"""

import json
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Engine, Integer, func, select
from sqlmodel import Session, SQLModel
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings, load_business_rules
from l2c.drill import drill_config
from l2c.ledger_check import check_ledger
from l2c.runtime import build_worker
from models.deal import Stage
from tests.conftest import fresh_ledger, start_time_skipping_env
from tests.helpers import (
    advance_until,
    quote_to_signature,
    sign,
    signal,
    start,
    state_of,
    wait_for_stage,
    wait_until,
)

FAULTS = {
    "load_deal_policy": {"kind": "slow", "seconds": 0.5},
    "resolve_identity": {"kind": "error_after"},
    "score_lead": {"kind": "error", "attempts": 3},
    "route_lead": {"kind": "error_after"},
    "price_quote": {"kind": "error_after", "attempts": 2},
    "render_contract": {"kind": "error"},
    "record_signature": {"kind": "error_after"},
    "provision_order": {"kind": "timeout"},
    "issue_invoice": {"kind": "error_after", "attempts": 2},
    "apply_payment": {"kind": "error_after"},
    "recognize_revenue": {"kind": "error_after"},
    "close_deal": {"kind": "error"},
}

DEALS: list[dict[str, Any]] = [
    # 15% needs a manager; onboarding and a tiered usage commitment; three monthly invoices.
    {"lead_id": "L-fault-1", "quote": {
        "lines": [{"sku": "PLATFORM", "quantity": 25}, {"sku": "ONBOARDING", "quantity": 1},
                  {"sku": "API_CALLS", "quantity": 1500}],
        "discount_percent": "15", "term_months": 3, "billing_period": "monthly"}},
    # One annual invoice for two years of service.
    {"lead_id": "L-fault-2", "quote": {
        "lines": [{"sku": "PLATFORM", "quantity": 7}], "discount_percent": "0",
        "term_months": 14, "billing_period": "annual"}},
]  # fmt: skip


async def play(env: WorkflowEnvironment, task_queue: str, deal: dict[str, Any]) -> dict[str, int]:
    """Quote (approved when needed), sign, pay each invoice as it is issued, until won."""
    handle = await start(env.client, task_queue, lead_id=deal["lead_id"])
    quote = {"submitted_by": "nora.na", **deal["quote"]}
    if quote["discount_percent"] != "0":
        await wait_for_stage(handle, Stage.QUALIFIED)
        await signal(handle, "submit_quote", quote)
        await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
        await signal(handle, "approve_discount", {"approver": "mia.manager", "comment": "ok"})
        state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
        await sign(handle, state)
    else:
        await quote_to_signature(handle, **quote)
    await wait_until(handle, lambda s: s.stage == Stage.ACTIVE, 60)
    paid = 0
    while (await state_of(handle)).stage == Stage.ACTIVE:
        state = await advance_until(
            env,
            handle,
            lambda s, paid=paid: s.stage != Stage.ACTIVE or len(s.invoices) > paid,
            step=timedelta(days=10),  # paid well before the due date: no dunning
        )
        for invoice in state.invoices[paid:]:
            await signal(handle, "record_payment", {"invoice_number": invoice.number,
                         "amount": str(invoice.amount), "reference": f"PAY-{invoice.number}"})  # fmt: skip
            paid += 1
        await wait_until(handle, lambda s: all(i.status == "paid" for i in s.invoices), 60)
    final = await handle.result()
    assert final.stage == Stage.WON, "\n".join(f"{e.at} {e.kind} {e.detail}" for e in final.events)
    # The most attempts each activity type needed, from the deal's history.
    attempts: dict[str, int] = {}
    scheduled: dict[int, str] = {}
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled[event.event_id] = name
        elif event.HasField("activity_task_started_event_attributes"):
            started = event.activity_task_started_event_attributes
            name = scheduled[started.scheduled_event_id]
            attempts[name] = max(attempts.get(name, 0), started.attempt)
    return attempts


async def run_deals(tmp: Path, faults: dict[str, Any] | None) -> tuple[Engine, dict[str, int]]:
    rules = load_business_rules(
        # Short timeouts and backoff keep the faulted run quick; months are skipped.
        drill_config(tmp / "config", timeout_seconds=2, retry_initial_seconds=0.1)
    )
    engine = fresh_ledger(f"sqlite:///{tmp / 'ledger.db'}")
    settings = Settings(
        data_dir=tmp,
        database_url="",
        task_queue="faults",
        faults_json=None if faults is None else json.dumps(faults),
    )
    attempts: dict[str, int] = {}
    for deal in DEALS:  # one after another, so invoice numbers are taken in the same order
        # A fresh server per deal: each deal starts at today's date in both runs, whatever the
        # test server's clock did while the previous deal ran.
        async with (
            await start_time_skipping_env() as env,
            build_worker(env.client, engine, rules, settings),
        ):
            for name, count in (await play(env, settings.task_queue, deal)).items():
                attempts[name] = max(attempts.get(name, 0), count)
    return engine, attempts


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME_OF_DAY = re.compile(r"\b\d{2}:\d{2}(:\d{2})?\b")


def ledger_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, without what differs between two runs of the same deals: timestamps,
    surrogate ids and document hashes. Dates become days since the deal's first invoice (also
    inside documents), so runs a few seconds apart compare equal."""
    tables = SQLModel.metadata.tables
    with Session(engine) as session:
        first_invoiced = dict(
            session.execute(
                select(
                    tables["invoices"].c.deal_id, func.min(tables["invoices"].c.issued_on)
                ).group_by(tables["invoices"].c.deal_id)
            ).all()
        )
        entry_keys = dict(
            session.execute(
                select(tables["journal_entries"].c.id, tables["journal_entries"].c.entry_key)
            ).all()
        )
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for table in SQLModel.metadata.sorted_tables:
            kept = [
                column for column in table.columns
                if not isinstance(column.type, DateTime)
                and column.name != "period"  # the month of posted_at, a timestamp
                and not column.name.endswith("sha256")
                and not (column.name == "id" and isinstance(column.type, Integer))
            ]  # fmt: skip
            result = []
            for row in session.execute(select(*kept)).mappings().all():
                base = first_invoiced.get(row.get("deal_id"), min(first_invoiced.values()))

                def relative(value: Any, base: date = base) -> Any:
                    if isinstance(value, date):
                        return f"day+{(value - base).days}"
                    if isinstance(value, str):
                        value = _ISO_DATE.sub(
                            lambda m: relative(date.fromisoformat(m.group())), value
                        )
                        return _TIME_OF_DAY.sub("hh:mm", value)
                    return value

                values = [
                    entry_keys[row[c.name]] if c.name == "entry_id" else relative(row[c.name])
                    for c in kept
                ]
                result.append(tuple(values))
            rows[table.name] = sorted(result, key=repr)
    return rows


async def test_faulted_activities_converge_to_the_clean_ledger(tmp_path: Path) -> None:
    clean, clean_attempts = await run_deals(tmp_path / "clean", None)
    faulty, faulty_attempts = await run_deals(tmp_path / "faulty", FAULTS)
    assert set(clean_attempts.values()) == {1}
    # Every faulted activity really failed its first attempts and was retried.
    for name, fault in FAULTS.items():
        if fault["kind"] != "slow":
            assert faulty_attempts[name] == fault.get("attempts", 1) + 1, name
    assert check_ledger(faulty) == []
    expected, actual = ledger_rows(clean), ledger_rows(faulty)
    assert sum(len(rows) for rows in expected.values()) > 50  # the runs did real work
    for table, rows in expected.items():
        assert actual[table] == rows, f"{table} differs after injected faults"
