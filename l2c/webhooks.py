"""The inbound webhook endpoint: verify the gateway's signature, then signal the deal it concerns.

Signatures follow Stripe's scheme: header `Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>" under the endpoint secret>`. A bad signature, or a timestamp outside the tolerance
(a captured request replayed later), gets 401 and changes nothing.

A verified `payment_intent.succeeded` becomes the deal's `record_payment` signal, with the payment
intent's id as the reference. The deal counts a reference once, so a webhook delivered twice (the
gateway retries until it sees a 2xx) is refused by the deal with its reason and changes nothing.
`charge.dispute.created` and `charge.dispute.closed` (status `won` or `lost`) become the deal's
`open_dispute` and `close_dispute`. A dispute names only the payment intent it takes back, so the
deal and invoice are found from the payment in the ledger; one not recorded yet gets 404, and the
gateway sends the event again later.
`envelope.completed`, from the e-signature provider (signed the same way, with the same secret),
becomes `sign_contract`: the deal checks the signed document's SHA-256 against the contract it sent.
Event types the deal has no use for are acknowledged and ignored, as the gateway expects.
"""

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from l2c.closed_deals import record_chargeback
from l2c.gateway import from_minor_units
from l2c.local_http import BackgroundServer, BadRequest, JsonHandler, run_on_loop
from models.ledger import PaymentRecordRow

TOLERANCE_SECONDS = 300
PATH = "/webhooks/gateway"


class WebhookRefused(Exception):
    """The request is not a genuine, timely webhook; the message says why."""


def sign(secret: str, payload: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    secret: str, payload: bytes, header: str | None, now: float, tolerance: int = TOLERANCE_SECONDS
) -> None:
    if not header:
        raise WebhookRefused("no Stripe-Signature header")
    parts = [item.split("=", 1) for item in header.split(",") if "=" in item]
    stamps = [value for key, value in parts if key.strip() == "t"]
    signatures = [value.strip() for key, value in parts if key.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].strip().isascii() or not stamps[0].strip().isdigit():
        raise WebhookRefused("malformed Stripe-Signature header")
    if not signatures:
        raise WebhookRefused("malformed Stripe-Signature header")
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        raise WebhookRefused(f"timestamp outside the {tolerance}-second tolerance")
    expected = sign(secret, payload, timestamp).split("v1=", 1)[1]
    candidates = [c.encode() for c in signatures if c.isascii()]
    if not any(hmac.compare_digest(expected.encode(), c) for c in candidates):
        raise WebhookRefused("signature does not match")


# The deal and invoice of a payment the ledger recorded under this reference, if any.
PaymentLookup = Callable[[str], tuple[str, str] | None]


class UnknownPayment(LookupError):
    """A dispute for a payment the ledger has not recorded (yet)."""


def deal_signal(
    event: dict[str, Any], find_payment: PaymentLookup
) -> tuple[str, str, dict[str, str]] | None:
    """(deal id, signal name, payload) for an event the deal acts on; None to ignore it."""
    kind = event.get("type")
    if kind in ("charge.dispute.created", "charge.dispute.closed"):
        return _dispute_signal(event, find_payment)
    if kind == "envelope.completed":
        return _signature_signal(event)
    if kind != "payment_intent.succeeded":
        return None
    data = event.get("data")
    intent = data.get("object") if isinstance(data, dict) else None
    metadata = intent.get("metadata") if isinstance(intent, dict) else None
    if (
        not isinstance(intent, dict)
        or not isinstance(metadata, dict)
        or not all(isinstance(metadata.get(k), str) for k in ("deal_id", "invoice_number"))
        or not isinstance(intent.get("id"), str)
        or type(intent.get("amount")) is not int
    ):
        raise ValueError(
            "payment_intent.succeeded needs data.object.id, an integer amount and "
            "metadata.deal_id and metadata.invoice_number"
        )
    payment = {
        "invoice_number": metadata["invoice_number"],
        "amount": str(from_minor_units(intent["amount"])),
        "currency": str(intent.get("currency", "")).upper(),
        "reference": intent["id"],
        "recorded_by": "gateway",
    }
    return metadata["deal_id"], "record_payment", payment


def _dispute_signal(
    event: dict[str, Any], find_payment: PaymentLookup
) -> tuple[str, str, dict[str, str]] | None:
    data = event.get("data")
    dispute = data.get("object") if isinstance(data, dict) else None
    if (
        not isinstance(dispute, dict)
        or not isinstance(dispute.get("id"), str)
        or not isinstance(dispute.get("payment_intent"), str)
        or type(dispute.get("amount")) is not int
    ):
        raise ValueError(
            f"{event['type']} needs data.object.id, data.object.payment_intent and an integer amount"
        )
    found = find_payment(dispute["payment_intent"])
    if found is None:
        raise UnknownPayment(f"no payment {dispute['payment_intent'][:100]} recorded")
    deal_id, invoice_number = found
    if event["type"] == "charge.dispute.created":
        return (
            deal_id,
            "open_dispute",
            {
                "invoice_number": invoice_number,
                "dispute_id": dispute["id"],
                "amount": str(from_minor_units(dispute["amount"])),
                "reason": str(dispute.get("reason") or "chargeback")[:2000],
                "payment_reference": dispute["payment_intent"],
                "by": "gateway",
            },
        )
    if dispute.get("status") not in ("won", "lost"):
        return None  # e.g. warning_closed: no funds moved, nothing for the deal
    return deal_id, "close_dispute", {
        "dispute_id": dispute["id"], "outcome": dispute["status"], "by": "gateway"}  # fmt: skip


