"""The ops CLI: `l2c deals`, `l2c deal`, `l2c approve`, `l2c reject`, `l2c accept`, `l2c pay`.

People act on deals through the workflow's own updates and signals, as in the Web UI: the deal
decides, and this shows its answer. Nothing here re-implements a business rule; a payload is
checked locally only by the pydantic model the workflow parses it with (models/signals.py), so
that a typo is reported before anything is sent.

Exit codes: 0 done; 1 refused by the deal (in a batch: any row refused); 2 bad arguments, a bad
file or an unknown deal (nothing sent); 3 no answer in time (is a worker running?).
"""

import argparse
import asyncio
import csv
import io
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from models.deal import WORKFLOW_TYPE, Stage
from models.signals import AcceptLead, ApproveDiscount, RecordPayment, RejectDiscount
from models.state import DealEvent, DealState, InvoiceView
from models.validation import explain

if TYPE_CHECKING:
    from temporalio.client import Client, WorkflowExecutionDescription, WorkflowHandle

OK, REFUSED, INVALID, NO_ANSWER = 0, 1, 2, 3
DEAL_PREFIX = "deal-"
DEFAULT_TIMEOUT = 15.0  # seconds to wait for a deal's answer


# ---------------------------------------------------------------- helpers


def deal_workflow_id(text: str) -> str:
    """`L-1001` or `deal-L-1001` -> `deal-L-1001` (renewal quotes: `deal-L-1001-renewal-2`)."""
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("a deal id is needed, e.g. L-1001 or deal-L-1001")
    return text if text.startswith(DEAL_PREFIX) else DEAL_PREFIX + text


MAX_AGE = timedelta(days=36500)
_AGE = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


def parse_age(text: str) -> timedelta:
    """`7d`, `36h`, `2w`, `1d12h`, `90m` -> a timedelta."""
    match = _AGE.match(text.strip().lower())
    if not text.strip() or match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: use weeks, days, hours, minutes, e.g. 7d, 36h, 1d12h, 90m"
        )
    weeks, days, hours, minutes = (int(part or 0) for part in match.groups())
    try:
        age = timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes)
    except OverflowError:
        age = MAX_AGE + MAX_AGE
    if not timedelta(0) < age <= MAX_AGE:
        raise argparse.ArgumentTypeError(f"{text!r}: the age must be more than zero and at most "
                                         f"{MAX_AGE.days} days")  # fmt: skip
    return age


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0-3600)")
    return value


def quote_value(value: str) -> str:
    """A string literal for a visibility query: quotes and backslashes escaped, so a value can
    never end the literal and add a condition of its own."""
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError("control characters are not allowed in a filter value")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def valid_stage(text: str) -> str:
    try:
        return Stage(text.strip().lower()).value
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown stage {text!r}; valid stages: {', '.join(s.value for s in Stage)}"
        ) from None


STATUS_FILTERS = {
    "running": 'ExecutionStatus="Running"',
    # A run that continued as new is not a deal of its own: its next run is listed instead.
    "closed": 'ExecutionStatus!="Running" AND ExecutionStatus!="ContinuedAsNew"',
    "all": 'ExecutionStatus!="ContinuedAsNew"',
}


def deals_query(
    stages: list[str] | None = None,
    owner: str | None = None,
    older_than: timedelta | None = None,
    status: str = "running",
    now: datetime | None = None,
    approver: str | None = None,
    in_stage_over: timedelta | None = None,
    overdue: bool = False,
) -> str:
    """The visibility query for `l2c deals`, from its filters (the ops console's saved queries:
    docs/ops-console.md)."""
    now = now or datetime.now(UTC)
    parts = [f"WorkflowType={quote_value(WORKFLOW_TYPE)}", STATUS_FILTERS[status]]
    if stages:
        unique = list(dict.fromkeys(valid_stage(stage) for stage in stages))
        parts.append(f"DealStage IN ({', '.join(quote_value(stage) for stage in unique)})")
    if owner is not None:
        parts.append(f"DealOwner={quote_value(owner)}")
    if older_than is not None:
        parts.append(f"StartTime < {_moment(now - older_than)}")
    if approver is not None:
        parts.append(f"DealApprovers={quote_value(approver)}")
    if in_stage_over is not None:
        parts.append(f"DealStageSince < {_moment(now - in_stage_over)}")
    if overdue:
        parts.append(f"DealOldestDue < {_moment(now)}")
    return " AND ".join(parts)


def _moment(at: datetime) -> str:
    return quote_value(at.strftime("%Y-%m-%dT%H:%M:%SZ"))


