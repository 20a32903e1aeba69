"""Quote activities: pricing against the price book, the contract document, the signature."""

from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from l2c.clauses import InvalidRedline, apply_redline, render_clauses, standard_terms
from l2c.config import BusinessRules
from l2c.documents import render, render_email, sha256_hex
from l2c.mail import Mailer
from l2c.price_books import PriceBooks
from l2c.pricing import QuoteRefused, price_quote, renewal_quote
from l2c.recognition import MissingSsp
from models.contract_terms import LegalReminder, RedlineRequest, RedlineReview
from models.documents import (
    ApprovalRequirement,
    ContractDocument,
    ContractRequest,
    EscalationRequest,
    Milestone,
    Quote,
    QuotePricing,
    QuoteRequest,
    RenewalRequest,
    SignatureRecord,
    SignedContractCheck,
)
from models.ledger import ContractRecord, DealMilestoneRecord, QuoteLineRecord, QuoteRecord


def quote_id_for(deal_id: str, version: int) -> str:
    return f"{deal_id}-Q{version}"


def record_milestones(engine: Engine, deal_id: str, milestones: list[Milestone]) -> None:
    """Keep each milestone once: one already stored (by an earlier attempt or request) stays."""
    if not milestones:
        return
    with Session(engine) as session:
        for milestone in milestones:
            if session.get(DealMilestoneRecord, (deal_id, milestone.kind, milestone.key)) is None:
                session.add(DealMilestoneRecord(deal_id=deal_id, **milestone.model_dump()))
        try:
            session.commit()
        except IntegrityError:  # a concurrent attempt stored them first: theirs stand
            session.rollback()


