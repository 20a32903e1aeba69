"""Audit: replay exported histories against today's code, and print a deal's decision timeline."""

import asyncio
import base64
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer

from l2c.codec import data_converter
from l2c.runtime import workflow_runner
from models.state import DealContinuation, DealEvent, DealState
from workflows.deal import DealWorkflow


async def replay_files(
    paths: list[Path], keyring: Path | None = None
) -> list[tuple[Path, str | None]]:
    """Replay each history; (path, None) when it replays, else (path, why not). Histories of
    deals whose payloads were encrypted need the keyring they were encrypted with."""
    replayer = Replayer(
        workflows=[DealWorkflow],
        data_converter=data_converter(keyring),
        workflow_runner=workflow_runner(),
    )
    results: list[tuple[Path, str | None]] = []
    for path in paths:
        try:
            history = WorkflowHistory.from_json(path.stem, path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError) as err:
            results.append((path, f"not a workflow history JSON: {err}"))
            continue
        if (
            not history.events
            or history.events[0].event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
        ):
            # The SDK's replayer stalls on such a history instead of failing it.
            results.append((path, "not a workflow history: it does not begin with the start event"))
            continue
        outcome = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        failure = outcome.replay_failure
        results.append((path, None if failure is None else f"{type(failure).__name__}: {failure}"))
    return results


def replay_in_parallel(
    paths: list[Path], jobs: int, keyring: Path | None = None
) -> list[tuple[Path, str | None]]:
    """`replay_files` spread over `jobs` processes (replay is CPU-bound), results in input order."""
    jobs = max(1, min(jobs, len(paths) // 50))  # a process takes seconds to start
    if jobs == 1:
        return asyncio.run(replay_files(paths, keyring))
    chunks = [(paths[n::jobs], keyring) for n in range(jobs)]
    # spawn, not fork: the SDK's Rust runtime threads do not survive a fork.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = [result for chunk in pool.map(_replay_chunk, chunks) for result in chunk]
    position = {path: n for n, path in enumerate(paths)}
    return sorted(done, key=lambda result: position[result[0]])


def _replay_chunk(chunk: tuple[list[Path], Path | None]) -> list[tuple[Path, str | None]]:
    return asyncio.run(replay_files(*chunk))


async def decode_json(client: Client, payloads: Payloads) -> Any:
    """A history's payloads as plain JSON, decrypted first when the client holds a codec."""
    items = list(payloads.payloads)
    codec = client.data_converter.payload_codec
    if codec is not None:
        items = await codec.decode(items)
    values = [json.loads(p.data or b"null") for p in items]
    return values[0] if len(values) == 1 else values


async def history_of_all_runs(client: Client, workflow_id: str) -> list[HistoryEvent]:
    """The history events of every run of a deal, the first run first."""
    return [event for run in await run_histories(client, workflow_id) for event in run]


async def run_histories(client: Client, workflow_id: str) -> list[list[HistoryEvent]]:
    """Each run's history events, the first run first (continue-as-new chains them: each run's
    start names the run it continues)."""
    runs: list[list[HistoryEvent]] = []
    run_id: str | None = (await client.get_workflow_handle(workflow_id).describe()).run_id
    while run_id:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        events = [event async for event in handle.fetch_history_events()]
        runs.append(events)
        run_id = events[0].workflow_execution_started_event_attributes.continued_execution_run_id
    return list(reversed(runs))


async def decision_timeline(
    client: Client, workflow_id: str
) -> list[tuple[datetime, str, str, str]]:
    """(when, what, who, detail) for every human decision and every side effect of a deal."""
    rows: list[tuple[datetime, str, str, str]] = []
    activity_names: dict[int, str] = {}
    final_state: DealState | None = None
    carried: list[DealEvent] = []  # the deal's own events, as each later run received them
    for event in await history_of_all_runs(client, workflow_id):
        at = event.event_time.ToDatetime().replace(tzinfo=None)
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = event.workflow_execution_started_event_attributes
            data = await decode_json(client, started.input)
            if started.continued_execution_run_id:
                continuation = DealContinuation.model_validate(data)
                carried += continuation.continued.events
                rows.append((at, "run continued", "workflow",
                             f"run {continuation.continued.run} from month "
                             f"{continuation.next_month}"))  # fmt: skip
                activity_names.clear()  # event ids start again in each run
            else:
                rows.append((at, "deal started", started.identity, json.dumps(data)))
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attrs = event.workflow_execution_signaled_event_attributes
            payload = await decode_json(client, attrs.input) if attrs.input.payloads else None
            actor = "unknown"
            if isinstance(payload, dict):
                actor = next(
                    (
                        str(payload[k])
                        for k in ("approver", "submitted_by", "signer_name", "recorded_by", "by")
                        if k in payload
                    ),
                    attrs.identity,
                )
            rows.append((at, f"signal {attrs.signal_name}", actor, json.dumps(payload)))
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            activity_names[event.event_id] = (
                event.activity_task_scheduled_event_attributes.activity_type.name
            )
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs = event.activity_task_completed_event_attributes
            rows.append(
                (at, f"activity {activity_names.get(attrs.scheduled_event_id, '?')}", "worker", "")
            )
        elif kind == EventType.EVENT_TYPE_TIMER_FIRED:
            rows.append(
                (at, "timer fired", "temporal", event.timer_fired_event_attributes.timer_id)
            )
        elif kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = MessageToDict(
                event.upsert_workflow_search_attributes_event_attributes.search_attributes
            )
            stage = fields.get("indexedFields", {}).get("DealStage")
            if stage is not None:
                rows.append((at, "stage", "workflow", json.loads(base64.b64decode(stage["data"]))))
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            result = event.workflow_execution_completed_event_attributes.result
            final_state = DealState.model_validate(await decode_json(client, result))
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            rows.append(
                (
                    at,
                    "deal failed",
                    "workflow",
                    event.workflow_execution_failed_event_attributes.failure.message,
                )
            )
    if final_state is None:
        try:  # a running deal answers the query when a worker is up; the history alone still stands
            final_state = await asyncio.wait_for(
                client.get_workflow_handle(workflow_id).query("state", result_type=DealState),
                timeout=5,
            )
        except Exception:
            final_state = None
    if final_state is not None:
        # The deal's own record of each decision, refusals included, with who and why. A long
        # deal's state carries only its latest events; the earlier ones came with earlier runs.
        seen = set()
        for deal_event in [*carried, *final_state.events]:
            key = (deal_event.at, deal_event.kind, deal_event.actor, deal_event.detail)
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                (
                    deal_event.at.replace(tzinfo=None),
                    f"decision {deal_event.kind}",
                    deal_event.actor,
                    deal_event.detail,
                )
            )
    rows.sort(key=lambda row: row[0])
    return rows
