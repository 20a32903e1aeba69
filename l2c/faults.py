"""Fault injection: make chosen activities fail transiently, to prove that retries converge.

Switched on per worker with `L2C_FAULTS` (JSON, activity name -> fault), for example
`{"issue_invoice": {"kind": "timeout", "attempts": 1}, "apply_payment": {"kind": "error"}}`.
Only the first `attempts` attempts of each activity execution are hit; later attempts run clean,
so every deal still completes and the ledger must come out exactly as in a clean run.

Kinds:
- `error`: raise a retryable error before the activity does anything.
- `error_after`: run the activity (its side effects commit), then raise, as if the reply was lost.
- `slow`: wait `seconds` before running the activity (still within its timeout).
- `timeout`: run the activity, then hang past its start-to-close timeout, so the server gives up on
  the attempt and schedules another while the first one's writes are already in the ledger.
"""

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from l2c.config import ConfigError
from models.validation import explain

log = logging.getLogger(__name__)


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["error", "error_after", "slow", "timeout"]
    attempts: int = Field(default=1, ge=1, le=10)
    seconds: float = Field(default=1.0, gt=0, le=600)


class FaultPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    faults: dict[str, Fault]

    @classmethod
    def parse(cls, text: str, known_activities: set[str] | None = None) -> "FaultPlan":
        """From `L2C_FAULTS`; a typo in an activity name is an error, not a silent no-op."""
        try:
            plan = cls.model_validate({"faults": json.loads(text)})
        except json.JSONDecodeError as err:
            raise ConfigError(f"L2C_FAULTS is not JSON: {err.msg}") from None
        except ValidationError as err:
            raise ConfigError(f"L2C_FAULTS: {explain(err)}") from None
        if known_activities is not None:
            unknown = sorted(set(plan.faults) - known_activities)
            if unknown:
                raise ConfigError(
                    f"L2C_FAULTS names unknown activities {unknown} (known: {sorted(known_activities)})"
                )
        return plan


class FaultInjector(Interceptor):
    def __init__(self, plan: FaultPlan):
        self.plan = plan

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _FaultyActivity(next, self.plan)


class _FaultyActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, plan: FaultPlan):
        super().__init__(next)
        self._plan = plan

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        fault = self._plan.faults.get(info.activity_type)
        if fault is None or info.attempt > fault.attempts:
            return await self.next.execute_activity(input)
        where = f"{info.activity_type} attempt {info.attempt} of {info.workflow_id}"
        log.warning("injecting %s into %s", fault.kind, where)
        if fault.kind == "error":
            raise ApplicationError(f"injected error before {where}", type="InjectedFault")
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
            return await self.next.execute_activity(input)
        result = await self.next.execute_activity(input)
        if fault.kind == "error_after":
            raise ApplicationError(f"injected error after {where}", type="InjectedFault")
        # timeout: the work is done, but the reply comes too late to count.
        timeout = info.start_to_close_timeout or timedelta(seconds=fault.seconds)
        await asyncio.sleep(timeout.total_seconds() + 1)
        return result
