"""Helpers for driving deals in tests the way ops staff would: signals, queries, the clock."""

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings
from l2c.runtime import build_worker, start_deal
from l2c.runtime import wait_for_state as wait_until
from models.deal import LeadInput, Stage
from models.ledger import JournalEntry, JournalLine
from models.money import ZERO
from models.state import DealState, InvoiceView

Handle = WorkflowHandle[Any, DealState]


def make_lead(**overrides: Any) -> LeadInput:
    data: dict[str, Any] = {
        "lead_id": f"L-{uuid.uuid4().hex[:10]}",
        "company": "Acme Corp",
        "contact_name": "Ada Lovelace",
        "contact_email": "ada@acme.example",
        "source": "web",
        "country": "US",
        "employees": 250,
        "currency": "USD",
    }
    data.update(overrides)
    if "contact_email" not in overrides:
        # A company of its own for each lead: two leads of one company in a test's ledger would
        # make one deal (identity resolution), which only the tests of that want.
        data["contact_email"] = f"ada@{data['lead_id'].lower()}.acme.example"
    return LeadInput.model_validate(data)


# Deals started per task queue, so the worker fixture can retire those a test leaves open.
STARTED: dict[str, list[Handle]] = {}


async def start(client: Client, task_queue: str, **overrides: Any) -> Handle:
    handle, created = await start_deal(client, make_lead(**overrides), task_queue)
    assert created
    STARTED.setdefault(task_queue, []).append(handle)
    return handle


async def final_state(handle: Handle, timeout: float = 60) -> DealState:
    """The deal's result. Bounded, so a run the time-skipping server strands fails the test instead
    of hanging the suite: the server refuses a workflow task that cancels a timer which fired while
    the task was with the worker, and never offers the task again (temporalio/sdk-java#3088)."""
    try:
        return await asyncio.wait_for(handle.result(), timeout)
    except TimeoutError:
        state = await state_of(handle)
        raise AssertionError(
            f"{handle.id} did not finish in {timeout} s; stage {state.stage}, "
            f"last events {state.events[-3:]}"
        ) from None


async def retire_at_rest(handles: list[Handle], timeout: float = 30) -> None:
    """Terminate deals a test leaves open, each once no activity of it is under way: terminating
    one mid-activity would leave the time-skipping server's clock locked for the rest of the run."""
    deadline = asyncio.get_running_loop().time() + timeout
    for handle in handles:
        while True:
            description = await handle.describe()
            if description.status != WorkflowExecutionStatus.RUNNING:
                break
            if not description.raw_description.pending_activities:
                await handle.terminate("test finished")
                break
            if asyncio.get_running_loop().time() > deadline:
                break  # an activity stuck for good (the test has failed already): leave it
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def own_worker(
    client: Client, ledger: Engine, rules: BusinessRules, settings: Settings
) -> AsyncIterator[None]:
    """A worker for one test (its own rules or settings); the deals the test left open on its task
    queue are retired at rest before the worker stops (see `retire_at_rest`)."""
    async with build_worker(client, ledger, rules, settings):
        try:
            yield
        finally:
            await retire_at_rest(STARTED.pop(settings.task_queue, []))


async def accept_lead(handle: Handle) -> DealState:
    """The lead's owner accepts it (its owner may change meanwhile if its SLA passes)."""
    for _ in range(5):
        state = await state_of(handle)
        if state.routing is not None and state.routing.accepted_by is not None:
            return state
        with contextlib.suppress(WorkflowUpdateFailedError):
            await handle.execute_update("accept_lead", {"by": state.owner}, result_type=str)
    raise AssertionError(f"{handle.id}: the lead could not be accepted")


async def state_of(handle: Handle) -> DealState:
    return await handle.query("state", result_type=DealState)


async def wait_for_stage(handle: Handle, stage: Stage, timeout: float = 20) -> DealState:
    return await wait_until(handle, lambda s: s.stage == stage, timeout)


async def advance_until(
    env: WorkflowEnvironment, handle: Handle, check: Callable[[DealState], bool],
    step: timedelta = timedelta(days=2), max_steps: int = 400,
) -> DealState:  # fmt: skip
    """Skip time in steps until `check` holds."""
    for _ in range(max_steps):
        state = await state_of(handle)
        if check(state):
            return state
        await env.sleep(step)
    raise AssertionError(f"condition not reached; stage {state.stage}, events {state.events[-3:]}")


