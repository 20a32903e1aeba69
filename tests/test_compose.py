"""docker-compose.yml, checked without a Docker engine (CI has none): its structure, and that it
agrees with the code it runs.

Each check returns a list of problems, every one naming the service and what is wrong, so a
failure reads as a to-do list; `validate` runs them all. The last tests break a copy of the file
in the ways these checks exist for and make sure `validate` notices each one.
"""

import argparse
import ast
import contextlib
import copy
import io
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from l2c.cli import build_parser
from l2c.server import search_attribute_flags

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"

Compose = dict[str, Any]
Service = dict[str, Any]

REQUIRED_SERVICES = {
    "temporal-db", "temporal-schema", "temporal", "temporal-setup", "temporal-ui",
    "ledger-db", "ledger-init", "mail", "worker", "codec-server", "intake",
}  # fmt: skip
# Long-running services built from this repository, and the `l2c` subcommand each one runs.
L2C_COMMANDS = {"worker": "worker", "codec-server": "codec-server", "intake": "intake"}
# Every service that holds payloads in the clear needs the codec's keyring.
NEEDS_KEYRING = {"worker", "intake", "codec-server"}
# Names the application will read that its code does not name yet (the codec change adds it).
PENDING_ENV_NAMES = {"L2C_CODEC_KEYRING"}
SMTP_PORT_OF_MAILPIT = 1025
TEMPORAL_FRONTEND_PORT = 7233
# Docker's default of 10 s cuts most activities short; the worker needs time to finish them.
MIN_WORKER_GRACE_SECONDS = 30


# ---------------------------------------------------------------- reading the file


def load() -> Compose:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(compose, dict) and isinstance(compose.get("services"), dict), (
        f"{COMPOSE_FILE.name}: no services"
    )
    return compose


_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: object) -> str:
    """`value` as Compose would pass it with none of its variables set: `${X:-default}` is the
    default, `${X}` is empty, `$$` is `$`."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("op") in ("-", ":-"):
            return match.group("arg")
        return ""

    return _VARIABLE.sub(one, str(value))


def variables(text: str) -> set[str]:
    """The Compose variables `text` refers to (`${X}`, `${X:-default}`, `$X`; not `$$X`)."""
    return {
        match.group("braced") or match.group("bare")
        for match in _VARIABLE.finditer(text)
        if match.group(0) != "$$"
    }


def environment(service: Service) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): interpolate(value) for key, value in env.items()}


def command(service: Service) -> list[str]:
    raw = service.get("command") or []
    return shlex.split(raw) if isinstance(raw, str) else [str(token) for token in raw]


def option(argv: list[str], name: str) -> str | None:
    """The value given to `name` in `argv` (`--port 8000` or `--port=8000`)."""
    for index, token in enumerate(argv):
        if token == name and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(f"{name}="):
            return token.split("=", 1)[1]
    return None


def healthcheck_test(service: Service) -> list[str]:
    """The healthcheck's command as a list (empty if there is none or it is disabled)."""
    check = service.get("healthcheck") or {}
    if check.get("disable"):
        return []
    test = check.get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if not test or test[0] == "NONE":
        return []
    return [str(token) for token in test]


def published_ports(service: Service) -> dict[int, int]:
    """Container port -> the fixed host port it is published on."""
    found = {}
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published"):
                found[int(entry["target"])] = int(interpolate(entry["published"]))
            continue
        parts = interpolate(entry).split("/")[0].split(":")
        if len(parts) >= 2 and parts[-2]:
            found[int(parts[-1])] = int(parts[-2])
    return found


def one_shots(compose: Compose) -> set[str]:
    """Services others wait for to finish (`service_completed_successfully`)."""
    return {
        target
        for service in compose["services"].values()
        for target, spec in depends_on(service).items()
        if spec.get("condition") == "service_completed_successfully"
    }


def depends_on(service: Service) -> dict[str, dict[str, Any]]:
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: {"condition": "service_started"} for name in raw}
    return {name: spec or {} for name, spec in raw.items()}


