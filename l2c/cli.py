"""`l2c`: run the embedded server, the worker, start deals, run the demo, audit deals."""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from l2c.config import PROJECT_ROOT, ConfigError, Settings, load_business_rules
from l2c.db import LedgerSchemaOutdated
from l2c.kpi_cli import add_kpi_parser

if TYPE_CHECKING:
    from temporalio.client import Client

    from l2c.local_http import BackgroundServer
    from models.deal import LeadInput


def _fail(message: str, code: int = 2) -> int:
    print(f"l2c: {message}", file=sys.stderr)
    return code


# ---------------------------------------------------------------- server


def cmd_server(args: argparse.Namespace) -> int:
    from l2c.server import server_command

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    command = server_command(
        data_dir,
        args.port,
        args.ui_port,
        headless=args.headless,
        codec_endpoint=args.codec_endpoint,
    )
    print(
        f"Temporal dev server on 127.0.0.1:{args.port}, Web UI http://127.0.0.1:{args.ui_port}, data in {data_dir}"
    )
    os.execv(command[0], command)  # the server is the process: Ctrl-C and signals reach it directly


# ---------------------------------------------------------------- worker


async def _run_worker(
    settings: Settings,
    stop: asyncio.Event,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
    shutdown_grace: float = 10,
) -> bool:
    """Run a worker until `stop`; False when it had to leave activities unfinished."""
    from l2c.runtime import (
        build_worker,
        check_search_attributes,
        connect,
        open_ledger,
        worker_runtime,
    )

    log = logging.getLogger("l2c.worker")
    rules = load_business_rules(settings.config_dir)
    engine = open_ledger(settings)
    client = await connect(settings, worker_runtime(metrics_port, metrics_host))
    await check_search_attributes(client)
    grace = timedelta(seconds=shutdown_grace)
    worker = build_worker(client, engine, rules, settings, graceful_shutdown=grace)
    log.info(
        "worker on task queue %r at %s, ledger %r%s",
        settings.task_queue,
        settings.temporal_address,
        engine.url,
        f", metrics on http://{metrics_host}:{metrics_port}/metrics" if metrics_port else "",
    )
    running = asyncio.create_task(worker.run())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
    if running.done():  # a fatal worker error: raise it
        stopping.cancel()
        running.result()
        return True
    log.info(
        "stopping: no new tasks; activities under way get up to %g s to finish", shutdown_grace
    )
    # The SDK cannot interrupt an activity running on a thread (ours do): past the grace, the
    # worker leaves without it. Its database transaction dies uncommitted, and the server gives
    # the attempt to another worker after its timeout; activities are idempotent, so nothing
    # is done twice.
    try:
        await asyncio.wait_for(asyncio.shield(worker.shutdown()), shutdown_grace + 2)
    except TimeoutError:
        log.error(
            "activities still running after %g s: leaving them to be retried by another worker",
            shutdown_grace,
        )
        return False
    await running
    log.info("worker stopped")
    return True


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def cmd_worker(args: argparse.Namespace) -> int:
    from l2c.logs import configure_logging

    if args.log_format not in ("text", "json"):  # argparse checks a flag, not a default from env
        return _fail(f"L2C_LOG_FORMAT must be text or json, not {args.log_format!r}")
    if args.shutdown_grace < 0:
        return _fail("--shutdown-grace must be 0 or more seconds")
    configure_logging(args.log_format)

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        settings = Settings.from_env()
        grace = args.shutdown_grace
        if not await _run_worker(settings, stop, args.metrics_port, args.metrics_host, grace):
            # A thread still in an activity would hold up the interpreter's exit (and asyncio's
            # clean-up would wait for it): leave now.
            logging.shutdown()
            os._exit(1)

    asyncio.run(main())
    return 0


# ---------------------------------------------------------------- start


