"""`l2c audit report --html`: a deal's audit report, and the reconciliation of its history with the
ledger.

The history is the audit trail and the ledger the system of record (../DESIGN principle 7): the
report shows what the history says happened (the decision timeline, the approvals and the authority
they were given with, the signed contract, invoices, payments, credit notes, refunds) and lists
every way the ledger disagrees with it. `reconcile` is the comparison, on a deal's state and what
its history says was posted, without Temporal.
"""

import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine, or_
from sqlmodel import Session, col, select
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from l2c.audit import TimelineRow, decode_json, read_timeline, run_histories
from l2c.config import Settings
from l2c.documents import render, sha256_hex
from l2c.runtime import connect, read_ledger
from models.documents import (
    ApprovalRequirement,
    ContractDocument,
    CreditNoteIssued,
    CreditNoteRequest,
    EscalationRequest,
    PaymentRecord,
    Quote,
    QuotePricing,
    RefundRequest,
    SignatureRecord,
)
from models.ledger import (
    ContractRecord,
    CreditNoteRecord,
    DisputeRecord,
    InvoiceRecord,
    PaymentAllocation,
    PaymentRecordRow,
    QuoteRecord,
    RefundRecord,
)
from models.state import ContractView, DealContinuation, DealEvent, DealState, RenewalAgreed

# ---------------------------------------------------------------- what the history says


@dataclass
class KnownContract:
    """A contract the history names: rendered for the deal, signed, or carried in its state."""

    contract_id: str
    document_sha256: str
    signed_by: str | None = None
    signer_email: str | None = None
    signed_at: datetime | None = None  # as recorded in the ledger by the deal (record_signature)


@dataclass
class CreditNoteFact:
    number: str
    request: CreditNoteRequest


@dataclass
class HistoryFacts:
    """What a deal's history says it wrote to the ledger: the arguments and results of the ledger
    activities that completed, in every run, and the contracts its states carried."""

    quotes: dict[int, Quote] = field(default_factory=dict)  # by version
    approvals: dict[int, list[ApprovalRequirement]] = field(default_factory=dict)  # by version
    # (quote version, rule) -> who escalations made eligible besides those priced with it
    escalated_to: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    contracts: dict[str, KnownContract] = field(default_factory=dict)
    payments: dict[str, PaymentRecord] = field(default_factory=dict)  # by reference
    credit_notes: dict[str, CreditNoteFact] = field(default_factory=dict)  # by reference
    refunds: dict[str, RefundRequest] = field(default_factory=dict)  # by reference
    unreadable: list[str] = field(default_factory=list)  # payloads that did not parse, and why

    def know_contract(self, contract: ContractView | ContractDocument) -> None:
        known = self.contracts.setdefault(
            contract.contract_id,
            KnownContract(contract.contract_id, contract.document_sha256),
        )
        if isinstance(contract, ContractView) and contract.signed_by is not None:
            known.signed_by = contract.signed_by
            known.signer_email = contract.signer_email


Model = TypeVar("Model", bound=BaseModel)


async def history_facts(client: Client, runs: list[list[HistoryEvent]]) -> HistoryFacts:
    """The ledger postings and documents of a deal's runs (see `HistoryFacts`)."""
    facts = HistoryFacts()
    for run in runs:
        scheduled: dict[int, HistoryEvent] = {}  # event ids start again in each run
        for event in run:
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
                attrs = event.workflow_execution_started_event_attributes
                if attrs.continued_execution_run_id:
                    data = await decode_json(client, attrs.input)
                    carried = _parse(facts, DealContinuation, data, "a run's input")
                    if carried is not None:
                        _know_state_contracts(facts, carried.continued)
            elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                attrs_s = event.workflow_execution_signaled_event_attributes
                if attrs_s.signal_name == "renewal_signed" and attrs_s.input.payloads:
                    data = await decode_json(client, attrs_s.input)
                    agreed = _parse(facts, RenewalAgreed, data, "a renewal_signed signal")
                    if agreed is not None:
                        facts.know_contract(agreed.contract)
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled[event.event_id] = event
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                done = event.activity_task_completed_event_attributes
                start = scheduled.get(done.scheduled_event_id)
                if start is not None:
                    await _activity_fact(client, facts, start, done.result)
    return facts


