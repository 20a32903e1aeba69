"""The trained part of lead scoring: naive Bayes over the ledger's closed deals (`l2c leads train`).

Transparent by construction: a lead's score is the prior log-odds of winning plus one log-odds
contribution per feature value, so the deal can show which facts raised or lowered it. The rule
points (l2c/scoring.py) are added beside this, not replaced by it.

Pure functions apart from `train_from_ledger` and `latest_model`, which read and write the ledger.
"""

import math
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Engine, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from l2c.identity import company_domain
from models.calendar import as_utc
from models.deal import LeadInput
from models.leads import Firmographics, ModelScore
from models.ledger import EnrichmentCacheEntry, Lead, LeadScoreModelRecord

Outcome = Literal["won", "lost"]

FEATURES = ["source", "country", "size", "email", "industry"]
UNKNOWN = "unknown"
# Readable company-size bands: (lowest employee count, label), highest first.
SIZE_BANDS = [(1000, "1000+"), (250, "250-999"), (50, "50-249"), (1, "1-49")]

# A written-off deal had become a customer (it was won, then did not pay): for "would this lead
# buy", it is a win. A disqualified lead never bought: a loss, like a lost deal.
WON_STATUSES = ("won", "written_off")
LOST_STATUSES = ("lost", "disqualified")

DECIMALS = 4  # log-odds and probabilities as shown: enough to compare, few enough to read
_IN_CHUNK = 500  # domains per IN (...) query: well under every database's parameter limit


class NotEnoughHistory(ValueError):
    """Too few closed deals of a class to learn from."""

    def __init__(self, won: int, lost: int, min_per_class: int):
        self.won, self.lost, self.min_per_class = won, lost, min_per_class
        super().__init__(
            f"not enough closed deals to train the lead-scoring model: {won} won and {lost} lost, "
            f"at least {min_per_class} of each are needed"
        )


class ModelVersionConflict(RuntimeError):
    """Another training stored the same version twice in a row; nothing was stored."""


class NaiveBayesModel(BaseModel):
    """Categorical naive Bayes as plain counts: everything else is derived, so the stored JSON is
    what a person can check by hand against the ledger."""

    model_config = ConfigDict(extra="forbid")

    features: list[str]
    class_totals: dict[Outcome, int]  # closed deals per class
    counts: dict[Outcome, dict[str, dict[str, int]]]  # class -> feature -> value -> deals
    smoothing: float = 1.0  # Laplace: a pseudo-count for every value of a feature in each class

    def values(self, feature: str) -> set[str]:
        """The values of `feature` seen in training, in either class."""
        return set(self.counts["won"].get(feature, {})) | set(self.counts["lost"].get(feature, {}))

    def count(self, outcome: Outcome, feature: str, value: str) -> int:
        return self.counts[outcome].get(feature, {}).get(value, 0)

    def prior_log_odds(self) -> float:
        return math.log(self.class_totals["won"] / self.class_totals["lost"])

    def log_odds(self, feature: str, value: str) -> float:
        """log P(value|won) / P(value|lost), Laplace-smoothed over the values seen in training.

        A value never seen in training (a new source, a country with no closed deal) gives 0: it
        carries no evidence either way. Smoothing it as one more value would instead give it
        log((lost + a*(K+1)) / (won + a*(K+1))), which only says which class is smaller, and
        would push every new value towards the minority class.
        """
        seen = self.values(feature)
        if value not in seen:
            return 0.0
        a = self.smoothing
        k = len(seen)
        won = (self.count("won", feature, value) + a) / (self.class_totals["won"] + a * k)
        lost = (self.count("lost", feature, value) + a) / (self.class_totals["lost"] + a * k)
        return math.log(won / lost)


# ---------------------------------------------------------------- features


def lead_features(
    lead: LeadInput, firmographics: Firmographics | None, free_mail_domains: Collection[str]
) -> dict[str, str]:
    """The categorical facts the model scores a lead on."""
    return _features(
        source=lead.source,
        country=lead.country,
        employees=lead.employees,
        contact_email=lead.contact_email,
        firmographics=firmographics,
        free_mail_domains=free_mail_domains,
    )