def image_name(service: Service) -> str:
    """The image without its tag or digest: "postgres" for postgres:16.9."""
    image = str(service.get("image", "")).split("@")[0]
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def seconds(duration: object) -> float:
    """A Compose duration ("1m30s", "60s", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    if not parts or "".join(n + u for n, u in parts) != str(duration):
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


def env_names_the_app_reads() -> set[str]:
    """Every L2C_* and TEMPORAL_* name the application's code spells out (Settings.from_env,
    the CLI), found in its source so a new setting needs no change here."""
    names = set()
    sources = [*(ROOT / "l2c").rglob("*.py"), ROOT / "worker.py", ROOT / "starter.py"]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"(L2C|TEMPORAL)_[A-Z0-9_]+", node.value)
            ):
                names.add(node.value)
    return names


def parse_l2c(argv: list[str]) -> tuple[argparse.Namespace | None, str]:
    """`l2c argv` parsed by the real CLI parser: (arguments, "") or (None, its error)."""
    error = io.StringIO()
    try:
        with contextlib.redirect_stderr(error), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(argv), ""
    except SystemExit:
        lines = error.getvalue().strip().splitlines()
        return None, lines[-1] if lines else "rejected by the parser"


def script_of(service: Service) -> tuple[str, str] | None:
    """(path in the container, text) of the shell script the service runs from a bind mount."""
    for token in command(service):
        if not token.endswith(".sh"):
            continue
        for volume in service.get("volumes") or []:
            source, target = str(volume).split(":")[:2]
            if source.startswith(".") and token.startswith(target.rstrip("/") + "/"):
                host = ROOT / source / token[len(target.rstrip("/")) + 1 :]
                if host.is_file():
                    return token, host.read_text(encoding="utf-8")
    return None


# ---------------------------------------------------------------- the checks


def check_services(compose: Compose) -> list[str]:
    missing = sorted(REQUIRED_SERVICES - set(compose["services"]))
    return [f"{name}: required service missing" for name in missing]


def check_healthchecks(compose: Compose) -> list[str]:
    problems = []
    finishing = one_shots(compose)
    for name, service in compose["services"].items():
        if name in finishing:
            if service.get("restart") in ("always", "unless-stopped"):
                problems.append(f"{name}: a one-shot others wait to finish must not restart")
            continue
        test = healthcheck_test(service)
        if len(test) < 2 or not "".join(test[1:]).strip():
            problems.append(f"{name}: long-running service without a healthcheck test command")
        elif "build" in service and test[0] == "CMD" and test[1] in ("curl", "wget"):
            problems.append(f"{name}: healthcheck runs {test[1]}, which python:3.11-slim lacks")
        elif "build" in service and re.match(r"\s*(curl|wget)\b", " ".join(test[1:])):
            problems.append(f"{name}: healthcheck runs curl/wget, which python:3.11-slim lacks")
    return problems


def check_images(compose: Compose) -> list[str]:
    problems = []
    for name, service in compose["services"].items():
        if "image" not in service:
            if "build" not in service:
                problems.append(f"{name}: neither an image nor a build")
            continue
        image = str(service["image"])
        tag = image.rsplit("/", 1)[-1].partition(":")[2].split("@")[0]
        if not tag:
            problems.append(f"{name}: image {image} is not pinned to a version tag")
        elif tag == "latest" or not re.search(r"\d", tag):
            problems.append(f"{name}: image {image} uses a floating tag, not a version")
    return problems


def check_worker_scales(compose: Compose) -> list[str]:
    worker = compose["services"].get("worker")
    if worker is None:
        return ["worker: service missing"]
    problems = []
    if "container_name" in worker:
        problems.append("worker: container_name stops `--scale worker=N` (names must be unique)")
    if published_ports(worker):
        problems.append("worker: a fixed host port stops `--scale worker=N` (one per host)")
    if "build" not in worker:
        problems.append("worker: not built from this repository")
    grace = worker.get("stop_grace_period")
    if grace is None:
        problems.append("worker: no stop_grace_period (Docker kills it 10 s after SIGTERM)")
    elif seconds(grace) < MIN_WORKER_GRACE_SECONDS:
        problems.append(f"worker: stop_grace_period {grace} is under {MIN_WORKER_GRACE_SECONDS}s")
    if worker.get("stop_signal", "SIGTERM") != "SIGTERM":
        problems.append(f"worker: stop_signal {worker['stop_signal']}; it drains on SIGTERM")
    return problems


def check_app_wiring(compose: Compose) -> list[str]:
    """Where the services built from this repository find Temporal, the ledger, the mail
    server and the keyring."""
    services = compose["services"]
    problems = []
    for name, service in services.items():
        if "build" not in service:
            continue
        env = environment(service)
        if name in L2C_COMMANDS and "TEMPORAL_ADDRESS" not in env and name != "codec-server":
            problems.append(f"{name}: TEMPORAL_ADDRESS not set (would try localhost:7233)")
        if "TEMPORAL_ADDRESS" in env:
            host, _, port = env["TEMPORAL_ADDRESS"].rpartition(":")
            target = services.get(host, {})
            if image_name(target) != "temporalio/server" or port != str(TEMPORAL_FRONTEND_PORT):
                problems.append(
                    f"{name}: TEMPORAL_ADDRESS {env['TEMPORAL_ADDRESS']} is not the temporal "
                    f"service's frontend (<service running temporalio/server>:7233)"
                )
        if name == "worker" or "L2C_DATABASE_URL" in env:
            problems += _check_database_url(name, env.get("L2C_DATABASE_URL"), services)
        if name == "worker" or "L2C_SMTP_HOST" in env:
            host = env.get("L2C_SMTP_HOST")
            if image_name(services.get(host or "", {})) != "axllent/mailpit":
                problems.append(f"{name}: L2C_SMTP_HOST {host!r} is not the mail service")
            elif env.get("L2C_SMTP_PORT") != str(SMTP_PORT_OF_MAILPIT):
                problems.append(f"{name}: L2C_SMTP_PORT {env.get('L2C_SMTP_PORT')!r} is not "
                                f"mailpit's SMTP port {SMTP_PORT_OF_MAILPIT}")  # fmt: skip
        if name in NEEDS_KEYRING and not env.get("L2C_CODEC_KEYRING"):
            problems.append(f"{name}: L2C_CODEC_KEYRING not set (payloads would not be encrypted)")
        keyring = env.get("L2C_CODEC_KEYRING", "")
        if keyring.startswith("/run/secrets/"):
            secret = keyring.removeprefix("/run/secrets/")
            if secret not in _secret_names(service):
                problems.append(f"{name}: L2C_CODEC_KEYRING is secret {secret}, not granted to it")
    namespaces = {}
    for name, svc in services.items():
        env = environment(svc)
        if "TEMPORAL_ADDRESS" in env:  # a Temporal client: it works in one namespace
            namespaces[name] = env.get(
                "TEMPORAL_NAMESPACE", env.get("TEMPORAL_DEFAULT_NAMESPACE", "default")
            )
    if len(set(namespaces.values())) > 1:
        problems.append(f"temporal-setup: services disagree on the namespace: {namespaces}")
    return problems


def _check_database_url(name: str, url: str | None, services: dict[str, Service]) -> list[str]:
    if not url:
        return [f"{name}: L2C_DATABASE_URL not set (would use a SQLite file in the container)"]
    try:
        parsed = make_url(url)
    except Exception as err:
        return [f"{name}: L2C_DATABASE_URL does not parse: {err}"]
    if parsed.drivername != "postgresql+psycopg":
        return [f"{name}: L2C_DATABASE_URL driver {parsed.drivername}, not postgresql+psycopg "
                "(the image installs psycopg 3 only)"]  # fmt: skip
    db = services.get(parsed.host or "")
    if db is None or image_name(db) != "postgres":
        return [f"{name}: L2C_DATABASE_URL host {parsed.host} is not a postgres service"]
    env = environment(db)
    expected = {
        "user": env.get("POSTGRES_USER", "postgres"),
        "password": env.get("POSTGRES_PASSWORD"),
        "database": env.get("POSTGRES_DB", env.get("POSTGRES_USER", "postgres")),
    }
    given = {"user": parsed.username, "password": parsed.password, "database": parsed.database}
    return [
        f"{name}: L2C_DATABASE_URL {part} {given[part]!r} is not {parsed.host}'s {expected[part]!r}"
        for part in expected
        if given[part] != expected[part]
    ]


def _secret_names(service: Service) -> set[str]:
    return {
        entry if isinstance(entry, str) else entry.get("source", "")
        for entry in service.get("secrets") or []
    }


def check_env_names(compose: Compose) -> list[str]:
    known = env_names_the_app_reads() | PENDING_ENV_NAMES
    return [
        f"{name}: environment variable {key} is not one the application reads (misspelt?)"
        for name, service in compose["services"].items()
        if "build" in service
        for key in environment(service)
        if re.match(r"(L2C|TEMPORAL)_", key) and key not in known
    ]


def check_l2c_command(compose: Compose, name: str) -> list[str]:
    """The service runs `l2c <its subcommand>` with options the CLI accepts."""
    service = compose["services"].get(name)
    if service is None:
        return [f"{name}: service missing"]
    argv = command(service)
    if not argv or argv[0] != "l2c":
        return [f"{name}: command {argv} does not run l2c"]
    parsed, error = parse_l2c(argv[1:])
    if parsed is None:
        return [f"{name}: `{shlex.join(argv)}` is not an l2c command line: {error}"]
    if parsed.command != L2C_COMMANDS[name]:
        return [f"{name}: runs `l2c {parsed.command}`, not `l2c {L2C_COMMANDS[name]}`"]
    return []


def check_probes(compose: Compose) -> list[str]:
    """Each l2c service's healthcheck asks the port its command serves on."""
    problems = []
    wanted = {"worker": ("--metrics-port", "/metrics"), "codec-server": ("--port", "/healthz"),
              "intake": ("--port", "/health")}  # fmt: skip
    for name, (flag, path) in wanted.items():
        service = compose["services"].get(name)
        if service is None:
            continue
        port = option(command(service), flag)
        probe = " ".join(healthcheck_test(service))
        if port is None:
            problems.append(f"{name}: command has no {flag}, so the healthcheck has no port")
        elif f":{port}{path}" not in probe:
            problems.append(f"{name}: healthcheck does not ask :{port}{path}, where it serves")
    return problems


