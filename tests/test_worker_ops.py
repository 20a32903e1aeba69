"""Running the worker in production: a SIGTERM lets activities under way finish, logs are JSON
lines that name the deal, and the SDK's metrics are served for Prometheus."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from l2c.cli import main
from l2c.codec import data_converter
from l2c.config import ConfigError
from l2c.db import make_engine
from l2c.drill import Drill, drill_config, free_port, start_process
from l2c.logs import JsonLogFormatter, TextLogFormatter
from l2c.runtime import check_search_attributes, cloud_credentials, start_deal
from models.deal import TASK_QUEUE
from models.ledger import Lead
from models.search import DEAL_STAGE
from tests.conftest import BIN
from tests.helpers import Handle, make_lead

SLOW_SECONDS = 4


def worker_env(drill: Drill, slow_seconds: float = SLOW_SECONDS) -> dict[str, str]:
    return {
        **os.environ,
        "TEMPORAL_ADDRESS": drill.address,
        "L2C_CONFIG_DIR": str(drill.config_dir),
        "L2C_DATA_DIR": str(drill.folder),
        "L2C_DATABASE_URL": drill.ledger_url,
        # The deal's first activity takes a few seconds: long enough to stop the worker in it.
        "L2C_FAULTS": json.dumps({"resolve_identity": {"kind": "slow", "seconds": slow_seconds}}),
    }


async def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def start_worker_in_an_activity(
    drill: Drill, log_path: Path, slow_seconds: float, *flags: str
) -> tuple["subprocess.Popen[bytes]", Handle]:
    """A worker process (with `flags`) on the drill's server, and a deal whose first activity
    it is running (slowed down by `slow_seconds`)."""
    drill.start_server()
    worker = start_process(
        ["-m", "l2c.cli", "worker", "--log-format", "json", *flags],
        log_path,
        worker_env(drill, slow_seconds),
    )
    client = await Client.connect(drill.address, data_converter=data_converter(None))
    handle, _ = await start_deal(client, make_lead(), TASK_QUEUE)

    async def under_way() -> bool:
        pending = (await handle.describe()).raw_description.pending_activities
        return any(
            a.activity_type.name == "resolve_identity" and a.HasField("last_started_time")
            for a in pending
        )

    await wait_for(under_way, 30, "resolve_identity to start")
    return worker, handle


async def stop(worker: "subprocess.Popen[bytes]") -> tuple[int, float]:
    """SIGTERM, as an orchestrator stops a container; (exit code, seconds it took)."""
    stopping = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(worker.wait, 30)
    return code, time.monotonic() - stopping


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.devserver
async def test_sigterm_lets_the_activity_finish_logs_name_the_deal_metrics_are_served(
    tmp_path: Path,
) -> None:
    drill = Drill(tmp_path, drill_config(tmp_path / "config"))
    metrics_port = free_port()
    log_path = tmp_path / "worker.log"
    flags = ["--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1",
             "--shutdown-grace", "20"]  # fmt: skip
    worker = None
    try:
        worker, handle = await start_worker_in_an_activity(drill, log_path, SLOW_SECONDS, *flags)
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert "temporal_worker_task_slots_available" in metrics
        assert 'task_queue="lead-to-cash"' in metrics

        code, took = await stop(worker)
        assert code == 0, log_path.read_text()
        # It waited for the activity (about SLOW_SECONDS), and not for the whole grace period.
        assert 1 < took < 15, took

        # The activity finished on the stopping worker: completed in the history, its write in
        # the ledger, no attempt failed or timed out, and no worker is running now.
        kinds = {
            event.event_type: event
            async for event in handle.fetch_history_events()
            if event.event_type
            in (
                EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
                EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
            )
        }
        assert list(kinds) == [EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED]
        engine = make_engine(drill.ledger_url)
        with Session(engine) as session:
            assert session.exec(select(Lead)).one().lead_id == handle.id.removeprefix("deal-")
        engine.dispose()

        lines = json_lines(log_path)
        messages = [line["message"] for line in lines]
        assert any(m.startswith("worker on task queue 'lead-to-cash'") for m in messages)
        assert any(m.startswith("stopping: no new tasks") for m in messages)
        assert messages[-1] == "worker stopped"
        injected = [line for line in lines if line["message"].startswith("injecting slow")]
        assert injected and injected[0]["deal_id"] == handle.id
        assert injected[0]["activity"] == "resolve_identity" and injected[0]["attempt"] == 1
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        drill.stop()


@pytest.mark.devserver
async def test_an_activity_outlasting_the_grace_is_left_for_another_worker(
    tmp_path: Path,
) -> None:
    drill = Drill(tmp_path, drill_config(tmp_path / "config"))
    log_path = tmp_path / "worker.log"
    worker = None
    try:
        worker, handle = await start_worker_in_an_activity(
            drill, log_path, 30, "--shutdown-grace", "1"
        )
        code, took = await stop(worker)
        assert code == 1 and took < 10, (code, took)
        assert json_lines(log_path)[-1]["message"] == (
            "activities still running after 1 s: leaving them to be retried by another worker"
        )
        # Its attempt is still the server's to time out and retry; nothing reached the ledger.
        pending = (await handle.describe()).raw_description.pending_activities
        assert [a.activity_type.name for a in pending] == ["resolve_identity"]
        engine = make_engine(drill.ledger_url)
        with Session(engine) as session:
            assert session.exec(select(Lead)).all() == []
        engine.dispose()
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        drill.stop()


def record(name: str, message: str, **extra: Any) -> logging.LogRecord:
    entry = logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)
    entry.__dict__.update(extra)
    return entry


def test_log_lines_carry_the_deal_of_workflow_and_activity_records() -> None:
    workflow_record = record(
        "temporalio.workflow",
        "refused approve_discount",
        temporal_workflow={"workflow_id": "deal-L-1", "run_id": "r1", "workflow_type": "Deal"},
    )
    activity_record = record(
        "temporalio.activity",
        "charging",
        temporal_activity={"workflow_id": "deal-L-2", "workflow_run_id": "r2",
                           "activity_type": "charge_card", "attempt": 3},
    )  # fmt: skip
    plain = record("l2c.worker", "worker stopped")
    as_json = JsonLogFormatter()
    first = json.loads(as_json.format(workflow_record))
    assert (first["deal_id"], first["run_id"], first["level"]) == ("deal-L-1", "r1", "info")
    second = json.loads(as_json.format(activity_record))
    assert (second["deal_id"], second["activity"], second["attempt"]) == (
        "deal-L-2",
        "charge_card",
        3,
    )
    assert "deal_id" not in json.loads(as_json.format(plain))
    assert first["at"].endswith("+00:00")
    assert TextLogFormatter().format(plain).endswith("l2c.worker: worker stopped")


def test_worker_refuses_a_bad_log_format_or_grace(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("L2C_LOG_FORMAT", "xml")
    assert main(["worker"]) == 2
    assert "L2C_LOG_FORMAT must be text or json, not 'xml'" in capsys.readouterr().err
    monkeypatch.delenv("L2C_LOG_FORMAT")
    assert main(["worker", "--shutdown-grace", "-1"]) == 2
    assert "--shutdown-grace must be 0 or more seconds" in capsys.readouterr().err


def test_temporal_cloud_credentials_come_from_the_sdk_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("TEMPORAL_API_KEY", "TEMPORAL_TLS", "TEMPORAL_TLS_CLIENT_CERT_PATH",
                 "TEMPORAL_TLS_CLIENT_KEY_PATH"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert cloud_credentials() == {}  # a local server: plain connection
    monkeypatch.setenv("TEMPORAL_API_KEY", "cloud-key-123")
    credentials = cloud_credentials()
    assert credentials["api_key"] == "cloud-key-123"
    assert credentials["tls"] is True  # an API key is only sent over TLS
    monkeypatch.delenv("TEMPORAL_API_KEY")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_CERT_PATH", str(cert))
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", str(key))
    tls = cloud_credentials()["tls"]
    assert tls.client_cert == cert.read_bytes() and tls.client_private_key == key.read_bytes()
    monkeypatch.setenv("TEMPORAL_TLS_CLIENT_KEY_PATH", str(tmp_path / "missing.key"))
    with pytest.raises(ConfigError, match=r"missing\.key"):
        cloud_credentials()


@pytest.mark.devserver
async def test_a_worker_refuses_a_namespace_without_the_deals_search_attributes(
    dev_env: WorkflowEnvironment,
) -> None:
    await check_search_attributes(dev_env.client)  # all of them: fine
    async with await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=[DEAL_STAGE],
        port=free_port(),
    ) as bare:
        with pytest.raises(ConfigError) as refused:
            await check_search_attributes(bare.client)
    message = str(refused.value)
    assert "lacks the search attributes DealOwner, DealAmount, DealApprovers" in message
    assert "--name DealApprovers --type KeywordList" in message
    assert "--name DealStage " not in message
