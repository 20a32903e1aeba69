"""Audit: replay histories (exported files, or the server's runs a visibility query matches)
against today's code, and read a deal's decision timeline."""

import asyncio
import base64
import json
import logging
import multiprocessing
import sys
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

from google.protobuf.json_format import MessageToDict
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.client import Client, WorkflowExecution, WorkflowHistory
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer

from l2c.codec import data_converter
from l2c.config import Settings
from l2c.runtime import connect, workflow_runner
from models.deal import WORKFLOW_TYPE
from models.state import DealContinuation, DealEvent, DealState
from workflows.deal import DealWorkflow


def core_logs_to_stderr() -> None:
    """Send the SDK core's log lines through Python logging, to standard error: standard output
    keeps the verdicts alone. (A replay that fails is also logged as a warning, repeating the
    reason its verdict gives; forwarded in the background, it may not get out before the command
    exits.) Call it before any client or replayer is made."""
    logging_config = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
    )
    Runtime.set_default(
        Runtime(telemetry=TelemetryConfig(logging=logging_config)), error_if_already_set=False
    )


# A history to replay: an exported file, or one fetched from the server.
Source = TypeVar("Source", Path, WorkflowHistory)


async def replay_files(
    sources: Sequence[Source], keyring: Path | None = None
) -> list[tuple[Source, str | None]]:
    """Replay each history, a file or a WorkflowHistory; (source, None) when it replays, else
    (source, why not). Histories of deals whose payloads were encrypted need the keyring they
    were encrypted with."""
    problems = await _replay_all(sources, keyring)
    return list(zip(sources, problems, strict=True))


async def _replay_all(
    sources: Sequence[Path | WorkflowHistory], keyring: Path | None
) -> list[str | None]:
    replayer = Replayer(
        workflows=[DealWorkflow],
        data_converter=data_converter(keyring),
        workflow_runner=workflow_runner(),
    )
    problems: list[str | None] = []
    for source in sources:
        if isinstance(source, Path):
            try:
                history = WorkflowHistory.from_json(source.stem, source.read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError) as err:
                problems.append(f"not a workflow history JSON: {err}")
                continue
        else:
            history = source
        if (
            not history.events
            or history.events[0].event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
        ):
            # The SDK's replayer stalls on such a history instead of failing it.
            problems.append("not a workflow history: it does not begin with the start event")
            continue
        outcome = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        failure = outcome.replay_failure
        problems.append(None if failure is None else f"{type(failure).__name__}: {failure}")
    return problems


def replay_in_parallel(
    sources: Sequence[Source], jobs: int, keyring: Path | None = None
) -> list[tuple[Source, str | None]]:
    """`replay_files` spread over `jobs` processes (replay is CPU-bound), results in input order."""
    problems = asyncio.run(replay_in_processes(sources, jobs, keyring))
    return list(zip(sources, problems, strict=True))


async def replay_in_processes(
    sources: Sequence[Path | WorkflowHistory], jobs: int, keyring: Path | None = None
) -> list[str | None]:
    """Why each history does not replay (None: it does), in input order, over up to `jobs`
    processes."""
    jobs = max(1, min(jobs, len(sources) // 50))  # a process takes seconds to start
    if jobs == 1:
        return await _replay_all(sources, keyring)
    loop = asyncio.get_running_loop()
    # spawn, not fork: the SDK's Rust runtime threads do not survive a fork.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunks = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool, _replay_chunk, ([_portable(s) for s in sources[n::jobs]], keyring)
                )
                for n in range(jobs)
            )
        )
    problems: list[str | None] = [None] * len(sources)
    for n, chunk in enumerate(chunks):
        for k, problem in enumerate(chunk):
            problems[n + k * jobs] = problem
    return problems


# A history as it travels to another process: its events do not pickle, their bytes do.
Portable = Path | tuple[str, bytes]


def _portable(source: Path | WorkflowHistory) -> Portable:
    if isinstance(source, Path):
        return source
    return source.workflow_id, History(events=source.events).SerializeToString()


def _replay_chunk(chunk: tuple[list[Portable], Path | None]) -> list[str | None]:
    core_logs_to_stderr()  # a process of its own
    portables, keyring = chunk
    sources: list[Path | WorkflowHistory] = []
    for portable in portables:
        if isinstance(portable, Path):
            sources.append(portable)
        else:
            workflow_id, data = portable
            sources.append(WorkflowHistory(workflow_id, History.FromString(data).events))
    return asyncio.run(_replay_all(sources, keyring))


# `l2c audit replay --closed`: every run of every deal that is not running any more.
CLOSED_DEALS = f'WorkflowType="{WORKFLOW_TYPE}" AND ExecutionStatus!="Running"'
QUERY_BATCH = 200  # runs fetched, replayed and printed at a time: memory stays bounded


@dataclass
class RunReplay:
    """One run a visibility query matched, and whether its history replays."""

    workflow_id: str
    run_id: str
    status: str  # completed, continued_as_new, terminated, ...
    events: int
    problem: str | None  # None: it replays


class QueryRefused(Exception):
    """The server would not run the visibility query (its syntax, or an unknown attribute)."""