class QuoteActivities:
    def __init__(self, engine: Engine, rules: BusinessRules, mailer: Mailer | None = None):
        self._engine = engine
        self._rules = rules
        self._mailer = mailer
        self._price_books = PriceBooks(engine, rules.catalog)

    @activity.defn
    def price_quote(self, request: QuoteRequest) -> QuotePricing:
        """Price a submitted quote on the deal's price book and store it; a refusal is returned,
        not raised, and stores nothing."""
        record_milestones(self._engine, request.deal_id, request.milestones)
        version = request.price_book_version
        with Session(self._engine) as session:
            stored = session.get(QuoteRecord, quote_id_for(request.deal_id, request.version))
            if stored is not None:  # priced by an earlier attempt: on that price book again
                version = stored.price_book_version
        catalog = self._price_books.version(version)
        if catalog is None:
            return QuotePricing(refusal=f"the deal's price book {version!r} is not in the ledger")
        ssp = self._rules.ssp if self._rules.ssp.prices else None
        pricing = price_quote(catalog, self._rules.approvals, request, ssp)
        quote = pricing.quote
        if quote is None:
            return pricing
        digest = self._store_quote(request.deal_id, quote, request.customer)
        pricing.quote = quote.model_copy(update={"document_sha256": digest})
        return pricing

    @activity.defn
    def renew_quote(self, request: RenewalRequest) -> Quote:
        """The plan in force renewed for another term with the contract's uplift, stored in the
        ledger as the deal's next quote version (once, however often it is asked)."""
        with Session(self._engine) as session:
            stored = session.get(QuoteRecord, quote_id_for(request.deal_id, request.version))
        ssp = self._rules.ssp if self._rules.ssp.prices else None
        try:
            quote = renewal_quote(request.plan, request.version, request.uplift_percent, ssp)
        except (QuoteRefused, MissingSsp) as err:  # the SSP table lost a product meanwhile
            raise ApplicationError(f"renewal of {request.deal_id}: {err}",
                                   type="LedgerConflict", non_retryable=True) from err  # fmt: skip
        digest = (stored.document_sha256 if stored is not None
                  else self._store_quote(request.deal_id, quote, request.customer))  # fmt: skip
        return quote.model_copy(update={"document_sha256": digest})

    def _store_quote(self, deal_id: str, quote: Quote, customer: str) -> str:
        """Store a priced quote, its lines and its document; returns the document's hash (an
        earlier attempt's, if it stored one)."""
        quote_id = quote_id_for(deal_id, quote.version)
        html = render("quote.html", quote_id=quote_id, quote=quote, customer=customer)
        digest = sha256_hex(html)
        with Session(self._engine) as session:
            stored = session.get(QuoteRecord, quote_id)
            if stored is not None:
                return stored.document_sha256  # an earlier attempt's document is the one
            session.add(
                QuoteRecord(
                    quote_id=quote_id,
                    deal_id=deal_id,
                    version=quote.version,
                    price_book_version=quote.price_book_version,
                    currency=quote.currency,
                    submitted_by=quote.submitted_by,
                    discount_percent=quote.discount_percent,
                    term_months=quote.term_months,
                    billing_period=quote.billing_period,
                    list_total=quote.list_total,
                    net_total=quote.net_total,
                    created_at=datetime.now(UTC),
                    document_sha256=digest,
                    html=html,
                )
            )
            session.flush()
            for line_no, line in enumerate(quote.lines, start=1):
                session.add(
                    QuoteLineRecord(
                        quote_id=quote_id,
                        line_no=line_no,
                        sku=line.sku,
                        quantity=line.quantity,
                        monthly_list=line.monthly_list,
                        monthly_net=line.monthly_net,
                        list_amount=line.list_amount,
                        net_amount=line.net_amount,
                    )
                )
            session.commit()
        return digest

    @activity.defn
    def escalate_approval(self, request: EscalationRequest) -> ApprovalRequirement:
        """An approval past its SLA is escalated: the next role up (from the one asked last) is
        asked to give it and its approvers are reminded by e-mail, once per escalation; at the
        top role its approvers are reminded again. Who may give it does not change: a higher
        role always could. Due again one SLA later."""
        matrix = self._rules.approvals
        excluded = {request.submitted_by, *request.taken}
        asked = matrix.rank(request.escalated_to or request.role)
        # The next role up with somebody free to act; at the top, the top role again.
        candidates = [r.name for r in matrix.roles[asked + 1 :]] or [matrix.roles[-1].name]
        role = next((r for r in candidates if self._free_in(r, excluded)), candidates[-1])
        escalated = ApprovalRequirement(
            rule=request.rule,
            required_role=request.role,
            role_limit_percent=matrix.role_limit(request.role),
            eligible_approvers=matrix.eligible(request.role, excluded),
            due_at=matrix.escalation.due(request.escalated_at),
            escalated_to=role,
            notified=self._free_in(role, excluded),
        )
        if self._mailer is not None:
            emails = {a.name: a.email for a in matrix.approvers}
            for approver in escalated.notified:
                subject, body = render_email(
                    "approval_reminder.txt", lead=request.lead, approver=approver,
                    quote_version=request.quote_version, submitted_by=request.submitted_by,
                    requirement=escalated, escalated=role != request.escalated_to,
                    deal_id=request.deal_id)  # fmt: skip
                self._mailer.send_once(
                    key=f"{request.deal_id}:approval:{request.quote_version}:"
                    f"{sha256_hex(request.rule)[:12]}:{request.escalation}:{approver}",
                    deal_id=request.deal_id,
                    recipient=emails[approver],
                    subject=subject,
                    body=body,
                )
        return escalated

    def _free_in(self, role: str, excluded: set[str]) -> list[str]:
        """The approvers holding exactly `role`, but nobody in `excluded`."""
        return [a.name for a in self._rules.approvals.approvers
                if a.role == role and a.name not in excluded]  # fmt: skip

    @activity.defn
    def render_contract(self, request: ContractRequest) -> ContractDocument:
        """Render the order form for the quote (with its clauses, when it has terms); the same
        request always yields the same hash. Each revision is a contract of its own."""
        version = request.quote.version
        contract_id = f"{request.deal_id}-C{version}"
        if request.revision:
            contract_id += f"-R{request.revision}"
        terms = request.terms
        if terms is None and request.standard_terms:
            terms = standard_terms(self._rules.clauses, request.payment_terms_days)
        payment_days = request.payment_terms_days if terms is None else terms.payment_terms_days
        html = render(
            "contract.html",
            contract_id=contract_id,
            lead=request.lead,
            quote=request.quote,
            issued_at=request.issued_at,
            payment_terms_days=payment_days,
            clauses=[] if terms is None else render_clauses(self._rules.clauses, terms),
        )
        digest = sha256_hex(html)
        record_milestones(self._engine, request.deal_id, request.milestones)
        with Session(self._engine) as session:
            existing = session.get(ContractRecord, contract_id)
            if existing is None:
                session.add(
                    ContractRecord(
                        contract_id=contract_id,
                        deal_id=request.deal_id,
                        quote_id=quote_id_for(request.deal_id, version),
                        version=version,
                        document_sha256=digest,
                        html=html,
                        issued_at=request.issued_at,
                    )
                )
                session.commit()
            elif existing.document_sha256 != digest:
                # The template changed between attempts: the stored document is the one that was
                # (or may have been) sent, so it stays authoritative.
                digest = existing.document_sha256
        return ContractDocument(contract_id=contract_id, version=version, document_sha256=digest,
                                revision=request.revision, terms=terms)  # fmt: skip

    @activity.defn
    def review_redline(self, request: RedlineRequest) -> RedlineReview:
        """A customer's redline checked against the clause library: the terms it makes, or the
        reason it is refused (returned, not raised: a person's mistake never fails the deal).
        Risky changes go to legal, due within its SLA in business hours."""
        library = self._rules.clauses
        proposal = request.proposal
        try:
            terms, risks, changed = apply_redline(library, request.current, proposal,
                                                  current_revision=request.revision)  # fmt: skip
        except InvalidRedline as err:
            return RedlineReview(refused=str(err))
        review = RedlineReview(terms=terms, risks=risks, changed=changed)
        matrix, excluded = self._rules.approvals, {proposal.proposed_by}
        if risks:
            review.legal_reviewers = library.reviewers(excluded=excluded)
            if not review.legal_reviewers:  # nobody could ever decide it
                return RedlineReview(refused=f"it needs legal review, and {proposal.proposed_by} "
                                             "is the only legal reviewer: another must propose it")  # fmt: skip
        rule = next((r for r in matrix.rules if r.max_payment_terms_days is not None), None)
        days = terms.payment_terms_days
        if (rule is not None and rule.max_payment_terms_days is not None
                and days > request.current.payment_terms_days
                and days > rule.max_payment_terms_days):  # fmt: skip
            review.finance_role = rule.role
            review.finance_approvers = matrix.eligible(rule.role, excluded)
            if not review.finance_approvers:
                return RedlineReview(refused=f"net {days} needs a {rule.role}'s approval "
                                             f"({rule.name}), and nobody else may give it")  # fmt: skip
        if review.legal_reviewers or review.finance_approvers:
            review.legal_due_at = matrix.escalation.due(request.requested_at,
                                                        library.legal.sla_business_hours)  # fmt: skip
        return review

    @activity.defn
    def remind_legal(self, reminder: LegalReminder) -> datetime:
        """A redline's legal review is overdue: each reviewer is reminded by e-mail, once per
        reminder. Returns when it is due again (one SLA later, in business hours)."""
        library = self._rules.clauses
        if self._mailer is not None:
            emails = {a.name: a.email for a in self._rules.approvals.approvers}
            emails |= {r.name: r.email for r in library.legal.reviewers}
            for reviewer in reminder.reviewers:
                subject, body = render_email("legal_review_reminder.txt", reminder=reminder,
                                             reviewer=reviewer)  # fmt: skip
                self._mailer.send_once(
                    key=f"{reminder.deal_id}:legal:{reminder.contract_id}:{reminder.redline}:"
                    f"{reminder.reminder}:{reviewer}",
                    deal_id=reminder.deal_id,
                    recipient=emails[reviewer],
                    subject=subject,
                    body=body,
                )
        return self._rules.approvals.escalation.due(reminder.reminded_at,
                                                    library.legal.sla_business_hours)  # fmt: skip

    @activity.defn
    def is_signed_contract(self, check: SignedContractCheck) -> bool:
        """Whether the ledger holds this deal's contract, signed, with this document."""
        quote_id = quote_id_for(check.deal_id, check.quote_version)
        with Session(self._engine) as session:
            row = session.get(ContractRecord, check.contract_id)
            quote = session.get(QuoteRecord, quote_id)
        return (row is not None and row.deal_id == check.deal_id and row.signed_at is not None
                and row.document_sha256 == check.document_sha256 and row.quote_id == quote_id
                and quote is not None and quote.document_sha256 == check.quote_sha256
                and quote.net_total == check.net_total)  # fmt: skip

    @activity.defn
    def record_signature(self, signature: SignatureRecord) -> None:
        with Session(self._engine) as session:
            contract = session.get(ContractRecord, signature.contract_id)
            if contract is None:
                raise ApplicationError(
                    f"contract {signature.contract_id} is not in the ledger",
                    type="LedgerConflict",
                    non_retryable=True,
                )
            if contract.signed_at is None:
                contract.signed_by = signature.signer_name
                contract.signer_email = signature.signer_email
                contract.signed_at = signature.signed_at
                session.add(contract)
                session.commit()
