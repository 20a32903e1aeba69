"""The bare engine: a workflow with a deal's activities, signals and timers, and no-op bodies.

Its script is derived from a real deal's history, step by step in the order the deal took them,
so the throughput benchmark compares our deal against the same orchestration doing nothing.
Run its worker with `python -m bench.bare ADDRESS TASK_QUEUE`.
"""

import asyncio
import sys
from collections.abc import Sequence
from datetime import timedelta

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.common import RawValue
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker


class Step(BaseModel):
    kind: str  # "activity", "sleep" (a timer that fires), "cancelled_timer", "signal"
    seconds: float = 0
    signal: str = ""


class BareScript(BaseModel):
    steps: list[Step]


def script_from_history(history: WorkflowHistory) -> BareScript:
    """The deal's activities, timers (fired or cancelled) and signals, in history order."""
    fired: set[int] = set()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_TIMER_FIRED:
            fired.add(event.timer_fired_event_attributes.started_event_id)
    steps: list[Step] = []
    for event in history.events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            steps.append(Step(kind="activity"))
        elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
            if event.event_id in fired:
                timeout = event.timer_started_event_attributes.start_to_fire_timeout
                steps.append(Step(kind="sleep", seconds=timeout.ToTimedelta().total_seconds()))
            else:
                steps.append(Step(kind="cancelled_timer"))
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            name = event.workflow_execution_signaled_event_attributes.signal_name
            steps.append(Step(kind="signal", signal=name))
    return BareScript(steps=steps)


@activity.defn
async def noop() -> None:
    return None


@workflow.defn
class BareDealWorkflow:
    def __init__(self) -> None:
        self._waiting_for = ""
        self._received: list[str] = []

    @workflow.run
    async def run(self, script: BareScript) -> int:
        pending: list[asyncio.Task[None]] = []
        for step in script.steps:
            if step.kind == "activity":
                await workflow.execute_activity(noop, start_to_close_timeout=timedelta(seconds=60))
            elif step.kind == "sleep":
                await workflow.sleep(timedelta(seconds=step.seconds))
            elif step.kind == "cancelled_timer":
                pending.append(asyncio.create_task(workflow.sleep(timedelta(days=30))))
            else:
                self._waiting_for = step.signal
                await workflow.wait_condition(lambda: self._waiting_for in self._received)
                self._received.remove(step.signal)
                self._waiting_for = ""
                for timer in pending:  # like dunning timers, which a payment cancels
                    timer.cancel()
                pending.clear()
        for timer in pending:
            timer.cancel()
        return len(script.steps)

    @workflow.signal(dynamic=True)
    def receive(self, name: str, _args: Sequence[RawValue]) -> None:
        self._received.append(name)

    @workflow.query
    def waiting_for(self) -> str:
        return self._waiting_for


async def run_worker(address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    worker = Worker(client, task_queue=task_queue, workflows=[BareDealWorkflow], activities=[noop])
    await worker.run()


if __name__ == "__main__":
    asyncio.run(run_worker(sys.argv[1], sys.argv[2]))