async def replay_query(
    client: Client, query: str, jobs: int, keyring: Path | None = None, batch: int = QUERY_BATCH
) -> AsyncIterator[list[RunReplay]]:
    """Replay the history of every workflow run `query` matches (a deal that continued as new has
    one execution per run, each with a history of its own, each replayed), a batch at a time in
    the server's order; QueryRefused when the server will not run the query."""
    executions: list[WorkflowExecution] = []
    try:
        async for execution in client.list_workflows(query, page_size=batch):
            executions.append(execution)
            if len(executions) == batch:
                yield await replay_runs(client, executions, jobs, keyring)
                executions = []
    except RPCError as err:
        if err.status == RPCStatusCode.INVALID_ARGUMENT:
            raise QueryRefused(err.message) from None
        raise
    if executions:
        yield await replay_runs(client, executions, jobs, keyring)


async def replay_runs(
    client: Client, executions: list[WorkflowExecution], jobs: int, keyring: Path | None = None
) -> list[RunReplay]:
    """Fetch each run's history from the server and replay it."""
    limit = asyncio.Semaphore(8)  # histories fetched at once

    async def fetch(execution: WorkflowExecution) -> WorkflowHistory | str:
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        async with limit:
            try:
                return await handle.fetch_history()
            except RPCError as err:  # gone meanwhile (retention), say
                return f"history not fetched: {err.message}"

    fetched = await asyncio.gather(*(fetch(execution) for execution in executions))
    histories = [h for h in fetched if isinstance(h, WorkflowHistory)]
    problems = iter(await replay_in_processes(histories, jobs, keyring))
    return [
        RunReplay(
            workflow_id=execution.id,
            run_id=execution.run_id,
            status=execution.status.name.lower() if execution.status else "unknown",
            events=len(history.events) if isinstance(history, WorkflowHistory) else 0,
            problem=next(problems) if isinstance(history, WorkflowHistory) else history,
        )
        for execution, history in zip(executions, fetched, strict=True)
    ]


async def replay_query_report(
    client: Client, query: str, jobs: int, keyring: Path | None = None, out: TextIO | None = None
) -> int:
    """`l2c audit replay --query`: a table of the runs as they are replayed (workflow id, run id,
    status, events, ok or FAILED with why), then the totals. 0 if every run replays, 1 if one does
    not or none matched (nothing was shown to replay); QueryRefused as `replay_query`."""
    out = out or sys.stdout
    replayed = failed = workflows = 0
    seen: set[str] = set()
    header = False
    async for results in replay_query(client, query, jobs, keyring):
        width = max(24, *(len(r.workflow_id) for r in results))
        if not header:
            print(f"{'workflow id':<{width}} {'run id':<36} {'status':<16} {'events':>6}  result",
                  file=out)  # fmt: skip
            header = True
        for r in results:
            result = "ok" if r.problem is None else f"FAILED {' '.join(r.problem.split())}"
            print(f"{r.workflow_id:<{width}} {r.run_id:<36} {r.status:<16} {r.events:>6}  {result}",
                  file=out, flush=True)  # fmt: skip
            replayed += r.problem is None
            failed += r.problem is not None
            workflows += r.workflow_id not in seen
            seen.add(r.workflow_id)
    if not header:
        print(f"no workflow run matches {query!r}: nothing replayed", file=out)
        return 1
    runs = replayed + failed
    print(f"{replayed} replayed, {failed} failed ({runs} run{'s' * (runs != 1)} of {workflows} "
          f"workflow{'s' * (workflows != 1)})", file=out)  # fmt: skip
    return 1 if failed else 0


def replay_query_command(settings: Settings, query: str, jobs: int) -> int:
    """`l2c audit replay --query QUERY` (or `--closed`): see `replay_query_report`; 2 when the
    server refuses the query or cannot be asked."""

    async def main() -> int:
        client = await connect(settings)
        return await replay_query_report(client, query, jobs, settings.codec_keyring)

    try:
        return asyncio.run(main())
    except QueryRefused as err:
        problem = f"the server refused the query {query!r}: {err}"
    except RPCError as err:
        problem = f"listing or fetching histories failed: {err.message}"
    print(f"l2c: {problem}", file=sys.stderr)
    return 2


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


TimelineRow = tuple[datetime, str, str, str]


@dataclass
class Timeline:
    rows: list[TimelineRow]  # (when, what, who, detail), in time order
    # The deal's result, or, while it runs, its answer to the `state` query (None: no worker
    # answered it).
    state: DealState | None
    deal_events: list[DealEvent]  # the deal's own record of its decisions, every run's, once each


async def decision_timeline(client: Client, workflow_id: str) -> list[TimelineRow]:
    """(when, what, who, detail) for every human decision and every side effect of a deal."""
    return (await read_timeline(client, workflow_id)).rows


async def read_timeline(
    client: Client, workflow_id: str, runs: list[list[HistoryEvent]] | None = None
) -> Timeline:
    """The deal's decision timeline, with the state it ended in and its own event log; `runs`:
    its runs' histories when already fetched (see `run_histories`)."""
    if runs is None:
        runs = await run_histories(client, workflow_id)
    rows: list[TimelineRow] = []
    activity_names: dict[int, str] = {}
    final_state: DealState | None = None
    carried: list[DealEvent] = []  # the deal's own events, as each later run received them
    deal_events: list[DealEvent] = []
    for event in (event for run in runs for event in run):
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
            deal_events.append(deal_event)
            rows.append(
                (
                    deal_event.at.replace(tzinfo=None),
                    f"decision {deal_event.kind}",
                    deal_event.actor,
                    deal_event.detail,
                )
            )
    rows.sort(key=lambda row: row[0])
    deal_events.sort(key=lambda deal_event: deal_event.at)
    return Timeline(rows, final_state, deal_events)