def cmd_start(args: argparse.Namespace) -> int:
    from l2c.leads_io import parse_lead, read_leads

    if args.demo:
        from l2c.demo import DEMO_LEADS

        leads, errors = list(DEMO_LEADS), list[str]()
    elif args.lead is not None:
        try:
            leads, errors = [parse_lead(json.loads(args.lead))], list[str]()
        except json.JSONDecodeError as err:
            return _fail(f"--lead is not JSON: {err.msg}")
        except ValueError as err:
            return _fail(f"lead refused: {err}")
    else:
        path = Path(args.file)
        if not path.is_file():
            return _fail(f"no such lead file: {path}")
        leads, errors = read_leads(path)
    for error in errors:
        print(f"refused {error}", file=sys.stderr)
    started, existing, unsent = asyncio.run(_start_leads(leads)) if leads else (0, 0, 0)
    print(
        f"{started} started, {existing} already had a deal, {len(errors)} refused"
        + (f", {unsent} not sent (run again: those started count as already having a deal)"
           if unsent else "")
    )  # fmt: skip
    return 1 if errors or unsent else 0


async def _start_leads(leads: list["LeadInput"]) -> tuple[int, int, int]:
    """Start each lead's deal, in order, with progress on standard error: (started, already had a
    deal, not sent because Temporal refused or went away, which stops the batch)."""
    from temporalio.service import RPCError

    from l2c.leads_io import Progress
    from l2c.runtime import connect, start_deal

    settings = Settings.from_env()
    client = await connect(settings)
    progress = Progress(len(leads))
    started = existing = 0
    try:
        for lead in leads:
            handle, created = await start_deal(client, lead, settings.task_queue)
            started += created
            existing += not created
            progress.note(f"{'started' if created else 'exists '} {handle.id}")
            progress.advance()
    except (RPCError, RuntimeError) as err:
        sent = started + existing
        progress.note(f"stopped at lead {leads[sent].lead_id}: {err}", out=sys.stderr)
    finally:
        progress.close()
    return started, existing, len(leads) - started - existing


# ---------------------------------------------------------------- dev


def cmd_dev(args: argparse.Namespace) -> int:
    from l2c.server import start_server

    data_dir = Path(args.data_dir)
    # Validate the configuration before starting a server, so a mistake is reported first and alone.
    settings = Settings.from_env()
    load_business_rules(settings.config_dir)
    codec_server = None
    if settings.codec_keyring is not None:
        from l2c.codec import EncryptionCodec, Keyring
        from l2c.codec_server import codec_endpoint

        origins = [f"http://{host}:{args.ui_port}" for host in ("localhost", "127.0.0.1")]
        codec = EncryptionCodec(Keyring.load(settings.codec_keyring))
        codec_server = codec_endpoint(args.codec_port, codec, origins)
        codec_server.start()
    endpoint = f"http://127.0.0.1:{codec_server.port}" if codec_server else None
    server = start_server(data_dir, args.port, args.ui_port, codec_endpoint=endpoint)
    if endpoint:
        print(
            f"Payloads are encrypted ({settings.codec_keyring}); the Web UI decrypts via {endpoint}"
        )
    from l2c.logs import configure_logging

    # The worker's own lines (start, stop, an abandoned activity) and warnings; not every
    # library's INFO chatter.
    configure_logging("text", logging.WARNING)
    logging.getLogger("l2c").setLevel(logging.INFO)
    clean = True
    try:
        clean = asyncio.run(_dev(args, data_dir))
    finally:
        if codec_server is not None:
            codec_server.stop()
        server.terminate()
        with contextlib.suppress(Exception):
            server.wait(timeout=15)
    if not clean:  # a thread still in an activity would hold up the exit
        logging.shutdown()
        os._exit(1)
    return 0


