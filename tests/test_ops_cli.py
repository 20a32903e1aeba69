"""The ops CLI (`l2c deals`, `deal`, `approve`, `reject`, `accept`, `pay`) run as ops staff run it:
`l2c.cli.main` with its arguments, connecting through TEMPORAL_ADDRESS to the test's server, in a
thread of its own (it calls asyncio.run) while the test's worker serves the deals."""

import argparse
import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from l2c.cli import main
from l2c.codec import add_key, data_converter
from l2c.config import BusinessRules, Settings
from l2c.drill import free_port, start_time_skipping_env
from l2c.ops_cli import deal_workflow_id, deals_query, parse_age, payment_answer
from l2c.runtime import build_worker
from models.deal import WORKFLOW_TYPE, Stage
from models.signals import RecordPayment
from tests.helpers import (
    Handle,
    make_lead,
    own_worker,
    quote_to_signature,
    refusals,
    sign,
    signal,
    start,
    state_of,
    wait_for_stage,
    wait_until,
)

DISCOUNTED = {"submitted_by": "nora.na", "discount_percent": "15", "term_months": 12,
              "lines": [{"sku": "PLATFORM", "quantity": 10}]}  # fmt: skip  # needs a manager


@dataclass
class Ran:
    code: int
    out: str
    err: str


Runner = Callable[..., Awaitable[Ran]]


def cli_runner(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    client: Client,
    keyring: Path | None = None,
) -> Runner:
    monkeypatch.setenv("TEMPORAL_ADDRESS", client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", client.namespace)
    if keyring is None:
        monkeypatch.delenv("L2C_CODEC_KEYRING", raising=False)
    else:
        monkeypatch.setenv("L2C_CODEC_KEYRING", str(keyring))

    async def run(*argv: str) -> Ran:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


@pytest.fixture
def l2c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ts_env: WorkflowEnvironment
) -> Runner:
    return cli_runner(monkeypatch, capsys, ts_env.client)


def lead_id(handle: Handle) -> str:
    return handle.id.removeprefix("deal-")


async def awaiting_approval(client: Client, task_queue: str) -> Handle:
    handle = await start(client, task_queue)
    await wait_for_stage(handle, Stage.QUALIFIED)
    await signal(handle, "submit_quote", DISCOUNTED)
    state = await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
    assert state.pending_approval is not None
    assert "mia.manager" in state.pending_approval.eligible_approvers
    return handle


# ---------------------------------------------------------------- without a server


def test_filters_become_a_visibility_query_with_values_quoted() -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    query = deals_query(["awaiting_approval", "qualified", "awaiting_approval"], "nora.na",
                        timedelta(days=7), "running", now)  # fmt: skip
    assert query == (
        'WorkflowType="DealWorkflow" AND ExecutionStatus="Running" AND '
        'DealStage IN ("awaiting_approval", "qualified") AND DealOwner="nora.na" AND '
        'StartTime < "2026-03-03T12:00:00Z"'
    )
    # A quote in a value cannot end the literal and add a condition of its own.
    sneaky = deals_query(owner='x" OR WorkflowType="DealWorkflow', status="all")
    assert sneaky.endswith('DealOwner="x\\" OR WorkflowType=\\"DealWorkflow"')
    assert deals_query(owner="a\\", status="closed").endswith('DealOwner="a\\\\"')
    assert 'ExecutionStatus!="ContinuedAsNew"' in deals_query(status="closed")
    with pytest.raises(ValueError, match="control characters"):
        deals_query(owner="x\n OR 1=1")


def test_ages_and_deal_ids() -> None:
    assert parse_age("7d") == timedelta(days=7)
    assert parse_age("36h") == timedelta(hours=36)
    assert parse_age("1d12h") == timedelta(days=1, hours=12)
    assert parse_age("2w") == timedelta(weeks=2)
    for bad in ["", "7", "d", "3x", "-1d", "0d", "1h1d", "99999999999999d"]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_age(bad)
    assert deal_workflow_id("L-1001") == "deal-L-1001"
    assert deal_workflow_id(" deal-L-1001 ") == "deal-L-1001"