async def _activity_fact(
    client: Client, facts: HistoryFacts, start: HistoryEvent, result: Any
) -> None:
    attrs = start.activity_task_scheduled_event_attributes
    name = attrs.activity_type.name
    if name not in _ACTIVITIES_OF_INTEREST:
        return

    async def argument(model: type[Model]) -> Model | None:
        return _parse(facts, model, await decode_json(client, attrs.input), f"{name}'s argument")

    async def outcome(model: type[Model]) -> Model | None:
        return _parse(facts, model, await decode_json(client, result), f"{name}'s result")

    if name == "price_quote":
        pricing = await outcome(QuotePricing)
        if pricing is not None and pricing.quote is not None:
            facts.quotes[pricing.quote.version] = pricing.quote
            needed = pricing.approvals or ([pricing.approval] if pricing.approval else [])
            facts.approvals[pricing.quote.version] = needed
    elif name == "renew_quote":
        quote = await outcome(Quote)
        if quote is not None:
            facts.quotes[quote.version] = quote
    elif name == "escalate_approval":
        request, escalated = await argument(EscalationRequest), await outcome(ApprovalRequirement)
        if request is not None and escalated is not None:
            key = (request.quote_version, request.rule)
            facts.escalated_to.setdefault(key, []).extend(escalated.eligible_approvers)
    elif name == "render_contract":
        document = await outcome(ContractDocument)
        if document is not None:
            facts.know_contract(document)
    elif name == "record_signature":
        signature = await argument(SignatureRecord)
        if signature is not None:
            known = facts.contracts.setdefault(
                signature.contract_id, KnownContract(signature.contract_id, "")
            )
            known.signed_by, known.signer_email = signature.signer_name, signature.signer_email
            known.signed_at = signature.signed_at
    elif name == "apply_payment":
        payment = await argument(PaymentRecord)
        if payment is not None:
            facts.payments[payment.reference] = payment
    elif name == "issue_credit_note":
        note, issued = await argument(CreditNoteRequest), await outcome(CreditNoteIssued)
        if note is not None and issued is not None:
            facts.credit_notes[note.reference] = CreditNoteFact(issued.number, note)
    elif name == "refund_credit":
        refund = await argument(RefundRequest)
        if refund is not None:
            facts.refunds[refund.reference] = refund


_ACTIVITIES_OF_INTEREST = {
    "price_quote",
    "renew_quote",
    "escalate_approval",
    "render_contract",
    "record_signature",
    "apply_payment",
    "issue_credit_note",
    "refund_credit",
}


def _parse(facts: HistoryFacts, model: type[Model], data: Any, what: str) -> Model | None:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        facts.unreadable.append(f"{what} is not a {model.__name__}: {err.error_count()} error(s)")
        return None


def _know_state_contracts(facts: HistoryFacts, state: DealState) -> None:
    if state.contract is not None:
        facts.know_contract(state.contract)
    if state.renewal_agreed is not None:
        facts.know_contract(state.renewal_agreed.contract)


# ---------------------------------------------------------------- the reconciliation


@dataclass(frozen=True)
class Difference:
    """One way the ledger disagrees with the deal's history."""

    document: str  # invoice, payment, credit note, refund, dispute, contract, quote, state
    key: str  # its number, reference or id
    # What differs; None: the document is on one side only (the side whose value is None lacks it).
    field: str | None
    history: str | None
    ledger: str | None

    def __str__(self) -> str:
        name = f"{self.document} {self.key}"
        if self.field is None:
            if self.ledger is None:
                return f"{name}: in the history ({self.history}), missing from the ledger"
            return f"{name}: in the ledger ({self.ledger}), not in the history"
        return f"{name} {self.field}: history {self.history}, ledger {self.ledger}"


