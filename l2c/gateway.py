"""The payment gateway adapter: charges a card on file through a Stripe-compatible API over httpx.

Exactly one charge per invoice and attempt series, however often it is retried: the
`Idempotency-Key` is derived from the invoice and the dunning's attempt series, never from the
activity attempt, so a retry after a lost response gets the stored result instead of a second
charge. The adapter does not retry by itself: an outage raises `GatewayUnavailable`, and the
activity's retry policy (with backoff) sends the same request again.
"""

from decimal import Decimal
from typing import Any

import httpx

from models.documents import ChargeRequest, ChargeResult
from models.money import CENT

# Declines that retrying cannot fix; the dunning stops charging the card after one of them.
HARD_DECLINES = frozenset(
    {"stolen_card", "lost_card", "fraudulent", "pickup_card", "restricted_card", "expired_card"}
)


class GatewayUnavailable(Exception):
    """Transient: a timeout, a lost connection or a 5xx. Safe to retry with the same request."""


class GatewayRequestError(Exception):
    """Permanent: the gateway refused the request itself (bad key, parameters, reused key)."""


def idempotency_key(request: ChargeRequest) -> str:
    return f"l2c-charge-{request.invoice_number}-series-{request.attempt_series}"


def to_minor_units(amount: Decimal) -> int:
    if amount <= 0 or amount != amount.quantize(CENT):
        raise GatewayRequestError(f"amount must be positive with at most 2 decimals: {amount}")
    return int(amount * 100)


def from_minor_units(amount: int) -> Decimal:
    """An amount in the gateway's minor units (cents) as money."""
    return (Decimal(amount) / 100).quantize(CENT)


class PaymentGateway:
    def __init__(self, client: httpx.Client, base_url: str, api_key: str) -> None:
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key

    def charge(self, request: ChargeRequest) -> ChargeResult:
        form = {
            "amount": str(to_minor_units(request.amount)),
            "currency": request.currency.lower(),
            "customer": request.customer,
            "payment_method": request.payment_method,
            "confirm": "true",
            "metadata[deal_id]": request.deal_id,
            "metadata[invoice_number]": request.invoice_number,
        }
        try:
            response = self._client.post(
                f"{self._base_url}/v1/payment_intents",
                data=form,
                headers={
                    "Authorization": f"Bearer {self._api_key}",
                    "Idempotency-Key": idempotency_key(request),
                },
            )
        except httpx.TransportError as err:  # timeouts, refused and dropped connections
            raise GatewayUnavailable(f"payment gateway unreachable: {type(err).__name__}") from err
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        # 409: the same key is still being processed (a retry overtook the first request).
        if response.status_code >= 500 or response.status_code in (409, 429):
            raise GatewayUnavailable(f"payment gateway answered {response.status_code}")
        body = _json(response)
        if response.status_code == 200:
            if body.get("status") != "succeeded":
                # requires_action (3-D Secure) or processing: not a payment yet, and no flow here
                # handles those.
                raise GatewayRequestError(
                    f"payment intent {body.get('id')} is {str(body.get('status'))[:40]}, "
                    "not succeeded"
                )
            return ChargeResult(
                status="succeeded",
                payment_intent_id=body["id"],
                amount=from_minor_units(body["amount"]),
                currency=body["currency"].upper(),
                replayed=replayed,
            )
        error = body.get("error", {})
        if response.status_code == 402 and error.get("type") == "card_error":
            code = error.get("decline_code") or error.get("code") or "card_declined"
            return ChargeResult(
                status="declined",
                payment_intent_id=(error.get("payment_intent") or {}).get("id"),
                amount=request.amount,
                currency=request.currency.upper(),
                decline_code=code,
                hard_decline=code in HARD_DECLINES,
                replayed=replayed,
            )
        raise GatewayRequestError(
            f"payment gateway refused the request ({response.status_code}, "
            f"{error.get('type', 'unknown')}): {str(error.get('message', ''))[:300]}"
        )


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        # A 2xx without a payment intent is a broken gateway (retry); a 4xx without an error
        # object is not the gateway at all (a wrong URL or a proxy): retrying cannot help.
        problem = f"payment gateway sent no JSON object ({response.status_code})"
        raise GatewayUnavailable(problem) if response.is_success else GatewayRequestError(problem)
    return body
