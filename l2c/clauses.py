"""Contract clauses as pure functions: the standard terms, a customer's redline applied to the
terms in force, the risk rules that send it to legal, and each clause rendered for the contract.

The clause library (types, limits, thresholds, texts) is config/clauses.toml; nothing here is a
number legal might want to change.
"""

import reprlib
from decimal import Decimal
from typing import Any

from jinja2 import TemplateError
from pydantic import TypeAdapter, ValidationError

from l2c.config import ClauseLibrary
from models.contract_terms import (
    CLAUSE_FIELDS,
    AutoRenewal,
    ContractTerms,
    FeesMultiple,
    Percent,
    ProposeTerms,
    TermsRisk,
)
from models.validation import explain


class InvalidRedline(ValueError):
    """A redline that cannot be applied, with the reason (shown to people, kept in the history)."""


# A refusal names the bad value, but never echoes an arbitrarily long one back into the history.
_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlevel = 2

_multiple: TypeAdapter[Decimal] = TypeAdapter(FeesMultiple)
_percent: TypeAdapter[Decimal] = TypeAdapter(Percent)


def _shown(value: Any) -> str:
    return _short.repr(value)


def _decimal(adapter: TypeAdapter[Decimal], value: Any, limit: Decimal) -> Decimal | None:
    """`value` as an exact Decimal within the adapter's range and up to `limit`, or None."""
    if isinstance(value, bool):  # True is not 1 percent
        return None
    try:
        number = adapter.validate_python(value)
    except ValidationError:
        return None
    return number if number <= limit else None


def parse_value(library: ClauseLibrary, clause_id: str, value: Any, current: ContractTerms | None
                ) -> Any:  # fmt: skip
    """A redline's (or the library's standard) value for clause `clause_id`, checked against the
    clause's type and limits; an `auto_renewal` object is merged into the current value."""
    clauses = library.clauses
    if clause_id == "payment_terms":
        days = clauses.payment_terms
        whole = isinstance(value, int) and not isinstance(value, bool)
        if whole and days.min_days <= value <= days.max_days:
            return value
        raise InvalidRedline(f"payment_terms: {_shown(value)} is not a whole number of days "
                             f"from {days.min_days} to {days.max_days}")  # fmt: skip
    if clause_id == "liability_cap":
        cap = clauses.liability_cap
        if value == "uncapped":
            return value
        multiple = _decimal(_multiple, value, cap.max_multiple)
        if multiple is None:
            raise InvalidRedline(
                f'liability_cap: {_shown(value)} is neither "uncapped" nor a multiple of the '
                f"prior 12 months' fees above 0 and up to {cap.max_multiple}, at most 2 decimals"
            )
        return multiple
    if clause_id == "auto_renewal":
        return _auto_renewal(library, value, current)
    if clause_id == "termination_for_convenience":
        if isinstance(value, bool):
            return value
        raise InvalidRedline(f"termination_for_convenience: {_shown(value)} is not true or false")
    if clause_id == "sla_credits":
        limit = clauses.sla_credits.max_percent
        percent = _decimal(_percent, value, limit)
        if percent is None:
            raise InvalidRedline(f"sla_credits: {_shown(value)} is not a percent from 0 to "
                                 f"{limit}, at most 2 decimals")  # fmt: skip
        return percent
    if clause_id == "governing_law":
        choices = clauses.governing_law.choices
        # Case is a typing slip, not a different law: the library's spelling goes in the contract.
        law = next((c for c in choices if isinstance(value, str)
                    and c.casefold() == value.strip().casefold()), None)  # fmt: skip
        if law is None:
            raise InvalidRedline(f"governing_law: {_shown(value)} is not one of: "
                                 f"{', '.join(choices)}")  # fmt: skip
        return law
    raise InvalidRedline(_unknown([clause_id]))