def reconcile(
    deal_id: str, state: DealState | None, engine: Engine, facts: HistoryFacts | None = None
) -> list[Difference]:
    """Every difference between what the deal's history says (its final state, or the running
    deal's answer to the `state` query, and the ledger postings its history records: `facts`)
    and the ledger's documents of the deal. Empty: they agree.

    Compared: invoices (number, amount, currency, status, paid, credited, issue and due dates);
    payments by reference (amount, currency, what went to credit, where it was applied); credit
    notes and refunds by reference; disputes; the contract (its hash, signer, and that the stored
    document still hashes to it) and every other contract and quote the history names; and the
    deal's every stored contract and quote document against its recorded hash."""
    facts = copy.deepcopy(facts) if facts is not None else HistoryFacts()
    differences = [Difference("history", "payload", "readable", why, None)
                   for why in facts.unreadable]  # fmt: skip
    if state is None:
        differences.append(Difference(
            "state", deal_id, "final state",
            "none: the deal did not complete and no worker answered the state query, so its "
            "invoices, payments and contract were not compared", None))  # fmt: skip
    else:
        _know_state_contracts(facts, state)
        if state.quote is not None:
            facts.quotes.setdefault(state.quote.version, state.quote)
    with Session(engine) as session:
        if state is not None:
            differences += _invoices(session, deal_id, state)
            differences += _disputes(session, deal_id, state)
        differences += _payments(session, deal_id, state, facts)
        differences += _by_reference(
            "credit note", session.exec(select(CreditNoteRecord)
                                        .where(CreditNoteRecord.deal_id == deal_id)).all(),
            set(state.credit_note_references) if state else set(),
            {ref: _credit_note_fields(fact) for ref, fact in facts.credit_notes.items()},
            lambda row: {"number": row.number, "amount": row.amount,
                         "currency": row.currency, "invoice": row.invoice_number,
                         "to credit": row.to_credit},
        )  # fmt: skip
        differences += _by_reference(
            "refund", session.exec(select(RefundRecord)
                                   .where(RefundRecord.deal_id == deal_id)).all(),
            set(state.refund_references) if state else set(),
            {ref: {"amount": r.amount, "currency": r.currency}
             for ref, r in facts.refunds.items()},
            lambda row: {"amount": row.amount, "currency": row.currency},
        )  # fmt: skip
        differences += _contracts(session, deal_id, state, facts)
        differences += _quotes(session, deal_id, facts)
    return differences


def _invoices(session: Session, deal_id: str, state: DealState) -> list[Difference]:
    numbers = [invoice.number for invoice in state.invoices]
    rows = session.exec(
        select(InvoiceRecord).where(
            or_(col(InvoiceRecord.deal_id) == deal_id, col(InvoiceRecord.number).in_(numbers))
        )
    ).all()
    ledger = {row.number: row for row in rows}
    differences = []
    for invoice in state.invoices:
        row = ledger.pop(invoice.number, None)
        if row is None:
            differences.append(Difference("invoice", invoice.number, None,
                                          f"{invoice.currency} {invoice.amount}", None))  # fmt: skip
            continue
        differences += _fields("invoice", invoice.number, {
            "deal": deal_id, "amount": invoice.amount, "currency": invoice.currency,
            "status": invoice.status, "amount paid": invoice.amount_paid,
            "amount credited": invoice.amount_credited,
            "issued on": str(invoice.issued_on), "due date": str(invoice.due_date),
        }, {
            "deal": row.deal_id, "amount": row.amount, "currency": row.currency,
            "status": row.status, "amount paid": row.amount_paid,
            "amount credited": row.amount_credited,
            "issued on": str(row.issued_on), "due date": str(row.due_date),
        })  # fmt: skip
    for row in ledger.values():
        differences.append(Difference("invoice", row.number, None, None,
                                      f"{row.currency} {row.amount}, {row.status}"))  # fmt: skip
    return differences


def _payments(
    session: Session, deal_id: str, state: DealState | None, facts: HistoryFacts
) -> list[Difference]:
    rows = {
        row.reference: row
        for row in session.exec(
            select(PaymentRecordRow).where(PaymentRecordRow.deal_id == deal_id)
        ).all()
    }
    applied: dict[str, dict[str, Decimal]] = {}
    for allocation in session.exec(
        select(PaymentAllocation).where(PaymentAllocation.deal_id == deal_id)
    ).all():
        if allocation.source.startswith("payment:"):
            reference = allocation.source.removeprefix("payment:")
            applied.setdefault(reference, {})[allocation.invoice_number] = allocation.amount
    listed = set(state.payment_references) if state is not None else set()
    differences = []
    for reference in sorted(listed | set(facts.payments) | set(rows)):
        payment, row = facts.payments.get(reference), rows.get(reference)
        if row is None:
            said = f"{payment.currency} {payment.amount}" if payment else "listed in its state"
            differences.append(Difference("payment", reference, None, said, None))
            continue
        if payment is None and reference not in listed:
            differences.append(Difference("payment", reference, None, None,
                                          f"{row.currency} {row.amount}"))  # fmt: skip
            continue
        if state is not None and reference not in listed:
            differences.append(Difference("payment", reference, "listed in the deal's state",
                                          "no", "yes (a payment row)"))  # fmt: skip
        if payment is None:  # its posting is not in the history (yet): the state lists it
            continue
        differences += _fields("payment", reference, {
            "amount": payment.amount, "currency": payment.currency,
            "to credit": payment.to_credit, "invoice named": str(payment.invoice_number),
            "recorded by": payment.recorded_by,
        }, {
            "amount": row.amount, "currency": row.currency, "to credit": row.to_credit,
            "invoice named": str(row.invoice_number), "recorded by": row.recorded_by,
        })  # fmt: skip
        said_applied = {a.invoice_number: a.amount for a in payment.allocations}
        in_ledger = applied.get(reference, {})
        for number in sorted(set(said_applied) | set(in_ledger)):
            history_amount, ledger_amount = said_applied.get(number), in_ledger.get(number)
            if history_amount != ledger_amount:
                differences.append(Difference(
                    "payment", reference, f"applied to {number}",
                    str(history_amount) if history_amount is not None else "nothing",
                    str(ledger_amount) if ledger_amount is not None else "nothing"))  # fmt: skip
    return differences


