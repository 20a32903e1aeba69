"""The gateway adapter against the sandbox gateway over a real socket: one charge per invoice."""

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from l2c.drill import free_port
from l2c.gateway import (
    ChargeRequest,
    ChargeResult,
    GatewayRequestError,
    GatewayUnavailable,
    PaymentGateway,
)
from l2c.gateway_sandbox import SandboxGateway

API_KEY = "sk_test_l2c"


@pytest.fixture
def sandbox() -> Iterator[SandboxGateway]:
    gateway = SandboxGateway(free_port(), slow_seconds=4)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def gateway(sandbox: SandboxGateway) -> Iterator[PaymentGateway]:
    # A read timeout shorter than the sandbox's withheld response, as a real client's would be.
    with httpx.Client(timeout=httpx.Timeout(5.0, read=2.0)) as client:
        yield PaymentGateway(client, sandbox.url, API_KEY)


def charge(number: str = "INV-000001", **changes: object) -> ChargeRequest:
    data: dict[str, object] = {"deal_id": "deal-L-1", "invoice_number": number, "attempt_series": 1,
                               "amount": Decimal("8500.00"), "currency": "USD",
                               "customer": "cus_acme", "payment_method": "pm_card_visa"}  # fmt: skip
    data.update(changes)
    return ChargeRequest.model_validate(data)


def charge_until_answered(gateway: PaymentGateway, request: ChargeRequest) -> ChargeResult:
    """What the activity's retry policy does: send the same request again after an outage."""
    for _ in range(10):
        try:
            return gateway.charge(request)
        except GatewayUnavailable:
            continue
    raise AssertionError("the gateway never answered")


def test_a_charge_sent_twice_is_made_once(sandbox: SandboxGateway, gateway: PaymentGateway) -> None:
    first = gateway.charge(charge())
    assert first.status == "succeeded" and first.amount == Decimal("8500.00")
    assert not first.replayed
    again = gateway.charge(charge())
    assert again.replayed and again.payment_intent_id == first.payment_intent_id
    charges = sandbox.successful_charges()
    assert [(c["amount"], c["currency"], c["metadata"]) for c in charges] == [
        (850000, "usd", {"deal_id": "deal-L-1", "invoice_number": "INV-000001"})
    ]


@pytest.mark.parametrize("faults", [["500"], ["500_after"], ["timeout"], ["500", "500", "timeout"]])
def test_outages_are_retried_into_exactly_one_charge(
    sandbox: SandboxGateway, gateway: PaymentGateway, faults: list[str]
) -> None:
    httpx.post(f"{sandbox.url}/_sandbox/faults", json={"next": faults}).raise_for_status()
    with pytest.raises(GatewayUnavailable):
        gateway.charge(charge())
    result = charge_until_answered(gateway, charge())
    assert result.status == "succeeded"
    # Where the first attempt had already charged, the answer comes from the idempotency store.
    assert result.replayed == any(f in ("500_after", "timeout") for f in faults)
    assert len(sandbox.successful_charges()) == 1
    # Another invoice is another charge.
    assert gateway.charge(charge("INV-000002")).status == "succeeded"
    assert len(sandbox.successful_charges()) == 2


def test_declines_are_results_and_hard_ones_say_so(
    sandbox: SandboxGateway, gateway: PaymentGateway
) -> None:
    soft = gateway.charge(charge(payment_method="pm_card_chargeDeclinedInsufficientFunds"))
    assert (soft.status, soft.decline_code, soft.hard_decline) == (
        "declined",
        "insufficient_funds",
        False,
    )
    hard = gateway.charge(charge("INV-000002", payment_method="pm_card_chargeDeclinedStolenCard"))
    assert (hard.status, hard.decline_code, hard.hard_decline) == ("declined", "stolen_card", True)
    # The declined attempt is remembered under its key; a new series (a new card) may charge.
    assert gateway.charge(charge(payment_method="pm_card_chargeDeclinedInsufficientFunds")).replayed
    retried = gateway.charge(charge(attempt_series=2))
    assert retried.status == "succeeded"
    assert len(sandbox.successful_charges()) == 1


def test_refused_requests_are_permanent_errors(
    sandbox: SandboxGateway, gateway: PaymentGateway
) -> None:
    gateway.charge(charge())
    with pytest.raises(GatewayRequestError, match="idempotency_error"):
        gateway.charge(charge(amount=Decimal("1.00")))  # same key, other parameters
    with pytest.raises(GatewayRequestError, match="at most 2 decimals"):
        gateway.charge(charge("INV-000003", amount=Decimal("1.001")))
    with httpx.Client() as client, pytest.raises(GatewayRequestError, match="401"):
        PaymentGateway(client, sandbox.url, "sk_live_wrong").charge(charge("INV-000004"))
    assert len(sandbox.successful_charges()) == 1


def test_an_unreachable_gateway_is_an_outage() -> None:
    with httpx.Client(timeout=2) as client:
        gateway = PaymentGateway(client, f"http://127.0.0.1:{free_port()}", API_KEY)
        with pytest.raises(GatewayUnavailable, match="unreachable"):
            gateway.charge(charge())
