"""A local payment gateway that speaks the subset of Stripe's API the adapter uses, over real HTTP.

`l2c dev` runs it and the tests charge through it. Like the real one it:
- requires `Authorization: Bearer sk_test_...`;
- takes form-encoded `POST /v1/payment_intents` (amount in minor units, currency, customer,
  payment_method, confirm=true, metadata[...]) and confirms at once;
- replays the stored response for a repeated `Idempotency-Key` (header `Idempotent-Replayed:
  true`) and refuses the key with other parameters (400, `idempotency_error`);
- declines Stripe's test payment methods (`pm_card_chargeDeclinedInsufficientFunds`, ...) with
  402 and a `card_error` naming `decline_code`.

Faults on demand, for tests and drills: `POST /_sandbox/faults` with JSON `{"next": [...]}` queues
what the next payment-intent requests meet: `"500"` (refused before anything happens), `"500_after"`
(the charge is made, then the response is lost to a 500), `"timeout"` (the charge is made, then the
response is withheld for `slow_seconds`). `GET /_sandbox/charges` lists the charges made. Given a
webhook endpoint and its secret, each charge is also announced there as a signed
`payment_intent.succeeded` event, retried until the endpoint answers 2xx.

State is in memory: a restarted sandbox starts empty, as a fresh test account would.
"""

import contextlib
import json
import secrets
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

import httpx

from l2c.local_http import BackgroundServer, BadRequest, JsonHandler
from l2c.webhooks import sign

# Stripe's test payment methods and the decline each one gives; the rest succeed.
DECLINES = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
    "pm_card_chargeDeclinedLostCard": "lost_card",
    "pm_card_chargeDeclinedStolenCard": "stolen_card",
    "pm_card_chargeDeclinedFraudulent": "fraudulent",
}
FAULTS = {"500", "500_after", "timeout"}


class SandboxState:
    def __init__(self, slow_seconds: float, webhook: tuple[str, str] | None) -> None:
        self.webhook = webhook  # (endpoint URL, signing secret), or None for no webhooks
        self.lock = threading.Lock()
        self.slow_seconds = slow_seconds
        self.faults: deque[str] = deque()
        # Idempotency-Key -> (parameters, status, body)
        self.responses: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = {}
        self.charges: list[dict[str, Any]] = []


