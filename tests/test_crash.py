"""Crash drill: 50 deals from lead to cash while the worker is SIGKILLed and the server restarted.

The worker and the embedded server run as separate processes on a private SQLite file, with a
month compressed to seconds so deals finish their term within the test. After the drill, every
deal must have been won, every invoice must exist exactly once with a gap-free number, no payment
may have been applied twice, and every journal entry must balance.
"""

import asyncio
import os
import random
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from l2c.db import make_engine
from l2c.drill import Drill, drill_config
from l2c.journal import ACCOUNTS_RECEIVABLE, CASH, DEFERRED_REVENUE
from l2c.ledger_check import check_ledger
from l2c.playbook import DRILL_QUOTES, DealPlay, payment_reference, play_deals
from models.deal import TASK_QUEUE, Stage
from models.ledger import InvoiceRecord, PaymentRecordRow
from tests.helpers import account_balances, make_lead

# Not in the default run while docs/findings/signal-order is open: `bin/test -m chaos`.
pytestmark = [pytest.mark.devserver, pytest.mark.chaos]

DEALS = 50
WORKER_KILLS = 6


def plays() -> list[DealPlay]:
    run = f"{int(time.time())}"
    return [
        DealPlay(
            lead=make_lead(lead_id=f"L-crash-{run}-{n:03d}", company=f"Crash Test {n} Ltd"),
            quote={"submitted_by": "nora.na", **DRILL_QUOTES[n % len(DRILL_QUOTES)]},
        )
        for n in range(DEALS)
    ]


async def wreak_havoc(drill: Drill, rng: random.Random, driving: asyncio.Task[Any]) -> None:
    """SIGKILL the worker at random moments, and once the server, while the deals are under way."""
    for kill in range(WORKER_KILLS):
        await asyncio.sleep(rng.uniform(1.0, 4.0))
        if driving.done():
            break
        drill.kill_worker()
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        if kill == 2:
            await asyncio.to_thread(drill.restart_server)
        drill.start_worker()


async def test_deals_survive_killed_workers_and_a_restarted_server(tmp_path: Path) -> None:
    seed = int(os.environ.get("L2C_CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    config = drill_config(tmp_path / "config", month_seconds=2, timeout_seconds=4)
    drill = Drill(tmp_path, config)
    deals = plays()
    try:
        drill.start_server()
        drill.start_worker()
        client = await Client.connect(drill.address, data_converter=pydantic_data_converter)
        async with asyncio.timeout(240):
            driving = asyncio.create_task(play_deals(client, deals, TASK_QUEUE, poll_seconds=1.0))
            await wreak_havoc(drill, rng, driving)
            finals = await driving
        histories = [
            await client.get_workflow_handle(f"deal-{play.lead.lead_id}").fetch_history()
            for play in deals
        ]
    finally:
        drill.stop()

    context = f"seed {seed} (rerun with L2C_CHAOS_SEED={seed}); logs in {tmp_path}"
    assert drill.worker_kills >= 5 and drill.server_kills == 1, context
    assert [final.stage for final in finals] == [Stage.WON] * DEALS, context
    # A killed worker leaves timed-out tasks in the history, never a failed (nondeterministic) one.
    for history in histories:
        kinds = [event.event_type for event in history.events]
        assert EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED not in kinds, (
            history.workflow_id,
            context,
        )

    engine = make_engine(drill.ledger_url)
    assert check_ledger(engine) == [], context
    with Session(engine) as session:
        invoices = session.exec(select(InvoiceRecord)).all()
        payments = session.exec(select(PaymentRecordRow)).all()
    assert sum(len(final.invoices) for final in finals) == len(invoices), context
    for final in finals:
        ledger_invoices = {i.number: i for i in invoices if i.deal_id == final.deal_id}
        assert sorted(ledger_invoices) == sorted(i.number for i in final.invoices), context
        assert all(i.status == "paid" for i in ledger_invoices.values()), context
        deal_payments = [p for p in payments if p.deal_id == final.deal_id]
        assert sorted(p.reference for p in deal_payments) == sorted(
            payment_reference(number) for number in ledger_invoices
        ), context
        assert final.quote is not None
        balances = account_balances(engine, final.deal_id)
        assert balances.get(ACCOUNTS_RECEIVABLE, Decimal(0)) == 0, context
        assert balances.get(DEFERRED_REVENUE, Decimal(0)) == 0, context
        assert balances[CASH] == final.quote.net_total, context
        assert final.revenue_recognized == final.quote.net_total, context
    engine.dispose()
