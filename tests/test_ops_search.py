"""The ops console's saved list queries (docs/ops-console.md) find the deals they name: who may
approve, how long a deal has been in its stage, and whether an invoice is overdue."""

import asyncio
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client
from temporalio.common import TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings
from l2c.ops_cli import deals_query
from l2c.runtime import build_worker
from models.calendar import as_utc
from models.deal import Stage
from models.ledger import DealMilestoneRecord
from models.search import (
    DEAL_APPROVERS,
    DEAL_OLDEST_DUE,
    DEAL_STAGE,
    DEAL_STAGE_SINCE,
)
from tests.helpers import (
    Handle,
    accept_lead,
    pay_in_full,
    sign,
    signal,
    start,
    wait_for_stage,
    wait_until,
)
from workflows.deal import NOTHING_DUE

QUOTE = {"submitted_by": "nora.na", "lines": [{"sku": "PLATFORM", "quantity": 10}],
         "discount_percent": "15", "term_months": 12, "billing_period": "monthly"}  # fmt: skip


async def searchable(handle: Handle) -> TypedSearchAttributes:
    return (await handle.describe()).typed_search_attributes


async def current_details(handle: Handle) -> str:
    """What the Web UI shows as the deal's current details (the SDK's metadata query)."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return str(metadata.current_details)


def pasted(details: str, signal_name: str) -> Any:
    """The JSON the details offer to paste for `signal_name`."""
    found = re.search(rf"Signal `{signal_name}`, for example:\n\n```json\n(.*)\n```", details)
    assert found is not None, details
    return json.loads(found.group(1))


async def to_approval(client: Client, task_queue: str) -> Handle:
    handle = await start(client, task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    await accept_lead(handle)
    await signal(handle, "submit_quote", QUOTE)
    await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    return handle


async def test_search_attributes_follow_approvers_stage_and_oldest_due_invoice(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await to_approval(ts_env.client, deal_worker.task_queue)
    state = await wait_until(handle, lambda s: s.pending_approval is not None)
    found = await searchable(handle)
    # A 15% discount: a manager or anyone above, never the submitter (nora.na).
    assert found.get(DEAL_APPROVERS) == ["carla.cfo", "mia.manager", "victor.vp"]
    assert found.get(DEAL_STAGE) == "awaiting_approval"
    assert found.get(DEAL_STAGE_SINCE) == state.stage_since is not None
    assert found.get(DEAL_OLDEST_DUE) is None
    # The Web UI's current details give the JSON to paste for what the deal waits for.
    assert pasted(await current_details(handle), "approve_discount") == {
        "approver": state.pending_approval.eligible_approvers[0] if state.pending_approval
        else None, "comment": "ok"}  # fmt: skip

    await signal(handle, "approve_discount", {"approver": "mia.manager", "comment": "ok"})
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    found = await searchable(handle)
    assert found.get(DEAL_APPROVERS) == []  # nobody's approval is waited for any more
    assert state.stage_since is not None and found.get(DEAL_STAGE_SINCE) == state.stage_since

    # The KPIs' milestones reached the ledger with the quote and the contract.
    with Session(sqlite_ledger) as session:
        rows = session.exec(
            select(DealMilestoneRecord).where(DealMilestoneRecord.deal_id == handle.id)
        ).all()
    routing = state.routing
    assert routing is not None and routing.accepted_at is not None
    kept = {(row.kind, row.key): (as_utc(row.at), row.actor) for row in rows}
    assert kept[("lead_accepted", "")] == (routing.accepted_at, routing.accepted_by)
    key = "v1:discount 15%"  # the quote version and the rule that needed the approval
    assert kept[("approval_given", key)][1] == "mia.manager"
    assert kept[("approval_requested", key)][0] <= kept[("approval_given", key)][0]
    assert set(kept) == {("lead_sales_ready", ""), ("lead_accepted", ""),
                         ("approval_requested", key), ("approval_given", key)}  # fmt: skip

    assert state.contract is not None
    assert pasted(await current_details(handle), "sign_contract") == {
        "signer_name": state.lead.contact_name, "signer_email": state.lead.contact_email,
        "document_sha256": state.contract.document_sha256}  # fmt: skip
    await sign(handle, state)
    state = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) >= 1)
    first = state.invoices[0]
    assert pasted(await current_details(handle), "record_payment") == {
        "invoice_number": first.number, "amount": str(first.balance),
        "reference": "<the bank's reference>"}  # fmt: skip
    assert (await searchable(handle)).get(DEAL_OLDEST_DUE) == first.due_at
    await pay_in_full(handle, first)
    state = await wait_until(handle, lambda s: s.invoices[0].status == "paid")
    due = [i.due_at for i in state.invoices if i.status == "open"]
    assert (await searchable(handle)).get(DEAL_OLDEST_DUE) == (min(due) if due else NOTHING_DUE)


@pytest.mark.devserver
async def test_saved_list_queries_find_the_deals_on_the_dev_server(
    dev_env: WorkflowEnvironment,
    sqlite_ledger: Engine,
    rules: BusinessRules,
    settings: Settings,
    tmp_path: Path,
) -> None:
    client = dev_env.client
    async with build_worker(client, sqlite_ledger, rules, settings):
        waiting = await to_approval(client, settings.task_queue)
        other = await start(client, settings.task_queue, lead_id=f"L-q-{uuid.uuid4().hex[:6]}")
        await wait_for_stage(other, Stage.QUALIFIED)

        async def ids(query: str) -> set[str]:
            return {w.id async for w in client.list_workflows(f"{query} AND TaskQueue = "
                                                             f'"{settings.task_queue}"')}  # fmt: skip

        async def listed(query: str, expected: set[str]) -> None:
            # Visibility is eventually consistent: give it a moment.
            for _ in range(50):
                if await ids(query) == expected:
                    return
                await asyncio.sleep(0.1)
            assert await ids(query) == expected, query

        await listed('DealApprovers = "mia.manager"', {waiting.id})
        await listed('DealApprovers = "nora.na"', set())  # the submitter approves nothing
        later = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
        await listed(f'DealStageSince < "{later}"', {waiting.id, other.id})
        await listed('DealStageSince < "2020-01-01T00:00:00Z"', set())
        await listed(f'DealOldestDue < "{later}"', set())  # nothing invoiced yet
        # The same queries as `l2c deals` builds them from its filters.
        await listed(deals_query(approver="mia.manager"), {waiting.id})
        soon = datetime.now(UTC) + timedelta(minutes=1)
        await listed(deals_query(in_stage_over=timedelta(0), now=soon), {waiting.id, other.id})
        await listed(deals_query(in_stage_over=timedelta(days=1)), set())
        await listed(deals_query(overdue=True, now=soon), set())
        for handle in (waiting, other):
            await handle.terminate("test finished")