class _Handler(JsonHandler):
    server: "SandboxGateway"

    def _send(self, status: int, body: dict[str, Any], replayed: bool = False) -> None:
        self.send_json(status, body, {"Idempotent-Replayed": "true"} if replayed else None)

    def _error(self, status: int, kind: str, message: str, **extra: Any) -> None:
        self._send(status, {"error": {"type": kind, "message": message, **extra}})

    def do_GET(self) -> None:
        state = self.server.state
        if self.path == "/_sandbox/charges":
            with state.lock:
                return self._send(200, {"data": list(state.charges)})
        if not self._authorized():
            return None
        if self.path.startswith("/v1/payment_intents/"):
            wanted = self.path.rsplit("/", 1)[-1]
            with state.lock:
                for charge in state.charges:
                    if charge["id"] == wanted:
                        return self._send(200, charge)
            return self._error(404, "invalid_request_error", f"No such payment_intent: {wanted}")
        return self._error(404, "invalid_request_error", f"Unrecognized request URL {self.path}")

    def do_POST(self) -> None:
        state = self.server.state
        if self.path == "/_sandbox/faults":
            try:
                queued = json.loads(self.read_body())["next"]
                if not isinstance(queued, list) or not set(queued) <= FAULTS:
                    raise ValueError
            except (ValueError, KeyError, TypeError, BadRequest):
                return self._error(
                    400, "invalid_request_error", f"next: a list of {sorted(FAULTS)}"
                )
            with state.lock:
                state.faults.extend(queued)
            return self._send(200, {"queued": len(state.faults)})
        if self.path != "/v1/payment_intents":
            return self._error(
                404, "invalid_request_error", f"Unrecognized request URL {self.path}"
            )
        if not self._authorized():
            return None
        try:
            params = dict(parse_qsl(self.read_body().decode("utf-8", "replace")))
        except BadRequest as err:
            return self._error(400, "invalid_request_error", str(err))
        key = self.headers.get("Idempotency-Key")
        with state.lock:
            fault = state.faults.popleft() if state.faults else None
            if fault == "500":
                return self._error(500, "api_error", "sandbox: injected failure before the charge")
            if key is not None and key in state.responses:
                stored_params, status, body = state.responses[key]
                if stored_params != params:
                    return self._error(
                        400,
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with.",
                    )
                replay: tuple[int, dict[str, Any]] | None = (status, body)
            else:
                replay = None
                status, body = self._confirm(params)
                if key is not None:
                    state.responses[key] = (params, status, body)
        if replay is not None:
            return self._send(*replay, replayed=True)
        if fault == "500_after":
            return self._error(500, "api_error", "sandbox: injected failure after the charge")
        if fault == "timeout":
            time.sleep(state.slow_seconds)
        return self._send(status, body)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer sk_test_") and len(auth) > len("Bearer sk_test_"):
            return True
        self._error(401, "invalid_request_error", "Invalid API Key provided")
        return False

    def _confirm(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Validate and confirm a payment intent; called with the state's lock held."""
        try:
            amount = int(params.get("amount", ""))
            if amount < 1:
                raise ValueError
        except ValueError:
            return 400, {"error": {"type": "invalid_request_error", "param": "amount",
                                   "message": "amount must be a positive integer"}}  # fmt: skip
        currency = params.get("currency", "")
        if len(currency) != 3 or not currency.isalpha():
            return 400, {"error": {"type": "invalid_request_error", "param": "currency",
                                   "message": "currency must be a 3-letter ISO code"}}  # fmt: skip
        method = params.get("payment_method", "")
        intent: dict[str, Any] = {
            "id": f"pi_{secrets.token_hex(12)}",
            "object": "payment_intent",
            "amount": amount,
            "currency": currency.lower(),
            "customer": params.get("customer"),
            "payment_method": method,
            "metadata": {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")},
            "created": int(time.time()),
        }
        decline = DECLINES.get(method)
        if decline is not None:
            intent["status"] = "requires_payment_method"
            error = {"type": "card_error", "code": "card_declined", "decline_code": decline,
                     "message": f"Your card was declined ({decline}).", "payment_intent": intent}  # fmt: skip
            return 402, {"error": error}
        intent["status"] = "succeeded"
        self.server.state.charges.append(intent)
        if self.server.state.webhook is not None:
            threading.Thread(
                target=deliver_webhook,
                args=(*self.server.state.webhook, "payment_intent.succeeded", intent),
                daemon=True,
            ).start()
        return 200, intent


def deliver_webhook(url: str, secret: str, kind: str, obj: dict[str, Any]) -> None:
    """Send a signed event, retrying with backoff until a 2xx, as the real gateway does."""
    event = {"id": f"evt_{secrets.token_hex(12)}", "object": "event", "type": kind,
             "created": int(time.time()), "data": {"object": obj}}  # fmt: skip
    payload = json.dumps(event).encode()
    for attempt in range(6):
        headers = {"Content-Type": "application/json",
                   "Stripe-Signature": sign(secret, payload, int(time.time()))}  # fmt: skip
        with contextlib.suppress(httpx.HTTPError):
            if httpx.post(url, content=payload, headers=headers, timeout=10).is_success:
                return
        time.sleep(0.5 * 2**attempt)


class SandboxGateway(BackgroundServer):
    """The sandbox on 127.0.0.1:`port`; `start()` serves it from a background thread."""

    def __init__(
        self, port: int, slow_seconds: float = 5.0, webhook: tuple[str, str] | None = None
    ) -> None:
        super().__init__(port, _Handler)
        self.state = SandboxState(slow_seconds, webhook)
        self.url = f"http://127.0.0.1:{self.port}"

    def successful_charges(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return list(self.state.charges)
