"""Gateway webhooks: only signed, timely requests reach a deal, and a resent one changes nothing."""

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import Engine
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings
from l2c.drill import free_port
from l2c.gateway import ChargeRequest, PaymentGateway
from l2c.gateway_sandbox import SandboxGateway
from l2c.local_http import BackgroundServer
from l2c.webhooks import WebhookRefused, sign, verify, webhook_endpoint, webhook_url
from models.deal import Stage
from tests.helpers import quote_to_signature, refusals, retire_at_rest, start, state_of, wait_until

SECRET = "whsec_test"
BODY = b'{"type": "payment_intent.succeeded"}'


def test_signatures_are_checked_for_body_secret_and_age() -> None:
    now = time.time()
    header = sign(SECRET, BODY, int(now))
    verify(SECRET, BODY, header, now)
    verify(SECRET, BODY, f"{header},v1=00", now)  # another signature beside ours (secret rotation)
    refused = {
        "tampered body": (SECRET, BODY + b" ", header, now),
        "other secret": ("whsec_other", BODY, header, now),
        "too old": (SECRET, BODY, header, now + 301),
        "no header": (SECRET, BODY, None, now),
        "no timestamp": (SECRET, BODY, header.split(",", 1)[1], now),
        "garbage": (SECRET, BODY, "t=abc,v1=def", now),
    }
    reasons = {}
    for case, (secret, body, head, at) in refused.items():
        with pytest.raises(WebhookRefused) as err:
            verify(secret, body, head, at)
        reasons[case] = str(err.value)
    assert reasons["too old"] == "timestamp outside the 300-second tolerance"
    assert reasons["tampered body"] == reasons["other secret"] == "signature does not match"


@pytest.fixture
async def endpoint(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine
) -> AsyncIterator[BackgroundServer]:
    webhooks = webhook_endpoint(free_port(), SECRET, ts_env.client, sqlite_ledger)
    webhooks.start()
    yield webhooks
    webhooks.stop()


async def post(url: str, payload: bytes, signature: str | bytes) -> httpx.Response:
    headers: dict[str, str | bytes] = {
        "Stripe-Signature": signature,
        "Content-Type": "application/json",
    }
    return await asyncio.to_thread(httpx.post, url, content=payload, headers=headers, timeout=30)


async def test_a_card_charge_pays_the_invoice_once_however_often_announced(
    ts_env: WorkflowEnvironment, deal_worker: Settings, endpoint: BackgroundServer
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle, billing_period="upfront")
    invoice = state.invoices[0]

    sandbox = SandboxGateway(free_port(), webhook=(webhook_url(endpoint), SECRET))
    sandbox.start()
    try:
        with httpx.Client(timeout=10) as client:
            gateway = PaymentGateway(client, sandbox.url, "sk_test_l2c")
            request = ChargeRequest(deal_id=handle.id, invoice_number=invoice.number,
                                    attempt_series=1, amount=invoice.amount, currency="USD",
                                    customer="cus_acme", payment_method="pm_card_visa")  # fmt: skip
            charged = await asyncio.to_thread(gateway.charge, request)
    finally:
        sandbox.stop()
    assert charged.status == "succeeded"
    # The sandbox announces the charge through the signed webhook; the deal records the payment.
    paid = await wait_until(handle, lambda s: s.invoices[0].status == "paid")
    assert paid.invoices[0].amount_paid == invoice.amount == Decimal("6000.00")

    # The gateway delivers the same event again: the deal refuses the reference, nothing changes.
    event = {"id": "evt_again", "type": "payment_intent.succeeded", "data": {"object": {
        "id": charged.payment_intent_id, "amount": 600000, "currency": "usd",
        "metadata": {"deal_id": handle.id, "invoice_number": invoice.number}}}}  # fmt: skip
    payload = json.dumps(event).encode()
    again = await post(webhook_url(endpoint), payload, sign(SECRET, payload, int(time.time())))
    assert again.status_code == 200 and again.json()["signalled"] == handle.id
    after = await wait_until(handle, lambda s: len(refusals(s, "record_payment")) == 1)
    assert "counted once" in refusals(after, "record_payment")[0]
    assert after.invoices == paid.invoices and after.balance_due == paid.balance_due

    # Forged, stale, malformed or stray requests are turned away and reach no deal.
    stale = sign(SECRET, payload, int(time.time()) - 3600)
    assert (await post(webhook_url(endpoint), payload, stale)).status_code == 401
    assert (await post(webhook_url(endpoint), payload, sign("whsec_forged", payload, int(time.time())))).status_code == 401  # fmt: skip
    bad = b'{"type": "payment_intent.succeeded", "data": {"object": {"id": "pi_1"}}}'
    response = await post(webhook_url(endpoint), bad, sign(SECRET, bad, int(time.time())))
    assert response.status_code == 400 and "metadata.deal_id" in response.json()["error"]
    other = b'{"type": "customer.created"}'
    response = await post(webhook_url(endpoint), other, sign(SECRET, other, int(time.time())))
    assert response.status_code == 200 and response.json()["ignored"] == "customer.created"
    unknown = json.dumps({**event, "data": {"object": {**event["data"]["object"],  # type: ignore[dict-item]
                          "metadata": {"deal_id": "deal-nobody", "invoice_number": "X"}}}}).encode()  # fmt: skip
    response = await post(webhook_url(endpoint), unknown, sign(SECRET, unknown, int(time.time())))
    assert response.status_code == 404
    final = await state_of(handle)
    assert final.invoices == paid.invoices
    assert len(refusals(final, "record_payment")) == 1
    await retire_at_rest([handle])


