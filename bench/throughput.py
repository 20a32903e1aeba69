"""Benchmark 1: deals per second through the whole path, against the bare engine, same server.

    python -m bench.throughput --deals 200

Both workloads run on one embedded server (configured as `l2c server` runs it), each with its
worker in its own process, driven by this process the way ops staff would drive them (polling a
query, sending signals). A month is compressed to seconds so deals finish their term.
"""

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.bare import BareScript, script_from_history
from bench.report import machine, print_table
from l2c.drill import Drill, drill_config, start_process
from l2c.playbook import DRILL_QUOTES, DealPlay, play_deal
from models.deal import TASK_QUEUE, LeadInput, Stage

MONTH_SECONDS = 2
BARE_QUEUE = "bare-engine"


def deal_plays(count: int, tag: str) -> list[DealPlay]:
    return [
        DealPlay(
            lead=LeadInput(
                lead_id=f"L-bench-{tag}-{n:05d}", company=f"Bench {n} Inc",
                contact_name="Ada Lovelace", contact_email=f"ada{n}@bench{n}.example",
                source="web", country="US", employees=250, currency="USD",
            ),
            quote={"submitted_by": "nora.na", **DRILL_QUOTES[n % len(DRILL_QUOTES)]},
        )
        for n in range(count)
    ]  # fmt: skip


async def timed(count: int, run_one: Callable[[int], Awaitable[None]]) -> float:
    """Deals per second for `count` concurrent runs, from the first start to the last completion."""
    started = time.perf_counter()
    await asyncio.gather(*(run_one(n) for n in range(count)))
    return count / (time.perf_counter() - started)


async def real_deals(client: Client, count: int, tag: str) -> tuple[float, list[Any]]:
    plays = deal_plays(count, tag)

    async def one(n: int) -> None:
        final = await play_deal(client, plays[n], TASK_QUEUE, poll_seconds=0.5)
        assert final.stage == Stage.WON, final.events[-3:]

    rate = await timed(count, one)
    return rate, plays


async def bare_deals(client: Client, scripts: list[BareScript], count: int, tag: str) -> float:
    async def one(n: int) -> None:
        script = scripts[n % len(scripts)]
        signals = [step.signal for step in script.steps if step.kind == "signal"]
        handle = await client.start_workflow(
            "BareDealWorkflow", script, id=f"bare-{tag}-{n:05d}", task_queue=BARE_QUEUE
        )
        result = asyncio.create_task(handle.result())
        sent = 0
        while not result.done():
            if sent < len(signals):
                waiting = await handle.query("waiting_for", result_type=str)
                if waiting == signals[sent]:
                    await handle.signal(signals[sent], {})
                    sent += 1
            await asyncio.wait([result], timeout=0.5)
        await result

    return await timed(count, one)


async def derive_scripts(client: Client, tag: str) -> list[BareScript]:
    """One real deal of each quote kind, played alone; its history is the bare engine's script."""
    plays = deal_plays(len(DRILL_QUOTES), f"{tag}-script")
    await asyncio.gather(*(play_deal(client, p, TASK_QUEUE, poll_seconds=0.5) for p in plays))
    scripts = []
    for play in plays:
        history = await client.get_workflow_handle(f"deal-{play.lead.lead_id}").fetch_history()
        scripts.append(script_from_history(history))
    return scripts


async def compare(drill: Drill, deals: int, rounds: int) -> list[dict[str, Any]]:
    client = await Client.connect(drill.address, data_converter=pydantic_data_converter)
    tag = uuid.uuid4().hex[:6]
    scripts = await derive_scripts(client, tag)
    rows = []
    for round_no in range(1, rounds + 1):
        ours, _ = await real_deals(client, deals, f"{tag}-{round_no}")
        bare = await bare_deals(client, scripts, deals, f"{tag}-{round_no}")
        rows.append({"round": round_no, "deals": deals, "ours/s": ours, "bare/s": bare,
                     "ratio": ours / bare})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deals", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = drill_config(folder / "config", month_seconds=MONTH_SECONDS,
                              timeout_seconds=30)  # fmt: skip
        drill = Drill(folder, config)
        drill.start_server()
        drill.start_worker()
        bare_worker = start_process(
            ["-m", "bench.bare", drill.address, BARE_QUEUE], folder / "bare-worker.log"
        )
        try:
            rows = asyncio.run(compare(drill, args.deals, args.rounds))
        finally:
            bare_worker.terminate()
            drill.stop()
    print(f"Throughput: our deal vs the bare engine ({machine()})")
    print_table(rows)


if __name__ == "__main__":
    main()
