"""Play deals through the whole path as ops staff would: quote, approve, sign, pay every invoice.

Used by the crash tests and the benchmarks. It acts only on what the `state` query shows, and it
keeps going through worker and server restarts: an RPC that fails is simply tried again on the
next look. Sending a signal twice is harmless by design (the second is refused with a reason, and
a payment's reference counts once), which is exactly what a person retrying by hand would do.
"""

import asyncio
import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from l2c.runtime import start_deal
from models.deal import LeadInput, Stage
from models.state import DealState

TERMINAL = {stage for stage in Stage if stage.is_terminal}

# The deals drills and benchmarks play, short enough to finish their term with compressed months.
DRILL_QUOTES: list[dict[str, Any]] = [
    # Two monthly invoices, no approval needed.
    {"lines": [{"sku": "PLATFORM", "quantity": 10}], "discount_percent": "0",
     "term_months": 2, "billing_period": "monthly"},
    # One upfront invoice with onboarding; 15% needs a manager's approval.
    {"lines": [{"sku": "PLATFORM", "quantity": 20}, {"sku": "ONBOARDING", "quantity": 1}],
     "discount_percent": "15", "term_months": 2, "billing_period": "upfront"},
    # Three monthly invoices with tiered usage.
    {"lines": [{"sku": "PLATFORM", "quantity": 5}, {"sku": "API_CALLS", "quantity": 200}],
     "discount_percent": "5", "term_months": 3, "billing_period": "monthly"},
]  # fmt: skip


@dataclass
class DealPlay:
    """One deal to play: the lead, the quote ops will submit, and the signals already sent."""

    lead: LeadInput
    quote: dict[str, Any]
    _done: set[str] = field(default_factory=set)


# The plays are of one term: the customer gives notice that the contract is not to renew (the
# standard terms renew automatically), with the signature.
NOTICE = {"by": "procurement", "party": "customer", "reason": "one term only"}


def payment_reference(invoice_number: str) -> str:
    """One reference per invoice: a payment resent after a lost reply counts once."""
    return f"PAY-{invoice_number}"


async def play_deal(
    client: Client,
    play: DealPlay,
    task_queue: str,
    *,
    poll_seconds: float = 0.5,
    rpc_timeout: timedelta = timedelta(seconds=5),
) -> DealState:
    """Start the deal (or find it) and drive it until it reaches a terminal stage."""
    handle: WorkflowHandle[Any, DealState] | None = None
    while handle is None:
        try:
            handle, _ = await start_deal(client, play.lead, task_queue)
        except RPCError:  # server down for now: try again shortly
            await asyncio.sleep(poll_seconds)
    while True:
        try:
            state = await handle.query("state", result_type=DealState, rpc_timeout=rpc_timeout)
            if state.stage in TERMINAL:
                return state
            await _act(handle, play, state, rpc_timeout)
        except (RPCError, WorkflowQueryFailedError, TimeoutError):
            pass  # worker or server down for now: look again shortly
        # Jitter keeps many plays from polling in lockstep.
        await asyncio.sleep(poll_seconds * random.uniform(0.5, 1.5))


async def _act(
    handle: WorkflowHandle[Any, DealState],
    play: DealPlay,
    state: DealState,
    rpc_timeout: timedelta,
) -> None:
    async def send(key: str, name: str, payload: dict[str, Any]) -> None:
        if key in play._done:
            return
        await handle.signal(name, payload, rpc_timeout=rpc_timeout)
        play._done.add(key)

    if state.stage == Stage.QUALIFIED and state.quote is None:
        await send("quote", "submit_quote", play.quote)
    elif state.stage == Stage.AWAITING_APPROVAL and state.pending_approval is not None:
        approver = state.pending_approval.eligible_approvers[0]
        await send("approve", "approve_discount", {"approver": approver, "comment": "playbook"})
    elif state.stage == Stage.AWAITING_SIGNATURE and state.contract is not None:
        await send(
            "sign",
            "sign_contract",
            {
                "signer_name": play.lead.contact_name,
                "signer_email": play.lead.contact_email,
                "document_sha256": state.contract.document_sha256,
            },
        )
        await send("notice", "give_notice", NOTICE)  # right away: a short term's deadline is near
    elif state.stage == Stage.ACTIVE:
        await send("notice", "give_notice", NOTICE)
        for invoice in state.invoices:
            if invoice.status == "open" and invoice.balance > 0:
                payload = {
                    "invoice_number": invoice.number,
                    "amount": str(invoice.balance),
                    "reference": payment_reference(invoice.number),
                    "recorded_by": "ar.clerk",
                }
                await send(f"pay {invoice.number}", "record_payment", payload)


async def play_deals(
    client: Client, plays: list[DealPlay], task_queue: str, **options: Any
) -> list[DealState]:
    return list(
        await asyncio.gather(*(play_deal(client, play, task_queue, **options) for play in plays))
    )
