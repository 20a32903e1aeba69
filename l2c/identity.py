"""Identity resolution: who a new lead is, as the ledger knows it.

A person is their normalized e-mail address; a company is its e-mail domain, unless that is a
free-mail provider's (gmail.com says nothing about the company), in which case the person is the
account. An account has at most one open deal (`account_open_deals`): a later lead of the same
person or company joins that deal instead of starting a second one, and the decision, with why,
is recorded in both deals' events.
"""

import hashlib
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from models.deal import LeadInput
from models.leads import IdentityResolution
from models.ledger import Account, AccountOpenDeal, ContactIdentity, Lead

# Providers that ignore dots in the local part, and their aliases.
_DOTLESS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def normalize_email(email: str) -> str:
    """The address as a person: case and `+tags` ignored (every large provider delivers
    ada+news@x to ada@x), and dots in Gmail addresses, which Gmail ignores too."""
    local, _, domain = email.strip().lower().rpartition("@")
    local = local.split("+", 1)[0] or local
    domain = domain.rstrip(".")
    if domain in _DOTLESS:
        domain = _DOTLESS[domain]
        local = local.replace(".", "")
    return f"{local}@{domain}"


def _person_account(person: str) -> str:
    """The account of a free-mail address: the person, hashed when the key would not fit."""
    key = f"person:{person}"
    return (
        key if len(key) <= 254 else f"person:sha256:{hashlib.sha256(person.encode()).hexdigest()}"
    )


def company_domain(email: str, free_mail_domains: frozenset[str]) -> str | None:
    """The company's web domain from a contact's address; None for a free-mail address."""
    domain = normalize_email(email).rpartition("@")[2].removeprefix("www.")
    return None if domain in free_mail_domains else domain


def resolve_identity(
    engine: Engine,
    deal_id: str,
    lead: LeadInput,
    free_mail_domains: frozenset[str],
    stale_claim: str | None = None,
) -> IdentityResolution:
    """Record the lead under its person and account, and claim the account for this deal unless
    an open deal already holds it (then `attach_to` names that deal). `stale_claim`: a deal that
    holds the claim but could not be reached (it has ended); the claim passes to this deal.

    Runs in one transaction: two leads of one company racing here make one deal and one attach.
    """
    person = normalize_email(lead.contact_email)
    domain = company_domain(lead.contact_email, free_mail_domains)
    account = domain or _person_account(person)
    now = datetime.now(UTC)
    with Session(engine) as session:
        known = session.get(ContactIdentity, person, with_for_update=True)
        if known is not None and known.first_lead_id == lead.lead_id:
            known = None  # this lead's own record, from an attempt that was retried
        # The person's own open deal first (they may have written from another company before),
        # then the company's.
        keys = [known.account_key] if known and known.account_key != account else []
        attach_to: str | None = None
        for key in [*keys, account]:
            claim = session.get(AccountOpenDeal, key, with_for_update=True)
            if claim is not None and claim.deal_id == stale_claim:
                session.delete(claim)
                session.flush()
                claim = None
            if claim is not None and claim.deal_id != deal_id:
                attach_to = claim.deal_id
                break
        if attach_to is None and session.get(AccountOpenDeal, account) is None:
            session.add(AccountOpenDeal(account_key=account, deal_id=deal_id, claimed_at=now))
        earlier = _earlier_deals(session, account, known, deal_id)
        matched: Literal["new", "person", "company"] = "new"
        if known is not None and (attach_to is None or known.latest_deal_id == attach_to):
            matched = "person"
        elif attach_to is not None or earlier:
            matched = "company"
        record_lead(session, lead, deal_id, account, now)
        identity = session.get(ContactIdentity, person) or ContactIdentity(
            identity_key=person, account_key=account, first_lead_id=lead.lead_id,
            latest_deal_id=deal_id, seen_at=now)  # fmt: skip
        identity.account_key = account
        identity.latest_deal_id = attach_to or deal_id
        identity.seen_at = now
        session.add(identity)
        session.commit()
    return IdentityResolution(
        identity_key=person,
        account_key=account,
        company_domain=domain,
        matched=matched,
        attach_to=attach_to,
        earlier_deals=earlier,
        detail=_decision(person, account, domain, matched, attach_to, earlier),
    )


def record_lead(
    session: Session, lead: LeadInput, deal_id: str, account_key: str, now: datetime
) -> None:
    """The lead and its account in the ledger, once (a retried step finds its first write)."""
    if session.get(Account, account_key) is None:
        session.add(Account(account_key=account_key, name=lead.company, country=lead.country))
        session.flush()  # the lead refers to it
    if session.get(Lead, lead.lead_id) is None:
        session.add(Lead(lead_id=lead.lead_id, deal_id=deal_id, account_key=account_key,
                         company=lead.company, contact_name=lead.contact_name,
                         contact_email=lead.contact_email, source=lead.source,
                         country=lead.country, employees=lead.employees, currency=lead.currency,
                         captured_at=now))  # fmt: skip


def release_account(engine: Engine, deal_id: str) -> None:
    """The deal has closed: its account may start a new deal with its next lead."""
    with Session(engine) as session:
        for claim in session.exec(
            select(AccountOpenDeal).where(AccountOpenDeal.deal_id == deal_id)
        ).all():
            session.delete(claim)
        session.commit()


def _earlier_deals(
    session: Session, account: str, person: ContactIdentity | None, deal_id: str
) -> list[str]:
    """Other deals of the same account, and the person's latest, oldest first (at most 10)."""
    rows = session.exec(
        select(Lead.deal_id, Lead.captured_at)
        .where(Lead.account_key == account, Lead.deal_id != deal_id)
        .order_by(col(Lead.captured_at), col(Lead.deal_id))
        .limit(10)
    ).all()
    deals = [row[0] for row in rows]
    if person is not None and person.latest_deal_id not in (deal_id, *deals):
        deals.insert(0, person.latest_deal_id)
    return deals[:10]


def _decision(
    person: str,
    account: str,
    domain: str | None,
    matched: Literal["new", "person", "company"],
    attach_to: str | None,
    earlier: list[str],
) -> str:
    who = (
        f"company {domain}"
        if domain
        else f"{person} (free-mail address: the person is the account)"
    )
    if attach_to is not None:
        same = f"same person {person}" if matched == "person" else f"same company domain {domain}"
        return f"{same}: joins open deal {attach_to} instead of starting another"
    if earlier:
        return f"known {matched} ({who}); no open deal, earlier deals: {', '.join(earlier)}"
    return f"new {who}"
