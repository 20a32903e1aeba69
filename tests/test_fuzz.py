"""Fuzzing every signal and the workflow input: whatever a person or a system sends, the deal never
fails a workflow task, a refused signal changes nothing but the event log, and every refusal is
recorded with its reason.

Payloads are raw JSON bytes, so they can carry what a JSON library would not produce: NaN,
numbers beyond any float, invalid UTF-8, bare scalars, truncated documents.
"""

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowQueryFailedError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings
from models.deal import WORKFLOW_TYPE, Stage
from models.state import DealState
from tests.helpers import (
    STARTED,
    Handle,
    accept_lead,
    make_lead,
    quote_to_signature,
    retire_at_rest,
    signal,
    start,
    state_of,
    wait_for_stage,
    wait_until,
)

FUZZ = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ------------------------------------------------------------------ payloads

NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 10**400, "1e400", "NaN", "-0.001", "12.345", "0x10"]),
)
TEXTS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "x" * 5_000, "ß∂ƒ©˙∆˚¬…æ🦄\u202e\u0000", "<script>", "' OR 1=1 --"]),
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXTS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXTS, children, max_size=4),
    max_leaves=12,
)

# Hypothesis drives many deals per test, each leaving timers (nurture, the lead's SLA): a clock
# of their own for each test (tests/conftest.py).
pytestmark = pytest.mark.own_clock

VALID: dict[str, dict[str, Any]] = {
    "submit_quote": {"submitted_by": "nora.na", "lines": [{"sku": "PLATFORM", "quantity": 10}],
                     "discount_percent": "5", "term_months": 12, "billing_period": "monthly"},
    "approve_discount": {"approver": "mia.manager", "comment": "ok"},
    "reject_discount": {"approver": "mia.manager", "reason": "too deep"},
    "sign_contract": {"signer_name": "Ada Lovelace", "signer_email": "ada@acme.example",
                      "document_sha256": "0" * 64},
    "decline_contract": {"reason": "budget"},
    "record_payment": {"invoice_number": "INV-000001", "amount": "100.00", "reference": "R-1"},
    "log_engagement": {"kind": "email_open"},
    "mark_lost": {"by": "nora.na", "reason": "no budget"},
    "accept_lead": {"by": "nora.na", "note": "calling today"},
}  # fmt: skip
# Where each signal is meant to act (so validation beyond the stage check is reached).
HOME_STAGE = {
    "submit_quote": Stage.QUALIFIED,
    "approve_discount": Stage.AWAITING_APPROVAL,
    "reject_discount": Stage.AWAITING_APPROVAL,
    "sign_contract": Stage.AWAITING_SIGNATURE,
    "decline_contract": Stage.AWAITING_SIGNATURE,
    "record_payment": Stage.ACTIVE,
    "log_engagement": Stage.NURTURING,
    "mark_lost": Stage.QUALIFIED,
    "accept_lead": Stage.QUALIFIED,
}


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> Any:
    """A valid payload with one field replaced by anything, removed, or a stranger added."""
    payload = dict(valid)
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    field = draw(st.sampled_from(sorted(payload)))
    if action == "replace":
        payload[field] = draw(JSON)
    elif action == "remove":
        del payload[field]
    else:
        payload[draw(TEXTS.filter(lambda key: key not in valid))] = draw(JSON)
    return payload