async def _dev(args: argparse.Namespace, data_dir: Path) -> bool:
    from l2c.demo import start_demo_deals
    from l2c.enrichment_sandbox import SandboxEnrichment
    from l2c.gateway_sandbox import SandboxGateway
    from l2c.intake import intake_endpoint, intake_url
    from l2c.mailcatcher import MailCatcher
    from l2c.runtime import connect, open_ledger
    from l2c.webhooks import webhook_endpoint, webhook_url

    catcher = MailCatcher(data_dir / "mailbox", port=args.smtp_port)
    catcher.start()
    settings = Settings.from_env().model_copy(
        update={
            "temporal_address": f"127.0.0.1:{args.port}",
            "smtp_host": "127.0.0.1",
            "smtp_port": args.smtp_port,
            "data_dir": data_dir,
            # Cards on file are charged through the sandbox gateway started below.
            "gateway_url": os.environ.get("L2C_GATEWAY_URL")
            or f"http://127.0.0.1:{args.gateway_port}",
            # Leads are enriched from the sandbox started below, unless a service is configured.
            "enrichment_url": os.environ.get("L2C_ENRICHMENT_URL")
            or f"http://127.0.0.1:{args.enrichment_port}",
        }
    )
    if not os.environ.get("L2C_DATABASE_URL"):
        settings = settings.model_copy(
            update={"database_url": f"sqlite:///{data_dir / 'ledger.db'}"}
        )
    stop = asyncio.Event()
    _stop_on_signals(stop)
    enrichment = SandboxEnrichment(args.enrichment_port, settings.enrichment_api_key)
    enrichment.start()
    worker = asyncio.create_task(_run_worker(settings, stop))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(stop.set)
        cleanup.callback(catcher.stop)
        cleanup.callback(enrichment.stop)
        client = await connect(settings)
        # The sandbox gateway announces each charge to the webhook endpoint, which signals the deal.
        secret = os.environ.get("L2C_WEBHOOK_SECRET") or DEV_WEBHOOK_SECRET
        webhooks = webhook_endpoint(args.webhook_port, secret, client, open_ledger(settings))
        webhooks.start()
        cleanup.callback(webhooks.stop)
        gateway = SandboxGateway(args.gateway_port, webhook=(webhook_url(webhooks), secret))
        gateway.start()
        cleanup.callback(gateway.stop)
        # Upstream systems post leads here; the dev key is printed, a configured one is not.
        keys = settings.intake_api_keys or [DEV_INTAKE_KEY]
        intake = intake_endpoint(args.intake_port, keys, client, settings.task_queue)
        intake.start()
        cleanup.callback(intake.stop)
        key = "<a key from L2C_INTAKE_API_KEYS>" if settings.intake_api_keys else DEV_INTAKE_KEY
        deals = await start_demo_deals(client, settings.task_queue)
        ui = f"http://127.0.0.1:{args.ui_port}/namespaces/{settings.namespace}/workflows"
        print(_DEV_BANNER.format(ui=ui, deals=", ".join(deals), address=settings.temporal_address,
                                 mailbox=data_dir / "mailbox", ledger=settings.database_url,
                                 gateway=gateway.url, webhooks=webhook_url(webhooks),
                                 intake=intake_url(intake), intake_key=key,
                                 enrichment=settings.enrichment_url))  # fmt: skip
        return await worker


# The sandbox's signing secret; a real gateway's comes from L2C_WEBHOOK_SECRET.
DEV_WEBHOOK_SECRET = "whsec_l2c_dev"
# The intake's key under `l2c dev` when L2C_INTAKE_API_KEYS is not set; `l2c intake` has none.
DEV_INTAKE_KEY = "l2c_dev_intake_key"
INTAKE_PORT = 12113


def cmd_webhooks(args: argparse.Namespace) -> int:
    from l2c.runtime import open_ledger
    from l2c.webhooks import webhook_endpoint, webhook_url

    secret = os.environ.get("L2C_WEBHOOK_SECRET")
    if not secret:
        return _fail("set L2C_WEBHOOK_SECRET to the gateway's webhook signing secret")

    def endpoint(client: "Client", settings: Settings) -> tuple["BackgroundServer", str]:
        served = webhook_endpoint(args.port, secret, client, open_ledger(settings))
        return served, f"webhook endpoint on {webhook_url(served)}"

    return _serve(endpoint)


