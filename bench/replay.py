"""Benchmark 4: one-year deal histories replayed per second by `l2c audit replay`.

    python -m bench.replay [--copies 100]

Records one one-year monthly deal (discount approval, onboarding, twelve invoices and payments)
on the time-skipping server, exports its history as `temporal workflow show --output json` would,
then replays copies of it: in process (the replay rate alone) and through the CLI (what an auditor
waits for, start-up included). For scale, the bare engine's version of the same deal (same
activities, timers and signals, no-op bodies) is replayed the same way. Goal: over 50 per second.
"""

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

from bench.bare import BareDealWorkflow, noop, script_from_history
from bench.history import play_full_term, time_skipping_worker
from bench.report import machine, print_table
from l2c.audit import replay_files
from l2c.runtime import workflow_runner

ONE_YEAR = {"lines": [{"sku": "PLATFORM", "quantity": 25}, {"sku": "ONBOARDING", "quantity": 1}],
            "discount_percent": "15", "term_months": 12, "billing_period": "monthly"}  # fmt: skip


async def record(folder: Path) -> tuple[Path, Path]:
    """The one-year deal's history, and the bare engine's history of the same script."""
    async with time_skipping_worker() as env:
        deal = await play_full_term(env, f"L-replay-{int(time.time())}", ONE_YEAR)
        script = script_from_history(deal)
        async with Worker(env.client, task_queue="bare", workflows=[BareDealWorkflow],
                          activities=[noop]):  # fmt: skip
            handle = await env.client.start_workflow(
                BareDealWorkflow.run, script, id=f"bare-{deal.workflow_id}", task_queue="bare"
            )
            for step in script.steps:
                if step.kind == "signal":
                    while await handle.query(BareDealWorkflow.waiting_for) != step.signal:
                        await env.sleep(timedelta(hours=12))
                    await handle.signal(step.signal, {})
            await handle.result()
            bare = await handle.fetch_history()
    paths = folder / f"{deal.workflow_id}.json", folder / f"{bare.workflow_id}.json"
    paths[0].write_text(deal.to_json(), encoding="utf-8")
    paths[1].write_text(bare.to_json(), encoding="utf-8")
    return paths


async def replay_bare(path: Path, copies: int) -> float:
    text = path.read_text(encoding="utf-8")

    async def histories() -> AsyncIterator[WorkflowHistory]:
        for n in range(copies):
            yield WorkflowHistory.from_json(f"bare-{n}", text)

    replayer = Replayer(workflows=[BareDealWorkflow], data_converter=pydantic_data_converter,
                        workflow_runner=workflow_runner())  # fmt: skip
    started = time.perf_counter()
    async with replayer.workflow_replay_iterator(histories()) as results:
        async for result in results:
            assert result.replay_failure is None, result.replay_failure
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        deal, bare = asyncio.run(record(folder))
        text = deal.read_text(encoding="utf-8")
        copies = [folder / f"copy-{n:04d}.json" for n in range(args.copies)]
        for copy in copies:
            copy.write_text(text, encoding="utf-8")

        started = time.perf_counter()
        results = asyncio.run(replay_files(copies))
        in_process = time.perf_counter() - started
        assert all(problem is None for _, problem in results), results[:3]

        started = time.perf_counter()
        cli = subprocess.run(
            [sys.executable, "-m", "l2c.cli", "audit", "replay", *map(str, copies)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        through_cli = time.perf_counter() - started
        assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
        bare_seconds = asyncio.run(replay_bare(bare, args.copies))
        events = text.count('"eventId"')
        bare_events = bare.read_text(encoding="utf-8").count('"eventId"')
    n = len(copies)
    print(f"Replay of one-year deals ({machine()})")
    print_table([
        {"what": "our deal, in process", "events": events, "seconds": in_process, "per second": n / in_process},
        {"what": "our deal, l2c audit replay", "events": events, "seconds": through_cli, "per second": n / through_cli},
        {"what": "bare engine, in process", "events": bare_events, "seconds": bare_seconds, "per second": n / bare_seconds},
    ])  # fmt: skip


if __name__ == "__main__":
    main()
