"""Benchmark 2: the embedded server as `l2c server` runs it (SQLite WAL, synchronous=NORMAL)
against the dev server's default file mode (rollback journal, synchronous=FULL).

    python -m bench.server_mode --deals 100

The same deals (whole path, signals sent by this process, a month compressed to seconds) run on a
fresh server in each mode, with the same worker. Rounds alternate the order to even out noise.
"""

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from bench.report import machine, print_table
from bench.throughput import MONTH_SECONDS, real_deals
from l2c.drill import Drill, drill_config


async def deals_per_second(folder: Path, wal: bool, deals: int) -> float:
    config = drill_config(folder / "config", month_seconds=MONTH_SECONDS, timeout_seconds=30)
    drill = Drill(folder, config, wal=wal)
    drill.start_server()
    drill.start_worker()
    try:
        client = await Client.connect(drill.address, data_converter=pydantic_data_converter)
        rate, _ = await real_deals(client, deals, uuid.uuid4().hex[:6])
        return rate
    finally:
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
        rows.append({"round": round_no, "deals": args.deals, "l2c server (WAL) /s": rates[True],
                     "default file mode /s": rates[False], "ratio": rates[True] / rates[False]})  # fmt: skip
    print(f"Server mode: l2c server's SQLite settings vs the dev server's defaults ({machine()})")
    print_table(rows)


if __name__ == "__main__":
    main()
