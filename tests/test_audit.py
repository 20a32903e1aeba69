"""The auditor's commands: replaying histories (files, or every run a visibility query matches on
the server) with a summary and an exit code that says whether all replay, and the HTML audit report
with its reconciliation of the history against the ledger."""

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session
from temporalio import workflow
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from l2c.audit import replay_in_parallel, replay_runs, run_histories
from l2c.audit_report import (
    AuditReport,
    Difference,
    HistoryFacts,
    approvals_of,
    build_report,
    reconcile,
    render_html,
)
from l2c.config import BusinessRules, Settings, load_business_rules
from l2c.documents import sha256_hex
from l2c.drill import drill_config
from l2c.runtime import build_worker
from models.deal import Stage
from models.documents import Allocation, ApprovalRequirement, PaymentRecord
from models.ledger import InvoiceRecord, PaymentRecordRow
from models.state import DealEvent, DealState, InvoiceView
from tests.helpers import (
    Handle,
    advance_until,
    make_lead,
    own_worker,
    pay_in_full,
    quote_to_signature,
    sign,
    signal,
    start,
    state_of,
    wait_for_stage,
    wait_until,
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


# ---------------------------------------------------------------- reconciliation, without Temporal


def test_reconcile_lists_each_side_missing_and_each_field_that_differs(
    sqlite_ledger: Engine,
) -> None:
    lead = make_lead()
    invoice = InvoiceView(number="INV-000001", period_index=0, amount=Decimal("100.00"),
                          currency="USD", issued_on=date(2026, 1, 1), due_date=date(2026, 1, 31),
                          status="paid", amount_paid=Decimal("100.00"))  # fmt: skip
    state = DealState(deal_id="deal-X", lead=lead, stage=Stage.ACTIVE, invoices=[invoice],
                      payment_references=["BANK-1"])  # fmt: skip
    payment = PaymentRecord(deal_id="deal-X", invoice_number="INV-000001", amount=Decimal("100.00"),
                            allocations=[Allocation(invoice_number="INV-000001",
                                                    amount=Decimal("100.00"))],
                            currency="USD", reference="BANK-1", recorded_by="ops",
                            received_at=datetime(2026, 1, 5, tzinfo=UTC))  # fmt: skip
    facts = HistoryFacts(payments={"BANK-1": payment})

    # An empty ledger: the invoice and the payment are missing from it.
    assert [str(d) for d in reconcile("deal-X", state, sqlite_ledger, facts)] == [
        "invoice INV-000001: in the history (USD 100.00), missing from the ledger",
        "payment BANK-1: in the history (USD 100.00), missing from the ledger",
    ]
    # The invoice in the ledger, still open there, and a payment the history never recorded.
    with Session(sqlite_ledger) as session:
        session.add(InvoiceRecord(number="INV-000001", deal_id="deal-X", billing_month=0,
                                  currency="USD", amount=Decimal("100.00"), status="open",
                                  issued_on=date(2026, 1, 1), due_date=date(2026, 1, 31),
                                  service_from=date(2026, 1, 1), service_to=date(2026, 1, 31),
                                  html=""))  # fmt: skip
        session.add(PaymentRecordRow(deal_id="deal-X", reference="CASH-9", amount=Decimal("5.00"),
                                     currency="USD", recorded_by="ops",
                                     received_at=datetime(2026, 1, 6, tzinfo=UTC)))  # fmt: skip
        session.commit()
    assert reconcile("deal-X", state, sqlite_ledger, facts) == [
        Difference("invoice", "INV-000001", "status", "paid", "open"),
        Difference("invoice", "INV-000001", "amount paid", "100.00", "0.00"),
        Difference("payment", "BANK-1", None, "USD 100.00", None),
        Difference("payment", "CASH-9", None, None, "USD 5.00"),
    ]
    # Without a state (a running deal no worker answers for), that is said, never "no differences".
    assert reconcile("deal-X", None, sqlite_ledger)[0].document == "state"


def test_approvals_name_the_required_approval_each_approver_gave() -> None:
    at = datetime(2026, 3, 2, 10, tzinfo=UTC)
    needed = [ApprovalRequirement(rule="discount 25%", required_role="vp_sales",
                                  role_limit_percent=Decimal("35"),
                                  eligible_approvers=["victor.vp", "carla.cfo"]),
              ApprovalRequirement(rule="large deal", required_role="cfo",
                                  role_limit_percent=Decimal("50"),
                                  eligible_approvers=["carla.cfo"])]  # fmt: skip
    events = [
        DealEvent(at=at, kind="quote_priced", actor="nora.na", detail="quote v2: list 1, net 1 "
                  "USD at 25% over 12 months"),
        DealEvent(at=at, kind="discount_approved", actor="carla.cfo",
                  detail="as cfo (large deal): big logo"),
        DealEvent(at=at, kind="discount_approved", actor="victor.vp",
                  detail="as vp_sales (discount 25%): ok"),
        DealEvent(at=at, kind="discount_approved", actor="mia.manager",
                  detail="as vp_sales (discount 25%): not hers to give"),
    ]  # fmt: skip
    # An escalation of the large deal's approval made victor.vp eligible for it too; mia.manager
    # never was eligible for the approval she is recorded as giving.
    facts = HistoryFacts(approvals={2: needed},
                         escalated_to={(2, "large deal"): ["victor.vp"]})  # fmt: skip
    views = approvals_of(events, facts)
    assert [(v.approver, v.quote_version, v.rule, v.role, v.within_authority) for v in views] == [
        ("carla.cfo", 2, "large deal", "cfo", True),
        ("victor.vp", 2, "discount 25%", "vp_sales", True),
        ("mia.manager", 2, "discount 25%", "vp_sales", False),
    ]
    assert views[0].eligible == ["carla.cfo", "victor.vp"]


def test_report_of_a_deal_without_its_state_says_so_and_claims_no_reconciliation() -> None:
    report = AuditReport(workflow_id="deal-L-x", status="terminated", runs=1,
                         generated_at=datetime(2026, 3, 2, tzinfo=UTC), ledger="sqlite://",
                         state=None, timeline=[], approvals=[], facts=HistoryFacts(),
                         contract_in_ledger=None,
                         differences=[Difference("state", "deal-L-x", "final state", "none", None)],
                         compared={})  # fmt: skip
    html = render_html(report)
    assert "The deal's state is not available" in html
    assert "reconciled: no differences" not in html and "1 difference:" in html


# ---------------------------------------------------------------- the HTML report, on a real deal


@pytest.mark.own_clock
async def test_html_report_shows_the_deal_and_lists_what_the_ledger_no_longer_agrees_with(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine, tmp_path: Path
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue, company="Acme & <Sons>")
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", {
        "submitted_by": "nora.na", "lines": [{"sku": "PLATFORM", "quantity": 10}],
        "discount_percent": "15", "term_months": 12, "billing_period": "monthly"})  # fmt: skip
    await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    await signal(handle, "approve_discount", {"approver": "mia.manager", "comment": "new logo"})
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    await sign(handle, state)
    state = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) == 1)
    first = state.invoices[0]
    await pay_in_full(handle, first)
    state = await advance_until(ts_env, handle, lambda s: len(s.invoices) == 2)
    second = state.invoices[1]
    await signal(handle, "issue_credit_note", {
        "invoice_number": second.number, "amount": "25.00", "reason": "outage <credit>",
        "reference": "CN-REQ-1", "issued_by": "fay.finance"})  # fmt: skip
    await wait_until(handle, lambda s: any(e.kind == "credit_note_issued" for e in s.events))
    await at_rest(handle)
    state = await state_of(handle)
    assert state.contract is not None and state.contract.signed_by == "Ada Lovelace"

    report = await build_report(ts_env.client, sqlite_ledger, handle.id)
    assert report.differences == []
    assert report.compared["invoices"] == 2 and report.compared["payments"] == 1
    assert report.compared["credit notes"] == 1 and report.compared["contracts"] == 1
    [approval] = report.approvals
    assert (approval.approver, approval.decision, approval.quote_version) == (
        "mia.manager", "approved", 1)  # fmt: skip
    assert (approval.rule, approval.role, approval.discount_percent) == (
        "discount 15%", "manager", Decimal("15"))  # fmt: skip
    assert approval.within_authority and "nora.na" not in approval.eligible
    html = render_html(report)
    assert "reconciled: no differences" in html
    assert state.contract.document_sha256 in html
    assert first.number in html and second.number in html
    assert f"BANK-{first.number}" in html and "CN-REQ-1" in html
    assert "mia.manager" in html and "manager or higher (up to 20%)" in html
    # Autoescaped, and self-contained: no script, nothing loaded from elsewhere.
    assert "Acme &amp; &lt;Sons&gt;" in html and "<Sons>" not in html
    assert "outage &lt;credit&gt;" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html

    # The ledger is tampered with: each change is found, and only it.
    # SQLite keeps cents: one dollar more.
    execute(sqlite_ledger, "UPDATE invoices SET amount = amount + 100 WHERE number = :n",
            n=first.number)  # fmt: skip
    assert reconcile(handle.id, state, sqlite_ledger, report.facts) == [
        Difference("invoice", first.number, "amount", str(first.amount),
                   str(first.amount + Decimal("1.00")))]  # fmt: skip
    execute(sqlite_ledger, "UPDATE invoices SET amount = amount - 100 WHERE number = :n",
            n=first.number)  # fmt: skip
    assert reconcile(handle.id, state, sqlite_ledger, report.facts) == []

    contract = state.contract
    execute(sqlite_ledger, "UPDATE contracts SET html = html || ' ' WHERE contract_id = :c",
            c=contract.contract_id)  # fmt: skip
    with sqlite_ledger.connect() as connection:
        stored = connection.execute(text("SELECT html FROM contracts WHERE contract_id = :c"),
                                    {"c": contract.contract_id}).scalar_one()  # fmt: skip
    assert reconcile(handle.id, state, sqlite_ledger, report.facts) == [
        Difference("contract", contract.contract_id,
                   "document sha256 (recomputed from the stored document)",
                   contract.document_sha256, sha256_hex(stored))]  # fmt: skip
    execute(sqlite_ledger, "UPDATE contracts SET html = substr(html, 1, length(html) - 1) "
                           "WHERE contract_id = :c", c=contract.contract_id)  # fmt: skip
    assert reconcile(handle.id, state, sqlite_ledger, report.facts) == []

    reference = f"BANK-{first.number}"
    execute(sqlite_ledger, "DELETE FROM payment_allocations WHERE source = :s",
            s=f"payment:{reference}")  # fmt: skip
    execute(sqlite_ledger, "DELETE FROM payments WHERE reference = :r", r=reference)
    differences = [Difference("payment", reference, None, f"USD {first.amount}", None)]
    assert reconcile(handle.id, state, sqlite_ledger, report.facts) == differences

    # The command writes the report, names the difference, and exits 1.
    out = tmp_path / "report.html"
    env = {"TEMPORAL_ADDRESS": ts_env.client.service_client.config.target_host,
           "L2C_DATABASE_URL": str(sqlite_ledger.url)}  # fmt: skip
    command = await asyncio.to_thread(l2c, "audit", "report", handle.id, "--html", str(out),
                                      env=env)  # fmt: skip
    assert command.returncode == 1, command.stdout + command.stderr
    assert f"DIFFERS {differences[0]}" in command.stdout
    written = out.read_text()
    assert "reconciled: no differences" not in written
    assert "1 difference:" in written and reference in written
    # The text timeline stays the default.
    timeline = await asyncio.to_thread(l2c, "audit", "report", handle.id, env=env)
    assert timeline.returncode == 0, timeline.stderr
    assert timeline.stdout.startswith(f"Decision timeline of {handle.id} (UTC)")
    assert "decision discount_approved" in timeline.stdout