def format_age(age: timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m"
    return f"{seconds}s"


def _at(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _money(amount: Decimal | float | None, currency: str = "") -> str:
    if amount is None:
        return "-"
    text = f"{amount:,.2f}"
    return f"{text} {currency}" if currency else text


class _PlainLines(io.TextIOBase):
    """Standard output (as it is at each write) without the trailing blanks rich pads rows with."""

    def __init__(self) -> None:
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            sys.stdout.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending:
            sys.stdout.write(self.pending)
            self.pending = ""
        sys.stdout.flush()


def stdout_console() -> Console:
    """Rich on a terminal; plain and wide elsewhere (a pipe, a log), so that rows do not wrap."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(
            file=cast(IO[str], _PlainLines()), highlight=False, width=250, no_color=True
        )
    return console


def _table(console: Console, *columns: str, title: str | None = None) -> Table:
    table = Table(
        *columns,
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD if console.is_terminal else None,
        pad_edge=False,
        show_edge=False,
    )
    return table


def _fail(message: str, code: int = INVALID) -> int:
    print(f"l2c: {message}", file=sys.stderr)
    return code


@dataclass
class Outcome:
    """What one action on a deal came to: its exit code and what to tell the person."""

    code: int
    deal_id: str
    message: str
    state: DealState | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        verdict = {OK: "ok", REFUSED: "refused", INVALID: "invalid", NO_ANSWER: "no_answer"}
        data: dict[str, Any] = {"deal_id": self.deal_id, "result": verdict[self.code],
                                "message": self.message, **self.extra}  # fmt: skip
        return data


def _print_outcome(outcome: Outcome, as_json: bool) -> int:
    if as_json:
        print(json.dumps(outcome.as_json(), default=str))
    elif outcome.code == OK:
        print(outcome.message)
    else:
        print(f"l2c: {outcome.message}", file=sys.stderr)
    return outcome.code


def _run(core: Callable[["Client"], Awaitable[int]]) -> int:
    """Connect as every command does (the payload codec included) and run `core` with the client."""
    from l2c.config import Settings
    from l2c.runtime import connect

    async def main() -> int:
        return await core(await connect(Settings.from_env()))

    return asyncio.run(main())


# ---------------------------------------------------------------- talking to a deal


async def _describe(client: "Client", workflow_id: str) -> "WorkflowExecutionDescription | Outcome":
    """The deal's execution, or why there is none to act on (unknown id, not a deal)."""
    from temporalio.service import RPCError, RPCStatusCode

    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return Outcome(INVALID, workflow_id, f"no deal {workflow_id} (unknown workflow id)")
        return Outcome(INVALID, workflow_id, f"{workflow_id}: {err.message}")
    if description.workflow_type != WORKFLOW_TYPE:
        return Outcome(INVALID, workflow_id,
                       f"{workflow_id} is not a deal (a {description.workflow_type} workflow)")  # fmt: skip
    return description


def _status_name(description: "WorkflowExecutionDescription") -> str:
    return description.status.name.lower() if description.status is not None else "unknown"


async def query_state(handle: "WorkflowHandle[Any, Any]", timeout: float) -> DealState | Outcome:
    """The deal's `state` query, or why it did not answer (no worker, a deal that failed)."""
    from temporalio.client import WorkflowQueryFailedError
    from temporalio.service import RPCError, RPCStatusCode

    no_answer = Outcome(NO_ANSWER, handle.id,
                        f"{handle.id}: no worker answered the state query within {timeout:g} s "
                        "(is `l2c worker` running? a closed deal needs one too)")  # fmt: skip
    try:
        async with asyncio.timeout(timeout + 5):  # rpc_timeout first; this is the backstop
            return await handle.query("state", result_type=DealState,  # type: ignore[no-any-return]
                                      rpc_timeout=timedelta(seconds=timeout))  # fmt: skip
    except TimeoutError:
        return no_answer
    except WorkflowQueryFailedError as err:
        return Outcome(REFUSED, handle.id, f"{handle.id}: the state query failed: {err.message}")
    except (KeyError, ValueError) as err:  # a payload this client cannot decode or parse
        return _undecodable(handle.id, err)
    except RPCError as err:
        if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            return no_answer
        if err.status == RPCStatusCode.FAILED_PRECONDITION:  # the server saw no worker polling
            return Outcome(NO_ANSWER, handle.id, f"{handle.id}: no worker answered the state "
                           f"query ({err.message}); is `l2c worker` running?")  # fmt: skip
        if err.status == RPCStatusCode.NOT_FOUND:
            return Outcome(INVALID, handle.id, f"no deal {handle.id} (unknown workflow id)")
        return Outcome(REFUSED, handle.id, f"{handle.id}: {err.message}")


def _undecodable(workflow_id: str, err: Exception) -> Outcome:
    return Outcome(REFUSED, workflow_id, f"{workflow_id}: cannot decode the deal's answer "
                   f"({err}); if the workers encrypt payloads, set L2C_CODEC_KEYRING to their "
                   "keyring")  # fmt: skip


def refusal_reason(err: BaseException) -> str:
    """The workflow's reason from an update failure (the validator's ApplicationError)."""
    cause = getattr(err, "cause", None)
    while cause is not None:
        message = getattr(cause, "message", None) or str(cause)
        if message:
            return str(message)
        cause = getattr(cause, "cause", None)
    return str(err) or type(err).__name__


async def send_update(
    client: "Client", workflow_id: str, name: str, payload: BaseModel, timeout: float
) -> Outcome:
    """Run update `name` on a deal: its answer (OK), or its refusal with the reason (REFUSED)."""
    from temporalio.client import (
        WorkflowUpdateFailedError,
        WorkflowUpdateRPCTimeoutOrCancelledError,
    )
    from temporalio.service import RPCError, RPCStatusCode

    described = await _describe(client, workflow_id)
    if isinstance(described, Outcome):
        return described
    if described.status is None or described.status.name != "RUNNING":
        return Outcome(REFUSED, workflow_id,
                       f"{workflow_id} is closed ({_status_name(described)}): {name} refused")  # fmt: skip
    handle = client.get_workflow_handle(workflow_id)
    try:
        async with asyncio.timeout(timeout):
            answer = await handle.execute_update(
                name, payload.model_dump(mode="json", exclude_none=True), result_type=str
            )
    except WorkflowUpdateFailedError as err:
        return Outcome(
            REFUSED, workflow_id, f"{workflow_id}: {name} refused: {refusal_reason(err)}"
        )
    except (KeyError, ValueError) as err:  # a payload this client cannot decode
        return _undecodable(workflow_id, err)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        return Outcome(NO_ANSWER, workflow_id,
                       f"{workflow_id}: no answer to {name} within {timeout:g} s (is a worker "
                       f"running?); it may still be applied: check `l2c deal {workflow_id}`")  # fmt: skip
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return Outcome(REFUSED, workflow_id, f"{workflow_id}: {name} refused: {err.message}")
        return Outcome(REFUSED, workflow_id, f"{workflow_id}: {name} failed: {err.message}")
    return Outcome(OK, workflow_id, f"{workflow_id}: {answer}", extra={"answer": answer})


def _absolute_events(state: DealState) -> Iterator[tuple[int, DealEvent]]:
    """Each event with its number in the whole deal (earlier runs' events are not in the state)."""
    for index, event in enumerate(state.events):
        yield state.earlier_events + index, event


async def record_payment(
    client: "Client", workflow_id: str, payment: RecordPayment, timeout: float
) -> Outcome:
    """Signal `record_payment`, then watch the state until the payment's reference is applied
    (OK), the deal records a refusal of it (REFUSED), or `timeout` passes (NO_ANSWER)."""
    described = await _describe(client, workflow_id)
    if isinstance(described, Outcome):
        return described
    if described.status is None or described.status.name != "RUNNING":
        return Outcome(REFUSED, workflow_id, f"{workflow_id} is closed "
                       f"({_status_name(described)}): record_payment refused")  # fmt: skip
    handle = client.get_workflow_handle(workflow_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    before = await query_state(handle, timeout)
    if isinstance(before, Outcome):
        before.message += "; the payment was not sent"
        return before
    seen = before.earlier_events + len(before.events)
    applied_before = payment.reference in before.payment_references
    from temporalio.service import RPCError, RPCStatusCode

    try:
        await handle.signal("record_payment", payment.model_dump(mode="json", exclude_none=True))
    except RPCError as err:
        # Closed meanwhile, or the server away: nothing was delivered, and the batch goes on.
        code = REFUSED if err.status == RPCStatusCode.NOT_FOUND else NO_ANSWER
        return Outcome(code, workflow_id, f"{workflow_id}: payment {payment.reference} was not "
                       f"sent: {err.message}")  # fmt: skip
    while True:
        remaining = deadline - loop.time()
        state = await query_state(handle, max(remaining, 1.0))
        if isinstance(state, DealState):
            answer = payment_answer(workflow_id, payment, state, seen, applied_before)
            if answer is not None:
                return answer
        if loop.time() >= deadline:
            return Outcome(NO_ANSWER, workflow_id,
                           f"{workflow_id}: payment {payment.reference} was delivered, but the "
                           f"deal has not answered within {timeout:g} s (is a worker running?); "
                           f"check `l2c deal {workflow_id}`")  # fmt: skip
        await asyncio.sleep(0.2)


def payment_answer(
    workflow_id: str, payment: RecordPayment, state: DealState, seen: int, applied_before: bool
) -> Outcome | None:
    """The deal's answer to a payment, from its state: a refusal recorded after event number
    `seen` by the payment's recorder, or its reference newly applied; None: not answered yet.
    (A reference applied before it was sent is no answer: the deal will refuse it as counted once.)"""
    for number, event in _absolute_events(state):
        if (number >= seen and event.kind == "refused:record_payment"
                and event.actor == payment.recorded_by):  # fmt: skip
            return Outcome(REFUSED, workflow_id,
                           f"{workflow_id}: payment {payment.reference} refused: {event.detail}",
                           state, {"reason": event.detail})  # fmt: skip
    if not applied_before and payment.reference in state.payment_references:
        return _payment_applied(workflow_id, payment, state)
    return None


def _payment_applied(workflow_id: str, payment: RecordPayment, state: DealState) -> Outcome:
    recorded = next((e.detail for e in reversed(state.events) if e.kind == "payment_recorded"
                     and f"ref {payment.reference}:" in e.detail), None)  # fmt: skip
    invoice = next((i for i in state.invoices if i.number == payment.invoice_number), None)
    currency = state.lead.currency
    parts = [f"{workflow_id}: payment {payment.reference} applied"]
    if recorded:
        parts.append(f"({recorded})")
    message = " ".join(parts)
    if invoice is not None:
        message += (
            f"; {invoice.number} is {invoice.status}, balance {_money(invoice.balance, currency)}"
        )
    message += f"; the deal's balance due is {_money(state.balance_due, currency)}"
    if state.customer_credit:
        message += f", customer credit {_money(state.customer_credit, currency)}"
    extra: dict[str, Any] = {"balance_due": str(state.balance_due),
                             "customer_credit": str(state.customer_credit)}  # fmt: skip
    if invoice is not None:
        extra["invoice"] = {"number": invoice.number, "status": invoice.status,
                            "balance": str(invoice.balance)}  # fmt: skip
    return Outcome(OK, workflow_id, message, state, extra)


def validated(model: type[BaseModel], data: dict[str, Any]) -> BaseModel | str:
    """The payload as the workflow will parse it, or the reason it will not (nothing sent)."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        return explain(err)


# ---------------------------------------------------------------- l2c deals


def cmd_deals(args: argparse.Namespace) -> int:
    try:
        query = deals_query(
            args.stage,
            args.owner,
            args.older_than,
            args.status,
            approver=args.approver,
            in_stage_over=args.in_stage_over,
            overdue=args.overdue,
        )
    except ValueError as err:
        return _fail(str(err))
    return _run(lambda client: list_deals(client, query, args.limit, args.json))


async def list_deals(client: "Client", query: str, limit: int, as_json: bool) -> int:
    from temporalio.service import RPCError

    from models.search import DEAL_AMOUNT, DEAL_OWNER, DEAL_STAGE

    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    try:
        async for execution in client.list_workflows(query, limit=limit):
            attributes = execution.typed_search_attributes
            rows.append({
                "deal_id": execution.id,
                "stage": attributes.get(DEAL_STAGE),
                "owner": attributes.get(DEAL_OWNER) or None,
                "amount": attributes.get(DEAL_AMOUNT),
                "started_at": execution.start_time,
                "age_seconds": int((now - execution.start_time).total_seconds()),
                "status": execution.status.name.lower() if execution.status else "unknown",
                "closed_at": execution.close_time,
            })  # fmt: skip
    except RPCError as err:
        return _fail(f"listing deals failed: {err.message} (query: {query})", REFUSED)
    if as_json:
        print(
            json.dumps(rows, default=lambda v: v.isoformat() if isinstance(v, datetime) else str(v))
        )
        return OK
    console = stdout_console()
    table = _table(console, "deal", "stage", "owner", "amount", "age", "status")
    table.columns[3].justify = "right"
    table.columns[4].justify = "right"
    for row in rows:
        table.add_row(Text(row["deal_id"]), Text(row["stage"] or "-"), Text(row["owner"] or "-"),
                      _money(row["amount"]), format_age(timedelta(seconds=row["age_seconds"])),
                      row["status"])  # fmt: skip
    if rows:
        console.print(table)
    more = " (--limit reached)" if len(rows) >= limit else ""
    console.print(f"{len(rows)} deal{'s' if len(rows) != 1 else ''}{more}", markup=False)
    return OK


# ---------------------------------------------------------------- l2c deal


def cmd_deal(args: argparse.Namespace) -> int:
    return _run(lambda client: show_deal(client, args.deal, args.timeout, args.events, args.json))


async def show_deal(
    client: "Client", workflow_id: str, timeout: float, events: int, as_json: bool
) -> int:
    described = await _describe(client, workflow_id)
    if isinstance(described, Outcome):
        return _print_outcome(described, False)
    state = await query_state(client.get_workflow_handle(workflow_id), timeout)
    status = _status_name(described)
    if isinstance(state, Outcome):
        if described.status is not None and described.status.name != "RUNNING":
            state.message += f"; the deal is closed ({status})"
        return _print_outcome(state, False)
    if as_json:
        data = state.model_dump(mode="json")
        data["workflow_status"] = status
        print(json.dumps(data))
        return OK
    render_deal(stdout_console(), state, status, events)
    return OK


def render_deal(console: Console, state: DealState, status: str, events: int = 10) -> None:
    lead = state.lead
    currency = lead.currency
    head = Text()
    head.append(state.deal_id, style="bold")
    head.append(f"  {lead.company} ({lead.country}), lead {lead.lead_id}")
    console.print(head)
    facts = [
        (
            "stage",
            state.stage.value
            + (f" (merged into {state.merged_into})" if state.merged_into else ""),
        ),
        ("workflow", f"{status}, run {state.run}"),
        ("owner", state.owner or "-"),
        ("score", str(state.score)),
    ]
    if state.routing is not None and state.routing.accepted_by:
        facts.append(
            ("accepted by", f"{state.routing.accepted_by} at {_at(state.routing.accepted_at)}")
        )
    quote = state.quote
    if quote is not None:
        facts.append(("quote", f"v{quote.version}: net {_money(quote.net_total, quote.currency)} over "
                               f"{quote.term_months} months, {quote.discount_percent}% discount, "
                               f"billed {quote.billing_period}, by {quote.submitted_by}"))  # fmt: skip
        facts.append(
            ("quote lines", "; ".join(f"{line.sku} x {line.quantity}" for line in quote.lines))
        )
    contract = state.contract
    if contract is not None:
        signed = (f"signed by {contract.signed_by} ({contract.signer_email}) at {_at(contract.signed_at)}"
                  if contract.signed_by else "not signed")  # fmt: skip
        facts.append(
            ("contract", f"{contract.contract_id} sha256 {contract.document_sha256}; {signed}")
        )
    if state.invoices or state.stage == Stage.ACTIVE:
        money = f"balance due {_money(state.balance_due, currency)}"
        if state.customer_credit:
            money += f", customer credit {_money(state.customer_credit, currency)}"
        facts.append(("money", money))
    if state.renewal is not None:
        renewal = state.renewal
        facts.append(("term", f"{renewal.term}, ends {_at(renewal.term_ends_at)}, "
                              f"{'auto-renews' if renewal.auto_renews else 'no auto-renewal'}, "
                              f"{renewal.outcome}"))  # fmt: skip
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in facts:
        grid.add_row(name, Text(value))
    console.print(grid)

    pending = state.pending_approval
    if pending is not None:
        table = _table(console, "role", "rule", "eligible approvers", "approved by", "due",
                       title=f"Pending approval: quote v{pending.quote_version}, "
                             f"{pending.discount_percent}% by {pending.submitted_by}")  # fmt: skip
        requirements = pending.requirements or []
        for req in requirements:
            table.add_row(Text(req.role), Text(req.rule), Text(", ".join(req.eligible_approvers)),
                          Text(req.approved_by or "-"), _at(req.due_at))  # fmt: skip
        if not requirements:
            table.add_row(
                Text(pending.required_role),
                "",
                Text(", ".join(pending.eligible_approvers)),
                "-",
                "-",
            )
        console.print()
        console.print(table)

    if state.invoices:
        table = _table(console, "invoice", "status", "issued", "due", "amount", "paid", "credited",
                       "balance", title=f"Invoices ({currency})")  # fmt: skip
        for column in table.columns[4:]:
            column.justify = "right"
        for invoice in state.invoices:
            table.add_row(*_invoice_row(invoice))
        console.print()
        console.print(table)

    if events > 0 and state.events:
        shown = state.events[-events:]
        earlier = state.earlier_events + len(state.events) - len(shown)
        title = f"Last {len(shown)} events" + (f" ({earlier} earlier)" if earlier else "")
        table = _table(console, "at (UTC)", "event", "by", "detail", title=title)
        for event in shown:
            style = "red" if event.kind.startswith("refused:") else ""
            table.add_row(_at(event.at), Text(event.kind, style=style), Text(event.actor),
                          Text(event.detail, style=style))  # fmt: skip
        console.print()
        console.print(table)


def _invoice_row(invoice: InvoiceView) -> tuple[str, ...]:
    return (invoice.number, invoice.status, str(invoice.issued_on), str(invoice.due_date),
            _money(invoice.amount), _money(invoice.amount_paid), _money(invoice.amount_credited),
            _money(invoice.balance))  # fmt: skip


# ---------------------------------------------------------------- approve, reject, accept


def cmd_approve(args: argparse.Namespace) -> int:
    if args.file is not None:
        if args.deal is not None or args.approver is not None:
            return _fail("approve --file takes no deal and no --as: they come from the file")
        return _run(lambda client: approve_file(client, Path(args.file), args.timeout, args.json))
    if args.deal is None or args.approver is None:
        return _fail("approve needs a deal and --as APPROVER (or --file approvals.csv)")
    data: dict[str, Any] = {"approver": args.approver, "comment": args.comment or "",
                            "role": args.role, "quote_version": args.quote_version}  # fmt: skip
    return _update_command(args, "approve_discount", ApproveDiscount, data)


def cmd_reject(args: argparse.Namespace) -> int:
    data: dict[str, Any] = {"approver": args.approver, "reason": args.reason,
                            "quote_version": args.quote_version}  # fmt: skip
    return _update_command(args, "reject_discount", RejectDiscount, data)


def cmd_accept(args: argparse.Namespace) -> int:
    data: dict[str, Any] = {"by": args.by, "note": args.note or ""}
    return _update_command(args, "accept_lead", AcceptLead, data)


def _update_command(
    args: argparse.Namespace, name: str, model: type[BaseModel], data: dict[str, Any]
) -> int:
    workflow_id = args.deal
    payload = validated(model, {k: v for k, v in data.items() if v is not None})
    if isinstance(payload, str):
        return _fail(f"{name} not sent: {payload}")

    async def core(client: "Client") -> int:
        outcome = await send_update(client, workflow_id, name, payload, args.timeout)
        return _print_outcome(outcome, args.json)

    return _run(core)


# ---------------------------------------------------------------- pay


def cmd_pay(args: argparse.Namespace) -> int:
    if args.file is not None:
        if any(v is not None for v in (args.deal, args.invoice, args.amount, args.reference)):
            return _fail("pay --file takes no deal, --invoice, --amount or --reference")
        return _run(lambda client: pay_file(client, Path(args.file), args.recorded_by,
                                            args.timeout, args.json))  # fmt: skip
    if args.deal is None or args.amount is None or args.reference is None:
        return _fail("pay needs a deal, --amount and --reference (or --file payments.csv)")
    workflow_id = args.deal
    payment = _payment(args.invoice, args.amount, args.reference, args.recorded_by)
    if isinstance(payment, str):
        return _fail(f"record_payment not sent: {payment}")

    async def core(client: "Client") -> int:
        outcome = await record_payment(client, workflow_id, payment, args.timeout)
        return _print_outcome(outcome, args.json)

    return _run(core)


def _payment(invoice: str | None, amount: str, reference: str, by: str) -> RecordPayment | str:
    data = {"invoice_number": invoice or None, "amount": amount, "reference": reference,
            "recorded_by": by}  # fmt: skip
    try:
        return RecordPayment.model_validate({k: v for k, v in data.items() if v is not None})
    except ValidationError as err:
        return explain(err)


# ---------------------------------------------------------------- batches


@dataclass
class Row:
    where: str  # file:line
    deal_id: str
    payload: BaseModel | str  # the validated payload, or why it is not valid


def read_rows(
    path: Path, required: list[str], build: Callable[[dict[str, str]], BaseModel | str]
) -> list[Row]:
    """The rows of a CSV file, each with its line number; ValueError for a file that is unusable."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's export may start with a BOM
    except FileNotFoundError:
        raise ValueError(f"no such file: {path}") from None
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    reader = csv.DictReader(text.splitlines())
    columns = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in required if name not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} "
                         f"(needs {', '.join(required)}; has {', '.join(columns) or 'none'})")  # fmt: skip
    rows = []
    try:
        for raw in reader:
            extra = [v for v in raw.pop(None, None) or [] if v.strip()]
            cells = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
            where = f"{path}:{reader.line_num}"
            if not any(cells.values()) and not extra:
                continue  # a blank line
            deal = cells.get("deal", "")
            if not deal:
                rows.append(Row(where, "-", "deal: a deal id is needed"))
                continue
            if extra:  # e.g. a comment with a comma, not quoted: refused rather than cut short
                rows.append(Row(where, deal_workflow_id(deal), "more fields than the header "
                                "names (quote a value that contains a comma)"))  # fmt: skip
                continue
            rows.append(Row(where, deal_workflow_id(deal), build(cells)))
    except csv.Error as err:
        raise ValueError(f"{path}:{reader.line_num}: not CSV: {err}") from None
    return rows


class BatchProgress:
    """A rich progress bar on standard error when it is a terminal; nothing elsewhere. Lines noted
    meanwhile go to standard output: above the bar when both are the terminal, and unchanged to a
    file or pipe (`l2c pay --file payments.csv > refused.txt` still shows the bar)."""

    def __init__(self, total: int, label: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = stdout_console()
        errors = Console(stderr=True)
        self.progress: Progress | None = None
        if errors.is_terminal and total > 1:
            shared = self.console.is_terminal  # the same screen: lines go above the bar
            self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=errors,
                                     redirect_stdout=shared, redirect_stderr=shared)  # fmt: skip
            self.task = self.progress.add_task(label, total=total)

    @contextmanager
    def running(self) -> Iterator["BatchProgress"]:
        if self.progress is None:
            yield self
            return
        with self.progress:
            yield self

    def advance(self) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)

    def note(self, line: str) -> None:
        if self.progress is not None and self.console.is_terminal:
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            self.console.print(line, markup=False)


