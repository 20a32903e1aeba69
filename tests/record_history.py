"""Record the histories under tests/histories that the replay test holds today's code to.

Run it only when a change to the workflow is meant to break replay of running deals (and then
version the change with workflow.patched instead, where deals are in flight), naming the deal
to record (recording one leaves the others as they are):
    python -m tests.record_history recorded-1
    python -m tests.record_history approval-matrix
    python -m tests.record_history contract-terms
    python -m tests.record_history lead-front
    python -m tests.record_history ops-console
"""

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings, load_business_rules
from l2c.runtime import build_worker
from models.deal import Stage
from tests.conftest import fresh_ledger, start_time_skipping_env
from tests.helpers import advance_until, signal, start, state_of, wait_for_stage, wait_until

OUT = Path(__file__).parent / "histories"


@contextlib.asynccontextmanager
async def recording() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server and a worker on a throwaway ledger, as the tests run deals."""
    env = await start_time_skipping_env()
    with tempfile.TemporaryDirectory() as tmp:
        engine = fresh_ledger(f"sqlite:///{tmp}/ledger.db")
        settings = Settings(database_url="", task_queue="record")
        async with env, build_worker(env.client, engine, load_business_rules(), settings):
            yield env


async def save(handle: WorkflowHandle[Any, Any], client: Client, runs: int = 1) -> None:
    """Wait for the deal to end, then write its history under tests/histories: of each of its
    `runs` runs (continue-as-new), the first as <id>.json, the later ones as <id>-run<n>.json."""
    await handle.result()
    OUT.mkdir(exist_ok=True)
    run_id = handle.first_execution_run_id or handle.run_id
    for n in range(1, runs + 1):
        run = client.get_workflow_handle(handle.id, run_id=run_id)
        history = await run.fetch_history()
        name = f"{handle.id}.json" if n == 1 else f"{handle.id}-run{n}.json"
        (OUT / name).write_text(history.to_json())
        print(f"recorded {name}: {len(history.events)} events")
        last = history.events[-1].workflow_execution_continued_as_new_event_attributes
        run_id = last.new_execution_run_id


async def sign_for_one_month_and_pay(
    env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any], signer_email: str
) -> None:
    """From awaiting signature: signed with notice given at once, invoiced once and paid."""
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    assert state.contract is not None
    await signal(handle, "sign_contract", {"signer_name": "Ada Lovelace", "signer_email": signer_email,
                                           "document_sha256": state.contract.document_sha256})  # fmt: skip
    await signal(handle, "give_notice", {"by": "ada", "party": "customer", "reason": "one month"})
    state = await advance_until(env, handle, lambda s: len(s.invoices) == 1)
    await signal(handle, "record_payment", {"invoice_number": state.invoices[0].number,
                 "amount": str(state.invoices[0].amount), "reference": "R1"})  # fmt: skip


async def record_recorded_1() -> None:
    async with recording() as env:
        handle = await start(env.client, "record", lead_id="L-recorded-1")
        await wait_for_stage(handle, Stage.QUALIFIED)
        await signal(
            handle, "approve_discount", {"approver": "mia.manager"}
        )  # refused: wrong stage
        await signal(handle, "submit_quote", {"submitted_by": "nora.na", "discount_percent": "15", "term_months": 3,
                                              "billing_period": "monthly", "lines": [{"sku": "PLATFORM", "quantity": 25},
                                              {"sku": "ONBOARDING", "quantity": 1}]})  # fmt: skip
        await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
        await signal(handle, "approve_discount", {"approver": "mia.manager", "comment": "ok"})
        state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
        assert state.contract is not None
        await signal(handle, "sign_contract", {"signer_name": "Ada Lovelace", "signer_email": "ada@acme.example",
                                               "document_sha256": state.contract.document_sha256})  # fmt: skip
        for n in range(3):
            state = await advance_until(env, handle, lambda s, n=n: len(s.invoices) > n)
            inv = state.invoices[n]
            await signal(
                handle,
                "record_payment",
                {"invoice_number": inv.number, "amount": str(inv.amount), "reference": f"R{n}"},
            )
            await wait_until(handle, lambda s, n=n: s.invoices[n].status == "paid")
        await save(handle, env.client)


async def record_approval_matrix() -> None:
    """Two approvals in parallel, one given by update, an escalation after the SLA, a re-quote
    that supersedes, longer payment terms, a signature, the invoice paid."""
    async with recording() as env:
        handle = await start(env.client, "record", lead_id="L-approval-matrix")
        await wait_for_stage(handle, Stage.QUALIFIED)
        quote = {"submitted_by": "nora.na", "discount_percent": "15", "term_months": 1,
                 "billing_period": "upfront", "lines": [{"sku": "PLATFORM", "quantity": 2500}]}  # fmt: skip
        await signal(handle, "submit_quote", quote)  # manager and cfo (large deal)
        await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
        await handle.execute_update("approve_discount", {"approver": "carla.cfo"})
        await advance_until(env, handle, lambda s: any(
            e.kind == "approval_escalated" for e in s.events), step=timedelta(hours=12))  # fmt: skip
        await signal(handle, "submit_quote", {**quote, "discount_percent": "0",
                                              "payment_terms_days": 45})  # fmt: skip
        await wait_until(handle, lambda s: s.quote is not None and s.quote.version == 2
                         and s.stage == Stage.AWAITING_APPROVAL)  # fmt: skip
        await signal(handle, "approve_discount", {"approver": "carla.cfo", "quote_version": 2})
        state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
        assert state.contract is not None
        await signal(handle, "sign_contract", {"signer_name": "Ada Lovelace", "signer_email": "ada@acme.example",
                                               "document_sha256": state.contract.document_sha256})  # fmt: skip
        state = await wait_until(handle, lambda s: len(s.invoices) == 1)
        inv = state.invoices[0]
        await signal(handle, "record_payment", {"invoice_number": inv.number,
                                                "amount": str(inv.amount), "reference": "R0"})  # fmt: skip
        await save(handle, env.client)


async def record_contract_terms() -> None:
    """A redline legal approves (by update), revenue by obligation with a seat change (a
    modification), an automatic renewal into a second run, notice there, both terms paid."""
    async with recording() as env:
        handle = await start(env.client, "record", lead_id="L-contract-terms")
        await wait_for_stage(handle, Stage.QUALIFIED)
        await signal(handle, "submit_quote", {"submitted_by": "nora.na", "term_months": 2,
                     "lines": [{"sku": "PLATFORM", "quantity": 10}, {"sku": "ONBOARDING", "quantity": 1}]})  # fmt: skip
        await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
        await handle.execute_update("propose_terms", {"proposed_by": "ada",
                                                      "changes": {"payment_terms": 90}})  # fmt: skip
        await signal(handle, "propose_terms", {"proposed_by": "ada", "changes": {"nope": 1}})
        await handle.execute_update("approve_terms", {"approver": "lena.legal"})
        await handle.execute_update("approve_terms", {"approver": "carla.cfo"})
        state = await wait_until(
            handle, lambda s: s.contract is not None and s.contract.revision == 1
        )
        assert state.contract is not None
        await signal(handle, "sign_contract", {"signer_name": "Ada Lovelace", "signer_email": "ada@acme.example",
                                               "document_sha256": state.contract.document_sha256})  # fmt: skip
        await wait_until(handle, lambda s: len(s.invoices) == 1)
        await env.sleep(timedelta(days=10))
        await signal(handle, "change_quantity", {"sku": "PLATFORM", "quantity": 12})
        await wait_until(handle, lambda s: s.quantity_changes == 1)
        paid = 0
        for _ in range(400):
            state = await advance_until(env, handle, lambda s: s.stage == Stage.WON or any(
                i.status == "open" for i in s.invoices) or (s.renewal is not None and s.renewal.term == 2
                and s.non_renewal_notice is None))  # fmt: skip
            if state.stage == Stage.WON:
                break
            if (
                state.renewal is not None
                and state.renewal.term == 2
                and state.non_renewal_notice is None
            ):
                await signal(
                    handle, "give_notice", {"by": "ada", "party": "customer", "reason": "done"}
                )
                await wait_until(handle, lambda s: s.non_renewal_notice is not None)
            for inv in [i for i in state.invoices if i.status == "open"]:
                paid += 1
                await signal(handle, "record_payment", {"invoice_number": inv.number,
                                                        "amount": str(inv.balance), "reference": f"R{paid}"})  # fmt: skip
                await wait_until(handle, lambda s, number=inv.number: any(
                    i.number == number and i.status == "paid" for i in s.invoices))  # fmt: skip
        await save(handle, env.client, runs=2)


async def record_lead_front() -> None:
    """The lead front: a lead whose owner lets the SLA pass is reassigned and accepted (by
    update); a colleague's lead joins its deal (and ends merged); a nurtured lead engages and
    qualifies; the first deal is quoted, signed and paid for its one month."""
    async with recording() as env:
        handle = await start(env.client, "record", lead_id="L-lead-front",
                             contact_email="ada@front.example")  # fmt: skip
        await wait_for_stage(handle, Stage.QUALIFIED)
        await signal(handle, "accept_lead", {"by": "somebody.else"})  # refused: not the owner
        await advance_until(env, handle, lambda s: s.routing is not None
                            and s.routing.sla_misses >= 1, step=timedelta(hours=1))  # fmt: skip
        owner = (await state_of(handle)).owner
        await handle.execute_update("accept_lead", {"by": owner, "note": "calling now"})
        colleague = await start(env.client, "record", lead_id="L-lead-front-colleague",
                                contact_email="bob@front.example")  # fmt: skip
        await wait_until(handle, lambda s: len(s.attached_leads) == 1)
        nurtured = await start(env.client, "record", lead_id="L-lead-front-nurtured",
                               contact_email="pat@gmail.com", employees=4, country="BR")  # fmt: skip
        await wait_until(nurtured, lambda s: any(e.kind == "nurture_touch" for e in s.events))
        await signal(nurtured, "log_engagement", {"kind": "demo_request"})
        await signal(nurtured, "log_engagement", {"kind": "pricing_page"})
        await wait_for_stage(nurtured, Stage.QUALIFIED)
        await signal(nurtured, "mark_lost", {"by": "sam.rep", "reason": "went quiet"})
        await signal(handle, "submit_quote", {"submitted_by": owner, "term_months": 1,
                     "lines": [{"sku": "PLATFORM", "quantity": 10}]})  # fmt: skip
        await sign_for_one_month_and_pay(env, handle, "ada@front.example")
        await save(handle, env.client)
        await save(colleague, env.client)
        await save(nurtured, env.client)


async def record_ops_console() -> None:
    """The ops console's search attributes and the KPIs' milestones: a lead accepted, a 15%
    quote a manager approves, signed, invoiced for its one month and paid."""
    async with recording() as env:
        handle = await start(env.client, "record", lead_id="L-ops-console",
                             contact_email="ada@ops-console.example")  # fmt: skip
        await wait_for_stage(handle, Stage.QUALIFIED)
        owner = (await state_of(handle)).owner
        await handle.execute_update("accept_lead", {"by": owner, "note": "on it"})
        await signal(handle, "submit_quote", {"submitted_by": owner, "term_months": 1,
                     "discount_percent": "15", "lines": [{"sku": "PLATFORM", "quantity": 10}]})  # fmt: skip
        await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
        await handle.execute_update("approve_discount", {"approver": "mia.manager"})
        await sign_for_one_month_and_pay(env, handle, "ada@ops-console.example")
        await save(handle, env.client)


RECORDERS = {"recorded-1": record_recorded_1, "approval-matrix": record_approval_matrix,
             "contract-terms": record_contract_terms, "lead-front": record_lead_front,
             "ops-console": record_ops_console}  # fmt: skip

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in RECORDERS:
        sys.exit(f"usage: python -m tests.record_history {{{'|'.join(RECORDERS)}}}")
    asyncio.run(RECORDERS[sys.argv[1]]())
