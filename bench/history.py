"""Deals played on the time-skipping server, for figures about histories.

(The test server gives a workflow without an execution timeout one of ten years, so deals longer
than that are played on the embedded server with compressed months instead: history_size.py.)"""

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings, load_business_rules
from l2c.db import init_ledger, make_engine
from l2c.drill import start_time_skipping_env
from l2c.playbook import payment_reference
from l2c.runtime import build_worker, start_deal, wait_for_state
from models.deal import LeadInput, Stage
from models.state import DealState

TASK_QUEUE = "bench-history"


def bench_lead(lead_id: str) -> LeadInput:
    """A lead that qualifies at once, of a company of its own (leads of one company would make
    one deal), routed to the north-america team."""
    return LeadInput(lead_id=lead_id, company="Bench Ltd", contact_name="Ada Lovelace",
                     contact_email=f"ada@{lead_id.lower()}.bench.example", source="web", country="US",
                     employees=250, currency="USD")  # fmt: skip


@asynccontextmanager
async def time_skipping_worker() -> AsyncIterator[WorkflowEnvironment]:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/ledger.db")
        init_ledger(engine)
        settings = Settings(database_url="", task_queue=TASK_QUEUE)
        async with (
            await start_time_skipping_env() as env,
            build_worker(env.client, engine, load_business_rules(), settings),
        ):
            yield env


async def play_full_term(
    env: WorkflowEnvironment, lead_id: str, quote: dict[str, Any]
) -> WorkflowHistory:
    """Quote, approve if needed, sign, then pay every invoice as months pass, until the deal ends."""
    lead = bench_lead(lead_id)
    handle, _ = await start_deal(env.client, lead, TASK_QUEUE)
    await wait_for_state(handle, lambda s: s.stage == Stage.QUALIFIED)
    await handle.signal("submit_quote", {"submitted_by": "nora.na", **quote})
    state = await wait_for_state(
        handle, lambda s: s.stage in (Stage.AWAITING_APPROVAL, Stage.AWAITING_SIGNATURE)
    )
    if state.stage == Stage.AWAITING_APPROVAL:
        await handle.signal("approve_discount", {"approver": "mia.manager"})
        state = await wait_for_state(handle, lambda s: s.stage == Stage.AWAITING_SIGNATURE)
    assert state.contract is not None
    await handle.signal("sign_contract", {"signer_name": lead.contact_name,
                        "signer_email": lead.contact_email,
                        "document_sha256": state.contract.document_sha256})  # fmt: skip
    state = await wait_for_state(handle, lambda s: s.stage != Stage.AWAITING_SIGNATURE)
    paid: set[str] = set()
    while state.stage not in (Stage.WON, Stage.WRITTEN_OFF):
        for invoice in state.invoices:
            if invoice.status == "open" and invoice.number not in paid:
                await handle.signal("record_payment", {"invoice_number": invoice.number,
                                    "amount": str(invoice.balance),
                                    "reference": payment_reference(invoice.number)})  # fmt: skip
                paid.add(invoice.number)
        await wait_for_state(handle, settled(len(paid)))
        await env.sleep(timedelta(days=10))
        state = await handle.query("state", result_type=DealState)
    return await handle.fetch_history()


def settled(payments: int) -> Callable[[DealState], bool]:
    return lambda s: s.stage == Stage.WON or sum(i.status == "paid" for i in s.invoices) >= payments


def events_per_stage(history: WorkflowHistory) -> list[tuple[str, int]]:
    """How many history events each stage took: from entering it to entering the next one."""
    marks: list[tuple[str, int]] = [("new", 0)]
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes
            payload = fields.indexed_fields.get("DealStage")
            if payload is not None:
                stage = payload.data.decode().strip('"')
                if stage != marks[-1][0]:
                    marks.append((stage, event.event_id))
    ends = [event_id for _, event_id in marks[1:]] + [len(history.events)]
    return [(stage, end - start) for (stage, start), end in zip(marks, ends, strict=True)]