async def run_batch(
    rows: list[Row],
    label: str,
    act: Callable[[Row, BaseModel], Awaitable[Outcome]],
    as_json: bool,
    done_word: str,
) -> int:
    """Each row in order (rows of one deal in the file's order), a line per refusal, a summary."""
    from temporalio.service import RPCError

    progress = BatchProgress(len(rows), label)
    results: list[dict[str, Any]] = []
    counts = {OK: 0, REFUSED: 0, NO_ANSWER: 0}
    with progress.running():
        for row in rows:
            if isinstance(row.payload, str):
                outcome = Outcome(REFUSED, row.deal_id, f"{row.deal_id}: not sent: {row.payload}")
            else:
                try:
                    outcome = await act(row, row.payload)
                except RPCError as err:  # one row's trouble with the server ends no batch
                    outcome = Outcome(NO_ANSWER, row.deal_id, f"{row.deal_id}: {err.message}")
            code = REFUSED if outcome.code == INVALID else outcome.code
            counts[code] += 1
            results.append({"line": row.where, **outcome.as_json()})
            if code != OK and not as_json:
                word = "refused" if code == REFUSED else "no answer"
                progress.note(f"{row.where}: {word}: {outcome.message}")
            progress.advance()
    if as_json:
        print(json.dumps(results, default=str))
    else:
        summary = f"{counts[OK]} {done_word}, {counts[REFUSED]} refused"
        if counts[NO_ANSWER]:
            summary += f", {counts[NO_ANSWER]} without an answer yet"
        progress.console.print(summary, markup=False)
    if counts[REFUSED]:
        return REFUSED
    return NO_ANSWER if counts[NO_ANSWER] else OK