def cmd_intake(args: argparse.Namespace) -> int:
    from l2c.intake import intake_endpoint, intake_url

    if not Settings.from_env().intake_api_keys:
        return _fail(
            "set L2C_INTAKE_API_KEYS to the API keys upstream systems will send (comma-separated);"
            " the endpoint does not serve without one"
        )

    def endpoint(client: "Client", settings: Settings) -> tuple["BackgroundServer", str]:
        served = intake_endpoint(
            args.port, settings.intake_api_keys, client, settings.task_queue, host=args.host
        )
        openapi = f"http://127.0.0.1:{served.port}/openapi.json"
        return served, f"intake endpoint on {intake_url(served)} (OpenAPI: {openapi})"

    return _serve(endpoint)


def _serve(endpoint: Callable[["Client", Settings], tuple["BackgroundServer", str]]) -> int:
    """Serve the HTTP endpoint `endpoint` builds (with what to print) until SIGINT or SIGTERM."""
    from l2c.runtime import connect

    async def main() -> None:
        settings = Settings.from_env()
        await _serve_until_stopped(*endpoint(await connect(settings), settings))

    asyncio.run(main())
    return 0


async def _serve_until_stopped(served: "BackgroundServer", banner: str) -> None:
    served.start()
    print(banner)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    try:
        await stop.wait()
    finally:
        served.stop()


_DEV_BANNER = """
Lead-to-cash is running.
  Web UI:   {ui}
  Deals:    {deals}
  Ledger:   {ledger}
  E-mail:   {mailbox} (local mail catcher)
  Payments: {gateway} (sandbox gateway, Stripe-compatible; any sk_test_ key)
  Webhooks: {webhooks} (signed gateway events signal the deals)
  Enrich:   {enrichment} (sandbox firmographics service; set L2C_ENRICHMENT_URL for a real one)
  Intake:   {intake} (POST a lead with an API key; OpenAPI at /openapi.json)

Try, in another terminal (TEMPORAL_ADDRESS={address}):
  temporal workflow query  --workflow-id deal-L-1001 --type state
  temporal workflow signal --workflow-id deal-L-1001 --name approve_discount \\
      --input '{{"approver": "mia.manager", "comment": "strategic logo"}}'
  temporal workflow query  --workflow-id deal-L-1001 --type state   # copy contract.document_sha256
  temporal workflow signal --workflow-id deal-L-1001 --name sign_contract \\
      --input '{{"signer_name": "Ada Lovelace", "signer_email": "ada@acme.example", "document_sha256": "<sha256>"}}'
  curl -i {intake} -H 'Authorization: Bearer {intake_key}' -H 'Content-Type: application/json' \\
      -d '{{"lead_id": "L-2001", "company": "Umbrella Ltd", "contact_name": "Alice Abernathy", "contact_email": "alice@umbrella.example", "country": "GB", "employees": 400}}'
Ctrl-C stops the worker and the server; deals continue on the next `l2c dev`.
"""


# ---------------------------------------------------------------- audit


def cmd_audit_replay(args: argparse.Namespace) -> int:
    from l2c.audit import (
        CLOSED_DEALS,
        core_logs_to_stderr,
        replay_in_parallel,
        replay_query_command,
    )

    core_logs_to_stderr()
    query = CLOSED_DEALS if args.closed else args.query
    if query is not None and args.histories:
        return _fail("give history files, or --query/--closed for the server's, not both")
    if query is None and not args.histories:
        return _fail("give history files, or --query/--closed for the server's")
    if query is not None:
        _exit_now(replay_query_command(Settings.from_env(), query, args.jobs))
    paths = list(dict.fromkeys(Path(p) for p in args.histories))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return _fail(f"no such history file: {', '.join(missing)}")
    results = replay_in_parallel(paths, args.jobs, Settings.from_env().codec_keyring)
    failed = 0
    for path, problem in results:
        print(
            f"{'ok    ' if problem is None else 'FAILED'} {path}{'' if problem is None else ': ' + problem}"
        )
        failed += problem is not None
    print(f"{len(results) - failed} replayed, {failed} failed")
    _exit_now(1 if failed else 0)


