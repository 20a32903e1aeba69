"""Connecting to Temporal, building the worker, starting deals: shared by the CLI, tests and bench."""

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import Engine
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.envconfig import ClientConfigProfile
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.service import RPCError
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import build_activities
from l2c.codec import data_converter
from l2c.config import BusinessRules, ConfigError, Settings
from l2c.db import init_ledger, make_engine, verify_ledger
from l2c.enrichment import EnrichmentClient
from l2c.faults import FaultInjector, FaultPlan
from l2c.gateway import PaymentGateway
from l2c.mail import Mailer
from l2c.price_books import register_price_book
from models.deal import WORKFLOW_TYPE, LeadInput, Stage, workflow_id_for
from models.search import ALL_KEYS, DEAL_STAGE, SEARCH_ATTRIBUTE_TYPES
from models.state import DealState
from workflows.deal import DealWorkflow


def cloud_credentials() -> dict[str, Any]:
    """TLS and an API key for Temporal Cloud or a secured cluster, from the Temporal SDK's own
    environment variables: `TEMPORAL_API_KEY`, `TEMPORAL_TLS`, `TEMPORAL_TLS_CLIENT_CERT_PATH`
    and `TEMPORAL_TLS_CLIENT_KEY_PATH` (mTLS), `TEMPORAL_TLS_SERVER_CA_CERT_PATH`. None set: a
    plain connection, as to a local server."""
    try:
        config = ClientConfigProfile.load(disable_file=True).to_client_connect_config()
    except (OSError, ValueError) as err:
        raise ConfigError(f"Temporal TLS/API key settings (TEMPORAL_TLS_*): {err}") from None
    return {key: config[key] for key in ("api_key", "tls") if key in config}


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.namespace,
            data_converter=data_converter(settings.codec_keyring),
            runtime=runtime,
            **cloud_credentials(),
        )
    except RuntimeError as err:  # the SDK reports an unreachable server as a RuntimeError
        raise ConnectionError(
            f"cannot reach Temporal at {settings.temporal_address} "
            f"(set TEMPORAL_ADDRESS, or start one with `l2c server`): {err}"
        ) from None


async def check_search_attributes(client: Client) -> None:
    """Refuse to start a worker on a namespace that lacks the deal's search attributes: each
    deal's workflow task would fail on its first upsert of one, and retry until it is added."""
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
    except RPCError as err:  # e.g. a cloud API key without the operator's rights: say, go on
        logging.getLogger(__name__).warning(
            "could not check the namespace's search attributes (%s); the deal needs %s",
            err.message,
            ", ".join(key.name for key in ALL_KEYS),
        )
        return
    missing = [key for key in ALL_KEYS if key.name not in listed.custom_attributes]
    if missing:
        commands = "; ".join(
            f"temporal operator search-attribute create --namespace {client.namespace} "
            f"--name {key.name} --type {SEARCH_ATTRIBUTE_TYPES[key.indexed_value_type]}"
            for key in missing
        )
        raise ConfigError(
            f"namespace {client.namespace!r} lacks the search attributes "
            f"{', '.join(key.name for key in missing)} that deals keep; add them "
            f"(`l2c server` does at its start), e.g.: {commands}"
        )


def worker_runtime(metrics_port: int | None, metrics_host: str = "0.0.0.0") -> Runtime:
    """The worker's Temporal runtime: the SDK core's own warnings go through Python logging (so
    JSON logs stay JSON), and with a port, the SDK's metrics (task slots, poll and schedule
    latencies, activity and workflow task outcomes) are served for Prometheus at
    http://host:port/metrics."""
    metrics = None
    if metrics_port is not None:
        metrics = PrometheusConfig(bind_address=f"{metrics_host}:{metrics_port}")
    logs = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logging.getLogger("temporal_sdk_core")),
    )
    return Runtime(telemetry=TelemetryConfig(logging=logs, metrics=metrics))


def open_ledger(settings: Settings) -> Engine:
    engine = make_engine(settings.database_url)
    init_ledger(engine)
    return engine


def read_ledger(settings: Settings) -> Engine:
    """The ledger as it is, for reports: nothing is created (see `verify_ledger`)."""
    engine = make_engine(settings.database_url)
    verify_ledger(engine)
    return engine


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox, with every module passed through instead of re-imported per deal.

    The deal workflow keeps no module-level state, and the sandbox still refuses I/O, clocks and
    randomness inside it. Re-importing pydantic and our models for each open deal cost memory per
    deal and time per replay (bench/README figures).
    """
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_all_modules()
    )


def build_worker(
    client: Client,
    engine: Engine,
    rules: BusinessRules,
    settings: Settings,
    task_queue: str | None = None,
    graceful_shutdown: timedelta = timedelta(0),
) -> Worker:
    mailer = Mailer(engine, settings.smtp_host, settings.smtp_port, settings.mail_from)
    gateway = None
    if settings.gateway_url:
        # Lives as long as the worker; a charge that hangs is abandoned after 30 s and retried.
        http = httpx.Client(timeout=httpx.Timeout(10.0, read=30.0))
        gateway = PaymentGateway(http, settings.gateway_url, settings.gateway_api_key)
    enrichment = None
    if settings.enrichment_url:
        # A slow enrichment service must not hold a lead up: 5 s, then the deal retries a few
        # times and goes on without it.
        enrichment = EnrichmentClient(settings.enrichment_url, settings.enrichment_api_key,
                                      httpx.Client(timeout=5.0), engine)  # fmt: skip
    register_price_book(engine, rules.catalog)
    activities = build_activities(engine, rules, mailer, gateway, enrichment)
    interceptors = []
    if settings.faults_json:
        plan = FaultPlan.parse(settings.faults_json, {fn.__name__ for fn in activities})
        logging.getLogger(__name__).warning("FAULT INJECTION ON: %s", settings.faults_json)
        interceptors.append(FaultInjector(plan))
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=[DealWorkflow],
        workflow_runner=workflow_runner(),
        activities=activities,
        # Ledger activities are synchronous SQLAlchemy code: they run on threads.
        activity_executor=ThreadPoolExecutor(max_workers=16),
        max_concurrent_activities=16,
        max_cached_workflows=settings.max_cached_workflows,
        interceptors=interceptors,
        # On shutdown, activities under way get this long to finish before they are cancelled
        # (and retried by another worker): a charge or an invoice is not cut off mid-call.
        graceful_shutdown_timeout=graceful_shutdown,
    )


async def start_deal(
    client: Client, lead: LeadInput, task_queue: str
) -> tuple[WorkflowHandle[DealWorkflow, DealState], bool]:
    """Start the deal of a lead; (handle, False) when the lead already has one, open or closed."""
    workflow_id = workflow_id_for(lead.lead_id)
    try:
        handle: WorkflowHandle[DealWorkflow, DealState] = await client.start_workflow(
            WORKFLOW_TYPE,
            lead,
            id=workflow_id,
            task_queue=task_queue,
            result_type=DealState,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(DEAL_STAGE, Stage.NEW.value)]
            ),
            static_summary=f"{lead.company} ({lead.country}), lead {lead.lead_id}",
        )
        return handle, True
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle(workflow_id, result_type=DealState), False


async def wait_for_state(
    handle: WorkflowHandle[Any, Any], check: Callable[[DealState], bool], timeout: float = 20
) -> DealState:
    """Poll the deal's `state` query in real time until `check` holds (TimeoutError after `timeout` s)."""
    async with asyncio.timeout(timeout):
        while True:
            state = await handle.query("state", result_type=DealState)
            if check(state):
                return state
            await asyncio.sleep(0.05)