def _credit_note_fields(fact: CreditNoteFact) -> dict[str, Any]:
    note = fact.request
    return {"number": fact.number, "amount": note.amount, "currency": note.currency,
            "invoice": note.invoice_number, "to credit": note.to_credit}  # fmt: skip


Row = TypeVar("Row", CreditNoteRecord, RefundRecord)


def _by_reference(
    document: str,
    rows: Iterable[Row],
    listed: set[str],
    said: dict[str, dict[str, Any]],
    fields_of: Any,
) -> list[Difference]:
    """Documents known by their sender's reference: the state lists the references, the history's
    postings say what each was; the ledger's rows must be the same ones."""
    ledger = {row.reference: row for row in rows}
    differences = []
    for reference in sorted(listed | set(said) | set(ledger)):
        row = ledger.get(reference)
        if row is None:
            what = said.get(reference)
            summary = f"{what['currency']} {what['amount']}" if what else "listed in its state"
            differences.append(Difference(document, reference, None, summary, None))
        elif reference not in said and reference not in listed:
            in_ledger = fields_of(row)
            differences.append(Difference(document, reference, None, None,
                                          f"{in_ledger['currency']} {in_ledger['amount']}"))  # fmt: skip
        elif reference in said:
            differences += _fields(document, reference, said[reference], fields_of(row))
    return differences


def _disputes(session: Session, deal_id: str, state: DealState) -> list[Difference]:
    ledger = {
        row.dispute_id: row
        for row in session.exec(select(DisputeRecord).where(DisputeRecord.deal_id == deal_id)).all()
    }
    differences = []
    for dispute in state.disputes:
        row = ledger.pop(dispute.dispute_id, None)
        if dispute.status == "ledger_only" or dispute.from_credit:
            continue  # outside the invoices: a chargeback loss, or a refund of credit (above)
        if row is None:
            differences.append(Difference("dispute", dispute.dispute_id, None,
                                          f"{dispute.amount} on {dispute.invoice_number}", None))  # fmt: skip
            continue
        differences += _fields("dispute", dispute.dispute_id, {
            "invoice": dispute.invoice_number, "amount": dispute.amount,
            "status": dispute.status, "payment reference": str(dispute.payment_reference),
        }, {
            "invoice": row.invoice_number, "amount": row.amount, "status": row.status,
            "payment reference": str(row.payment_reference),
        })  # fmt: skip
    for row in ledger.values():
        differences.append(Difference("dispute", row.dispute_id, None, None,
                                      f"{row.amount} on {row.invoice_number}, {row.status}"))  # fmt: skip
    return differences