def _features(
    *,
    source: str,
    country: str,
    employees: int | None,
    contact_email: str,
    firmographics: Firmographics | None,
    free_mail_domains: Collection[str],
) -> dict[str, str]:
    # Ledger rows come here directly, not through LeadInput: a closed lead stays a training
    # example even if today's input validation would refuse some field of it.
    if employees is None and firmographics is not None:
        employees = firmographics.employees
    industry = firmographics.industry if firmographics is not None else None
    free_mail = _company_domain(contact_email, free_mail_domains) is None
    # Case-folded so that "Referral" and "referral" are one value, not two thin ones.
    return {
        "source": source.strip().lower() or UNKNOWN,
        "country": country.strip().upper() or UNKNOWN,
        "size": size_band(employees),
        "email": "free_mail" if free_mail else "corporate",
        "industry": (industry or "").strip().lower() or UNKNOWN,
    }


def size_band(employees: int | None) -> str:
    if employees is None or employees < 1:
        return UNKNOWN
    return next(label for low, label in SIZE_BANDS if employees >= low)


# ---------------------------------------------------------------- training and explaining


def train(examples: list[tuple[dict[str, str], bool]], smoothing: float = 1.0) -> NaiveBayesModel:
    """Count each feature value per class (True: won). Both classes need at least one example."""
    totals: dict[Outcome, int] = {"won": 0, "lost": 0}
    counts: dict[Outcome, dict[str, dict[str, int]]] = {
        "won": {f: {} for f in FEATURES},
        "lost": {f: {} for f in FEATURES},
    }
    for features, won in examples:
        outcome: Outcome = "won" if won else "lost"
        totals[outcome] += 1
        for feature in FEATURES:
            value = features.get(feature, UNKNOWN)
            per_value = counts[outcome][feature]
            per_value[value] = per_value.get(value, 0) + 1
    if totals["won"] == 0 or totals["lost"] == 0:
        raise NotEnoughHistory(totals["won"], totals["lost"], 1)
    # Sorted, so that the same history always gives the same JSON.
    ordered = {o: {f: dict(sorted(v.items())) for f, v in c.items()} for o, c in counts.items()}
    return NaiveBayesModel(
        features=list(FEATURES), class_totals=totals, counts=ordered, smoothing=smoothing
    )


def explain(
    model: NaiveBayesModel,
    features: dict[str, str],
    version: int,
    trained_at: datetime,
    weight: int,
) -> ModelScore:
    """Score a lead's features and show why. The probability is computed from the rounded numbers
    shown, so that sigmoid(prior + sum of the contributions) gives it back exactly (to DECIMALS).

    Features the model was not trained on are ignored; a model feature the lead lacks counts as
    "unknown", as in training.
    """
    prior = round(model.prior_log_odds(), DECIMALS)
    contributions: dict[str, float] = {}
    for feature in model.features:
        value = features.get(feature, UNKNOWN)
        # Shown even when 0 (a value unseen in training), so every fact looked at is visible.
        contributions[f"{feature}={value}"] = round(model.log_odds(feature, value), DECIMALS)
    probability = round(_sigmoid(prior + math.fsum(contributions.values())), DECIMALS)
    return ModelScore(
        version=version,
        trained_at=trained_at,
        won=model.class_totals["won"],
        lost=model.class_totals["lost"],
        prior_log_odds=prior,
        contributions=contributions,
        probability=probability,
        points=model_points(probability, weight),
    )


def model_points(probability: float, weight: int) -> int:
    """round(probability x weight), halves up, in exact decimal arithmetic: the same on every
    machine and never at the mercy of a binary float sitting just under .5."""
    exact = Decimal(repr(probability)) * weight
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _sigmoid(z: float) -> float:
    # Either form, whichever cannot overflow exp().
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


# ---------------------------------------------------------------- the ledger


