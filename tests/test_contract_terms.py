"""Contract terms and redlines: the clause library (config/clauses.toml) checked at start-up,
redlines applied all or nothing, the risk rules that send them to legal, and the clauses rendered
into a new contract revision with its own hash."""

import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import ActivityEnvironment

from activities.quotes import QuoteActivities
from l2c.clauses import (
    InvalidRedline,
    apply_redline,
    render_clauses,
    risks_of,
    standard_terms,
)
from l2c.config import PROJECT_ROOT, BusinessRules, ConfigError, load_business_rules
from l2c.documents import _templates, sha256_hex
from models.contract_terms import (
    CLAUSE_FIELDS,
    AutoRenewal,
    ContractTerms,
    ProposeTerms,
    RedlineRequest,
)
from models.documents import ContractRequest, QuoteRequest
from models.ledger import ContractRecord
from models.signals import SubmitQuote
from tests.helpers import make_lead

NOW = datetime(2026, 1, 16, 16, 0, tzinfo=UTC)  # a Friday, an hour before the day ends
env = ActivityEnvironment()


def standard(rules: BusinessRules, days: int = 30) -> ContractTerms:
    return standard_terms(rules.clauses, days)


def redline(changes: dict[str, Any] | None = None, remove: list[str] | None = None,
            **fields: Any) -> ProposeTerms:  # fmt: skip
    return ProposeTerms.model_validate({"proposed_by": "ada.lovelace", "changes": changes or {},
                                        "remove": remove or [], **fields})  # fmt: skip


def refusal(rules: BusinessRules, proposal: ProposeTerms, **kwargs: Any) -> str:
    with pytest.raises(InvalidRedline) as error:
        apply_redline(rules.clauses, standard(rules), proposal, **kwargs)
    return str(error.value)


# ---------------------------------------------------------------- the rules


def test_the_standard_terms_need_no_review(rules: BusinessRules) -> None:
    terms = standard(rules)
    assert risks_of(rules.clauses, terms) == []
    assert terms == ContractTerms(
        payment_terms_days=30, liability_cap=Decimal(1),
        auto_renewal=AutoRenewal(enabled=True, notice_days=60, uplift_percent=Decimal(5)),
        termination_for_convenience=False, sla_credits_percent=Decimal(10),
        governing_law="Delaware")  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "remove", "clause", "reason"),
    [
        ({"payment_terms": 90}, [], "payment_terms",
         "net 90 is longer than the 60 days legal accepts without review"),
        ({"liability_cap": "uncapped"}, [], "liability_cap", "liability is uncapped"),
        ({}, ["liability_cap"], "liability_cap",
         "the liability cap is struck out: liability is uncapped"),
        ({"liability_cap": "2.5"}, [], "liability_cap",
         "a liability cap of 2.5 times the prior 12 months' fees is above the 2 times legal "
         "accepts without review"),
        ({"auto_renewal": {"enabled": False}}, [], "auto_renewal",
         "auto-renewal is off: the contract ends with its term unless renewed by hand"),
        ({}, ["auto_renewal"], "auto_renewal",
         "auto-renewal is struck out: the contract ends with its term unless renewed by hand"),
        ({"termination_for_convenience": True}, [], "termination_for_convenience",
         "termination for convenience is granted: the customer may end the contract before "
         "its term"),
        ({"sla_credits": "25"}, [], "sla_credits",
         "SLA credits of 25 percent of the monthly fee are above the 20 percent legal accepts "
         "without review"),
        ({"governing_law": "Ireland"}, [], "governing_law",
         "governing law Ireland is not one legal accepts without review (Delaware, New York)"),
    ],
)  # fmt: skip
def test_each_risky_redline_is_flagged_with_its_reason(
    rules: BusinessRules, changes: dict[str, Any], remove: list[str], clause: str, reason: str
) -> None:
    terms, risks, changed = apply_redline(rules.clauses, standard(rules), redline(changes, remove))
    assert changed == [clause]
    assert [(r.clause, r.reason) for r in risks] == [(clause, reason)]
    assert terms.value(clause) != standard(rules).value(clause)