def _contracts(
    session: Session, deal_id: str, state: DealState | None, facts: HistoryFacts
) -> list[Difference]:
    rows = {
        row.contract_id: row
        for row in session.exec(
            select(ContractRecord).where(
                or_(col(ContractRecord.deal_id) == deal_id,
                    col(ContractRecord.contract_id).in_(list(facts.contracts)))
            )
        ).all()
    }  # fmt: skip
    differences = []
    current = state.contract if state is not None else None
    for contract_id, known in sorted(facts.contracts.items()):
        row = rows.get(contract_id)
        if row is None:
            differences.append(Difference("contract", contract_id, None,
                                          f"sha256 {known.document_sha256}", None))  # fmt: skip
            continue
        history = {"deal": deal_id, "document sha256": known.document_sha256}
        ledger = {"deal": row.deal_id, "document sha256": row.document_sha256}
        if not known.document_sha256:  # named by its signature alone
            history.pop("document sha256")
        if known.signed_by is not None or (current and current.contract_id == contract_id):
            history |= {"signed by": str(known.signed_by), "signer e-mail": str(known.signer_email)}
            ledger |= {"signed by": str(row.signed_by), "signer e-mail": str(row.signer_email)}
        if known.signed_at is not None:
            history["signed at"] = _utc(known.signed_at)
            ledger["signed at"] = _utc(row.signed_at)
        differences += _fields("contract", contract_id, history, ledger)
    for contract_id, row in sorted(rows.items()):
        if contract_id not in facts.contracts and row.signed_at is not None:
            differences.append(Difference("contract", contract_id, None, None,
                                          f"signed by {row.signed_by}"))  # fmt: skip
        recomputed = sha256_hex(row.html)
        if recomputed != row.document_sha256:
            differences.append(Difference(
                "contract", contract_id, "document sha256 (recomputed from the stored document)",
                known_hash.document_sha256 if (known_hash := facts.contracts.get(contract_id))
                and known_hash.document_sha256 else row.document_sha256, recomputed))  # fmt: skip
    return differences


def _quotes(session: Session, deal_id: str, facts: HistoryFacts) -> list[Difference]:
    rows = {
        row.version: row
        for row in session.exec(select(QuoteRecord).where(QuoteRecord.deal_id == deal_id)).all()
    }
    differences = []
    for version, quote in sorted(facts.quotes.items()):
        key = f"{deal_id}-Q{version}"
        row = rows.get(version)
        if row is None:
            differences.append(Difference("quote", key, None,
                                          f"{quote.currency} {quote.net_total}", None))  # fmt: skip
            continue
        history = {"net total": quote.net_total, "currency": quote.currency,
                   "discount percent": quote.discount_percent}  # fmt: skip
        ledger = {"net total": row.net_total, "currency": row.currency,
                  "discount percent": row.discount_percent}  # fmt: skip
        if quote.document_sha256 is not None:
            history["document sha256"] = quote.document_sha256
            ledger["document sha256"] = row.document_sha256
        differences += _fields("quote", key, history, ledger)
    for _, row in sorted(rows.items()):
        if row.html and sha256_hex(row.html) != row.document_sha256:
            differences.append(Difference(
                "quote", row.quote_id, "document sha256 (recomputed from the stored document)",
                row.document_sha256, sha256_hex(row.html)))  # fmt: skip
    return differences


def _fields(
    document: str, key: str, history: dict[str, Any], ledger: dict[str, Any]
) -> list[Difference]:
    """The fields that differ; amounts compare as numbers (15 is 15.00)."""
    return [Difference(document, key, name, str(value), str(ledger[name]))
            for name, value in history.items() if ledger[name] != value]  # fmt: skip


def _utc(moment: datetime | None) -> str:
    if moment is None:
        return "None"
    if moment.tzinfo is not None:  # SQLite hands timestamps back without their zone: UTC
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(sep=" ")


# ---------------------------------------------------------------- approvals


@dataclass
class ApprovalView:
    """A decision on a quote's discount, with the authority it was taken under."""

    at: datetime
    decision: str  # approved, rejected
    approver: str
    quote_version: int | None
    discount_percent: Decimal | None
    rule: str | None  # why the approval was needed: "discount", "large deal", ...
    role: str | None  # the approval it gave: this role or a higher one
    role_limit_percent: Decimal | None
    eligible: list[str]  # who had the authority: priced with the quote, or escalated to
    detail: str

    @property
    def within_authority(self) -> bool | None:
        return None if not self.eligible else self.approver in self.eligible


_PRICED = re.compile(r"^quote v(\d+):")
_AS_ROLE = re.compile(r"^as (\S+) \((.+?)\): ")