def _signature_signal(event: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    data = event.get("data")
    envelope = data.get("object") if isinstance(data, dict) else None
    signer = envelope.get("signer") if isinstance(envelope, dict) else None
    metadata = envelope.get("metadata") if isinstance(envelope, dict) else None
    if (
        not isinstance(envelope, dict)
        or not isinstance(signer, dict)
        or not isinstance(metadata, dict)
        or not isinstance(metadata.get("deal_id"), str)
        or not all(isinstance(signer.get(k), str) for k in ("name", "email"))
        or not isinstance(envelope.get("document_sha256"), str)
    ):
        raise ValueError(
            "envelope.completed needs data.object.document_sha256, signer.name, signer.email "
            "and metadata.deal_id"
        )
    return (
        metadata["deal_id"],
        "sign_contract",
        {
            "signer_name": signer["name"][:100],
            "signer_email": signer["email"][:254],
            "document_sha256": envelope["document_sha256"][:64],
        },
    )


def ledger_payment_lookup(engine: Engine) -> PaymentLookup:
    def find_payment(reference: str) -> tuple[str, str] | None:
        with Session(engine) as session:
            row = session.exec(
                select(PaymentRecordRow).where(PaymentRecordRow.reference == reference)
            ).first()
        if row is None or row.invoice_number is None:
            return None
        return row.deal_id, row.invoice_number

    return find_payment


class _Handler(JsonHandler):
    server: "_Server"

    def do_POST(self) -> None:
        if self.path != PATH:
            return self.send_json(404, {"error": f"no endpoint {self.path[:100]}; use {PATH}"})
        try:
            payload = self.read_body()
        except BadRequest as err:
            return self.send_json(400, {"error": str(err)})
        try:
            verify(self.server.secret, payload, self.headers.get("Stripe-Signature"), time.time())
        except WebhookRefused as refused:
            return self.send_json(401, {"error": str(refused)})
        try:
            event = json.loads(payload)
            if not isinstance(event, dict):
                raise ValueError("the body must be a JSON object")
            target = deal_signal(event, self.server.find_payment)
        except UnknownPayment as err:
            return self.send_json(404, {"error": str(err)})
        except ValueError as err:
            return self.send_json(400, {"error": str(err)[:300]})
        if target is None:
            return self.send_json(200, {"received": True, "ignored": str(event.get("type"))[:100]})
        deal_id, name, body = target
        try:
            self.server.send_signal(deal_id, name, body)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                if name in ("open_dispute", "close_dispute"):
                    # Found through its payment, so the deal exists: it has closed. The gateway
                    # moved the money anyway, so the ledger records it.
                    done = self.server.record_closed(deal_id, name, body)
                    return self.send_json(200, {"received": True, "recorded": done})
                return self.send_json(404, {"error": f"no deal {deal_id[:100]}"})
            return self.send_json(503, {"error": "could not reach the deal; send again"})
        except (TimeoutError, RuntimeError):  # Temporal slow to answer, or the endpoint stopping
            return self.send_json(503, {"error": "could not reach the deal; send again"})
        return self.send_json(200, {"received": True, "signalled": deal_id, "signal": name})


class _Server(BackgroundServer):
    def __init__(
        self,
        port: int,
        secret: str,
        send_signal: Callable[[str, str, dict[str, str]], None],
        find_payment: PaymentLookup,
        record_closed: Callable[[str, str, dict[str, str]], str],
    ) -> None:
        super().__init__(port, _Handler)
        self.secret = secret
        self.send_signal = send_signal
        self.find_payment = find_payment
        self.record_closed = record_closed


def webhook_endpoint(port: int, secret: str, client: Client, engine: Engine) -> _Server:
    """The endpoint on 127.0.0.1:`port`, signalling deals through `client` on the caller's loop
    and finding disputed payments in the ledger at `engine`; `start()` it, `stop()` it, post to
    `webhook_url(endpoint)`."""
    loop = asyncio.get_running_loop()

    def send_signal(deal_id: str, name: str, body: dict[str, str]) -> None:
        run_on_loop(loop, client.get_workflow_handle(deal_id).signal(name, body))

    def record_closed(deal_id: str, name: str, body: dict[str, str]) -> str:
        return record_chargeback(engine, deal_id, name, body, datetime.now(UTC))

    return _Server(port, secret, send_signal, ledger_payment_lookup(engine), record_closed)


def webhook_url(endpoint: BackgroundServer) -> str:
    return f"http://127.0.0.1:{endpoint.port}{PATH}"