def test_a_redline_within_the_thresholds_is_accepted_without_review(rules: BusinessRules) -> None:
    proposal = redline({"payment_terms": 60, "liability_cap": "2", "sla_credits": "20",
                        "governing_law": "new york", "auto_renewal": {"uplift_percent": "3"}})  # fmt: skip
    terms, risks, changed = apply_redline(rules.clauses, standard(rules), proposal)
    assert risks == []
    assert changed == ["payment_terms", "liability_cap", "auto_renewal", "sla_credits",
                       "governing_law"]  # fmt: skip
    assert terms.governing_law == "New York"  # the library's spelling
    # Only the uplift changed: the notice period and enabled flag are kept.
    assert terms.auto_renewal == AutoRenewal(enabled=True, notice_days=60,
                                             uplift_percent=Decimal(3))  # fmt: skip
    assert terms.sla_credits_percent == Decimal(20) and terms.payment_terms_days == 60


def test_striking_out_sla_credits_is_no_risk_and_leaves_the_clause_out(
    rules: BusinessRules,
) -> None:
    terms, risks, changed = apply_redline(rules.clauses, standard(rules),
                                          redline(remove=["sla_credits"]))  # fmt: skip
    assert (terms.sla_credits_percent, risks, changed) == (None, [], ["sla_credits"])
    titles = [title for title, _ in render_clauses(rules.clauses, terms)]
    assert "Service level credits" not in titles and len(titles) == 5


def test_only_the_changed_clauses_go_to_legal(rules: BusinessRules) -> None:
    """Net 90 was reviewed and accepted with an earlier revision: changing the governing law
    later does not send it back to legal, but changing it again does."""
    accepted = standard(rules).model_copy(update={"payment_terms_days": 90})
    _, risks, changed = apply_redline(rules.clauses, accepted,
                                      redline({"governing_law": "New York"}))  # fmt: skip
    assert (risks, changed) == ([], ["governing_law"])
    _, risks, _ = apply_redline(rules.clauses, accepted, redline({"payment_terms": 75}))
    assert [r.reason for r in risks] == [
        "net 75 is longer than the 60 days legal accepts without review"
    ]


@settings(max_examples=200, deadline=None)
@given(days=st.integers(0, 120), credits=st.decimals(0, 50, places=2))
def test_a_risk_is_flagged_exactly_above_its_threshold(
    rules: BusinessRules, days: int, credits: Decimal
) -> None:
    terms, risks, _ = apply_redline(
        rules.clauses,
        standard(rules, days=45),  # differs from every proposal's days but 45: see below
        redline({"payment_terms": days, "sla_credits": str(credits)}),
    )
    assert terms.payment_terms_days == days and terms.sla_credits_percent == credits
    flagged = {r.clause for r in risks}
    assert ("payment_terms" in flagged) == (days > 60)
    assert ("sla_credits" in flagged) == (credits > 20)
    assert flagged <= {"payment_terms", "sla_credits"}


def test_an_unknown_clause_is_refused_naming_it_and_the_known_ones(rules: BusinessRules) -> None:
    reason = refusal(rules, redline({"payment_terms": 45, "late_fees": "2"}))
    assert reason == (
        "no clause 'late_fees' in the clause library; the clauses are: payment_terms, "
        "liability_cap, auto_renewal, termination_for_convenience, sla_credits, governing_law"
    )
    assert "'indemnity'" in refusal(rules, redline(remove=["indemnity"]))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"payment_terms": "ninety"}, "payment_terms: 'ninety' is not a whole number of days from 0 to 120"),
        ({"payment_terms": 121}, "payment_terms: 121 is not a whole number of days from 0 to 120"),
        ({"payment_terms": True}, "payment_terms: True is not a whole number of days"),
        ({"payment_terms": 45.5}, "payment_terms: 45.5 is not a whole number"),
        ({"liability_cap": "lots"}, "liability_cap: 'lots' is neither \"uncapped\" nor a multiple"),
        ({"liability_cap": "0"}, "liability_cap: '0' is neither"),
        ({"liability_cap": "11"}, "liability_cap: '11' is neither \"uncapped\" nor a multiple of the prior 12 months' fees above 0 and up to 10, at most 2 decimals"),
        ({"sla_credits": "NaN"}, "sla_credits: 'NaN' is not a percent from 0 to 50"),
        ({"sla_credits": "12.345"}, "sla_credits: '12.345' is not a percent"),
        ({"sla_credits": "51"}, "sla_credits: '51' is not a percent from 0 to 50"),
        ({"termination_for_convenience": "yes"}, "termination_for_convenience: 'yes' is not true or false"),
        ({"governing_law": "Mars"}, "governing_law: 'Mars' is not one of: Delaware, New York, England and Wales, Ireland"),
        ({"auto_renewal": True}, "auto_renewal: True is not an object like"),
        ({"auto_renewal": {"enabled": "no"}}, "auto_renewal: enabled: Input should be a valid boolean"),
        ({"auto_renewal": {"notice_dayz": 30}}, "auto_renewal: notice_dayz: Extra inputs are not permitted"),
        ({"auto_renewal": {"notice_days": 200}}, "auto_renewal: notice_days 200 is above the 180 days the library allows"),
        ({"auto_renewal": {"uplift_percent": "25"}}, "auto_renewal: uplift_percent 25 is above the 20 percent the library allows"),
        ({"governing_law": "x" * 5000}, "governing_law: 'xxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxx' is not one of"),
    ],
)  # fmt: skip
def test_a_value_of_the_wrong_type_or_range_is_refused_naming_clause_and_value(
    rules: BusinessRules, changes: dict[str, Any], reason: str
) -> None:
    refused = refusal(rules, redline(changes))
    assert refused.startswith(reason)
    assert len(refused) < 300  # a long value is not echoed into the history