async def approve_file(client: "Client", path: Path, timeout: float, as_json: bool) -> int:
    def build(cells: dict[str, str]) -> BaseModel | str:
        data: dict[str, Any] = {"approver": cells.get("approver", ""),
                                "comment": cells.get("comment", "")}  # fmt: skip
        if cells.get("role"):
            data["role"] = cells["role"]
        if cells.get("quote_version"):
            data["quote_version"] = cells["quote_version"]
        return validated(ApproveDiscount, data)

    try:
        rows = read_rows(path, ["deal", "approver"], build)
    except ValueError as err:
        return _fail(str(err))

    async def act(row: Row, payload: BaseModel) -> Outcome:
        return await send_update(client, row.deal_id, "approve_discount", payload, timeout)

    return await run_batch(rows, "approving", act, as_json, "approved")


async def pay_file(
    client: "Client", path: Path, recorded_by: str, timeout: float, as_json: bool
) -> int:
    def build(cells: dict[str, str]) -> BaseModel | str:
        return _payment(cells.get("invoice"), cells.get("amount", ""), cells.get("reference", ""),
                        cells.get("recorded_by") or recorded_by)  # fmt: skip

    try:
        rows = read_rows(path, ["deal", "invoice", "amount", "reference"], build)
    except ValueError as err:
        return _fail(str(err))

    async def act(row: Row, payload: BaseModel) -> Outcome:
        assert isinstance(payload, RecordPayment)
        return await record_payment(client, row.deal_id, payload, timeout)

    return await run_batch(rows, "recording payments", act, as_json, "applied")