def check_depends_on(compose: Compose) -> list[str]:
    services = compose["services"]
    problems = []
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        for target, spec in depends_on(service).items():
            condition = spec.get("condition", "service_started")
            if target not in services:
                problems.append(f"{name}: depends on {target}, which is not a service")
            elif condition not in conditions:
                problems.append(f"{name}: depends on {target} with unknown condition {condition}")
            elif condition == "service_healthy" and not healthcheck_test(services[target]):
                problems.append(f"{name}: waits for {target} to be healthy; it has no healthcheck")
    return problems


def check_volumes(compose: Compose) -> list[str]:
    declared = set(compose.get("volumes") or {})
    problems = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                source, kind = str(volume.get("source", "")), volume.get("type", "volume")
            else:
                source = str(volume).split(":")[0] if ":" in str(volume) else ""
                kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            if kind == "volume" and source and source not in declared:
                problems.append(f"{name}: named volume {source} is not declared under volumes:")
            if kind == "bind" and source.startswith(".") and not (ROOT / source).exists():
                problems.append(f"{name}: mounts {source}, which is not in the repository")
    for volume in sorted(declared):
        if not any(
            str(v).split(":")[0] == volume or (isinstance(v, dict) and v.get("source") == volume)
            for service in compose["services"].values()
            for v in service.get("volumes") or []
        ):
            problems.append(f"volumes: {volume} is declared but no service uses it")
    return problems