def test_structural_mistakes_are_refused_with_the_reason(rules: BusinessRules) -> None:
    assert refusal(rules, redline(remove=["payment_terms"])) == (
        "payment_terms may not be removed: every contract states it (propose another value instead)"
    )
    assert refusal(rules, redline({"liability_cap": "2"}, ["liability_cap"])) == (
        "liability_cap: both changed and removed; choose one"
    )
    # The values it names are already the contract's ("1.00" is 1): nothing to review.
    nothing = "the redline changes nothing: every value it names is already the contract's"
    assert (
        refusal(rules, redline({"liability_cap": "1.00", "governing_law": "Delaware"})) == nothing
    )
    assert refusal(rules, redline()) == nothing
    assert refusal(rules, redline({"payment_terms": 45}, contract_version=1),
                   current_revision=2) == (
        "the redline is of contract revision 1, but revision 2 is current: redline that one"
    )  # fmt: skip
    # The current revision named, or none: accepted.
    for version in (2, None):
        apply_redline(rules.clauses, standard(rules), redline({"payment_terms": 45},
                      contract_version=version), current_revision=2)  # fmt: skip


def test_a_refused_redline_changes_nothing(rules: BusinessRules) -> None:
    """All or nothing: the valid change next to the bad one is not applied either."""
    current = standard(rules)
    before = current.model_dump()
    refusal(rules, redline({"payment_terms": 45, "governing_law": "Mars"}))
    assert current.model_dump() == before


def test_a_proposal_payload_is_strict_about_its_fields() -> None:
    with pytest.raises(ValueError, match="chnages"):
        ProposeTerms.model_validate({"proposed_by": "ada", "chnages": {"payment_terms": 45}})
    with pytest.raises(ValueError, match="proposed_by"):
        ProposeTerms.model_validate({"proposed_by": " ", "changes": {"payment_terms": 45}})
    with pytest.raises(ValueError, match="at most 60 characters"):
        ProposeTerms.model_validate({"proposed_by": "ada", "changes": {"x" * 61: 1}})


def test_terms_round_trip_through_the_temporal_data_converter(rules: BusinessRules) -> None:
    converter = pydantic_data_converter.payload_converter
    for terms in [
        standard(rules),
        standard(rules).model_copy(
            update={
                "liability_cap": "uncapped",
                "auto_renewal": None,
                "sla_credits_percent": Decimal("12.50"),
            }
        ),
        standard(rules).model_copy(update={"liability_cap": None}),
    ]:
        (payload,) = converter.to_payloads([terms])
        (back,) = converter.from_payloads([payload], [ContractTerms])
        assert back == terms and type(back.liability_cap) is type(terms.liability_cap)


# ---------------------------------------------------------------- the contract


def contract_request(ledger: Engine, rules: BusinessRules, deal_id: str, **fields: Any
                     ) -> ContractRequest:  # fmt: skip
    """A contract request for a quote priced and stored in the ledger (a contract refers to it)."""
    submission = SubmitQuote.model_validate(
        {"submitted_by": "nora.na", "lines": [{"sku": "PLATFORM", "quantity": 10}]}
    )
    request = QuoteRequest(deal_id=deal_id, version=1, currency="USD", submission=submission)
    quote = env.run(QuoteActivities(ledger, rules).price_quote, request).quote
    assert quote is not None
    return ContractRequest(deal_id=deal_id, lead=make_lead(), quote=quote, issued_at=NOW,
                           payment_terms_days=30, **fields)  # fmt: skip