def _exit_now(code: int) -> NoReturn:
    # The verdict is out. The SDK's Rust runtime has been seen to crash (SIGSEGV) while the
    # interpreter tears down after a failed replay, which would turn exit 1 into -11: leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_audit_report(args: argparse.Namespace) -> int:
    from temporalio.service import RPCError

    from l2c.audit import decision_timeline
    from l2c.runtime import connect

    if args.html is not None:
        from l2c.audit_report import write_html_report

        try:
            return asyncio.run(write_html_report(Settings.from_env(), args.workflow_id,
                                                 Path(args.html)))  # fmt: skip
        except RPCError as err:
            return _fail(f"{args.workflow_id}: {err.message}")

    async def main() -> list[tuple[object, str, str, str]]:
        client = await connect(Settings.from_env())
        return list(await decision_timeline(client, args.workflow_id))

    try:
        rows = asyncio.run(main())
    except RPCError as err:
        return _fail(f"{args.workflow_id}: {err.message}")
    print(f"Decision timeline of {args.workflow_id} (UTC)")
    for at, what, who, detail in rows:
        print(f"{at:%Y-%m-%d %H:%M:%S}  {what:<34} {who:<18} {detail}")
    return 0


def cmd_audit_ledger(_args: argparse.Namespace) -> int:
    from l2c.ledger_check import check_ledger
    from l2c.runtime import open_ledger

    settings = Settings.from_env()
    engine = open_ledger(settings)
    problems = check_ledger(engine)
    for problem in problems:
        print(f"BROKEN {problem}")
    print(
        f"ledger {engine.url!r}: "
        + ("sound" if not problems else f"{len(problems)} broken invariant(s)")
    )
    return 1 if problems else 0


# ---------------------------------------------------------------- ledger reports


def cmd_ledger_report(args: argparse.Namespace) -> int:
    from datetime import UTC, date, datetime

    from l2c import reports
    from l2c.runtime import read_ledger

    engine = read_ledger(Settings.from_env())
    if args.report == "trial-balance":
        if args.period is not None and not _is_period(args.period):
            return _fail(f"--period {args.period!r}: expected YYYY-MM")
        rows = reports.trial_balance(engine, args.period)
    elif args.report == "deferred":
        rows = reports.deferred_revenue_waterfall(engine)
    elif args.report == "revenue":
        rows = reports.revenue_by_obligation(engine)
    else:
        try:
            as_of = date.fromisoformat(args.as_of) if args.as_of else datetime.now(UTC).date()
        except ValueError:
            return _fail(f"--as-of {args.as_of!r}: expected YYYY-MM-DD")
        rows = reports.ar_aging(engine, as_of)
    if args.csv:
        reports.write_csv(rows)
    else:
        reports.print_table(rows)
    return 0


def cmd_ledger_close(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from sqlmodel import Session

    from l2c.journal import close_period, period_of
    from l2c.runtime import open_ledger

    if not _is_period(args.period):
        return _fail(f"{args.period!r}: expected a period as YYYY-MM")
    if not 0 < len(args.by) <= 100:
        return _fail("--by: a name of 1 to 100 characters")
    if args.period >= period_of(datetime.now(UTC)):
        return _fail(f"{args.period} has not ended yet: only a past month can be closed")
    engine = open_ledger(Settings.from_env())
    with Session(engine) as session:
        closed = close_period(session, args.period, args.by)
        session.commit()
    print(f"period {args.period} " + ("closed: later postings for it go to the next open period"
                                      if closed else "was already closed"))  # fmt: skip
    return 0


def _is_period(text: str) -> bool:
    return re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])", text) is not None


# ---------------------------------------------------------------- usage


def cmd_leads_train(args: argparse.Namespace) -> int:
    from l2c.lead_model import NotEnoughHistory, latest_model, train_from_ledger, train_report
    from l2c.runtime import read_ledger

    settings = Settings.from_env()
    rules = load_business_rules(settings.config_dir)
    engine = read_ledger(settings)
    try:
        train_from_ledger(engine, rules.policy.scoring.free_email_domains, args.min_per_class)
    except NotEnoughHistory as err:
        return _fail(str(err), 1)
    trained = latest_model(engine)
    assert trained is not None
    print(train_report(*trained))
    return 0