def check_secrets(compose: Compose) -> list[str]:
    declared = compose.get("secrets") or {}
    problems = []
    for name, service in compose["services"].items():
        for secret in sorted(_secret_names(service) - set(declared)):
            problems.append(f"{name}: secret {secret} is not declared under secrets:")
    ignored = {
        ".gitignore": (ROOT / ".gitignore").read_text(encoding="utf-8").split(),
        ".dockerignore": (ROOT / ".dockerignore").read_text(encoding="utf-8").split(),
    }
    for secret, spec in declared.items():
        path = str((spec or {}).get("file", ""))
        top = path.removeprefix("./").split("/")[0]
        for ignore_file, patterns in ignored.items():
            if path and not {top, f"{top}/", f"/{top}", f"/{top}/"} & set(patterns):
                problems.append(f"secrets: {secret} file {path} is not in {ignore_file}")
    return problems


def check_search_attributes(compose: Compose) -> list[str]:
    """The one-shot setup registers every search attribute the deal writes (models/search.py)."""
    service = compose["services"].get("temporal-setup")
    if service is None:
        return ["temporal-setup: service missing"]
    found = script_of(service)
    text = found[1] if found else "\n".join(command(service))
    flags = search_attribute_flags()
    pairs = [flag.split("=") for flag in flags[1::2]]
    return [
        f"temporal-setup: does not register search attribute {key} ({kind})"
        for key, kind in pairs
        if not re.search(rf"\b{key}\b\W+(--type\W+)?{kind}\b", text)
    ]