def train_from_ledger(
    engine: Engine,
    free_mail_domains: Collection[str],
    min_per_class: int = 5,
    now: datetime | None = None,
) -> LeadScoreModelRecord:
    """Train on every closed lead in the ledger and store the model as the next version."""
    trained_at = as_utc(now) if now is not None else datetime.now(UTC)
    with Session(engine) as session:
        leads = session.exec(
            select(Lead)
            .where(col(Lead.status).in_(WON_STATUSES + LOST_STATUSES))
            .order_by(col(Lead.lead_id))
        ).all()
        closed = [(lead, _company_domain(lead.contact_email, free_mail_domains)) for lead in leads]
        known = _firmographics(session, sorted({domain for _, domain in closed if domain}))
    examples = [
        (
            _features(
                source=lead.source,
                country=lead.country,
                employees=lead.employees,
                contact_email=lead.contact_email,
                firmographics=known.get(domain) if domain else None,
                free_mail_domains=free_mail_domains,
            ),
            lead.status in WON_STATUSES,
        )
        for lead, domain in closed
    ]
    won = sum(1 for _, is_won in examples if is_won)
    lost = len(examples) - won
    if won < min_per_class or lost < min_per_class:
        raise NotEnoughHistory(won, lost, min_per_class)
    model_json = train(examples).model_dump_json()
    for _ in range(2):  # another training may take the same version at the same moment
        with Session(engine) as session:
            latest = session.exec(select(func.max(LeadScoreModelRecord.version))).one()
            version = (latest or 0) + 1
            session.add(LeadScoreModelRecord(version=version, trained_at=trained_at, won=won,
                                             lost=lost, model=model_json))  # fmt: skip
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                continue
        return LeadScoreModelRecord(
            version=version, trained_at=trained_at, won=won, lost=lost, model=model_json
        )
    raise ModelVersionConflict(
        "could not store the lead-scoring model: another training took the next version twice; "
        "run `l2c leads train` again"
    )


def latest_model(engine: Engine) -> tuple[LeadScoreModelRecord, NaiveBayesModel] | None:
    """The newest stored model, or None before the first `l2c leads train`."""
    with Session(engine) as session:
        record = session.exec(
            select(LeadScoreModelRecord).order_by(col(LeadScoreModelRecord.version).desc()).limit(1)
        ).first()
        if record is None:
            return None
        session.expunge(record)
    # SQLite hands back naive datetimes; they were stored as UTC.
    record.trained_at = as_utc(record.trained_at)
    return record, NaiveBayesModel.model_validate_json(record.model)


def _firmographics(session: Session, domains: list[str]) -> dict[str, Firmographics]:
    found: dict[str, Firmographics] = {}
    for chunk in _chunks(domains, _IN_CHUNK):
        entries = session.exec(
            select(EnrichmentCacheEntry).where(
                col(EnrichmentCacheEntry.domain).in_(chunk),
                col(EnrichmentCacheEntry.found).is_(True),
            )
        ).all()
        for entry in entries:
            try:
                found[entry.domain] = Firmographics.model_validate_json(entry.firmographics)
            except ValidationError:
                # A cache entry this version cannot read is a missing fact, not a reason to
                # refuse training: the lead still counts with what it carried itself.
                continue
    return found


def _company_domain(contact_email: str, free_mail_domains: Collection[str]) -> str | None:
    # As identity resolution and enrichment see it (www., aliases such as googlemail.com), so the
    # e-mail kind agrees with the deal's account and the cache is looked up by the key it has.
    return company_domain(contact_email, frozenset(d.lower() for d in free_mail_domains))


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------- the report


def train_report(record: LeadScoreModelRecord, model: NaiveBayesModel, top: int = 5) -> str:
    """What `l2c leads train` prints: the version, what it learned from, the most telling values."""
    trained_at = as_utc(record.trained_at).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        (round(model.log_odds(feature, value), 2), feature, value)
        for feature in model.features
        for value in sorted(model.values(feature))
    ]
    # Strongest first; ties by name, so the report is the same on every run.
    winning = sorted((r for r in rows if r[0] > 0), key=lambda r: (-r[0], r[1], r[2]))[:top]
    losing = sorted((r for r in rows if r[0] < 0), key=lambda r: (r[0], r[1], r[2]))[:top]
    lines = [
        f"Lead-scoring model version {record.version}, trained {trained_at}",
        f"on {record.won} won and {record.lost} lost deals "
        f"(prior log-odds {model.prior_log_odds():+.2f}).",
        "Log-odds each value adds to a lead's chance of winning (won/lost deals with it):",
    ]
    for title, chosen in (("Raise it most:", winning), ("Lower it most:", losing)):
        lines.append(title)
        lines.extend(_report_rows(model, chosen) or ["  (none)"])
    return "\n".join(lines)


def _report_rows(model: NaiveBayesModel, rows: Iterable[tuple[float, str, str]]) -> list[str]:
    return [
        f"  {log_odds:+6.2f}  {feature}={value}  "
        f"({model.count('won', feature, value)} won, {model.count('lost', feature, value)} lost)"
        for log_odds, feature, value in rows
    ]