def test_the_contract_renders_each_clause_and_each_revision_has_its_own_hash(
    ledger: Engine, rules: BusinessRules
) -> None:
    quotes = QuoteActivities(ledger, rules)
    terms = standard(rules)
    first = env.run(quotes.render_contract, contract_request(ledger, rules, "deal-T", terms=terms))
    assert (first.contract_id, first.revision) == ("deal-T-C1", 0)
    with Session(ledger) as session:
        row = session.get(ContractRecord, "deal-T-C1")
        assert row is not None and sha256_hex(row.html) == first.document_sha256
        html = row.html
    assert "<h2>Terms</h2>" in html
    for title, text in render_clauses(rules.clauses, terms):
        assert f"<h3>{escape(title)}</h3>\n<p>{escape(text)}</p>" in html
    assert "liability under this agreement is limited to 1 times the" in html

    redlined, _, _ = apply_redline(rules.clauses, terms, redline({"payment_terms": 45}))
    request = contract_request(ledger, rules, "deal-T", terms=redlined, revision=1)
    second = env.run(quotes.render_contract, request)
    assert (second.contract_id, second.revision) == ("deal-T-C1-R1", 1)
    assert second.document_sha256 != first.document_sha256
    assert env.run(quotes.render_contract, request) == second  # same request, same hash
    with Session(ledger) as session:
        row = session.get(ContractRecord, "deal-T-C1-R1")
        assert row is not None and row.document_sha256 == second.document_sha256
        # The terms' payment terms replace the request's net 30, in the billing text too.
        assert "payment due 45 days after the invoice date" in row.html
        assert "Invoices are payable within 45 days of the invoice date." in row.html


def test_a_contract_without_terms_renders_exactly_as_before_clauses(
    ledger: Engine, rules: BusinessRules
) -> None:
    """Recorded deals were signed against these hashes: the template's new section must add
    nothing, not even a blank line, to a contract without terms."""
    source = (PROJECT_ROOT / "templates" / "contract.html").read_text(encoding="utf-8")
    section = ("{% if clauses %}<h2>Terms</h2>\n{% for title, text in clauses %}<h3>{{ title }}"
               "</h3>\n<p>{{ text }}</p>\n{% endfor %}{% endif %}")  # fmt: skip
    # Between the billing table and the signature, where the lines met before it was added.
    assert source.count(f"</table>\n{section}<h2>Signature</h2>") == 1
    before = _templates.from_string(source.replace(section, ""))
    request = contract_request(ledger, rules, "deal-B")
    document = env.run(QuoteActivities(ledger, rules).render_contract, request)
    expected = before.render(contract_id="deal-B-C1", lead=request.lead, quote=request.quote,
                             issued_at=NOW, payment_terms_days=30)  # fmt: skip
    assert document.contract_id == "deal-B-C1"
    assert document.document_sha256 == sha256_hex(expected)
    assert "Terms" not in expected and "<h2>Signature</h2>" in expected


# ---------------------------------------------------------------- the activity


def review_request(rules: BusinessRules, proposal: ProposeTerms, revision: int = 0
                   ) -> RedlineRequest:  # fmt: skip
    return RedlineRequest(deal_id="deal-R", current=standard(rules), proposal=proposal,
                          requested_at=NOW, revision=revision)  # fmt: skip


def test_review_redline_routes_a_risk_to_legal_but_not_to_its_proposer(
    ledger: Engine, rules: BusinessRules
) -> None:
    quotes = QuoteActivities(ledger, rules)
    proposal = redline({"payment_terms": 90}, proposed_by="lena.legal")
    review = env.run(quotes.review_redline, review_request(rules, proposal))
    assert review.refused is None and review.terms is not None
    assert review.terms.payment_terms_days == 90 and review.changed == ["payment_terms"]
    assert [r.clause for r in review.risks] == ["payment_terms"]
    assert review.legal_reviewers == ["gus.counsel"]
    # 16 business hours (9-17 UTC, Monday to Friday) from Friday 16:00: 1 + 8 + 7.
    assert review.legal_due_at == datetime(2026, 1, 20, 16, 0, tzinfo=UTC)

    # Net 90 is also longer than the approval matrix lets a quote have without the CFO.
    assert (review.finance_role, review.finance_approvers) == ("cfo", ["carla.cfo"])

    # Net 45: no risk to legal, but still the CFO's; the governing law alone: nobody's.
    longer = env.run(quotes.review_redline, review_request(rules, redline({"payment_terms": 45})))
    assert longer.terms is not None and longer.terms.payment_terms_days == 45
    assert (longer.risks, longer.legal_reviewers) == ([], [])
    assert longer.finance_approvers == ["carla.cfo"] and longer.legal_due_at is not None
    safe = env.run(quotes.review_redline,
                   review_request(rules, redline({"governing_law": "New York"})))  # fmt: skip
    assert (safe.risks, safe.legal_reviewers, safe.finance_approvers, safe.legal_due_at) == (
        [], [], [], None)  # fmt: skip
    shorter = env.run(quotes.review_redline, review_request(rules, redline({"payment_terms": 15})))
    assert shorter.finance_approvers == []


