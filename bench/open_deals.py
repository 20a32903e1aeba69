"""Benchmark 3: many open deals waiting for approval, held by one worker.

    python -m bench.open_deals --deals 10000

Starts the deals (each is scored, routed and qualified), submits a quote with a discount that
needs a manager to each as it qualifies (found through the DealStage search attribute, as an ops
console would), waits until every one rests in `awaiting_approval`, then reads the worker
process's resident memory. The worker caches every open deal (L2C_MAX_CACHED_WORKFLOWS is set
above the count), so the figure is the memory a deal really holds while it waits.
Goal: under 100 KiB per open deal.
"""

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.history import bench_lead, events_per_stage
from bench.report import machine, print_table
from l2c.drill import Drill, drill_config
from l2c.runtime import start_deal
from models.deal import TASK_QUEUE

QUOTE = {"submitted_by": "nora.na", "lines": [{"sku": "PLATFORM", "quantity": 40}],
         "discount_percent": "15", "term_months": 12, "billing_period": "annual"}  # fmt: skip


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def park(client: Client, prefix: str, count: int, concurrency: int = 64) -> float:
    """Start `count` deals and bring each to awaiting_approval; returns the seconds it took."""
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)

    async def start(n: int) -> None:
        async with gate:
            await start_deal(client, bench_lead(f"{prefix}-{n:06d}"), TASK_QUEUE)

    await asyncio.gather(*(start(n) for n in range(count)))
    quoted: set[str] = set()

    async def quote(workflow_id: str) -> None:
        async with gate:
            await client.get_workflow_handle(workflow_id).signal("submit_quote", QUOTE)

    scope = f"WorkflowId STARTS_WITH 'deal-{prefix}-'"
    while True:
        qualified = [
            w.id async for w in client.list_workflows(f"DealStage = 'qualified' AND {scope}")
        ]
        fresh = [workflow_id for workflow_id in qualified if workflow_id not in quoted]
        await asyncio.gather(*(quote(workflow_id) for workflow_id in fresh))
        quoted.update(fresh)
        waiting = await client.count_workflows(f"DealStage = 'awaiting_approval' AND {scope}")
        if waiting.count >= count:
            return time.perf_counter() - started
        await asyncio.sleep(1)


async def measure(drill: Drill, deals: int) -> list[dict[str, object]]:
    assert drill.worker is not None
    client = await Client.connect(drill.address, data_converter=pydantic_data_converter)
    tag = uuid.uuid4().hex[:6]
    await park(client, f"L-warm-{tag}", 50)  # imports done, caches and pools warm
    await asyncio.sleep(3)
    before = rss_kib(drill.worker.pid)
    seconds = await park(client, f"L-open-{tag}", deals)
    await asyncio.sleep(5)
    after = rss_kib(drill.worker.pid)
    history = await client.get_workflow_handle(f"deal-L-open-{tag}-000000").fetch_history()
    return [{"open deals": deals, "parked in s": seconds, "deals/s": deals / seconds,
             "worker RSS before MiB": before // 1024, "after MiB": after // 1024,
             "KiB per open deal": (after - before) / deals,
             "events so far": len(history.events),
             "events per stage": " ".join(f"{s}:{n}" for s, n in events_per_stage(history))}]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deals", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = drill_config(folder / "config", timeout_seconds=30)
        drill = Drill(folder, config, L2C_MAX_CACHED_WORKFLOWS=str(args.deals + 500))
        drill.start_server()
        drill.start_worker()
        try:
            rows = asyncio.run(measure(drill, args.deals))
        finally:
            drill.stop()
    print(f"Open deals held by one worker ({machine()})")
    print_table(rows)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
