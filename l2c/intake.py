"""The intake endpoint for upstream systems (a CRM, a web form's backend): `POST /leads` starts the
deal of one lead and answers 202 with its workflow id, before the deal has done anything.

The body is the contract's workflow input (`models.deal.LeadInput`), one JSON object. Every
request to `/leads` carries an API key from `L2C_INTAKE_API_KEYS`, as `Authorization: Bearer <key>`
or `X-API-Key: <key>`; the key is checked before the body is read, so an unknown caller costs no
parsing. A lead that already has a deal (open or closed) gets 409 with that deal's workflow id:
a sender that lost our 202 and sends again learns where its lead went, and no second deal starts.
Each refusal is `{"error": "<reason>"}` with a status that says whose move it is: 4xx, fix the
request; 503, send it again later. `GET /openapi.json` describes all of it (OpenAPI 3.1).
"""

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Callable, Sequence
from email.message import Message
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from l2c.demo import DEMO_LEADS
from l2c.leads_io import parse_lead
from l2c.local_http import BackgroundServer, BadRequest, JsonHandler, run_on_loop
from l2c.runtime import start_deal
from models.deal import LeadInput, workflow_id_for
from models.search import DEAL_STAGE

PATH = "/leads"
MAX_BODY = 64 * 1024  # a lead is a few hundred bytes; extra fields get room, not megabytes

# Temporal answers that mean "not now" rather than "never": the sender should send again.
TRANSIENT = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.ABORTED,
    RPCStatusCode.CANCELLED,
}
SEND_AGAIN = "could not reach Temporal to start the deal; send again"

# A lead id as the model accepts it, so a status request for anything else is not sent on.
_LEAD_ID = re.compile(LeadInput.model_json_schema()["properties"]["lead_id"]["pattern"])
_LEAD_ID_MAX = 64

log = logging.getLogger(__name__)

# (workflow id, created) for a valid lead; False when the lead already had a deal.
StartLead = Callable[[LeadInput], tuple[str, bool]]
# What the status endpoint shows of a lead's deal; None when the lead has none.
DealStatus = Callable[[str], dict[str, Any] | None]