async def signal(handle: Handle, name: str, payload: Any = None) -> None:
    if payload is None:
        await handle.signal(name)
    else:
        await handle.signal(name, payload)


async def pay_in_full(handle: Handle, invoice: InvoiceView) -> None:
    """Finance records a bank transfer of the invoice's balance; waits until it is paid."""
    await signal(handle, "record_payment", {"invoice_number": invoice.number,
                                           "amount": str(invoice.balance),
                                           "reference": f"BANK-{invoice.number}"})  # fmt: skip
    await wait_until(handle, lambda s: any(i.number == invoice.number and i.status == "paid"
                                           for i in s.invoices))  # fmt: skip


def usage_lines(deal_id: str, *events: tuple[str, datetime, int]) -> list[str]:
    """API_CALLS usage events as JSON Lines: (id, when, calls) each."""
    return [
        json.dumps(
            {
                "id": event_id,
                "deal_id": deal_id,
                "sku": "API_CALLS",
                "quantity": calls,
                "occurred_at": at.isoformat(),
            }
        )
        for event_id, at, calls in events
    ]


def refusals(state: DealState, signal_name: str) -> list[str]:
    return [e.detail for e in state.events if e.kind == f"refused:{signal_name}"]


async def refused_after(
    handle: Handle, name: str, payload: Any, count_before: int | None = None
) -> str:
    """Send a signal that must be refused; returns the recorded reason and checks nothing else moved."""
    before = await state_of(handle)
    await signal(handle, name, payload)
    after = await wait_until(handle, lambda s: len(refusals(s, name)) > len(refusals(before, name)))
    assert after.stage == before.stage
    assert after.quote == before.quote
    assert after.invoices == before.invoices
    assert after.score == before.score
    return refusals(after, name)[-1]


async def quote_to_signature(
    handle: Handle, card_on_file: dict[str, str] | None = None, **quote: Any
) -> DealState:
    """From qualified: submit a quote within the auto-approve limit, sign it; returns the active state."""
    await wait_for_stage(handle, Stage.QUALIFIED)
    payload = {"submitted_by": "nora.na", "lines": [{"sku": "PLATFORM", "quantity": 10}],
               "discount_percent": "0", "term_months": 12, "billing_period": "monthly"}  # fmt: skip
    payload.update(quote)
    await signal(handle, "submit_quote", payload)
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    assert state.contract is not None
    await sign(handle, state, card_on_file)
    return await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) >= 1)


async def sign(
    handle: Handle, state: DealState, card_on_file: dict[str, str] | None = None,
    renews: bool = False,
) -> None:  # fmt: skip
    """Sign the contract sent; unless `renews`, the customer also gives notice at once that it
    is not to renew, so that the deal ends with its term (the standard terms auto-renew)."""
    assert state.contract is not None
    signature: dict[str, Any] = {"signer_name": "Ada Lovelace", "signer_email": "ada@acme.example",
                                 "document_sha256": state.contract.document_sha256}  # fmt: skip
    if card_on_file is not None:
        signature["card_on_file"] = card_on_file
    await signal(handle, "sign_contract", signature)
    if not renews:
        await signal(handle, "give_notice", NOTICE)


NOTICE = {"by": "Ada Lovelace", "party": "customer", "reason": "one term only"}


def account_balances(engine: Engine, deal_id: str | None = None) -> dict[str, Decimal]:
    """Debit-positive balance per account, checking on the way that every entry balances."""
    balances: dict[str, Decimal] = {}
    with Session(engine) as session:
        query = select(JournalEntry)
        if deal_id is not None:
            query = query.where(JournalEntry.deal_id == deal_id)
        for entry in session.exec(query).all():
            lines = session.exec(select(JournalLine).where(JournalLine.entry_id == entry.id)).all()
            debit = sum((ln.debit for ln in lines), ZERO)
            credit = sum((ln.credit for ln in lines), ZERO)
            assert debit == credit, f"{entry.entry_key} does not balance: {debit} != {credit}"
            for ln in lines:
                balances[ln.account] = balances.get(ln.account, ZERO) + ln.debit - ln.credit
    return balances