@pytest.mark.own_clock
async def test_a_deal_of_several_runs_replays_run_by_run_and_reconciles_across_them(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, settings: Settings, tmp_path: Path
) -> None:
    # A new run every month: a payment posted by run 1, another by run 2.
    rules = load_business_rules(drill_config(tmp_path / "config", month_seconds=31 * 24 * 3600,
                                             continue_as_new_every_months=1))  # fmt: skip
    client = ts_env.client
    async with own_worker(client, sqlite_ledger, rules, settings):
        handle = await start(client, settings.task_queue)
        state = await quote_to_signature(handle, term_months=3)
        await pay_in_full(handle, state.invoices[0])
        state = await advance_until(ts_env, handle, lambda s: s.run == 2 and len(s.invoices) == 2)
        await pay_in_full(handle, state.invoices[1])
        await at_rest(handle)

        report = await build_report(client, sqlite_ledger, handle.id)
        assert report.runs == 2
        assert report.differences == []
        assert report.compared["payments"] == 2 and report.compared["invoices"] == 2
        assert set(report.facts.payments) == {f"BANK-{i.number}" for i in state.invoices}

        latest = await handle.describe()
        runs = await run_histories(client, handle.id)
        first_run = runs[1][
            0
        ].workflow_execution_started_event_attributes.continued_execution_run_id
        executions = [await client.get_workflow_handle(handle.id, run_id=run_id).describe()
                      for run_id in (first_run, latest.run_id)]  # fmt: skip
        replayed = await replay_runs(client, executions, jobs=1)
    assert [(r.run_id, r.status, r.events, r.problem) for r in replayed] == [
        (first_run, "continued_as_new", len(runs[0]), None),
        (latest.run_id, "running", len(runs[1]), None),
    ]


async def test_html_report_of_an_unknown_deal_fails_cleanly(
    ts_env: WorkflowEnvironment, settings: Settings, sqlite_ledger: Engine, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    command = await asyncio.to_thread(
        l2c, "audit", "report", "deal-L-nobody", "--html", str(out),
        env={"TEMPORAL_ADDRESS": ts_env.client.service_client.config.target_host,
             "L2C_DATABASE_URL": str(sqlite_ledger.url)})  # fmt: skip
    assert command.returncode == 2, command.stdout + command.stderr
    assert command.stderr.startswith("l2c: deal-L-nobody: ")
    assert not out.exists()


# ---------------------------------------------------------------- replay --query, on the dev server
# The time-skipping server does not implement visibility queries (ListWorkflowExecutions).


@workflow.defn(name="DealWorkflow")
class DealWorkflowOfOtherCode:
    """A deal run by different code: its history cannot replay on today's DealWorkflow."""

    @workflow.run
    async def run(self, lead: dict[str, Any]) -> str:
        await asyncio.sleep(0.1)  # a timer the real deal never starts
        return f"done {lead['lead_id']}"


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
