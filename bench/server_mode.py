"""Benchmark 2: the embedded server as `l2c server` runs it (SQLite WAL, synchronous=NORMAL)
against the dev server's default file mode (rollback journal, synchronous=FULL).

    python -m bench.server_mode --deals 100

The same deals (whole path, signals sent by this process, a month compressed to seconds) run on a
fresh server in each mode, with the same worker; then the bare engine's version of them (same
activities, timers and signals, no-op bodies), which leaves the server a larger share of the work.
Rounds alternate the order of the modes to even out noise.
"""

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.report import machine, print_table
from bench.throughput import BARE_QUEUE, MONTH_SECONDS, bare_deals, derive_scripts, real_deals
from l2c.drill import Drill, drill_config, start_process


async def deals_per_second(folder: Path, wal: bool, deals: int) -> tuple[float, float]:
    """(our deals/s, bare-engine deals/s) on a fresh server in one mode."""
    config = drill_config(folder / "config", month_seconds=MONTH_SECONDS, timeout_seconds=30)
    drill = Drill(folder, config, wal=wal)
    drill.start_server()
    drill.start_worker()
    bare_worker = start_process(
        ["-m", "bench.bare", drill.address, BARE_QUEUE], folder / "bare-worker.log"
    )
    try:
        client = await Client.connect(drill.address, data_converter=pydantic_data_converter)
        tag = uuid.uuid4().hex[:6]
        ours, _ = await real_deals(client, deals, tag)
        bare = await bare_deals(client, await derive_scripts(client, tag), deals, tag)
        return ours, bare
    finally:
        bare_worker.terminate()
        drill.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deals", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for round_no in range(1, args.rounds + 1):
        rates = {}
        order = [True, False] if round_no % 2 else [False, True]
        for wal in order:
            with tempfile.TemporaryDirectory() as tmp:
                rates[wal] = asyncio.run(deals_per_second(Path(tmp), wal, args.deals))
        for n, workload in enumerate(["our deal", "bare engine"]):
            rows.append({"round": round_no, "workload": workload, "deals": args.deals,
                         "l2c server (WAL) /s": rates[True][n], "default file mode /s": rates[False][n],
                         "ratio": rates[True][n] / rates[False][n]})  # fmt: skip
    print(f"Server mode: l2c server's SQLite settings vs the dev server's defaults ({machine()})")
    print_table(rows)


if __name__ == "__main__":
    main()