def check_temporal_database(compose: Compose) -> list[str]:
    """The schema one-shot and the server use the temporal-db service, with its password."""
    services = compose["services"]
    db = environment(services.get("temporal-db", {}))
    problems = []
    for name, password_key in (("temporal-schema", "SQL_PASSWORD"), ("temporal", "POSTGRES_PWD")):
        env = environment(services.get(name, {}))
        if env.get("POSTGRES_SEEDS") != "temporal-db":
            problems.append(f"{name}: POSTGRES_SEEDS {env.get('POSTGRES_SEEDS')!r} "
                            "is not temporal-db")  # fmt: skip
        if env.get("POSTGRES_USER") != db.get("POSTGRES_USER"):
            problems.append(f"{name}: POSTGRES_USER is not temporal-db's")
        if env.get(password_key) != db.get("POSTGRES_PASSWORD"):
            problems.append(f"{name}: {password_key} is not temporal-db's POSTGRES_PASSWORD")
    return problems


def check_codec_endpoint(compose: Compose) -> list[str]:
    """The UI sends the browser to the codec server's host port, and the codec server lets the
    UI's page call it (CORS)."""
    services = compose["services"]
    ui, codec = services.get("temporal-ui"), services.get("codec-server")
    if ui is None or codec is None:
        return ["temporal-ui: no temporal-ui or codec-server service"]
    problems = []
    codec_port = option(command(codec), "--port")
    codec_host_port = published_ports(codec).get(int(codec_port or 0))
    endpoint = environment(ui).get("TEMPORAL_CODEC_ENDPOINT")
    if codec_host_port is None:
        problems.append(f"codec-server: port {codec_port} is not published for the browser")
    elif endpoint != f"http://localhost:{codec_host_port}":
        problems.append(f"temporal-ui: TEMPORAL_CODEC_ENDPOINT {endpoint!r} is not the codec "
                        f"server as the browser reaches it, http://localhost:{codec_host_port}")  # fmt: skip
    ui_host_port = published_ports(ui).get(8080)
    origin = option(command(codec), "--cors-origin")
    if ui_host_port is not None and origin != f"http://localhost:{ui_host_port}":
        problems.append(f"codec-server: --cors-origin {origin!r} is not the UI's origin "
                        f"http://localhost:{ui_host_port}")  # fmt: skip
    return problems


def check_variables_documented(text: str) -> list[str]:
    """Every variable the file reads from the environment is explained in docs/deployment.md."""
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8") if DEPLOYMENT_DOC.is_file() else ""
    return [
        f"compose: variable {name} is not explained in docs/deployment.md"
        for name in sorted(variables(text))
        if not re.search(rf"\b{name}\b", doc)
    ]


