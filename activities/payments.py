"""Charging a card on file through the payment gateway (l2c/gateway.py)."""

from temporalio import activity
from temporalio.exceptions import ApplicationError

from l2c.gateway import GatewayRequestError, PaymentGateway
from models.documents import ChargeRequest, ChargeResult


class PaymentActivities:
    def __init__(self, gateway: PaymentGateway | None):
        self._gateway = gateway

    @activity.defn
    def charge_card(self, request: ChargeRequest) -> ChargeResult:
        """A gateway outage raises and the retry sends the same request (same idempotency key)."""
        if self._gateway is None:
            raise ApplicationError(
                "no payment gateway is configured (set L2C_GATEWAY_URL)",
                type="NoPaymentGateway",
                non_retryable=True,
            )
        try:
            return self._gateway.charge(request)
        except GatewayRequestError as refused:
            raise ApplicationError(
                str(refused), type="GatewayRefused", non_retryable=True
            ) from None