def cmd_usage_ingest(args: argparse.Namespace) -> int:
    from l2c.runtime import open_ledger
    from l2c.usage import ingest_usage

    settings = Settings.from_env()
    rules = load_business_rules(settings.config_dir)
    path = Path(args.file)
    if args.file != "-" and not path.is_file():
        return _fail(f"no such usage file: {path}")
    engine = open_ledger(settings)
    with contextlib.ExitStack() as stack:
        lines = sys.stdin.buffer if args.file == "-" else stack.enter_context(path.open("rb"))
        report = ingest_usage(engine, lines, rules.catalog)
    for number, reason in report.problems:
        print(f"line {number}: {reason}")
    if report.rejected > len(report.problems):
        print(f"... and {report.rejected - len(report.problems)} more rejected lines")
    print(
        f"{report.accepted} usage events stored, {report.duplicates} duplicates ignored, "
        f"{report.rejected} lines rejected"
    )
    return 1 if report.rejected else 0


# ---------------------------------------------------------------- payload encryption

# The Web UI of `l2c server` / `l2c dev`, as a browser names its origin.
UI_ORIGINS = ["http://localhost:8233", "http://127.0.0.1:8233"]
CODEC_PORT = 12115


def _keyring_path(given: str | None) -> Path | None:
    # Not through Settings, which refuses a keyring that does not exist yet: keygen makes it.
    named = given or os.environ.get("L2C_CODEC_KEYRING")
    return Path(named) if named else None


def cmd_codec_keygen(args: argparse.Namespace) -> int:
    from l2c.codec import Keyring, add_key

    path = _keyring_path(args.keyring)
    if path is None:
        return _fail("name the keyring: --keyring FILE, or set L2C_CODEC_KEYRING")
    key_id = add_key(path, activate=not args.stage)
    ring = Keyring.load(path)
    state = "staged (decrypts, does not encrypt yet)" if args.stage else "active"
    print(f"key {key_id} added to {path}, {state}; the keyring holds {len(ring.keys)} key(s)")
    print("Restart workers, starters and the codec server so they all hold it.")
    if args.stage:
        print(f"Then: l2c codec activate {key_id} --keyring {path}, and restart them again.")
    return 0


def cmd_codec_activate(args: argparse.Namespace) -> int:
    from l2c.codec import activate_key

    path = _keyring_path(args.keyring)
    if path is None:
        return _fail("name the keyring: --keyring FILE, or set L2C_CODEC_KEYRING")
    activate_key(path, args.key_id)
    print(f"key {args.key_id} now encrypts new payloads ({path}); restart the processes")
    return 0


