"""The trained part of lead scoring: naive Bayes learned from the ledger's closed deals."""

import math
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from l2c.lead_model import (
    NaiveBayesModel,
    NotEnoughHistory,
    explain,
    latest_model,
    lead_features,
    model_points,
    train,
    train_from_ledger,
    train_report,
)
from models.leads import Firmographics, ModelScore
from models.ledger import Account, EnrichmentCacheEntry, Lead
from tests.helpers import make_lead

FREE_MAIL = {"gmail.com", "yahoo.com", "hotmail.com"}
TRAINED_AT = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
WEIGHT = 40

# (how many, status, source, employees, e-mail domain or None for a corporate one, country)
HISTORY: list[tuple[int, str, str, int | None, str | None, str]] = [
    # Won: referrals and partners from large companies, contacts at their own domain.
    (12, "won", "referral", 1500, None, "US"),
    (4, "won", "partner", 300, None, "DE"),
    (2, "won", "web", None, None, "US"),  # the size comes from the enrichment cache
    (2, "written_off", "referral", 1200, None, "US"),  # became a customer: counts as won
    (2, "won", "web", 20, "gmail.com", "US"),  # noise
    # Lost: unknown sources, small companies, free-mail contacts.
    (12, "lost", "unknown", 10, "gmail.com", "US"),
    (4, "lost", "web", 30, "yahoo.com", "GB"),
    (2, "lost", "event", 80, None, "FR"),
    (2, "disqualified", "unknown", 5, "hotmail.com", "US"),  # never bought: counts as lost
    (2, "lost", "referral", 1500, None, "US"),  # noise
    # Open leads teach nothing yet, however many there are.
    (15, "open", "unknown", 5000, None, "US"),
]


def add_account(session: Session) -> None:
    session.add(Account(account_key="history.example", name="History", country="US"))


def add_leads(
    session: Session, rows: list[tuple[int, str, str, int | None, str | None, str]]
) -> None:
    n = 0
    for count, status, source, employees, free_domain, country in rows:
        for _ in range(count):
            n += 1
            domain = free_domain or f"co{n}.example"
            session.add(Lead(lead_id=f"H-{n:03d}", deal_id=f"deal-H-{n:03d}",
                             account_key="history.example", company=f"Company {n}",
                             contact_name=f"Person {n}", contact_email=f"p{n}@{domain}",
                             source=source, country=country, employees=employees, currency="USD",
                             status=status, captured_at=TRAINED_AT))  # fmt: skip
            if free_domain is None:
                # What enrichment learned of the company: software for the winners' kind.
                industry = "Software" if status in ("won", "written_off") else "Retail"
                firmographics = Firmographics(domain=domain, employees=employees or 2000,
                                              industry=industry)  # fmt: skip
                session.add(EnrichmentCacheEntry(domain=domain, found=True,
                                                 firmographics=firmographics.model_dump_json(),
                                                 fetched_at=TRAINED_AT))  # fmt: skip


@pytest.fixture
def history(ledger: Engine) -> Engine:
    with Session(ledger) as session:
        add_account(session)
        session.add(EnrichmentCacheEntry(domain="nobody.example", found=False, firmographics="{}",
                                         fetched_at=TRAINED_AT))  # fmt: skip
        session.commit()
        add_leads(session, HISTORY)
        session.commit()
    return ledger


def score(model: NaiveBayesModel, features: dict[str, str]) -> ModelScore:
    return explain(model, features, version=1, trained_at=TRAINED_AT, weight=WEIGHT)


def test_features_of_a_lead() -> None:
    corporate = make_lead(source="Referral", employees=None, contact_email="ada@acme.example")
    firmo = Firmographics(domain="acme.example", employees=600, industry=" Software ")
    assert lead_features(corporate, firmo, FREE_MAIL) == {
        "source": "referral",
        "country": "US",
        "size": "250-999",  # the enrichment's, since the lead gave none
        "email": "corporate",
        "industry": "software",
    }
    free = make_lead(source="web", employees=49, contact_email="bob@GMAIL.com", country="fr")
    assert lead_features(free, None, FREE_MAIL) == {
        "source": "web",
        "country": "FR",
        "size": "1-49",
        "email": "free_mail",
        "industry": "unknown",
    }
    bands = [lead_features(make_lead(employees=e), None, FREE_MAIL)["size"] for e in (50, 999)]
    assert bands == ["50-249", "250-999"]
    assert lead_features(make_lead(employees=1000), None, FREE_MAIL)["size"] == "1000+"
    assert lead_features(make_lead(employees=None), None, FREE_MAIL)["size"] == "unknown"
    # Free mail as identity resolution sees it: an alias of a free-mail domain is free mail too.
    alias = make_lead(contact_email="Bob.Smith@GoogleMail.com")
    assert lead_features(alias, None, FREE_MAIL)["email"] == "free_mail"


def test_trained_model_ranks_new_leads(history: Engine) -> None:
    record = train_from_ledger(history, FREE_MAIL, now=TRAINED_AT)
    assert (record.version, record.won, record.lost) == (1, 22, 22)  # open leads left out
    model = NaiveBayesModel.model_validate_json(record.model)
    # The two winners without a size of their own got the enrichment cache's.
    assert model.count("won", "size", "1000+") == 14 + 2

    enterprise = make_lead(source="referral", employees=2000, contact_email="cio@big.example")
    firmo = Firmographics(domain="big.example", industry="Software")
    middling = make_lead(source="web", employees=100, contact_email="it@mid.example", country="GB")
    hobbyist = make_lead(source="unknown", employees=5, contact_email="kid@gmail.com")
    a = score(model, lead_features(enterprise, firmo, FREE_MAIL))
    b = score(model, lead_features(middling, None, FREE_MAIL))
    c = score(model, lead_features(hobbyist, None, FREE_MAIL))
    assert a.probability > b.probability > c.probability
    assert a.probability > 0.9 and c.probability < 0.1
    assert a.points > b.points > c.points
    assert a.contributions["source=referral"] > 0 < a.contributions["size=1000+"]
    assert c.contributions["email=free_mail"] < 0 < a.contributions["email=corporate"]
    assert (a.version, a.trained_at, a.won, a.lost) == (1, TRAINED_AT, 22, 22)


