"""The auditor's commands: replaying histories (files, or every run a visibility query matches on
the server) with a summary and an exit code that says whether all replay."""

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from temporalio import workflow
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from l2c.audit import replay_in_parallel
from l2c.config import BusinessRules, Settings
from l2c.drill import free_port
from l2c.runtime import build_worker
from models.search import ALL_KEYS
from tests.conftest import BIN
from tests.helpers import (
    Handle,
    make_lead,
    pay_in_full,
    quote_to_signature,
    start,
)

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def l2c(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "l2c.cli", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})  # fmt: skip


async def at_rest(handle: Handle) -> None:
    """Until no activity of the deal is under way: its postings have reached the ledger."""
    async with asyncio.timeout(20):
        while (await handle.describe()).raw_description.pending_activities:
            await asyncio.sleep(0.05)


def execute(engine: Engine, sql: str, **params: Any) -> None:
    with engine.begin() as connection:
        connection.execute(text(sql), params)


# ---------------------------------------------------------------- replay


def test_replay_of_files_summarizes_and_fails_on_one_history_that_does_not_replay(
    tmp_path: Path,
) -> None:
    assert HISTORIES, "no recorded histories under tests/histories"
    signed = next(p for p in HISTORIES if '"sign_contract"' in p.read_text())
    tampered = tmp_path / "tampered.json"
    tampered.write_text(signed.read_text().replace('"sign_contract"', '"decline_contract"'))
    replay = l2c("audit", "replay", *map(str, HISTORIES), str(tampered))
    assert replay.returncode == 1, replay.stdout + replay.stderr
    lines = replay.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["ok"] * len(HISTORIES) + ["FAILED"]
    assert lines[-2].startswith(f"FAILED {tampered}: ")
    assert lines[-1] == f"{len(HISTORIES)} replayed, 1 failed"

    replay = l2c("audit", "replay", *map(str, HISTORIES))
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert replay.stdout.splitlines()[-1] == f"{len(HISTORIES)} replayed, 0 failed"


def test_replay_takes_files_or_a_query_not_both() -> None:
    both = l2c("audit", "replay", "--closed", str(HISTORIES[0]))
    assert both.returncode == 2
    assert "not both" in both.stderr
    neither = l2c("audit", "replay")
    assert neither.returncode == 2
    assert "give history files, or --query/--closed" in neither.stderr


def test_histories_from_the_server_replay_in_processes_in_their_order() -> None:
    # Histories as fetched from a server (WorkflowHistory objects, whose events do not pickle)
    # spread over two processes; the one that is not a history is reported at its own place.
    histories = [WorkflowHistory.from_json(p.stem, p.read_text()) for p in HISTORIES]
    sources = [histories[n % len(histories)] for n in range(100)]
    sources[37] = WorkflowHistory("not-a-history", [])
    results = replay_in_parallel(sources, jobs=2)
    assert [source for source, _ in results] == sources
    assert [n for n, (_, problem) in enumerate(results) if problem is not None] == [37]
    assert results[37][1] == "not a workflow history: it does not begin with the start event"


# ---------------------------------------------------------------- replay --query, on the dev server
# The time-skipping server does not implement visibility queries (ListWorkflowExecutions).


@workflow.defn(name="DealWorkflow")
class DealWorkflowOfOtherCode:
    """A deal run by different code: its history cannot replay on today's DealWorkflow."""

    @workflow.run
    async def run(self, lead: dict[str, Any]) -> str:
        await asyncio.sleep(0.1)  # a timer the real deal never starts
        return f"done {lead['lead_id']}"


@pytest.fixture(scope="module")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=ALL_KEYS,
        port=free_port(),
    )
    async with env:
        yield env


async def closed(client: Client, query: str, runs: int) -> None:
    async with asyncio.timeout(30):  # visibility follows the histories a little later
        while (await client.count_workflows(query)).count < runs:
            await asyncio.sleep(0.2)


@pytest.mark.devserver
async def test_replay_query_replays_each_matching_run_from_the_server(
    dev_env: WorkflowEnvironment,
    sqlite_ledger: Engine,
    rules: BusinessRules,
    settings: Settings,
) -> None:
    client = dev_env.client
    async with build_worker(client, sqlite_ledger, rules, settings):
        handle = await start(client, settings.task_queue, lead_id=f"L-q-{uuid.uuid4().hex[:6]}")
        state = await quote_to_signature(handle, billing_period="upfront")
        await pay_in_full(handle, state.invoices[0])
        await at_rest(handle)
    await handle.terminate("test finished")
    other_queue = f"other-code-{uuid.uuid4().hex[:6]}"
    other_id = f"deal-L-other-{uuid.uuid4().hex[:6]}"
    async with Worker(client, task_queue=other_queue, workflows=[DealWorkflowOfOtherCode],
                      workflow_runner=UnsandboxedWorkflowRunner()):  # fmt: skip
        lead = make_lead(lead_id=other_id.removeprefix("deal-"))
        await client.execute_workflow("DealWorkflow", lead, id=other_id, task_queue=other_queue)
    both = f'WorkflowId="{handle.id}" OR WorkflowId="{other_id}"'
    await closed(client, f'({both}) AND ExecutionStatus!="Running"', 2)
    env = {"TEMPORAL_ADDRESS": client.service_client.config.target_host}

    replay = await asyncio.to_thread(l2c, "audit", "replay", "--query", both, env=env)
    assert replay.returncode == 1, replay.stdout + replay.stderr
    rows = {
        line.split()[0]: line.split(maxsplit=4)[1:] for line in replay.stdout.splitlines()[1:-1]
    }
    run_id = (await handle.describe()).run_id
    assert rows[handle.id][:2] == [run_id, "terminated"] and rows[handle.id][3] == "ok"
    assert rows[other_id][1] == "completed"
    assert rows[other_id][3].startswith("FAILED NondeterminismError")
    assert replay.stdout.splitlines()[-1] == "1 replayed, 1 failed (2 runs of 2 workflows)"

    only_the_deal = await asyncio.to_thread(
        l2c, "audit", "replay", "--query", f'WorkflowId="{handle.id}"', env=env)  # fmt: skip
    assert only_the_deal.returncode == 0, only_the_deal.stdout + only_the_deal.stderr
    assert only_the_deal.stdout.splitlines()[-1] == "1 replayed, 0 failed (1 run of 1 workflow)"

    # --closed: every closed DealWorkflow run of the namespace, the one of other code included.
    every = await asyncio.to_thread(l2c, "audit", "replay", "--closed", env=env)
    assert every.returncode == 1, every.stdout + every.stderr
    assert handle.id in every.stdout and other_id in every.stdout

    nothing = await asyncio.to_thread(
        l2c, "audit", "replay", "--query", 'WorkflowId="deal-L-nobody"', env=env)  # fmt: skip
    assert nothing.returncode == 1
    assert "no workflow run matches" in nothing.stdout

    refused = await asyncio.to_thread(
        l2c, "audit", "replay", "--query", "WorkflowId = = 'x'", env=env)  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "the server refused the query" in refused.stderr
