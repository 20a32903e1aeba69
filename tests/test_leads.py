"""The front of the deal: identity resolution (a lead of an account with an open deal joins it),
enrichment on the deal, the trained model's part of the score, routing to a team's round-robin
with an SLA to accept, and reassignment when nobody does."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from l2c.config import BusinessRules, Settings
from l2c.enrichment_sandbox import SandboxEnrichment
from l2c.identity import company_domain, normalize_email, release_account, resolve_identity
from l2c.lead_model import train_from_ledger
from models.deal import Stage
from models.ledger import AccountOpenDeal, LeadAssignmentRecord
from tests.helpers import (
    advance_until,
    final_state,
    make_lead,
    own_worker,
    quote_to_signature,
    refused_after,
    signal,
    start,
    state_of,
    wait_for_stage,
    wait_until,
)
from tests.test_lead_model import HISTORY, add_account, add_leads

FREE_MAIL = frozenset({"gmail.com", "yahoo.com"})


# These tests skip days of business hours past SLAs: a clock of their own (tests/conftest.py).
pytestmark = pytest.mark.own_clock


# ---------------------------------------------------------------- identity, on the ledger


def test_e_mail_addresses_are_normalized_to_the_person() -> None:
    assert normalize_email(" Ada.Lovelace+Leads@ACME.example ") == "ada.lovelace@acme.example"
    assert normalize_email("a.d.a+x@googlemail.com") == "ada@gmail.com"
    assert company_domain("ada@www.Acme.example", FREE_MAIL) == "acme.example"
    assert company_domain("pat@Gmail.com", FREE_MAIL) is None


def test_same_person_other_case_joins_their_open_deal(ledger: Engine) -> None:
    first = resolve_identity(
        ledger, "deal-A", make_lead(lead_id="A", contact_email="ada@acme.example"), FREE_MAIL
    )
    assert (first.matched, first.attach_to, first.account_key) == ("new", None, "acme.example")
    again = resolve_identity(ledger, "deal-B", make_lead(lead_id="B", contact_email="ADA+web@Acme.Example"), FREE_MAIL)  # fmt: skip
    assert (again.matched, again.attach_to) == ("person", "deal-A")
    assert "same person ada@acme.example: joins open deal deal-A" in again.detail


def test_same_company_domain_joins_but_free_mail_is_not_a_company(ledger: Engine) -> None:
    resolve_identity(ledger, "deal-A", make_lead(lead_id="A", contact_email="ada@acme.example"), FREE_MAIL)  # fmt: skip
    colleague = resolve_identity(ledger, "deal-C", make_lead(lead_id="C", contact_email="bob@acme.example"), FREE_MAIL)  # fmt: skip
    assert (colleague.matched, colleague.attach_to) == ("company", "deal-A")
    assert "same company domain acme.example" in colleague.detail
    # Two people at gmail.com are two accounts; the same gmail person again is one.
    pat = resolve_identity(ledger, "deal-P", make_lead(lead_id="P", contact_email="pat@gmail.com"), FREE_MAIL)  # fmt: skip
    sam = resolve_identity(ledger, "deal-S", make_lead(lead_id="S", contact_email="sam@gmail.com"), FREE_MAIL)  # fmt: skip
    assert (pat.attach_to, sam.attach_to) == (None, None)
    assert pat.account_key == "person:pat@gmail.com" and "free-mail address" in pat.detail
    pat_again = resolve_identity(ledger, "deal-P2", make_lead(lead_id="P2", contact_email="P.at@gmail.com"), FREE_MAIL)  # fmt: skip
    assert (pat_again.matched, pat_again.attach_to) == ("person", "deal-P")


def test_a_closed_deal_frees_its_account_and_a_stale_claim_passes_on(ledger: Engine) -> None:
    resolve_identity(ledger, "deal-A", make_lead(lead_id="A", contact_email="ada@acme.example"), FREE_MAIL)  # fmt: skip
    release_account(ledger, "deal-A")
    later = resolve_identity(ledger, "deal-B", make_lead(lead_id="B", contact_email="bob@acme.example"), FREE_MAIL)  # fmt: skip
    assert (later.matched, later.attach_to, later.earlier_deals) == ("company", None, ["deal-A"])
    assert "no open deal, earlier deals: deal-A" in later.detail
    # deal-B's claim is stale (its deal ended without releasing it): deal-C takes it over.
    taken = resolve_identity(ledger, "deal-C", make_lead(lead_id="C", contact_email="cy@acme.example"), FREE_MAIL, stale_claim="deal-B")  # fmt: skip
    assert taken.attach_to is None
    with Session(ledger) as session:
        assert session.get(AccountOpenDeal, "acme.example").deal_id == "deal-C"  # type: ignore[union-attr]


# ---------------------------------------------------------------- on the deal workflow


async def test_duplicate_leads_join_the_open_deal_of_their_account(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    first = await start(ts_env.client, deal_worker.task_queue, contact_email="ada@acme.example")
    await wait_for_stage(first, Stage.QUALIFIED)
    same_person = await start(
        ts_env.client, deal_worker.task_queue, contact_email="Ada@ACME.example"
    )
    same_company = await start(ts_env.client, deal_worker.task_queue, contact_email="bob@acme.example",
                               contact_name="Bob Builder")  # fmt: skip
    for duplicate, matched in ((same_person, "person"), (same_company, "company")):
        final = await final_state(duplicate)
        assert final.stage == Stage.MERGED and final.merged_into == first.id
        assert final.identity is not None and final.identity.matched == matched
        assert final.events[-1].kind == "deal_merged"
    state = await wait_until(first, lambda s: len(s.attached_leads) == 2)
    assert {a.deal_id for a in state.attached_leads} == {same_person.id, same_company.id}
    bob = next(e for e in state.events if e.kind == "lead_attached" and "Bob" in e.detail)
    assert "Bob Builder <bob@acme.example>" in bob.detail
    assert "same company domain acme.example" in bob.detail
    # Signed, the deal is no longer an open opportunity: the company's next lead is a new deal.
    await quote_to_signature(first)
    await wait_for_stage(first, Stage.ACTIVE)
    expansion = await start(ts_env.client, deal_worker.task_queue, contact_email="cy@acme.example")
    state = await wait_until(expansion, lambda s: s.routing is not None)
    assert state.merged_into is None and state.identity is not None
    assert state.identity.matched == "company" and state.identity.earlier_deals[0] == first.id
    # A free-mail lead is nobody's colleague: a deal of its own.
    other = await start(ts_env.client, deal_worker.task_queue, contact_email="ada@gmail.com")
    state = await wait_until(other, lambda s: s.routing is not None)
    assert (
        state.merged_into is None and state.stage == Stage.NURTURING
    )  # no corporate e-mail points
    assert state.identity is not None and state.identity.account_key == "person:ada@gmail.com"


async def test_an_unaccepted_lead_is_reassigned_after_the_sla_then_to_the_manager(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue, country="US", employees=250)
    state = await wait_for_stage(handle, Stage.QUALIFIED)
    routing = state.routing
    assert routing is not None and state.owner == "nora.na"
    first = routing.assignments[0]
    assert first.team == "north-america" and first.accept_by is not None
    assert first.accept_by > routing.sales_ready_at  # type: ignore[operator]
    # Two business hours of New York's working day: never more than a weekend and a night away.
    assert first.accept_by - routing.sales_ready_at <= timedelta(days=3, hours=18)  # type: ignore[operator]
    assert "only its owner" in await refused_after(handle, "accept_lead", {"by": "nico.na"})

    state = await advance_until(ts_env, handle, lambda s: s.routing is not None
                                and len(s.routing.assignments) == 3, step=timedelta(hours=1))  # fmt: skip
    routing = state.routing
    assert routing is not None
    assert [(a.owner, a.missed) for a in routing.assignments] == [
        ("nora.na", True), ("nico.na", True), ("mia.manager", False)]  # fmt: skip
    assert routing.sla_misses == 2 and routing.assignments[2].accept_by is None
    assert "every member missed the SLA" in routing.assignments[2].reason
    assert [e.actor for e in state.events if e.kind == "lead_sla_missed"] == ["nora.na", "nico.na"]
    assert state.owner == "mia.manager"

    await signal(handle, "accept_lead", {"by": "mia.manager", "note": "calling them today"})
    state = await wait_until(
        handle, lambda s: s.routing is not None and s.routing.accepted_by is not None
    )
    routing = state.routing
    assert routing is not None and routing.response_seconds is not None
    assert routing.response_seconds >= 2 * 3600  # two SLAs of two business hours went by
    assert "already accepted" in await refused_after(handle, "accept_lead", {"by": "mia.manager"})
    with Session(sqlite_ledger) as session:
        owners = session.exec(select(LeadAssignmentRecord.owner).where(
            LeadAssignmentRecord.deal_id == handle.id)).all()  # fmt: skip
    assert list(owners) == ["nora.na", "nico.na", "mia.manager"]


async def test_round_robin_within_the_team_and_acceptance_stops_the_sla(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    owners = []
    for _ in range(3):
        handle = await start(ts_env.client, deal_worker.task_queue, country="DE", employees=100)
        state = await wait_for_stage(handle, Stage.QUALIFIED)
        owners.append(state.owner)
        assert state.routing is not None and state.routing.assignments[0].team == "emea"
    assert owners == ["emil.emea", "elsa.emea", "emil.emea"]
    # The last one's owner accepts at once (an update answers with the response time).
    answer = await handle.execute_update("accept_lead", {"by": "emil.emea"}, result_type=str)
    assert answer.startswith("lead accepted by emil.emea; response time 0:00:00")
    await ts_env.sleep(timedelta(days=5))
    state = await state_of(handle)
    assert state.routing is not None and state.routing.sla_misses == 0
    assert state.owner == "emil.emea"


@pytest.fixture
def enrichment() -> Iterator[SandboxEnrichment]:
    service = SandboxEnrichment()
    service.start()
    yield service
    service.stop()


async def test_enrichment_fills_the_company_size_and_routes_by_it(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, rules: BusinessRules, settings: Settings,
    enrichment: SandboxEnrichment,
) -> None:  # fmt: skip
    enrichment.add_company(
        "bigco.example", name="BigCo", employees=5000, industry="Software", country="US"
    )
    settings = settings.model_copy(update={"enrichment_url": enrichment.url})
    async with own_worker(ts_env.client, sqlite_ledger, rules, settings):
        handle = await start(ts_env.client, settings.task_queue, contact_email="cto@bigco.example",
                             employees=None, country="US")  # fmt: skip
        state = await wait_for_stage(handle, Stage.QUALIFIED)
        assert state.enrichment is not None and state.enrichment.status == "enriched"
        assert state.enrichment.firmographics.employees == 5000  # type: ignore[union-attr]
        assert state.score_breakdown["company_size"] == 35  # the enrichment's 5,000 employees
        assert state.routing is not None and state.routing.assignments[0].team == "enterprise"
        assert any(e.kind == "enrichment_enriched" and "5000 employees, Software" in e.detail
                   for e in state.events)  # fmt: skip

        # The service is down: the deal goes on with what the lead carried, and says why.
        enrichment.down = True
        handle = await start(ts_env.client, settings.task_queue, contact_email="ada@downco.example",
                             employees=300, country="US")  # fmt: skip
        state = await wait_for_stage(handle, Stage.QUALIFIED, timeout=60)
        assert state.enrichment is not None and state.enrichment.status == "unavailable"
        assert "503" in state.enrichment.detail or "unavailable" in state.enrichment.detail
        assert any(e.kind == "enrichment_unavailable" for e in state.events)
        assert state.routing is not None and state.routing.assignments[0].team == "north-america"


async def test_a_trained_model_adds_its_points_with_each_contribution_shown(
    ts_env: WorkflowEnvironment, sqlite_ledger: Engine, rules: BusinessRules, settings: Settings
) -> None:
    with Session(sqlite_ledger) as session:
        add_account(session)
        add_leads(session, HISTORY)
        session.commit()
    train_from_ledger(sqlite_ledger, rules.policy.scoring.free_email_domains)
    async with own_worker(ts_env.client, sqlite_ledger, rules, settings):
        likely = await start(ts_env.client, settings.task_queue, source="referral", employees=1500)
        unlikely = await start(ts_env.client, settings.task_queue, source="unknown", employees=10,
                               contact_email="kim@gmail.com")  # fmt: skip
        good = await wait_until(likely, lambda s: s.score_model is not None)
        poor = await wait_until(unlikely, lambda s: s.score_model is not None)
    assert good.score_model is not None and poor.score_model is not None
    assert good.score_model.version == 1 and good.score_model.won == 22
    assert good.score_model.probability > 0.5 > poor.score_model.probability
    assert good.score_breakdown["model"] == good.score_model.points > poor.score_breakdown["model"]
    assert sum(good.score_breakdown.values()) == good.score
    assert good.score_model.contributions["source=referral"] > 0
    assert poor.score_model.contributions["email=free_mail"] < 0
    assert any(
        "model v1: win probability" in e.detail for e in good.events if e.kind == "lead_scored"
    )


def test_business_hours_of_a_team_count_in_its_time_zone(rules: BusinessRules) -> None:
    routing = rules.policy.routing
    emea = next(team for team in routing.teams if team.name == "emea")
    # Friday 16:30 in London: half an hour that day, then Monday 09:00-10:30.
    friday = datetime(2026, 11, 27, 16, 30, tzinfo=UTC)
    assert routing.accept_by(emea, friday) == datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