async def test_unreadable_requests_get_a_reason_not_a_dropped_connection(
    endpoint: BackgroundServer,
) -> None:
    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", endpoint.port), timeout=10) as conn:
            conn.sendall(request)
            return conn.recv(65536)

    for length in [b"-1", b"abc", b"\xc2\xb2", b"99999999"]:
        answer = await asyncio.to_thread(
            raw,
            b"POST /webhooks/gateway HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + length
            + b"\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.0 400"), (length, answer[:200])
    now = int(time.time())
    for body in [b'{"type": "payment_intent.succeeded", "data": []}',
                 b'{"type": "payment_intent.succeeded", "data": {"object": "pi"}}',
                 b'{"type": "payment_intent.succeeded", "data": {"object": {"id": "pi", "amount": true,'
                 b' "metadata": {"deal_id": "d", "invoice_number": "i"}}}}']:  # fmt: skip
        response = await post(webhook_url(endpoint), body, sign(SECRET, body, now))
        assert response.status_code == 400, body
    odd = await post(webhook_url(endpoint), BODY, f"t={now},v1=\u00e9\u00e9".encode())
    assert odd.status_code == 401
    squared = await post(webhook_url(endpoint), BODY, "t=\u00b2,v1=00".encode())
    assert squared.status_code == 401


async def test_a_completed_e_signature_envelope_signs_the_contract(
    ts_env: WorkflowEnvironment, deal_worker: Settings, endpoint: BackgroundServer
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    await wait_until(handle, lambda s: s.stage == Stage.QUALIFIED)
    await handle.signal("submit_quote", {"submitted_by": "nora.na", "term_months": 12,
                                        "lines": [{"sku": "PLATFORM", "quantity": 10}]})  # fmt: skip
    state = await wait_until(handle, lambda s: s.stage == Stage.AWAITING_SIGNATURE)
    assert state.contract is not None

    def envelope(sha256: str) -> bytes:
        return json.dumps({"id": "evt_env", "type": "envelope.completed", "data": {"object": {
            "id": "env_1", "document_sha256": sha256, "metadata": {"deal_id": handle.id},
            "signer": {"name": "Ada Lovelace", "email": "ada@acme.example"}}}}).encode()  # fmt: skip

    # A document other than the one sent is refused by the deal, with the reason.
    wrong = envelope("0" * 64)
    response = await post(webhook_url(endpoint), wrong, sign(SECRET, wrong, int(time.time())))
    assert response.status_code == 200
    refused = await wait_until(handle, lambda s: len(refusals(s, "sign_contract")) == 1)
    assert "does not match" in refusals(refused, "sign_contract")[0]
    right = envelope(state.contract.document_sha256)
    response = await post(webhook_url(endpoint), right, sign(SECRET, right, int(time.time())))
    assert response.status_code == 200 and response.json()["signal"] == "sign_contract"
    signed = await wait_until(handle, lambda s: s.stage == Stage.ACTIVE)
    assert signed.contract is not None and signed.contract.signed_by == "Ada Lovelace"
    bad = b'{"type": "envelope.completed", "data": {"object": {"id": "env_2"}}}'
    response = await post(webhook_url(endpoint), bad, sign(SECRET, bad, int(time.time())))
    assert response.status_code == 400 and "document_sha256" in response.json()["error"]