def _auto_renewal(library: ClauseLibrary, value: Any, current: ContractTerms | None
                  ) -> AutoRenewal:  # fmt: skip
    clause = library.clauses.auto_renewal
    if isinstance(value, AutoRenewal):
        value = value.model_dump()
    if not isinstance(value, dict):
        raise InvalidRedline(f"auto_renewal: {_shown(value)} is not an object like "
                             '{"enabled": true, "notice_days": 60, "uplift_percent": "5"}')  # fmt: skip
    base = (current.auto_renewal if current is not None else None) or clause.standard
    try:
        renewal = AutoRenewal.model_validate({**base.model_dump(), **value})
    except ValidationError as err:
        raise InvalidRedline(f"auto_renewal: {explain(err)}") from None
    if renewal.notice_days > clause.max_notice_days:
        raise InvalidRedline(f"auto_renewal: notice_days {renewal.notice_days} is above the "
                             f"{clause.max_notice_days} days the library allows")  # fmt: skip
    if renewal.uplift_percent > clause.max_uplift_percent:
        raise InvalidRedline(f"auto_renewal: uplift_percent {renewal.uplift_percent} is above "
                             f"the {clause.max_uplift_percent} percent the library allows")  # fmt: skip
    return renewal


def _unknown(clause_ids: list[str]) -> str:
    named = ", ".join(_shown(c) for c in clause_ids)
    return (f"no clause {named} in the clause library; the clauses are: "
            f"{', '.join(CLAUSE_FIELDS)}")  # fmt: skip


def standard_terms(library: ClauseLibrary, payment_terms_days: int) -> ContractTerms:
    """The library's standard terms, with the quote's payment terms (which its approvals
    already covered)."""
    clauses = library.clauses
    return ContractTerms(
        payment_terms_days=payment_terms_days,
        liability_cap=clauses.liability_cap.standard,
        auto_renewal=clauses.auto_renewal.standard,
        termination_for_convenience=clauses.termination_for_convenience.standard,
        sla_credits_percent=clauses.sla_credits.standard,
        governing_law=clauses.governing_law.standard,
    )


def risks_of(library: ClauseLibrary, terms: ContractTerms) -> list[TermsRisk]:
    """Every clause value of `terms` that legal must review, with the reason, by the thresholds
    of config/clauses.toml. The one set of risk rules: redlines and the library's own standard
    (checked at start-up) both go through it."""
    clauses = library.clauses
    risks: list[TermsRisk] = []

    def flag(clause: str, reason: str) -> None:
        risks.append(TermsRisk(clause=clause, reason=reason))

    days, limit = terms.payment_terms_days, clauses.payment_terms.review_above_days
    if days > limit:
        flag("payment_terms", f"net {days} is longer than the {limit} days legal accepts "
                              "without review")  # fmt: skip
    cap, rule = terms.liability_cap, clauses.liability_cap
    if cap is None or cap == "uncapped":
        if rule.review_uncapped:
            flag("liability_cap", "liability is uncapped" if cap else
                                  "the liability cap is struck out: liability is uncapped")  # fmt: skip
    elif cap > rule.review_above_multiple:
        flag("liability_cap", f"a liability cap of {cap} times the prior 12 months' fees is "
                              f"above the {rule.review_above_multiple} times legal accepts "
                              "without review")  # fmt: skip
    renewal = terms.auto_renewal
    if clauses.auto_renewal.review_if_off and (renewal is None or not renewal.enabled):
        flag("auto_renewal", ("auto-renewal is off" if renewal else "auto-renewal is struck out")
             + ": the contract ends with its term unless renewed by hand")  # fmt: skip
    if terms.termination_for_convenience and clauses.termination_for_convenience.review_if_granted:
        flag("termination_for_convenience", "termination for convenience is granted: the "
                                            "customer may end the contract before its term")  # fmt: skip
    credits, sla = terms.sla_credits_percent, clauses.sla_credits
    if credits is None:
        if sla.review_if_removed:
            flag("sla_credits", "SLA credits are struck out")
    elif credits > sla.review_above_percent:
        flag("sla_credits", f"SLA credits of {credits} percent of the monthly fee are above the "
                            f"{sla.review_above_percent} percent legal accepts without review")  # fmt: skip
    accepted = clauses.governing_law.accepted_without_review
    if terms.governing_law not in accepted:
        flag("governing_law", f"governing law {terms.governing_law} is not one legal accepts "
                              f"without review ({', '.join(accepted)})")  # fmt: skip
    return risks


