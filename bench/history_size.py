"""Benchmark 5: events in a deal's history, for a one-time deal and a ten-year subscription.

    python -m bench.history_size [--month-seconds 1]

Played on the embedded server with a month compressed to seconds (a ten-year deal takes about two
minutes), paying each invoice when it is issued. A deal continues as new every 12 months (policy),
so the figures are per run: the largest run, and all runs together. Goal: no single run over 4,096
events.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.history import bench_lead, events_per_stage
from bench.report import machine, print_table
from l2c.audit import run_histories
from l2c.drill import Drill, drill_config
from l2c.playbook import DealPlay, play_deal
from models.deal import TASK_QUEUE, Stage

DEALS: dict[str, dict[str, Any]] = {
    "one-time (onboarding only)": {"lines": [{"sku": "ONBOARDING", "quantity": 1}],
                                   "term_months": 1, "billing_period": "upfront"},
    "1-year monthly subscription": {"lines": [{"sku": "PLATFORM", "quantity": 10}],
                                    "term_months": 12, "billing_period": "monthly"},
    "10-year monthly subscription": {"lines": [{"sku": "PLATFORM", "quantity": 10}],
                                     "term_months": 120, "billing_period": "monthly"},
}  # fmt: skip
GOAL = 4096


async def measure(drill: Drill) -> list[dict[str, Any]]:
    client = await Client.connect(drill.address, data_converter=pydantic_data_converter)
    run = int(time.time())
    plays = {
        name: DealPlay(
            lead=bench_lead(f"L-size-{run}-{n}"), quote={"submitted_by": "nora.na", **quote}
        )
        for n, (name, quote) in enumerate(DEALS.items())
    }
    finals = await asyncio.gather(
        *(play_deal(client, play, TASK_QUEUE, poll_seconds=0.2) for play in plays.values())
    )
    rows = []
    for (name, play), final in zip(plays.items(), finals, strict=True):
        assert final.stage == Stage.WON, final.events[-3:]
        runs = await run_histories(client, f"deal-{play.lead.lead_id}")
        largest = max(runs, key=len)
        size = sum(event.ByteSize() for event in largest)
        rows.append({"deal": name, "runs": len(runs), "events, all runs": sum(map(len, runs)),
                     "largest run": len(largest), "its KiB": size // 1024,
                     "within 4096": len(largest) <= GOAL,
                     "first run per stage": " ".join(
                         f"{s}:{n}" for s, n in events_per_stage(WorkflowHistory(
                             play.lead.lead_id, runs[0])))})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--month-seconds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = drill_config(folder / "config", month_seconds=args.month_seconds)
        drill = Drill(folder, config)
        drill.start_server()
        drill.start_worker()
        try:
            rows = asyncio.run(measure(drill))
        finally:
            drill.stop()
    print(f"History size per run ({machine()})")
    print_table(rows)


if __name__ == "__main__":
    main()