def test_review_redline_returns_a_refusal_instead_of_failing(
    ledger: Engine, rules: BusinessRules
) -> None:
    quotes = QuoteActivities(ledger, rules)
    review = env.run(quotes.review_redline,
                     review_request(rules, redline({"indemnity": "none"})))  # fmt: skip
    assert review.refused is not None and "no clause 'indemnity'" in review.refused
    assert (review.terms, review.changed, review.legal_reviewers) == (None, [], [])
    stale = env.run(quotes.review_redline, review_request(
        rules, redline({"payment_terms": 45}, contract_version=0), revision=1))  # fmt: skip
    assert stale.refused is not None and "revision 1 is current" in stale.refused


# ---------------------------------------------------------------- the library at start-up


@pytest.mark.parametrize(
    ("broken", "replacement", "message"),
    [
        ('[clauses.sla_credits]\ntitle = "Service level credits"', '[sla_credits]\ntitle = "x"',
         "clause sla_credits missing; the library has exactly these: payment_terms"),
        ("standard = 30 ", 'standard = "thirty" ', "clauses.payment_terms.standard: Input should be a valid integer"),
        ('standard = "Delaware"', "standard = true", "clauses.governing_law.standard"),
        ('text = "Invoices are payable within {{ value }} days',
         'text = "Invoices are payable within {{ value days', "the jinja2 snippet does not compile"),
        ("{{ value.notice_days }}", "{{ value.notice_dayz }}", "auto_renewal: the text does not render"),
        ("laws of {{ value }}", "laws of {{ valeu }}", "the snippet uses valeu: only value is defined"),
        ('standard = "10"', 'standard = "25"',
         "the standard sla_credits would itself need legal review: SLA credits of 25 percent"),
        ("standard = false", "standard = true", "the standard termination_for_convenience would itself need legal review"),
        ('standard = "Delaware"', 'standard = "Mars"', "the standard value of governing_law: 'Mars' is not one of"),
        ("standard = 30 ", "standard = 45 ", "payment_terms standard 45 is not policy.toml's billing.payment_terms_days (30)"),
        ("removable = false              # every contract names its law", "removable = true",
         "governing_law: removable must be false"),
        ('accepted_without_review = ["Delaware", "New York"]', 'accepted_without_review = ["Delaware", "Texas"]',
         "accepted_without_review names Texas: not a choice"),
        ('type = "percent"', 'type = "days"', "clauses.sla_credits.type: Input should be 'percent'"),
    ],
)  # fmt: skip
def test_a_broken_clause_library_is_refused_at_start_with_the_file_and_reason(
    tmp_path: Path, broken: str, replacement: str, message: str
) -> None:
    folder = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", folder)
    path = folder / "clauses.toml"
    text = path.read_text(encoding="utf-8")
    assert broken in text
    path.write_text(text.replace(broken, replacement, 1), encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        load_business_rules(folder)
    assert str(path) in str(error.value)
    assert message in str(error.value)


def test_a_library_without_legal_reviewers_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", folder)
    path = folder / "clauses.toml"
    text = path.read_text(encoding="utf-8")
    kept = text[: text.index("[[legal.reviewers]]")] + text[text.index("[clauses.payment_terms]") :]
    path.write_text(kept, encoding="utf-8")
    with pytest.raises(ConfigError, match="no legal reviewers"):
        load_business_rules(folder)
    path.unlink()
    with pytest.raises(ConfigError, match=r"clauses\.toml: file not found"):
        load_business_rules(folder)


def test_the_shipped_library_has_the_six_clauses(rules: BusinessRules) -> None:
    assert list(CLAUSE_FIELDS) == [
        "payment_terms", "liability_cap", "auto_renewal", "termination_for_convenience",
        "sla_credits", "governing_law"]  # fmt: skip
    assert [r.name for r in rules.clauses.legal.reviewers] == ["lena.legal", "gus.counsel"]
    assert rules.clauses.legal.sla_business_hours == 16