def apply_redline(
    library: ClauseLibrary,
    current: ContractTerms,
    proposal: ProposeTerms,
    current_revision: int | None = None,
) -> tuple[ContractTerms, list[TermsRisk], list[str]]:
    """The terms `proposal` makes of `current`, the risks of the clauses it changes (the others
    were accepted with an earlier revision) and those clause ids, in the contract's order.
    Raises InvalidRedline, with the reason, for anything it cannot apply: all or nothing."""
    version = proposal.contract_version
    if current_revision is not None and version is not None and version != current_revision:
        raise InvalidRedline(f"the redline is of contract revision {version}, but revision "
                             f"{current_revision} is current: redline that one")  # fmt: skip
    named = [*proposal.changes, *proposal.remove]
    unknown = [c for c in dict.fromkeys(named) if c not in CLAUSE_FIELDS]
    if unknown:
        raise InvalidRedline(_unknown(unknown))
    both = [c for c in CLAUSE_FIELDS if c in proposal.changes and c in proposal.remove]
    if both:
        raise InvalidRedline(f"{', '.join(both)}: both changed and removed; choose one")
    updates = {c: parse_value(library, c, v, current) for c, v in proposal.changes.items()}
    for clause_id in proposal.remove:
        if not library.clause(clause_id).removable:
            raise InvalidRedline(f"{clause_id} may not be removed: every contract states it "
                                 "(propose another value instead)")  # fmt: skip
        updates[clause_id] = None
    changed = [c for c in CLAUSE_FIELDS if c in updates and updates[c] != current.value(c)]
    if not changed:
        raise InvalidRedline("the redline changes nothing: every value it names is already the "
                             "contract's")  # fmt: skip
    terms = ContractTerms.model_validate({
        CLAUSE_FIELDS[c]: updates[c] if c in changed else current.value(c) for c in CLAUSE_FIELDS
    })  # fmt: skip
    risks = [risk for risk in risks_of(library, terms) if risk.clause in changed]
    return terms, risks, changed


def render_clause(library: ClauseLibrary, clause_id: str, value: Any) -> tuple[str, str]:
    """The clause's title and its text for `value`, as plain text."""
    clause = library.clause(clause_id)
    try:
        text = clause.template.render(value=value)
    except TemplateError as err:
        raise InvalidRedline(f"{clause_id}: the text does not render {_shown(value)}: "
                             f"{err}") from None  # fmt: skip
    return clause.title, " ".join(text.split())  # one paragraph, whatever the TOML's layout


def render_clauses(library: ClauseLibrary, terms: ContractTerms) -> list[tuple[str, str]]:
    """(title, text) of each clause the terms keep, in the contract's order; a clause struck
    out is not in the contract."""
    return [render_clause(library, c, terms.value(c))
            for c in CLAUSE_FIELDS if terms.value(c) is not None]  # fmt: skip


def check_standard(library: ClauseLibrary) -> None:
    """At start-up: each standard value within its clause's limits, each text rendering it and
    the values a redline may bring, and no standard value flagged by its own risk rules."""
    clauses = library.clauses
    terms = standard_terms(library, clauses.payment_terms.standard)
    renewal = clauses.auto_renewal.standard
    for clause_id in CLAUSE_FIELDS:
        standard = getattr(library.clause(clause_id), "standard")  # noqa: B009 (each kind's own type)
        try:
            parse_value(library, clause_id, standard, None)
        except InvalidRedline as err:
            raise InvalidRedline(f"the standard value of {err}") from None
    # The other shapes a value may take: each must render too, not just the standard's.
    samples: dict[str, list[Any]] = {
        "payment_terms": [clauses.payment_terms.min_days, clauses.payment_terms.max_days],
        "liability_cap": ["uncapped", clauses.liability_cap.max_multiple],
        "auto_renewal": [renewal.model_copy(update={"enabled": not renewal.enabled})],
        "termination_for_convenience": [True, False],
        "sla_credits": [Decimal(0), clauses.sla_credits.max_percent],
        "governing_law": list(clauses.governing_law.choices),
    }
    for clause_id in CLAUSE_FIELDS:
        for value in [terms.value(clause_id), *samples[clause_id]]:
            render_clause(library, clause_id, value)
    risks = risks_of(library, terms)
    if risks:
        raise InvalidRedline(f"the standard {risks[0].clause} would itself need legal review: "
                             f"{risks[0].reason}")  # fmt: skip