def cmd_codec_server(args: argparse.Namespace) -> int:
    from l2c.codec import EncryptionCodec, Keyring
    from l2c.codec_server import codec_endpoint

    path = Settings.from_env().codec_keyring
    if path is None:
        return _fail(
            "set L2C_CODEC_KEYRING to the keyring the workers use (l2c codec keygen makes one)"
        )
    origins = args.cors_origin or UI_ORIGINS
    served = codec_endpoint(args.port, EncryptionCodec(Keyring.load(path)), origins, args.host)

    banner = (
        f"codec server on http://{args.host}:{served.port} (POST /encode, /decode) for "
        f"{', '.join(origins)}; keyring {path}"
    )
    asyncio.run(_serve_until_stopped(served, banner))
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l2c", description="Lead-to-cash on Temporal")
    sub = parser.add_subparsers(dest="command", required=True)
    # Not Settings.from_env(): that checks the whole environment (a keyring that `l2c codec
    # keygen` is about to create, say) before any command could say what it needs.
    data_default = os.environ.get("L2C_DATA_DIR") or str(PROJECT_ROOT / "data")

    server = sub.add_parser(
        "server", help="run the embedded Temporal dev server (SQLite, WAL, Web UI)"
    )
    server.add_argument("--port", type=int, default=7233)
    server.add_argument("--ui-port", type=int, default=8233)
    server.add_argument("--data-dir", default=data_default)
    server.add_argument("--headless", action="store_true", help="no Web UI")
    server.add_argument(
        "--codec-endpoint", help="the codec server the Web UI decrypts through (l2c codec-server)"
    )
    server.set_defaults(func=cmd_server)

    worker = sub.add_parser("worker", help="run the worker on task queue lead-to-cash")
    worker.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on this port (/metrics)"
    )
    worker.add_argument("--metrics-host", default="0.0.0.0", help="address the metrics bind to")
    worker.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("L2C_LOG_FORMAT", "text"),
        help="json: one object a line with the deal id (default $L2C_LOG_FORMAT or text)",
    )
    worker.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long activities under way may take to finish (30)",
    )
    worker.set_defaults(func=cmd_worker)

    start = sub.add_parser(
        "start", help="start deals: one lead, a JSON/JSONL/CSV file, or the demo leads"
    )
    source = start.add_mutually_exclusive_group(required=True)
    source.add_argument("--lead", help="one lead as a JSON object")
    source.add_argument("--file", help="leads as .json (object or list), .jsonl or .csv")
    source.add_argument("--demo", action="store_true", help="the demo leads")
    start.set_defaults(func=cmd_start)

    dev = sub.add_parser("dev", help="server + worker + mail catcher + demo deals, until Ctrl-C")
    dev.add_argument("--port", type=int, default=7233)
    dev.add_argument("--ui-port", type=int, default=8233)
    dev.add_argument("--smtp-port", type=int, default=8025)
    dev.add_argument("--gateway-port", type=int, default=12111)
    dev.add_argument("--webhook-port", type=int, default=12112)
    dev.add_argument("--intake-port", type=int, default=INTAKE_PORT)
    dev.add_argument("--enrichment-port", type=int, default=12114)
    dev.add_argument(
        "--codec-port",
        type=int,
        default=CODEC_PORT,
        help="codec server, when L2C_CODEC_KEYRING is set",
    )
    dev.add_argument("--data-dir", default=data_default)
    dev.set_defaults(func=cmd_dev)

    audit = sub.add_parser("audit", help="replay histories, report a deal's decisions")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    replay = audit_sub.add_parser(
        "replay",
        help="replay exported histories (temporal workflow show --output json), or the server's "
        "(--query, --closed)",
    )
    replay.add_argument("histories", nargs="*")
    replay_from = replay.add_mutually_exclusive_group()
    replay_from.add_argument(
        "--query",
        help="replay every workflow run this visibility query matches, e.g. "
        '\'WorkflowType="DealWorkflow" AND ExecutionStatus="Completed"\'',
    )
    replay_from.add_argument(
        "--closed",
        action="store_true",
        help='every run of every closed deal (WorkflowType="DealWorkflow" AND '
        'ExecutionStatus!="Running")',
    )
    replay.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: one per CPU)"
    )
    replay.set_defaults(func=cmd_audit_replay)
    report = audit_sub.add_parser("report", help="a deal's decision timeline")
    report.add_argument("workflow_id")
    report.add_argument(
        "--html",
        metavar="FILE",
        help="write the audit report as HTML instead: timeline, approvals and their authority, "
        "contract hash, invoices, payments, and the reconciliation with the ledger (exit 1 if "
        "they differ)",
    )
    report.set_defaults(func=cmd_audit_report)
    ledger = audit_sub.add_parser(
        "ledger",
        help="check the ledger: gap-free invoice numbers, payments applied once, balanced entries",
    )
    ledger.set_defaults(func=cmd_audit_ledger)

    webhooks = sub.add_parser(
        "webhooks", help="the gateway's webhook endpoint (needs L2C_WEBHOOK_SECRET)"
    )
    webhooks.add_argument("--port", type=int, default=12112)
    webhooks.set_defaults(func=cmd_webhooks)

    intake = sub.add_parser(
        "intake", help="the HTTP intake upstream systems post leads to (needs L2C_INTAKE_API_KEYS)"
    )
    intake.add_argument("--port", type=int, default=INTAKE_PORT)
    intake.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)"
    )
    intake.set_defaults(func=cmd_intake)

    codec = sub.add_parser("codec", help="payload encryption keys (L2C_CODEC_KEYRING)")
    codec_sub = codec.add_subparsers(dest="codec_command", required=True)
    keygen = codec_sub.add_parser(
        "keygen", help="add a new AES-256 key to the keyring (created if missing) and activate it"
    )
    keygen.add_argument("--keyring", help="the keyring file (default: $L2C_CODEC_KEYRING)")
    keygen.add_argument(
        "--stage",
        action="store_true",
        help="add it without activating: roll it out to every process first, then activate",
    )
    keygen.set_defaults(func=cmd_codec_keygen)
    activate = codec_sub.add_parser("activate", help="make a key of the keyring the one encrypting")
    activate.add_argument("key_id")
    activate.add_argument("--keyring", help="the keyring file (default: $L2C_CODEC_KEYRING)")
    activate.set_defaults(func=cmd_codec_activate)
    codec_server = sub.add_parser(
        "codec-server",
        help="decrypt/encrypt payloads for the Web UI and the temporal CLI (L2C_CODEC_KEYRING)",
    )
    codec_server.add_argument("--host", default="127.0.0.1")
    codec_server.add_argument("--port", type=int, default=CODEC_PORT)
    codec_server.add_argument(
        "--cors-origin",
        action="append",
        help=f"a Web UI origin allowed to call it; repeatable (default: {' '.join(UI_ORIGINS)})",
    )
    codec_server.set_defaults(func=cmd_codec_server)

    ledger_cmd = sub.add_parser("ledger", help="finance reports, and closing a period")
    ledger_sub = ledger_cmd.add_subparsers(dest="ledger_command", required=True)
    for name, help_text in [
        ("trial-balance", "debits, credits and balance per account (per currency)"),
        ("deferred", "deferred revenue by month: opening, billed, recognized, reversed, closing"),
        ("revenue", "revenue recognized by month and performance obligation"),
        ("aging", "what invoices still owe, by how long past due"),
    ]:
        report_cmd = ledger_sub.add_parser(name, help=help_text)
        report_cmd.add_argument("--csv", action="store_true", help="CSV on standard output")
        if name == "trial-balance":
            report_cmd.add_argument("--period", help="through this period (YYYY-MM)")
        if name == "aging":
            report_cmd.add_argument("--as-of", help="the day to age at (YYYY-MM-DD; default today)")
        report_cmd.set_defaults(func=cmd_ledger_report, report=name)
    close = ledger_sub.add_parser(
        "close", help="close a period (YYYY-MM): later postings for it go to the next open one"
    )
    close.add_argument("period")
    close.add_argument("--by", default="finance", help="who closes it")
    close.set_defaults(func=cmd_ledger_close)

    leads = sub.add_parser("leads", help="lead scoring")
    leads_sub = leads.add_subparsers(dest="leads_command", required=True)
    train = leads_sub.add_parser(
        "train",
        help="train the lead-scoring model on the ledger's closed deals (won and written off "
        "against lost and disqualified); new leads are scored with it",
    )
    train.add_argument("--min-per-class", type=int, default=5,
                       help="refuse with fewer won or lost deals than this (default 5)")  # fmt: skip
    train.set_defaults(func=cmd_leads_train)

    usage = sub.add_parser("usage", help="metered usage events")
    usage_sub = usage.add_subparsers(dest="usage_command", required=True)
    ingest = usage_sub.add_parser(
        "ingest",
        help="load usage events from JSON Lines (an event sent twice is stored once); "
        "exit 1 if any line was rejected",
    )
    ingest.add_argument("file", help="a .jsonl file, or - for standard input")
    ingest.set_defaults(func=cmd_usage_ingest)
    from l2c.ops_cli import add_ops_parsers  # deals, deal, approve, reject, accept, pay

    add_ops_parsers(sub)
    add_kpi_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except ConfigError as err:
        return _fail(f"configuration error: {err}")
    except (ConnectionError, LedgerSchemaOutdated) as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