# ---------------------------------------------------------------- parsers


def add_ops_parsers(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """`l2c deals`, `deal`, `approve`, `reject`, `accept`, `pay`: ops staff acting on deals."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="JSON on standard output")
        parser.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT,
                            help=f"seconds to wait for the deal's answer (default {DEFAULT_TIMEOUT:g})")  # fmt: skip

    stages = ", ".join(s.value for s in Stage)
    deals = sub.add_parser(
        "deals", help="list deals (Temporal visibility), filtered by stage, owner, age"
    )
    deals.add_argument("--stage", action="append", type=valid_stage,
                       help=f"only deals in this stage; repeatable ({stages})")  # fmt: skip
    deals.add_argument("--owner", help="only deals of this owner (e.g. nora.na)")
    deals.add_argument("--older-than", type=parse_age, metavar="AGE",
                       help="only deals started more than AGE ago: 7d, 36h, 2w, 1d12h")  # fmt: skip
    deals.add_argument("--approver", help="only deals waiting for this person's approval")
    deals.add_argument("--in-stage-over", type=parse_age, metavar="AGE",
                       help="only deals in their stage for more than AGE (stuck)")  # fmt: skip
    deals.add_argument("--overdue", action="store_true",
                       help="only deals with an open invoice past due")  # fmt: skip
    deals.add_argument("--status", choices=list(STATUS_FILTERS), default="running",
                       help="running deals (default), closed ones, or all")  # fmt: skip
    deals.add_argument(
        "--limit", type=positive_int, default=100, help="at most this many (default 100)"
    )
    deals.add_argument("--json", action="store_true", help="JSON on standard output")
    deals.set_defaults(func=cmd_deals)

    deal = sub.add_parser(
        "deal", help="a deal's state: stage, quote, approvals, contract, invoices, events"
    )
    deal.add_argument("deal", type=deal_workflow_id, help="L-1001 or deal-L-1001")
    deal.add_argument(
        "--events", type=positive_int, default=10, help="how many of the last events (default 10)"
    )
    common(deal)
    deal.set_defaults(func=cmd_deal)

    approve = sub.add_parser(
        "approve", help="approve a deal's pending discount (update approve_discount)"
    )
    approve.add_argument("deal", nargs="?", type=deal_workflow_id, help="L-1001 or deal-L-1001")
    approve.add_argument("--as", dest="approver", help="the approver (e.g. mia.manager)")
    approve.add_argument("--comment")
    approve.add_argument("--role", help="the role approved in, when several approvals are needed")
    approve.add_argument("--quote-version", type=positive_int, help="the quote version looked at")
    approve.add_argument("--file", help="a CSV of approvals: deal,approver,comment[,role]")
    common(approve)
    approve.set_defaults(func=cmd_approve)

    reject = sub.add_parser(
        "reject", help="reject a deal's pending discount (update reject_discount)"
    )
    reject.add_argument("deal", type=deal_workflow_id, help="L-1001 or deal-L-1001")
    reject.add_argument("--as", dest="approver", required=True, help="the approver")
    reject.add_argument("--reason", required=True)
    reject.add_argument("--quote-version", type=positive_int, help="the quote version looked at")
    common(reject)
    reject.set_defaults(func=cmd_reject)

    accept = sub.add_parser("accept", help="the lead's owner accepts it (update accept_lead)")
    accept.add_argument("deal", type=deal_workflow_id, help="L-1001 or deal-L-1001")
    accept.add_argument("--as", dest="by", required=True, help="the lead's owner")
    accept.add_argument("--note")
    common(accept)
    accept.set_defaults(func=cmd_accept)

    pay = sub.add_parser(
        "pay", help="record a payment received (signal record_payment) and wait for the answer"
    )
    pay.add_argument("deal", nargs="?", type=deal_workflow_id, help="L-1001 or deal-L-1001")
    pay.add_argument(
        "--invoice", help="the invoice it pays (INV-000001); without: oldest open first"
    )
    pay.add_argument("--amount", help="exact decimal, e.g. 1250.00")
    pay.add_argument("--reference", help="the bank reference; the same reference counts once")
    pay.add_argument("--as", dest="recorded_by", default="ops", help="who records it (default ops)")
    pay.add_argument("--file", help="a CSV of payments: deal,invoice,amount,reference")
    common(pay)
    pay.set_defaults(func=cmd_pay)