def test_contributions_and_prior_give_the_probability(history: Engine) -> None:
    record = train_from_ledger(history, FREE_MAIL, now=TRAINED_AT)
    model = NaiveBayesModel.model_validate_json(record.model)
    lead = make_lead(source="partner", employees=400, contact_email="x@gmail.com", country="DE")
    result = score(model, lead_features(lead, None, FREE_MAIL))

    assert result.prior_log_odds == 0.0  # 22 won, 22 lost
    assert set(result.contributions) == {"source=partner", "country=DE", "size=250-999",
                                         "email=free_mail", "industry=unknown"}  # fmt: skip
    z = result.prior_log_odds + sum(result.contributions.values())
    assert result.probability == pytest.approx(1 / (1 + math.exp(-z)), abs=1e-4)
    assert result.points == model_points(result.probability, WEIGHT)
    # A contribution is what it says it is, by hand: (count + 1) / (class total + 1 x values).
    values = len(model.values("email"))  # corporate, free_mail
    won = (model.count("won", "email", "free_mail") + 1) / (22 + values)
    lost = (model.count("lost", "email", "free_mail") + 1) / (22 + values)
    assert result.contributions["email=free_mail"] == round(math.log(won / lost), 4)


def test_a_value_never_seen_in_training_contributes_nothing(history: Engine) -> None:
    record = train_from_ledger(history, FREE_MAIL, now=TRAINED_AT)
    model = NaiveBayesModel.model_validate_json(record.model)
    lead = make_lead(source="podcast", employees=1500, country="JP")
    result = score(model, lead_features(lead, None, FREE_MAIL))
    assert result.contributions["source=podcast"] == 0.0
    assert result.contributions["country=JP"] == 0.0
    assert result.contributions["size=1000+"] > 0  # the known values still count
    # A feature the lead lacks counts as "unknown"; one the model does not know is ignored.
    partial = score(model, {"source": "referral", "colour": "blue"})
    assert "colour=blue" not in partial.contributions
    assert partial.contributions["size=unknown"] == pytest.approx(
        model.log_odds("size", "unknown"), abs=1e-4
    )


def test_too_little_history_is_refused_with_the_counts(ledger: Engine) -> None:
    with Session(ledger) as session:
        add_account(session)
        session.commit()
        add_leads(session, [(5, "won", "referral", 1500, None, "US"),
                            (3, "lost", "unknown", 10, "gmail.com", "US"),
                            (9, "open", "web", 10, None, "US")])  # fmt: skip
        session.commit()
    with pytest.raises(NotEnoughHistory, match="5 won and 3 lost, at least 5 of each") as refused:
        train_from_ledger(ledger, FREE_MAIL)
    assert (refused.value.won, refused.value.lost) == (5, 3)
    assert latest_model(ledger) is None  # nothing stored
    assert train_from_ledger(ledger, FREE_MAIL, min_per_class=3).won == 5
    with pytest.raises(NotEnoughHistory, match="0 won and 1 lost"):
        train([({"source": "web"}, False)])


def test_versions_and_persistence_round_trip(history: Engine) -> None:
    assert latest_model(history) is None
    first = train_from_ledger(history, FREE_MAIL, now=TRAINED_AT)
    later = datetime(2025, 4, 1, tzinfo=UTC)
    second = train_from_ledger(history, FREE_MAIL, now=later)
    assert (first.version, second.version) == (1, 2)

    latest = latest_model(history)
    assert latest is not None
    record, model = latest
    assert (record.version, record.won, record.lost) == (2, 22, 22)
    assert record.trained_at == later and record.trained_at.tzinfo is not None
    assert model == NaiveBayesModel.model_validate_json(second.model)
    assert model.model_dump_json() == first.model  # the same history, the same model
    lead = make_lead(source="referral", employees=3000)
    assert score(model, lead_features(lead, None, FREE_MAIL)) == score(
        NaiveBayesModel.model_validate_json(second.model), lead_features(lead, None, FREE_MAIL)
    )


def test_train_report_names_the_telling_values(history: Engine) -> None:
    train_from_ledger(history, FREE_MAIL, now=TRAINED_AT)
    latest = latest_model(history)
    assert latest is not None
    report = train_report(*latest)
    assert "version 1, trained 2025-03-01 09:30 UTC\non 22 won and 22 lost deals" in report
    raising, lowering = report.split("Lower it most:")
    assert "+3.04  industry=software  (20 won, 0 lost)" in raising
    assert "-2.71  source=unknown  (0 won, 14 lost)" in lowering
    assert "email=free_mail" in lowering and "email=free_mail" not in raising
    assert len(lowering.strip().splitlines()) == 5


def test_points_round_half_up_exactly() -> None:
    assert model_points(0.5125, 40) == 21  # 20.5
    assert model_points(0.0125, 40) == 1  # 0.5
    assert model_points(0.0124, 40) == 0
    assert model_points(1.0, 40) == 40
    assert model_points(0.3, 0) == 0