class Refused(Exception):
    """The request is refused with `status`; the message is the reason sent back."""

    def __init__(
        self, status: int, reason: str, headers: dict[str, str] | None = None, **extra: str
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers or {}
        self.extra = extra


def api_key_of(headers: Message) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `X-API-Key: <key>`."""
    scheme, _, token = (headers.get("Authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (headers.get("X-API-Key") or "").strip() or None


def key_matches(given: str, keys: Sequence[bytes]) -> bool:
    """Whether `given` is one of `keys`, compared in constant time against every key, so neither
    the time taken nor an early exit tells a caller how close its guess came."""
    # Header values arrive decoded as Latin-1: this gives back the bytes that were sent.
    candidate = given.encode("latin-1", "replace")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(key, candidate)
    return matched


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


def openapi_document() -> dict[str, Any]:
    """The endpoint's OpenAPI 3.1 description; the request schema is the model's own, so the two
    cannot drift apart."""
    lead = LeadInput.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = lead.pop("$defs", {})
    text = {"type": "string"}
    schemas["LeadInput"] = lead
    schemas["Error"] = _object({"error": {**text, "description": "why it was refused"}}, ["error"])
    schemas["Started"] = _object(
        {"workflow_id": text, "lead_id": text, "status": {"const": "started"}},
        ["workflow_id", "lead_id", "status"],
    )
    schemas["AlreadyStarted"] = _object(
        {
            "error": text,
            "workflow_id": {**text, "description": "the deal the lead already has"},
            "lead_id": text,
        },
        ["error", "workflow_id", "lead_id"],
    )
    schemas["Deal"] = _object(
        {
            "workflow_id": text,
            "lead_id": text,
            "status": {**text, "description": "running, completed, terminated, ..."},
            "stage": {"type": ["string", "null"], "description": "the deal's stage, when known"},
        },
        ["workflow_id", "lead_id", "status"],
    )
    secured: list[dict[str, list[str]]] = [{"bearerKey": []}, {"apiKeyHeader": []}]
    unauthorized = _error("no API key, or one not recognized")
    example = DEMO_LEADS[0].model_dump(mode="json")  # the contract's own example lead
    start = {
        "operationId": "startDeal",
        "summary": "Start the deal of one lead",
        "description": "Validates the lead and starts its deal (workflow `deal-<lead_id>`). "
        "A lead that already has a deal, open or closed, gets 409 and that deal's workflow id.",
        "security": secured,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/LeadInput"},
                    "example": example,
                }
            },
        },
        "responses": {
            "202": {
                "description": "the deal has started",
                "headers": {
                    "Location": {"description": "the deal's status", "schema": {"type": "string"}}
                },
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Started"}}
                },
            },
            "400": _error("the body is not JSON, or not one JSON object; or a bad Content-Length"),
            "401": unauthorized,
            "409": {
                "description": "the lead already has a deal",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/AlreadyStarted"}}
                },
            },
            "411": _error("no Content-Length"),
            "413": _error(f"the body is over {MAX_BODY} bytes"),
            "415": _error("a Content-Type other than JSON"),
            "422": _error("the lead is not valid: the reason names each wrong field"),
            "503": _error("Temporal could not be reached: send again"),
        },
    }
    status = {
        "operationId": "getDeal",
        "summary": "The deal of a lead",
        "security": secured,
        "parameters": [{"name": "lead_id", "in": "path", "required": True, "schema": text}],
        "responses": {
            "200": {
                "description": "the lead's deal",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Deal"}}},
            },
            "401": unauthorized,
            "404": _error("the lead has no deal"),
            "503": _error("Temporal could not be reached: ask again"),
        },
    }
    health = {
        "operationId": "health",
        "summary": "Whether the endpoint is serving (it does not ask Temporal)",
        "responses": {"200": {"description": "serving"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lead-to-cash intake",
            "version": "1",
            "description": "Upstream systems start deals here, one lead per request.",
        },
        "paths": {
            PATH: {"post": start},
            f"{PATH}/{{lead_id}}": {"get": status},
            "/health": {"get": health},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerKey": {"type": "http", "scheme": "bearer", "description": "an intake key"},
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


_JSON_KINDS = {
    list: "an array: send one lead per request",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}

# The routes and the one method each answers; anything else is 404 or 405.
_ROUTES = {PATH: "POST", f"{PATH}/*": "GET", "/openapi.json": "GET", "/health": "GET"}


class _Handler(JsonHandler):
    server: "IntakeServer"

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_PATCH(self) -> None:
        self._answer("PATCH")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def _answer(self, method: str) -> None:
        try:
            status, body, headers = self._handle(method)
        except Refused as refused:
            status, body, headers = (
                refused.status,
                {"error": str(refused), **refused.extra},
                refused.headers,
            )
        self.send_json(status, body, headers)

    def _handle(self, method: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        path = urlsplit(self.path).path
        route = f"{PATH}/*" if path.startswith(f"{PATH}/") else path
        if route not in _ROUTES:
            raise Refused(404, f"no endpoint {path[:100]}; leads are posted to {PATH}")
        if method != _ROUTES[route]:
            raise Refused(
                405, f"{path[:100]} takes {_ROUTES[route]}, not {method}", {"Allow": _ROUTES[route]}
            )
        if route == "/openapi.json":
            return 200, self.server.openapi, {}
        if route == "/health":
            return 200, {"status": "ok"}, {}
        self._authenticate()
        if route == PATH:
            return self._start()
        return self._status(unquote(path[len(PATH) + 1 :]))

    def _authenticate(self) -> None:
        challenge = {"WWW-Authenticate": 'Bearer realm="l2c-intake"'}
        given = api_key_of(self.headers)
        if given is None:
            raise Refused(
                401, "no API key: send Authorization: Bearer <key> or X-API-Key: <key>", challenge
            )
        if not key_matches(given, self.server.api_keys):
            raise Refused(401, "API key not recognized", challenge)

    def _start(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        declared = self.headers.get("Content-Type")
        media_type = (declared or "").split(";", 1)[0].strip().lower()
        # No Content-Type at all is let through (some senders omit it); a declared other type is
        # usually a mistake, such as curl -d sending a form, and is named as such.
        if declared is not None and media_type != "application/json":
            raise Refused(415, f"send Content-Type: application/json, not {media_type[:100]!r}")
        try:
            payload = self.read_body(MAX_BODY, require_length=True)
        except BadRequest as err:
            raise Refused(err.status, str(err)) from None
        lead = self._lead(payload)
        try:
            workflow_id, created = self.server.start_lead(lead)
        except (RPCError, TimeoutError, RuntimeError) as err:
            _unreachable(err)
        found = {"workflow_id": workflow_id, "lead_id": lead.lead_id}
        location = {"Location": f"{PATH}/{lead.lead_id}"}
        if not created:
            raise Refused(
                409,
                f"lead {lead.lead_id} already has a deal, {workflow_id}; it was not started again",
                location,
                **found,
            )
        return 202, {**found, "status": "started"}, location

    def _lead(self, payload: bytes) -> LeadInput:
        if not payload.strip():
            raise Refused(400, "the body is empty: send one lead as a JSON object")
        try:
            text = payload.decode("utf-8")  # JSON sent between systems is UTF-8 (RFC 8259)
        except UnicodeDecodeError as err:
            raise Refused(400, f"the body is not UTF-8 text (byte {err.start})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise Refused(
                400, f"the body is not JSON: {err.msg} (line {err.lineno} column {err.colno})"
            ) from None
        except RecursionError:
            raise Refused(400, "the body is not JSON a lead could be: nested too deep") from None
        if not isinstance(data, dict):
            kind = _JSON_KINDS.get(type(data), "something else")
            raise Refused(400, f"the body must be one lead as a JSON object, not {kind}")
        try:
            return parse_lead(data)
        except ValueError as err:
            raise Refused(422, f"lead refused: {err}") from None

    def _status(self, lead_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        if len(lead_id) > _LEAD_ID_MAX or not _LEAD_ID.match(lead_id):
            raise Refused(404, f"no deal for lead {lead_id[:100]!r}: not a lead id")
        try:
            deal = self.server.deal_status(lead_id)
        except (RPCError, TimeoutError, RuntimeError) as err:
            _unreachable(err)
        if deal is None:
            raise Refused(404, f"no deal for lead {lead_id}")
        return 200, deal, {}


def _unreachable(err: Exception) -> NoReturn:
    """Refuse with 503 (send again) when Temporal is slow or away; with 500 when it answered no,
    which sending again will not change: that is for whoever runs the endpoint, so it is logged."""
    if isinstance(err, RPCError) and err.status not in TRANSIENT:
        log.error("Temporal refused an intake request: %s", err)
        raise Refused(500, f"Temporal refused: {err.message[:200]}") from None
    raise Refused(503, SEND_AGAIN) from None


class IntakeServer(BackgroundServer):
    def __init__(
        self,
        port: int,
        api_keys: Sequence[str],
        start_lead: StartLead,
        deal_status: DealStatus,
        host: str = "127.0.0.1",
    ) -> None:
        keys = [key for key in api_keys if key]
        if not keys:
            raise ValueError("the intake endpoint needs at least one API key")
        super().__init__(port, _Handler, host)
        self.api_keys = [key.encode() for key in keys]
        self.start_lead = start_lead
        self.deal_status = deal_status
        self.openapi = openapi_document()


def intake_endpoint(
    port: int,
    api_keys: Sequence[str],
    client: Client,
    task_queue: str,
    timeout: float = 30,
    host: str = "127.0.0.1",
) -> IntakeServer:
    """The endpoint on `host`:`port` (0: any free port), starting deals on `task_queue` through
    `client` on the caller's loop, each within `timeout` seconds (else 503); `start()` it, `stop()`
    it, post leads to `intake_url(endpoint)`."""
    loop = asyncio.get_running_loop()

    def start_lead(lead: LeadInput) -> tuple[str, bool]:
        handle, created = run_on_loop(loop, start_deal(client, lead, task_queue), timeout)
        return handle.id, created

    async def describe(lead_id: str) -> dict[str, Any] | None:
        workflow_id = workflow_id_for(lead_id)
        try:
            description = await client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                return None
            raise
        status = description.status or WorkflowExecutionStatus.RUNNING
        return {
            "workflow_id": workflow_id,
            "lead_id": lead_id,
            "status": status.name.lower(),
            "stage": description.typed_search_attributes.get(DEAL_STAGE),
        }

    def deal_status(lead_id: str) -> dict[str, Any] | None:
        return run_on_loop(loop, describe(lead_id), timeout)

    return IntakeServer(port, api_keys, start_lead, deal_status, host)


def intake_url(endpoint: BackgroundServer) -> str:
    return f"http://127.0.0.1:{endpoint.port}{PATH}"