CHECKS: list[Callable[[Compose], list[str]]] = [
    check_services, check_healthchecks, check_images, check_worker_scales, check_app_wiring,
    check_env_names, check_probes, check_depends_on, check_volumes, check_secrets,
    check_search_attributes, check_temporal_database, check_codec_endpoint,
]  # fmt: skip


def validate(compose: Compose) -> list[str]:
    problems = [problem for check in CHECKS for problem in check(compose)]
    for name in L2C_COMMANDS:
        problems += check_l2c_command(compose, name)
    return problems


# ---------------------------------------------------------------- the file as it is


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_compose_file(compose: Compose, check: Callable[[Compose], list[str]]) -> None:
    problems = check(compose)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("service", sorted(L2C_COMMANDS))
def test_services_run_real_l2c_commands(compose: Compose, service: str) -> None:
    problems = check_l2c_command(compose, service)
    assert not problems, "\n".join(problems)


def test_compose_variables_are_documented() -> None:
    problems = check_variables_documented(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_documented_l2c_commands_parse() -> None:
    """Every `l2c ...` line in docs/deployment.md's code blocks is one the CLI accepts."""
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", doc, flags=re.S)
    problems, seen = [], 0
    runners = {"--", "exec", "run", *load()["services"]}
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    for line in lines:
        tokens = shlex.split(line, comments=True)
        # `l2c` run as a command: first on the line, or after `docker compose run/exec <service>`.
        starts = [
            i
            for i, token in enumerate(tokens)
            if Path(token).name == "l2c" and (i == 0 or tokens[i - 1] in runners)
        ]
        if not starts:
            continue
        argv = tokens[starts[0] + 1 :]
        for stop in ("&&", "||", "|", ";", ">", "2>&1"):
            argv = argv[: argv.index(stop)] if stop in argv else argv
        seen += 1
        parsed, error = parse_l2c(argv)
        if parsed is None:
            problems.append(f"docs/deployment.md: `l2c {shlex.join(argv)}`: {error}")
    assert seen, "docs/deployment.md shows no l2c command"
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the checks can fail


def _set(path: str, value: object) -> Callable[[Compose], None]:
    """A mutation: set services.<path> (dotted) to `value`; None deletes it."""

    def mutate(compose: Compose) -> None:
        *parents, last = path.split(".")
        node = compose["services"]
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return mutate


def _drop_service(name: str) -> Callable[[Compose], None]:
    return lambda compose: compose["services"].pop(name)


def _undeclare_volume(compose: Compose) -> None:
    del compose["volumes"]["ledger-db"]


BROKEN = [
    ("no worker", _drop_service("worker"), "worker: required service missing"),
    ("ledger-db has no healthcheck", _set("ledger-db.healthcheck", None), "ledger-db: long-running"),
    ("intake probes with curl", _set("intake.healthcheck.test", ["CMD", "curl", "-f", "x"]),
     "intake: healthcheck runs curl"),
    ("mail on latest", _set("mail.image", "axllent/mailpit:latest"), "mail: image"),
    ("postgres untagged", _set("ledger-db.image", "postgres"), "ledger-db: image postgres is not"),
    ("worker named", _set("worker.container_name", "worker"), "worker: container_name"),
    ("worker on a host port", _set("worker.ports", ["9464:9464"]), "worker: a fixed host port"),
    ("worker killed at once", _set("worker.stop_grace_period", None), "worker: no stop_grace"),
    ("worker grace too short", _set("worker.stop_grace_period", "5s"), "worker: stop_grace_period"),
    ("worker on localhost Temporal", _set("worker.environment.TEMPORAL_ADDRESS", "localhost:7233"),
     "worker: TEMPORAL_ADDRESS"),
    ("worker on psycopg2", _set("worker.environment.L2C_DATABASE_URL",
                                "postgresql://l2c:l2c@ledger-db:5432/ledger"),
     "worker: L2C_DATABASE_URL driver"),
    ("worker with the wrong password", _set("worker.environment.L2C_DATABASE_URL",
                                            "postgresql+psycopg://l2c:x@ledger-db:5432/ledger"),
     "worker: L2C_DATABASE_URL password"),
    ("worker on a SQLite file", _set("worker.environment.L2C_DATABASE_URL", None),
     "worker: L2C_DATABASE_URL not set"),
    ("worker mails nowhere", _set("worker.environment.L2C_SMTP_HOST", "smtp"),
     "worker: L2C_SMTP_HOST"),
    ("worker mails the web port", _set("worker.environment.L2C_SMTP_PORT", "8025"),
     "worker: L2C_SMTP_PORT"),
    ("worker without a keyring", _set("worker.environment.L2C_CODEC_KEYRING", None),
     "worker: L2C_CODEC_KEYRING not set"),
    ("intake keyring not granted", _set("intake.secrets", []), "intake: L2C_CODEC_KEYRING is"),
    ("misspelt setting", _set("worker.environment.L2C_SMTP_HOSTNAME", "mail"),
     "worker: environment variable L2C_SMTP_HOSTNAME"),
    ("misspelt subcommand", _set("worker.command", ["l2c", "wokrer"]), "worker: `l2c wokrer`"),
    ("not l2c at all", _set("intake.command", ["python", "-m", "http.server"]),
     "intake: command"),
    ("probe on another port", _set("worker.command", ["l2c", "worker", "--metrics-port", "9000"]),
     "worker: healthcheck does not ask :9000/metrics"),
    ("waits for a ghost", _set("worker.depends_on.ledger", {"condition": "service_healthy"}),
     "worker: depends on ledger, which"),
    ("waits on a service without healthcheck",
     _set("worker.depends_on.ledger-init", {"condition": "service_healthy"}),
     "worker: waits for ledger-init"),
    ("undeclared volume", _undeclare_volume, "ledger-db: named volume ledger-db"),
    ("mount of a missing folder", _set("temporal-setup.volumes", ["./nowhere:/deploy:ro"]),
     "temporal-setup: mounts ./nowhere"),
    ("undeclared secret", _set("codec-server.secrets", ["codec_key"]),
     "codec-server: secret codec_key"),
    ("search attribute forgotten", _set("temporal-setup.command", ["echo", "DealStage Keyword"]),
     "temporal-setup: does not register search attribute DealOwner"),
    ("server on another password", _set("temporal.environment.POSTGRES_PWD", "x"),
     "temporal: POSTGRES_PWD"),
    ("UI sends the browser inside the network",
     _set("temporal-ui.environment.TEMPORAL_CODEC_ENDPOINT", "http://codec-server:8081"),
     "temporal-ui: TEMPORAL_CODEC_ENDPOINT"),
    ("codec server refuses the UI", _set("codec-server.command",
                                         ["l2c", "codec-server", "--port", "8081"]),
     "codec-server: --cors-origin"),
    ("namespaces disagree", _set("intake.environment.TEMPORAL_NAMESPACE", "sales"),
     "services disagree on the namespace"),
    ("one-shot restarts forever", _set("temporal-schema.restart", "always"),
     "temporal-schema: a one-shot"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "expected"), [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN]
)
def test_validate_catches(
    compose: Compose, mutate: Callable[[Compose], None], expected: str
) -> None:
    before = validate(compose)
    broken = copy.deepcopy(compose)
    mutate(broken)
    caught = [problem for problem in validate(broken) if problem not in before]
    assert any(expected in problem for problem in caught), (
        f"expected a new problem containing {expected!r}; new problems: {caught}"
    )


def test_undocumented_variable_is_caught() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8") + "\n# ${L2C_NOT_DOCUMENTED:-x}\n"
    assert "compose: variable L2C_NOT_DOCUMENTED is not explained in docs/deployment.md" in (
        check_variables_documented(text)
    )


def test_interpolation_follows_compose() -> None:
    assert interpolate("a${X:-b}c${Y}d$$e${Z-f}") == "abcd$ef"
    assert variables("${A:-1} $B $${C} $$D") == {"A", "B"}
    assert seconds("1m30s") == 90 and seconds("60s") == 60
    with pytest.raises(ValueError):
        seconds("sixty")