def encoded(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


RAW_GARBAGE = st.sampled_from(
    [b"", b"{", b"nul", b"[1, 2", b'{"a": NaN}', b"1e400", b'"\xff\xfe"', b"\xff\xfe\xfd",
     b'{"approver": "mia.manager", "approver": 5}', b"  \n "]
)  # fmt: skip


def payloads(signal_name: str) -> st.SearchStrategy[bytes]:
    return st.one_of(
        mutated(VALID[signal_name]).map(encoded),
        JSON.map(encoded),
        RAW_GARBAGE,
    )


def raw(data: bytes) -> RawValue:
    return RawValue(Payload(metadata={"encoding": b"json/plain"}, data=data))


# ------------------------------------------------------------------ deals at rest in each stage


class DealsAtRest:
    """A deal resting in each stage, retired when a fuzzed signal happens to be accepted."""

    def __init__(self, client: Client, task_queue: str):
        self.client = client
        self.task_queue = task_queue
        self.deals: dict[Stage, Handle] = {}
        self.created: list[Handle] = []

    async def in_stage(self, stage: Stage) -> tuple[Handle, DealState]:
        handle = self.deals.get(stage)
        if handle is not None:
            state = await state_of(handle)
            if state.stage == stage:
                return handle, state
        handle = await self._create(stage)
        self.deals[stage] = handle
        self.created.append(handle)
        return handle, await state_of(handle)

    def retire(self, stage: Stage) -> None:
        self.deals.pop(stage, None)

    async def _create(self, stage: Stage) -> Handle:
        if stage == Stage.NURTURING:
            # A person of their own: a second lead of one person would join the first's deal.
            handle = await start(self.client, self.task_queue, employees=5, source="other",
                                 country="BR", contact_email=f"kim{uuid.uuid4().hex[:8]}@gmail.com")  # fmt: skip
            # At rest once the first nurture e-mail has gone out.
            await wait_until(handle, lambda s: any(e.kind == "nurture_touch" for e in s.events))
            return handle
        handle = await start(self.client, self.task_queue)
        await wait_for_stage(handle, Stage.QUALIFIED)
        if stage == Stage.QUALIFIED:
            # At rest once accepted: else the lead's SLA passes and reassignments come in while
            # a fuzzed signal's outcome is awaited.
            await accept_lead(handle)
        elif stage == Stage.AWAITING_APPROVAL:
            await signal(
                handle, "submit_quote", {**VALID["submit_quote"], "discount_percent": "15"}
            )
            await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
        elif stage == Stage.AWAITING_SIGNATURE:
            await signal(handle, "submit_quote", VALID["submit_quote"])
            await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
        elif stage == Stage.ACTIVE:
            await quote_to_signature(handle)
        return handle


@pytest.fixture
async def deals(ts_env: WorkflowEnvironment, deal_worker: Settings) -> AsyncIterator[DealsAtRest]:
    pool = DealsAtRest(ts_env.client, deal_worker.task_queue)
    yield pool
    # Not one workflow task failed, whatever was thrown at the deals.
    for handle in pool.created:
        await assert_no_task_failed(handle)
    # Left running without a worker, their timers would keep firing as later tests skip time,
    # each a workflow task nobody takes, and the server's clock would crawl.
    await retire_at_rest(pool.created)


async def assert_no_task_failed(handle: Handle) -> None:
    async for event in handle.fetch_history_events():
        assert event.event_type != EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED, (handle.id, event)


def without_events(state: DealState) -> dict[str, Any]:
    return state.model_dump(exclude={"events"})


async def send_and_check(pool: DealsAtRest, signal_name: str, stage: Stage, data: bytes) -> None:
    handle, before = await pool.in_stage(stage)
    await handle.signal(signal_name, raw(data))
    after = await wait_until(handle, lambda s: len(s.events) > len(before.events))
    new = after.events[len(before.events) :]
    event = new[0]
    if event.kind == f"refused:{signal_name}":
        assert len(new) == 1, (data, new)
        assert event.detail.strip(), data
        assert len(event.detail) < 2_000, "a refusal reason must not echo a huge payload"
        assert without_events(after) == without_events(before), data
    else:  # accepted: it must have been a well-formed JSON object
        assert isinstance(json.loads(data), dict), (data, event)
        pool.retire(stage)  # it has work under way now; the next payload gets a deal at rest


# ------------------------------------------------------------------ the properties


@pytest.mark.parametrize("signal_name", sorted(VALID))
@FUZZ
@given(data=st.data())
async def test_fuzzed_signal_in_its_own_stage(
    deals: DealsAtRest, signal_name: str, data: st.DataObject
) -> None:
    await send_and_check(
        deals, signal_name, HOME_STAGE[signal_name], data.draw(payloads(signal_name))
    )


@FUZZ
@given(
    signal_name=st.sampled_from(sorted(VALID)),
    stage=st.sampled_from(sorted(set(HOME_STAGE.values()))),
    data=st.data(),
)
async def test_fuzzed_signal_in_any_stage(
    deals: DealsAtRest, signal_name: str, stage: Stage, data: st.DataObject
) -> None:
    await send_and_check(deals, signal_name, stage, data.draw(payloads(signal_name)))


VALID_LEAD = make_lead(lead_id="L-fuzz").model_dump(mode="json")


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.one_of(mutated(VALID_LEAD).map(encoded), JSON.map(encoded), RAW_GARBAGE))
async def test_fuzzed_workflow_input(
    ts_env: WorkflowEnvironment, deal_worker: Settings, data: bytes
) -> None:
    """A bad lead fails the deal at once with InvalidLead and its reason; a good one runs."""
    handle: Handle = await ts_env.client.start_workflow(
        WORKFLOW_TYPE, raw(data), id=f"deal-L-fuzz-{uuid.uuid4().hex}",
        task_queue=deal_worker.task_queue, result_type=DealState,
    )  # fmt: skip
    try:
        # A valid lead runs: nurtured, qualified, or joined to the open deal of an earlier one.
        state = await wait_until(
            handle, lambda s: s.stage in (Stage.NURTURING, Stage.QUALIFIED, Stage.MERGED)
        )
        assert state.lead.lead_id, data  # a valid lead: the deal runs
        # Retired with the test's worker: its lead's SLA timer would fire on a queue nobody serves.
        STARTED.setdefault(deal_worker.task_queue, []).append(handle)
    except WorkflowQueryFailedError:  # the deal failed on its input, as it must
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        cause = failure.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == "InvalidLead", (data, cause)
        assert cause.non_retryable and cause.message.startswith("invalid lead: "), cause
        assert len(cause.message) < 2_000
    await assert_no_task_failed(handle)
    await retire_at_rest([handle])