def approvals_of(deal_events: list[DealEvent], facts: HistoryFacts) -> list[ApprovalView]:
    """The deal's approvals and rejections of discounts, each with the quote it decided on and
    the required approval it gave (from the history's pricing results and escalations)."""
    views = []
    version: int | None = None
    for event in deal_events:
        if event.kind == "quote_priced" and (priced := _PRICED.match(event.detail)):
            version = int(priced.group(1))
        if event.kind not in ("discount_approved", "discount_rejected"):
            continue
        needed = facts.approvals.get(version, []) if version is not None else []
        requirement: ApprovalRequirement | None = None
        if event.kind == "discount_approved":
            acting = _AS_ROLE.match(event.detail)
            if acting is not None:
                role, rule = acting.groups()
                requirement = next((r for r in needed if r.required_role == role
                                    and r.rule == rule), None)  # fmt: skip
            elif len(needed) == 1:
                requirement = needed[0]
        chosen = [requirement] if requirement is not None else needed
        eligible = list(dict.fromkeys(
            person for r in chosen
            for person in [*r.eligible_approvers,
                           *facts.escalated_to.get((version or 0, r.rule), [])]))  # fmt: skip
        quote = facts.quotes.get(version) if version is not None else None
        views.append(
            ApprovalView(
                at=event.at,
                decision="approved" if event.kind == "discount_approved" else "rejected",
                approver=event.actor,
                quote_version=version,
                discount_percent=quote.discount_percent if quote else None,
                rule=requirement.rule if requirement else None,
                role=requirement.required_role if requirement else None,
                role_limit_percent=requirement.role_limit_percent if requirement else None,
                eligible=eligible,
                detail=event.detail,
            )
        )
    return views


# ---------------------------------------------------------------- the report


@dataclass
class AuditReport:
    workflow_id: str
    status: str  # the latest run's
    runs: int
    generated_at: datetime
    ledger: str  # where the ledger is (no password)
    state: DealState | None
    timeline: list[TimelineRow]
    approvals: list[ApprovalView]
    facts: HistoryFacts
    contract_in_ledger: ContractRecord | None
    differences: list[Difference]
    compared: dict[str, int]  # documents compared, by kind


async def build_report(client: Client, engine: Engine, workflow_id: str) -> AuditReport:
    """Read the deal's history (every run) and reconcile it with the ledger."""
    description = await client.get_workflow_handle(workflow_id).describe()
    runs = await run_histories(client, workflow_id)
    timeline = await read_timeline(client, workflow_id, runs)
    facts = await history_facts(client, runs)
    state = timeline.state
    deal_id = state.deal_id if state is not None else workflow_id
    differences = reconcile(deal_id, state, engine, facts)
    contract = None
    if state is not None and state.contract is not None:
        with Session(engine) as session:
            contract = session.get(ContractRecord, state.contract.contract_id)
    compared = {
        "invoices": len(state.invoices) if state else 0,
        "payments": len(set(facts.payments) | set(state.payment_references if state else [])),
        "credit notes": len(set(facts.credit_notes)
                            | set(state.credit_note_references if state else [])),
        "refunds": len(set(facts.refunds) | set(state.refund_references if state else [])),
        "disputes": len(state.disputes) if state else 0,
        "contracts": len(facts.contracts),
        "quotes": len(facts.quotes),
    }  # fmt: skip
    return AuditReport(
        workflow_id=workflow_id,
        status=description.status.name.lower() if description.status else "unknown",
        runs=len(runs),
        generated_at=datetime.now(UTC),
        ledger=engine.url.render_as_string(hide_password=True),
        state=state,
        timeline=timeline.rows,
        approvals=approvals_of(timeline.deal_events, facts),
        facts=facts,
        contract_in_ledger=contract,
        differences=differences,
        compared=compared,
    )


def render_html(report: AuditReport) -> str:
    """The report as one self-contained HTML page (no scripts, no external resources)."""
    contract_hash = None
    if report.contract_in_ledger is not None:
        contract_hash = sha256_hex(report.contract_in_ledger.html)
    return render(
        "audit_report.html.j2",
        report=report,
        state=report.state,
        facts=report.facts,
        contract_recomputed=contract_hash,
    )


async def write_html_report(settings: Settings, workflow_id: str, path: Path) -> int:
    """`l2c audit report WORKFLOW_ID --html FILE`: 0 when the ledger agrees with the history,
    1 when it does not (the differences are in the report, and listed on standard output)."""
    client = await connect(settings)
    report = await build_report(client, read_ledger(settings), workflow_id)
    path.write_text(render_html(report), encoding="utf-8")
    for difference in report.differences:
        print(f"DIFFERS {difference}")
    verdict = ("reconciled: no differences" if not report.differences
               else f"{len(report.differences)} difference(s) with the ledger")  # fmt: skip
    print(f"{path}: audit report of {workflow_id}; {verdict}")
    return 1 if report.differences else 0