def test_bad_arguments_are_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(SystemExit) as exited:
        main(["deals", "--stage", "awaiting_aproval"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unknown stage 'awaiting_aproval'" in err
    assert ", ".join(s.value for s in Stage) in err  # the valid ones are listed
    # Payloads are checked by the workflow's own models: nothing is sent, exit 2.
    assert main(["pay", "L-1", "--amount", "12.345", "--reference", "R-1"]) == 2
    assert "record_payment not sent: amount" in capsys.readouterr().err
    assert main(["pay", "L-1", "--amount", "NaN", "--reference", "R-1"]) == 2
    assert main(["pay", "L-1", "--amount", "-5", "--reference", "R-1"]) == 2
    assert main(["reject", "L-1", "--as", "mia.manager", "--reason", "  "]) == 2
    assert "reject_discount not sent: reason" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["deals", "--limit", "0"])
    assert "'0' is not a whole number above 0" in capsys.readouterr().err
    assert main(["approve", "L-1"]) == 2
    assert "--as APPROVER" in capsys.readouterr().err
    # With a valid payload, the unreachable server is reported (l2c.cli.main's ConnectionError).
    assert main(["approve", "L-1", "--as", "mia.manager"]) == 2
    assert "cannot reach Temporal" in capsys.readouterr().err


# ---------------------------------------------------------------- approvals


async def test_approve_refused_with_the_workflows_reason_then_accepted(
    ts_env: WorkflowEnvironment, deal_worker: Settings, l2c: Runner
) -> None:
    handle = await awaiting_approval(ts_env.client, deal_worker.task_queue)
    ran = await l2c("approve", lead_id(handle), "--as", "nora.na")  # she submitted the quote
    assert ran.code == 1, ran
    assert "approve_discount refused: nobody may decide on their own quote" in ran.err
    state = await state_of(handle)
    assert state.stage == Stage.AWAITING_APPROVAL
    assert not refusals(state, "approve_discount")  # an update's validator records nothing

    ran = await l2c("approve", handle.id, "--as", "mia.manager", "--comment", "strategic logo")
    assert ran.code == 0, ran
    assert ran.out.strip() == f"{handle.id}: approved as manager: every approval is given"
    state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
    assert [(e.actor, e.detail) for e in state.events if e.kind == "discount_approved"] == [
        ("mia.manager", "strategic logo")
    ]
    # Nothing is pending any more: the deal says so.
    ran = await l2c("approve", handle.id, "--as", "mia.manager", "--json")
    assert ran.code == 1
    answer = json.loads(ran.out)
    assert answer["result"] == "refused"
    assert "not accepted in stage awaiting_signature" in answer["message"]


async def test_reject_returns_the_deal_to_qualified(
    ts_env: WorkflowEnvironment, deal_worker: Settings, l2c: Runner
) -> None:
    handle = await awaiting_approval(ts_env.client, deal_worker.task_queue)
    ran = await l2c("reject", lead_id(handle), "--as", "nico.na", "--reason", "too deep")
    assert ran.code == 1
    assert "reject_discount refused" in ran.err and "nico.na" in ran.err
    ran = await l2c("reject", lead_id(handle), "--as", "mia.manager", "--reason", "too deep")
    assert ran.code == 0, ran
    assert "rejected: the deal returns to qualified" in ran.out
    state = await wait_for_stage(handle, Stage.QUALIFIED)
    assert [(e.actor, e.detail) for e in state.events if e.kind == "discount_rejected"] == [
        ("mia.manager", "too deep")
    ]


async def test_accept_lead_only_by_its_owner(
    ts_env: WorkflowEnvironment, deal_worker: Settings, l2c: Runner
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await wait_until(handle, lambda s: s.stage == Stage.QUALIFIED and s.owner is not None)
    owner = state.owner
    assert owner is not None
    ran = await l2c("accept", lead_id(handle), "--as", "somebody.else")
    assert ran.code == 1
    assert f"the lead is routed to {owner}; only its owner accepts it" in ran.err
    ran = await l2c("accept", lead_id(handle), "--as", owner, "--note", "calling tomorrow")
    assert ran.code == 0, ran
    assert f"lead accepted by {owner}" in ran.out
    state = await state_of(handle)
    assert state.routing is not None and state.routing.accepted_by == owner


async def test_approvals_from_a_file_report_each_refused_line(
    ts_env: WorkflowEnvironment, deal_worker: Settings, l2c: Runner, tmp_path: Path
) -> None:
    first = await awaiting_approval(ts_env.client, deal_worker.task_queue)
    second = await awaiting_approval(ts_env.client, deal_worker.task_queue)
    path = tmp_path / "approvals.csv"
    path.write_text(
        "deal,approver,comment\n"
        f"{lead_id(first)},mia.manager,strategic logo\n"
        f"{second.id},nora.na,my own\n"  # line 3: the submitter
        f"{second.id},,\n"  # line 4: no approver, refused before sending
        "\n"
        f"{second.id},mia.manager,ok, fine\n"  # line 6: an unquoted comma: not cut short, refused
    )
    ran = await l2c("approve", "--file", str(path))
    assert ran.code == 1, ran
    lines = ran.out.strip().splitlines()
    assert lines[0].startswith(f"{path}:3: refused: {second.id}: approve_discount refused: ")
    assert "nobody may decide on their own quote" in lines[0]
    assert lines[1].startswith(f"{path}:4: refused: {second.id}: not sent: approver")
    assert (
        lines[2]
        == f"{path}:6: refused: {second.id}: not sent: more fields than the header names (quote a value that contains a comma)"
    )
    assert lines[-1] == "1 approved, 3 refused"
    await wait_for_stage(first, Stage.AWAITING_SIGNATURE)
    assert (await state_of(second)).stage == Stage.AWAITING_APPROVAL

    path.write_text("deal,who\nL-1,mia\n")
    ran = await l2c("approve", "--file", str(path))
    assert ran.code == 2
    assert "missing column(s) approver" in ran.err


# ---------------------------------------------------------------- payments


async def test_pay_applied_refused_and_counted_once(
    ts_env: WorkflowEnvironment, deal_worker: Settings, l2c: Runner
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle)
    invoice = state.invoices[0]
    assert invoice.status == "open" and invoice.balance > 0

    ran = await l2c("pay", lead_id(handle), "--invoice", invoice.number, "--amount",
                    str(invoice.balance), "--reference", "BANK-123", "--as", "fay.finance")  # fmt: skip
    assert ran.code == 0, ran
    assert f"payment BANK-123 applied ({invoice.balance} USD ref BANK-123: " in ran.out
    assert f"{invoice.number} is paid, balance 0.00 USD" in ran.out
    state = await state_of(handle)
    assert "BANK-123" in state.payment_references
    assert state.invoices[0].status == "paid"
    # Read from the state, a reference applied before the payment was sent is no answer yet (the
    # deal will refuse it as counted once); applied since, it is the answer.
    again = RecordPayment(amount=Decimal("5.00"), reference="BANK-123")
    seen = state.earlier_events + len(state.events)
    assert payment_answer(handle.id, again, state, seen, applied_before=True) is None
    applied = payment_answer(handle.id, again, state, seen, applied_before=False)
    assert applied is not None and applied.code == 0

    # An invoice the deal does not have: the deal's own reason, exit 1.
    ran = await l2c("pay", handle.id, "--invoice", "INV-999999", "--amount", "10.00",
                    "--reference", "BANK-124", "--as", "fay.finance")  # fmt: skip
    assert ran.code == 1, ran
    assert (
        f"payment BANK-124 refused: unknown invoice INV-999999 (this deal's invoices: {invoice.number}"
        in ran.err
    )
    # The same reference again is refused as counted once, not reported as applied.
    ran = await l2c("pay", handle.id, "--amount", "5.00", "--reference", "BANK-123", "--json")
    assert ran.code == 1, ran
    answer = json.loads(ran.out)
    assert answer["result"] == "refused"
    assert answer["reason"] == "reference BANK-123 was already applied; counted once"
    state = await state_of(handle)
    assert state.payment_references == ["BANK-123"]
    assert refusals(state, "record_payment") == [
        f"unknown invoice INV-999999 (this deal's invoices: {', '.join(i.number for i in state.invoices)})",
        "reference BANK-123 was already applied; counted once",
    ]


async def test_pay_from_a_file_with_bad_rows(
    ts_env: WorkflowEnvironment, deal_worker: Settings, l2c: Runner, tmp_path: Path
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle)
    invoice = state.invoices[0]
    path = tmp_path / "payments.csv"
    path.write_text(
        "deal,invoice,amount,reference\n"
        f"{lead_id(handle)},{invoice.number},{invoice.balance},BANK-1\n"
        f"{lead_id(handle)},INV-999999,10.00,BANK-2\n"  # line 3: the deal refuses it
        f"{lead_id(handle)},{invoice.number},12.345,BANK-3\n"  # line 4: not an amount
    )
    ran = await l2c("pay", "--file", str(path), "--as", "fay.finance")
    assert ran.code == 1, ran
    lines = ran.out.strip().splitlines()
    assert lines[0].startswith(
        f"{path}:3: refused: {handle.id}: payment BANK-2 refused: unknown invoice INV-999999"
    )
    assert lines[1].startswith(f"{path}:4: refused: {handle.id}: not sent: amount")
    assert lines[-1] == "1 applied, 2 refused"
    state = await state_of(handle)
    assert state.payment_references == ["BANK-1"]
    assert [(e.actor, e.detail) for e in state.events if e.kind == "refused:record_payment"] == [
        ("fay.finance", f"unknown invoice INV-999999 (this deal's invoices: {invoice.number})")
    ]


# ---------------------------------------------------------------- the deal view


async def test_deal_view_shows_approval_refusals_and_invoices(
    ts_env: WorkflowEnvironment, deal_worker: Settings, l2c: Runner
) -> None:
    handle = await awaiting_approval(ts_env.client, deal_worker.task_queue)
    await signal(handle, "approve_discount", {"approver": "nora.na"})  # a signal: refusal recorded
    await wait_until(handle, lambda s: len(refusals(s, "approve_discount")) == 1)
    ran = await l2c("deal", lead_id(handle))
    assert ran.code == 0, ran
    out = ran.out
    assert handle.id in out and "Acme Corp (US)" in out
    assert "awaiting_approval" in out
    assert "Pending approval: quote v1, 15% by nora.na" in out
    assert "mia.manager, victor.vp, carla.cfo" in out
    assert "refused:approve_discount" in out and "nobody may decide on their own quote" in out

    await signal(handle, "approve_discount", {"approver": "mia.manager"})
    await sign(handle, await wait_for_stage(handle, Stage.AWAITING_SIGNATURE))
    state = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE and len(s.invoices) >= 1)
    invoice = state.invoices[0]
    ran = await l2c("deal", handle.id, "--events", "3")
    assert ran.code == 0, ran
    assert state.contract is not None
    assert f"sha256 {state.contract.document_sha256}; signed by Ada Lovelace" in ran.out
    assert "Invoices (USD)" in ran.out
    row = next(line for line in ran.out.splitlines() if line.strip().startswith(invoice.number))
    assert row.split()[1:2] == ["open"] and row.split()[-1] == f"{invoice.balance:,.2f}"
    assert "Last 3 events" in ran.out

    ran = await l2c("deal", handle.id, "--json")
    data = json.loads(ran.out)
    assert data["stage"] == "active" and data["workflow_status"] == "running"
    assert data["invoices"][0]["number"] == invoice.number


async def test_unknown_deal_is_a_clear_error(
    ts_env: WorkflowEnvironment, deal_worker: Settings, l2c: Runner
) -> None:
    missing = f"L-none-{uuid.uuid4().hex[:6]}"
    for argv in (["deal", missing], ["approve", missing, "--as", "mia.manager"],
                 ["reject", missing, "--as", "mia.manager", "--reason", "no"],
                 ["pay", missing, "--amount", "1.00", "--reference", "R-1"]):  # fmt: skip
        ran = await l2c(*argv)
        assert ran.code == 2, (argv, ran)
        assert f"no deal deal-{missing} (unknown workflow id)" in ran.err


@pytest.mark.own_clock  # a deal nobody serves would hold the module's clock
async def test_a_deal_no_worker_serves_says_so(ts_env: WorkflowEnvironment, l2c: Runner) -> None:
    lead = make_lead()
    handle = await ts_env.client.start_workflow(
        WORKFLOW_TYPE, lead, id=f"deal-{lead.lead_id}", task_queue=f"nobody-{uuid.uuid4().hex[:6]}"
    )
    try:
        ran = await l2c("deal", handle.id, "--timeout", "2")
        assert ran.code == 3, ran
        assert "no worker answered the state query within 2 s" in ran.err
        ran = await l2c(
            "pay", handle.id, "--amount", "1.00", "--reference", "R-1", "--timeout", "2"
        )
        assert ran.code == 3, ran
        assert "the payment was not sent" in ran.err
    finally:
        await handle.terminate("test finished")


# ---------------------------------------------------------------- l2c deals (visibility)


async def listed(l2c: Runner, *argv: str) -> list[dict[str, Any]]:
    ran = await l2c("deals", *argv, "--json")
    assert ran.code == 0, ran
    return list(json.loads(ran.out))


@pytest.mark.devserver
async def test_deals_lists_by_stage_owner_and_age(
    dev_env: WorkflowEnvironment,
    sqlite_ledger: Engine,
    rules: BusinessRules,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    l2c = cli_runner(monkeypatch, capsys, dev_env.client)
    async with build_worker(dev_env.client, sqlite_ledger, rules, settings):
        approving = await awaiting_approval(dev_env.client, settings.task_queue)
        qualified = await start(dev_env.client, settings.task_queue, country="GB")
        await wait_until(qualified, lambda s: s.stage == Stage.QUALIFIED and s.owner is not None)
        mine = {approving.id, qualified.id}

        # Visibility follows the search attributes a moment later.
        async with asyncio.timeout(30):
            while True:
                rows = await listed(l2c, "--stage", "awaiting_approval", "--stage", "qualified")
                found = {row["deal_id"]: row for row in rows}
                if mine <= set(found) and found[approving.id]["stage"] == "awaiting_approval":
                    break
                await asyncio.sleep(0.5)
        assert found[approving.id]["owner"] == "nora.na"
        assert found[approving.id]["amount"] == 5100.0
        assert found[qualified.id]["stage"] == "qualified"
        assert found[qualified.id]["owner"] in ("emil.emea", "elsa.emea")

        rows = await listed(l2c, "--stage", "awaiting_approval")
        assert approving.id in {r["deal_id"] for r in rows}
        assert all(r["stage"] == "awaiting_approval" for r in rows)
        assert qualified.id not in {r["deal_id"] for r in rows}

        owner = found[qualified.id]["owner"]
        rows = await listed(l2c, "--owner", owner)
        assert qualified.id in {r["deal_id"] for r in rows}
        assert approving.id not in {r["deal_id"] for r in rows}
        assert all(r["owner"] == owner for r in rows)

        assert await listed(l2c, "--older-than", "1h") == []  # both were started just now
        assert await listed(l2c, "--status", "closed") == []
        # A quote in the owner filter is part of the value, not a condition of its own.
        assert await listed(l2c, "--owner", 'x" OR WorkflowType="DealWorkflow') == []

        ran = await l2c("deals", "--stage", "awaiting_approval")
        assert ran.code == 0
        row = next(line for line in ran.out.splitlines() if approving.id in line)
        assert row.split()[1:4] == ["awaiting_approval", "nora.na", "5,100.00"]
        assert row.split()[-1] == "running"

        # A closed deal still answers its state query while a worker runs.
        await qualified.terminate("test finished")
        ran = await l2c("deal", qualified.id)
        assert ran.code == 0, ran
        assert "terminated" in ran.out and "qualified" in ran.out
        async with asyncio.timeout(30):
            while qualified.id not in {
                r["deal_id"] for r in await listed(l2c, "--status", "closed")
            }:
                await asyncio.sleep(0.5)
        await approving.terminate("test finished")
    # With no worker, the query cannot be answered: said so, exit 3.
    ran = await l2c("deal", qualified.id, "--timeout", "2")
    assert ran.code == 3, ran
    assert "no worker answered" in ran.err and "the deal is closed (terminated)" in ran.err
    # A queue no worker ever polled: the server says so at once; so does the CLI.
    lead = make_lead()
    unserved = await dev_env.client.start_workflow(
        WORKFLOW_TYPE, lead, id=f"deal-{lead.lead_id}", task_queue=f"nobody-{uuid.uuid4().hex[:6]}"
    )
    try:
        ran = await l2c("deal", unserved.id, "--timeout", "5")
        assert ran.code == 3, ran
        assert "no worker answered the state query" in ran.err
    finally:
        await unserved.terminate("test finished")


# ---------------------------------------------------------------- payloads encrypted


@pytest.mark.own_clock
async def test_with_payload_encryption_the_cli_reads_and_acts_through_the_keyring(
    sqlite_ledger: Engine,
    rules: BusinessRules,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keyring = tmp_path / "codec-keyring.toml"
    add_key(keyring)
    settings = settings.model_copy(update={"codec_keyring": keyring})
    async with (
        await start_time_skipping_env(data_converter(keyring)) as env,
        own_worker(env.client, sqlite_ledger, rules, settings),
    ):
        handle = await awaiting_approval(env.client, settings.task_queue)
        l2c = cli_runner(monkeypatch, capsys, env.client, keyring)
        # The refusal travels encrypted in the failure; the CLI decrypts it like any client.
        ran = await l2c("approve", handle.id, "--as", "nora.na")
        assert ran.code == 1, ran
        assert "nobody may decide on their own quote" in ran.err
        ran = await l2c("approve", handle.id, "--as", "mia.manager")
        assert ran.code == 0, ran
        state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
        assert state.contract is not None
        ran = await l2c("deal", handle.id)
        assert ran.code == 0, ran
        assert "awaiting_signature" in ran.out and state.contract.document_sha256 in ran.out
        # Without the keyring the state cannot be read: said so, not a traceback.
        blind = cli_runner(monkeypatch, capsys, env.client)
        ran = await blind("deal", handle.id)
        assert ran.code == 1, ran
        assert "cannot decode the deal's answer" in ran.err and "L2C_CODEC_KEYRING" in ran.err
