"""Configuration: process settings from the environment, business rules from files in config/.

Both are validated at start-up; a mistake is reported with the file and the field, and the
worker refuses to start rather than run deals on a rule it misread.
"""

import os
import tomllib
from datetime import UTC, datetime, time
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from models.calendar import add_business_hours
from models.contract_terms import CLAUSE_FIELDS, AutoRenewal, FeesMultiple, Percent, Uncapped
from models.deal import TASK_QUEUE, ActivityTiming, DealPolicy, LeadInput, NurtureStep
from models.validation import explain

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A configuration file or setting that cannot be used, with the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- catalog


class Tier(_Strict):
    up_to: int | None = Field(default=None, gt=0)
    prices: dict[str, Decimal]


class BundleComponent(_Strict):
    sku: str
    quantity: int = Field(ge=1)


class Product(_Strict):
    sku: str = Field(pattern=r"^[A-Z][A-Z0-9_]*$")
    name: str
    # A bundle is sold as one SKU at its own monthly price and expands, on the quote, into its
    # recurring components, each allocated a share of that price by its own list price.
    kind: Literal["recurring", "one_time", "usage", "bundle"]
    unit: str
    prices: dict[str, Decimal] = Field(default_factory=dict)
    tiers: list[Tier] = Field(default_factory=list)
    # Tiers: "graduated" prices each unit in its own tier; "volume" prices every unit at the
    # price of the tier the whole quantity reaches.
    tier_mode: Literal["graduated", "volume"] = "graduated"
    # How many metered units (what usage events count, e.g. API calls) make one priced unit.
    metered_per_unit: int = Field(default=1, ge=1, le=1_000_000_000)
    # Guardrails: a net unit price below the floor is refused (never sent for approval), and so
    # are quantities above the maximum, a quote without a product this one requires, and a
    # customer in a country where it is not sold.
    floor_prices: dict[str, Decimal] = Field(default_factory=dict)
    max_quantity: int | None = Field(default=None, ge=1)
    requires: list[str] = Field(default_factory=list)
    not_sold_in: list[str] = Field(default_factory=list)
    components: list[BundleComponent] = Field(default_factory=list)  # a bundle's

    @model_validator(mode="after")
    def _priced(self) -> "Product":
        if self.kind == "usage":
            if not self.tiers:
                raise ValueError(f"{self.sku}: a usage product needs tiers")
            bounds = [tier.up_to for tier in self.tiers]
            if bounds[-1] is not None or any(b is None for b in bounds[:-1]):
                raise ValueError(f"{self.sku}: only the last tier may (and must) have no up_to")
            limits = [b for b in bounds if b is not None]
            if limits != sorted(set(limits)):
                raise ValueError(f"{self.sku}: tier up_to values must increase")
            currencies = {frozenset(tier.prices) for tier in self.tiers}
            if len(currencies) != 1:
                raise ValueError(f"{self.sku}: every tier must be priced in the same currencies")
        elif not self.prices or self.tiers:
            raise ValueError(f"{self.sku}: a {self.kind} product needs prices and no tiers")
        if (self.kind == "bundle") != bool(self.components):
            raise ValueError(f"{self.sku}: a bundle, and only a bundle, has components")
        for price in [*self.prices.values(), *(p for t in self.tiers for p in t.prices.values()),
                      *self.floor_prices.values()]:  # fmt: skip
            if price < 0 or price != price.quantize(Decimal("0.0001")):
                raise ValueError(f"{self.sku}: prices must be >= 0 with at most 4 decimals")
        unpriced = sorted(set(self.floor_prices) - self.currencies())
        if unpriced:
            raise ValueError(f"{self.sku}: a floor price in {', '.join(unpriced)}, not a price")
        return self

    def currencies(self) -> set[str]:
        return set(self.tiers[0].prices) if self.tiers else set(self.prices)


class TermDiscount(_Strict):
    min_months: int = Field(ge=1)
    percent: Decimal = Field(gt=0, lt=100, decimal_places=2)


class Catalog(_Strict):
    version: str = Field(min_length=1, max_length=40)
    products: list[Product]
    # Term limits for any quote, and the standard discount for committing to a longer term (the
    # highest one the term reaches; it needs no approval).
    min_term_months: int = Field(default=1, ge=1)
    max_term_months: int = Field(default=120, ge=1, le=120)
    term_discounts: list[TermDiscount] = Field(default_factory=list)
    quote_valid_days: int = Field(default=30, ge=1, le=365)  # unsigned by then: it expires

    @model_validator(mode="after")
    def _unique(self) -> "Catalog":
        skus = [p.sku for p in self.products]
        if len(skus) != len(set(skus)):
            raise ValueError("a SKU is listed twice")
        for product in self.products:
            for part in product.components:
                component = self.by_sku.get(part.sku)
                if component is None or component.kind != "recurring":
                    raise ValueError(f"{product.sku}: component {part.sku} is not a recurring "
                                     "product of this price book")  # fmt: skip
                if not product.currencies() <= component.currencies():
                    raise ValueError(f"{product.sku}: component {part.sku} lacks a price in "
                                     "one of the bundle's currencies")  # fmt: skip
                if any(component.prices[c] <= 0 for c in product.currencies()):
                    raise ValueError(f"{product.sku}: component {part.sku} needs a price above "
                                     "0 to take a share of the bundle's price")  # fmt: skip
            unknown = [sku for sku in product.requires if sku not in skus or sku == product.sku]
            if unknown:
                raise ValueError(
                    f"{product.sku} requires {', '.join(unknown)}: not another SKU here"
                )
        if self.min_term_months > self.max_term_months:
            raise ValueError("min_term_months is above max_term_months")
        steps = [t.min_months for t in self.term_discounts]
        if steps != sorted(set(steps)):
            raise ValueError("term_discounts must be listed by increasing min_months")
        return self

    def term_discount(self, term_months: int) -> Decimal:
        """The standard discount (percent) a term of this length earns."""
        earned = [t.percent for t in self.term_discounts if term_months >= t.min_months]
        return earned[-1] if earned else Decimal(0)

    @cached_property
    def by_sku(self) -> dict[str, Product]:
        return {p.sku: p for p in self.products}


# ---------------------------------------------------------------- approvals


class Role(_Strict):
    name: str
    max_discount_percent: Decimal = Field(gt=0, le=100)


class Approver(_Strict):
    name: str
    role: str
    email: str


class ApprovalRule(_Strict):
    """An approval a quote needs besides its discount's: the rule's role (or a higher one) must
    approve when the quote meets any of its conditions."""

    name: str = Field(min_length=1, max_length=60)
    role: str
    min_tcv: dict[str, Decimal] = Field(default_factory=dict)  # per currency
    min_term_months: int | None = Field(default=None, ge=1)
    billing_periods: list[Literal["upfront", "annual", "monthly"]] = Field(default_factory=list)
    max_payment_terms_days: int | None = Field(default=None, ge=0)  # longer terms need the role


class BusinessHours(_Strict):
    """A working day (`day_start`-`day_end` on `workdays`) that SLAs count in."""

    day_start: time = time(9)
    day_end: time = time(17)
    workdays: list[int] = Field(default=[1, 2, 3, 4, 5], min_length=1)

    def add(self, start: datetime, hours: float) -> datetime:
        """`hours` of working time after `start`, in `start`'s time zone."""
        return add_business_hours(start, hours, self.day_start, self.day_end,
                                  frozenset(self.workdays))  # fmt: skip

    @model_validator(mode="after")
    def _a_working_day(self) -> "BusinessHours":
        if self.day_start >= self.day_end:
            raise ValueError("day_start must come before day_end")
        if not set(self.workdays) <= set(range(1, 8)):
            raise ValueError("workdays are ISO weekdays, 1 (Monday) to 7 (Sunday)")
        return self


class Escalation(BusinessHours):
    """An approval not given within its SLA (business hours, UTC) moves to the next role up,
    whose approvers are reminded; at the top role they are reminded again each SLA."""

    sla_business_hours: float = Field(default=24, gt=0, le=1000)

    def due(self, start: datetime, hours: float | None = None) -> datetime:
        """When an approval asked for at `start` is escalated; with `hours`, when that many
        business hours of this calendar have passed (legal's review SLA counts on it too)."""
        return self.add(start, self.sla_business_hours if hours is None else hours)


class ApprovalMatrix(_Strict):
    auto_approve_max_percent: Decimal = Field(ge=0, le=100)
    roles: list[Role] = Field(min_length=1)
    approvers: list[Approver]
    rules: list[ApprovalRule] = Field(default_factory=list)
    escalation: Escalation = Escalation()

    @model_validator(mode="after")
    def _consistent(self) -> "ApprovalMatrix":
        names = [r.name for r in self.roles]
        if len(names) != len(set(names)):
            raise ValueError("a role is listed twice")
        limits = [r.max_discount_percent for r in self.roles]
        if limits != sorted(limits) or len(set(limits)) != len(limits):
            raise ValueError("roles must be listed from the lowest discount limit to the highest")
        if limits[0] <= self.auto_approve_max_percent:
            raise ValueError("every role's limit must be above auto_approve_max_percent")
        for approver in self.approvers:
            if approver.role not in names:
                raise ValueError(f"approver {approver.name} has unknown role {approver.role!r}")
        people = [a.name for a in self.approvers]
        if len(people) != len(set(people)):
            raise ValueError("an approver is listed twice")
        for rule in self.rules:
            if rule.role not in names:
                raise ValueError(f"approval rule {rule.name!r} has unknown role {rule.role!r}")
        return self

    def role_limit(self, role: str) -> Decimal:
        return next(r.max_discount_percent for r in self.roles if r.name == role)

    def rank(self, role: str) -> int:
        """A role's place in the ladder, lowest first: a higher role may do what a lower may."""
        return next(n for n, r in enumerate(self.roles) if r.name == role)

    def may_act_as(self, approver: Approver, role: str) -> bool:
        return self.rank(approver.role) >= self.rank(role)

    def eligible(self, role: str, excluded: set[str]) -> list[str]:
        """Who may approve as `role` (or above), but nobody in `excluded` (the submitter)."""
        return [a.name for a in self.approvers
                if self.may_act_as(a, role) and a.name not in excluded]  # fmt: skip


# ---------------------------------------------------------------- policy


class EmployeeBand(_Strict):
    min: int = Field(ge=1)
    points: int


class ScoringConfig(_Strict):
    qualify_at: int = Field(ge=0, le=1000)
    employee_bands: list[EmployeeBand]
    source_points: dict[str, int]
    other_source_points: int
    target_countries: list[str]
    target_country_points: int
    corporate_email_points: int
    free_email_domains: list[str]
    # The trained model (`l2c leads train`) adds up to this many points: its probability of a win
    # times this. 0 = rule points only.
    model_weight: int = Field(default=40, ge=0, le=1000)


class RoutingRule(_Strict):
    owner: str
    countries: list[str] = Field(default_factory=list)
    min_employees: int = 0


class EngagementConfig(_Strict):
    points: dict[str, int]


def _check_email_template(name: str) -> None:
    """An e-mail template a deal will send: in templates/, valid jinja2, a subject line first."""
    path = PROJECT_ROOT / "templates" / name
    if path.parent != PROJECT_ROOT / "templates" or not path.is_file():
        raise ValueError(f"no e-mail template {name!r} in {PROJECT_ROOT / 'templates'}")
    text = path.read_text(encoding="utf-8")
    if not text.startswith("Subject: "):
        raise ValueError(f"e-mail template {name}: the first line must be 'Subject: ...'")
    try:
        SandboxedEnvironment().parse(text)
    except TemplateSyntaxError as err:
        raise ValueError(f"e-mail template {name}, line {err.lineno}: {err.message}") from None


class NurtureConfig(_Strict):
    # Deals started before the cadence existed touched every `cadence_days` until giving up.
    cadence_days: int = Field(ge=1)
    give_up_after_days: int = Field(ge=1)
    touches: list[NurtureStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _cadence_in_order(self) -> "NurtureConfig":
        days = [touch.day for touch in self.touches]
        if days != sorted(set(days)):
            raise ValueError(f"nurture touches must be on distinct days in order, got {days}")
        if days[-1] >= self.give_up_after_days:
            raise ValueError(f"the last nurture touch (day {days[-1]}) must come before "
                             f"give_up_after_days ({self.give_up_after_days})")  # fmt: skip
        for touch in self.touches:
            _check_email_template(touch.template)
        return self


class Team(_Strict):
    """Sales reps who share a territory (countries) and segment (company size), round-robin."""

    name: str = Field(min_length=1, max_length=80)
    members: list[str] = Field(min_length=1)
    # Takes a lead every member let pass its SLA, with no SLA of its own. None: the last member
    # to miss it keeps it, with no SLA.
    manager: str | None = None
    countries: list[str] = Field(default_factory=list)  # empty: any country
    min_employees: int = Field(default=0, ge=0)
    max_employees: int | None = Field(default=None, ge=1)  # None: no upper bound
    timezone: str = "UTC"  # the team's business hours are counted here

    @model_validator(mode="after")
    def _valid_team(self) -> "Team":
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"team {self.name!r} names a member twice")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"team {self.name!r}: unknown time zone {self.timezone!r} "
                             "(an IANA name such as Europe/London)") from None  # fmt: skip
        return self

    def takes(self, country: str, employees: int | None) -> bool:
        """Whether a lead of this country and company size (unknown counts as 0) is this team's."""
        size = employees or 0
        return (
            (not self.countries or country in self.countries)
            and size >= self.min_employees
            and (self.max_employees is None or size <= self.max_employees)
        )


class RoutingConfig(_Strict):
    # Deals started before teams existed were routed by these first-match rules.
    default_owner: str
    rules: list[RoutingRule]
    teams: list[Team] = Field(min_length=1)
    # An owner who has not accepted a sales-ready lead (`accept_lead`) within this many business
    # hours of the team loses it to the next member, and the miss is recorded.
    sla_business_hours: float = Field(default=2, gt=0, le=1000)
    business_hours: BusinessHours = BusinessHours()

    @model_validator(mode="after")
    def _nobody_unrouted(self) -> "RoutingConfig":
        names = [team.name for team in self.teams]
        if len(set(names)) != len(names):
            raise ValueError("team names must be unique")
        last = self.teams[-1]
        if last.countries or last.min_employees or last.max_employees is not None:
            raise ValueError(f"the last team ({last.name!r}) must take any lead (no countries, "
                             "no employee limits), so that no lead is routed to nobody")  # fmt: skip
        return self

    def team_for(self, country: str, employees: int | None) -> Team:
        """The first team whose territory and segment take the lead (the last takes any)."""
        return next(team for team in self.teams if team.takes(country, employees))

    def accept_by(self, team: Team, start: datetime) -> datetime:
        """When a lead routed at `start` must be accepted: SLA business hours in the team's zone."""
        local = start.astimezone(ZoneInfo(team.timezone))
        return self.business_hours.add(local, self.sla_business_hours).astimezone(UTC)


class BillingConfig(_Strict):
    payment_terms_days: int = Field(ge=0, le=365)
    continue_as_new_every_months: int = Field(default=12, ge=1, le=120)
    # Each invoice is a draft this long (numbered, visible, not yet payable) before it is final.
    invoice_draft_hours: int = Field(default=0, ge=0, le=168)
    # "2/10 net 30": this percent off an invoice paid in full within this many days of its date.
    early_payment_discount_percent: Decimal = Field(
        default=Decimal(0), ge=0, le=10, decimal_places=2
    )
    early_payment_discount_days: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _discount_before_due(self) -> "BillingConfig":
        if self.early_payment_discount_percent and (
            self.early_payment_discount_days >= self.payment_terms_days
        ):
            raise ValueError(
                f"early_payment_discount_days ({self.early_payment_discount_days}) must be "
                f"shorter than payment_terms_days ({self.payment_terms_days})"
            )
        return self


class DunningConfig(_Strict):
    reminder_days_after_due: list[int] = Field(min_length=1)
    write_off_days_after_due: int = Field(ge=1)
    card_retry_days_after_due: list[int] = Field(default=[0, 3, 7], min_length=1)
    # The reminder level (1-based) at which the customer's entitlements are suspended until the
    # overdue invoices are paid; 0 never suspends.
    suspend_at_level: int = Field(default=0, ge=0)
    # At this reminder level an overdue invoice is charged a late fee of this percent of what it
    # still owes, on an invoice of its own; 0 percent charges none.
    late_fee_percent: Decimal = Field(default=Decimal(0), ge=0, le=25, decimal_places=2)
    late_fee_at_level: int = Field(default=2, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "DunningConfig":
        days = self.reminder_days_after_due
        if days != sorted(set(days)) or days[0] < 0:
            raise ValueError("reminder_days_after_due must be increasing and not negative")
        if self.write_off_days_after_due <= days[-1]:
            raise ValueError("write_off_days_after_due must come after the last reminder")
        if self.suspend_at_level > len(days):
            raise ValueError(
                f"suspend_at_level {self.suspend_at_level} is beyond the {len(days)} reminder levels"
            )
        if self.late_fee_percent and self.late_fee_at_level > len(days):
            raise ValueError(
                f"late_fee_at_level {self.late_fee_at_level} is beyond the {len(days)} reminder levels"
            )
        card = self.card_retry_days_after_due
        if card != sorted(set(card)) or card[0] < 0 or card[-1] >= self.write_off_days_after_due:
            raise ValueError(
                "card_retry_days_after_due must be increasing, not negative, and before the write-off"
            )
        return self


class ClockConfig(_Strict):
    # 0 means calendar months. Demos and crash tests compress a month to this many seconds.
    month_seconds: int = Field(default=0, ge=0)


class PolicyConfig(_Strict):
    scoring: ScoringConfig
    engagement: EngagementConfig
    nurture: NurtureConfig
    routing: RoutingConfig
    billing: BillingConfig
    dunning: DunningConfig
    activities: ActivityTiming = ActivityTiming()
    clock: ClockConfig = ClockConfig()

    @model_validator(mode="after")
    def _drafts_within_a_month(self) -> "PolicyConfig":
        month = self.clock.month_seconds
        if month and self.billing.invoice_draft_hours * 3600 >= month:
            raise ValueError(
                f"billing.invoice_draft_hours ({self.billing.invoice_draft_hours}) must be shorter "
                f"than a month (clock.month_seconds = {month})"
            )
        return self

    def deal_policy(self) -> DealPolicy:
        return DealPolicy(
            qualify_at=self.scoring.qualify_at,
            engagement_points=dict(self.engagement.points),
            nurture_cadence_days=self.nurture.cadence_days,
            nurture_give_up_after_days=self.nurture.give_up_after_days,
            nurture_touches=list(self.nurture.touches),
            payment_terms_days=self.billing.payment_terms_days,
            continue_as_new_every_months=self.billing.continue_as_new_every_months,
            invoice_draft_hours=self.billing.invoice_draft_hours,
            early_payment_discount_percent=self.billing.early_payment_discount_percent,
            early_payment_discount_days=self.billing.early_payment_discount_days,
            reminder_days_after_due=list(self.dunning.reminder_days_after_due),
            write_off_days_after_due=self.dunning.write_off_days_after_due,
            card_retry_days_after_due=list(self.dunning.card_retry_days_after_due),
            suspend_at_level=self.dunning.suspend_at_level,
            late_fee_percent=self.dunning.late_fee_percent,
            late_fee_at_level=self.dunning.late_fee_at_level,
            activities=self.activities,
            month_seconds=self.clock.month_seconds,
        )


# ---------------------------------------------------------------- tax


class TaxTable(_Strict):
    rates: dict[str, Decimal]  # country (ISO alpha-2) -> percent
    exempt_accounts: list[str] = Field(default_factory=list)  # e-mail domains

    @model_validator(mode="after")
    def _valid(self) -> "TaxTable":
        for country, rate in self.rates.items():
            if len(country) != 2 or not country.isalpha() or not country.isupper():
                raise ValueError(f"{country!r} is not an ISO 3166 alpha-2 country code like GB")
            if not (0 <= rate <= 100) or rate != rate.quantize(Decimal("0.01")):
                raise ValueError(
                    f"{country}: a rate is a percent from 0 to 100, at most 2 decimals"
                )
        return self

    def rate_for(self, lead: LeadInput) -> Decimal:
        """The percent taxed on this customer's invoice lines."""
        domain = lead.contact_email.rsplit("@", 1)[-1].lower()
        if getattr(lead, "tax_exempt", False) is True or domain in self.exempt_accounts:
            return Decimal(0)
        return self.rates.get(lead.country, Decimal(0))


class SspTable(_Strict):
    """Standalone selling prices: SKU -> currency -> price (see config/ssp.toml)."""

    prices: dict[str, dict[str, Decimal]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _positive(self) -> "SspTable":
        for sku, by_currency in self.prices.items():
            for currency, price in by_currency.items():
                if len(currency) != 3 or not currency.isascii() or not currency.isupper():
                    raise ValueError(f"{sku}: {currency!r} is not a currency code like USD")
                if not Decimal(0) < price < Decimal(10) ** 9 or price.as_tuple().exponent < -4:  # type: ignore[operator]
                    raise ValueError(f"{sku} {currency}: a price above 0 and below 1e9, "
                                     "with at most 4 decimals")  # fmt: skip
        return self

    def price(self, sku: str, currency: str) -> Decimal | None:
        return self.prices.get(sku, {}).get(currency)


# ---------------------------------------------------------------- contract clauses

# Clause texts are written by legal, not by programmers: sandboxed, and a name other than
# `value` is an error rather than a blank in a contract. Plain text: the contract template
# escapes it into HTML.
_CLAUSE_TEXT = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class _Clause(_Strict):
    """A clause of config/clauses.toml: its heading, its text (a jinja2 snippet rendering
    {{ value }}) and whether a redline may strike it out. Each kind adds its type, standard
    value, limits and the thresholds of its risk rule."""

    title: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1, max_length=4000)
    removable: bool = False

    @field_validator("text")
    @classmethod
    def _compiles(cls, text: str) -> str:
        try:
            parsed = _CLAUSE_TEXT.parse(text)
        except TemplateSyntaxError as err:
            raise ValueError(f"the jinja2 snippet does not compile: {err.message} "
                             f"(line {err.lineno})") from None  # fmt: skip
        unknown = sorted(meta.find_undeclared_variables(parsed) - {"value"})
        if unknown:
            raise ValueError(f"the snippet uses {', '.join(unknown)}: only value is defined")
        return text

    @cached_property
    def template(self) -> Template:
        return _CLAUSE_TEXT.from_string(self.text)


class PaymentTermsClause(_Clause):
    type: Literal["days"]
    # Must equal policy.toml billing.payment_terms_days: one standard for invoices and contracts.
    standard: StrictInt
    min_days: int = Field(default=0, ge=0)
    max_days: int = Field(default=120, ge=0, le=365)
    review_above_days: int = Field(ge=0)


class LiabilityCapClause(_Clause):
    type: Literal["fees_multiple"]
    standard: Uncapped | FeesMultiple
    max_multiple: FeesMultiple = Decimal(10)
    review_above_multiple: FeesMultiple
    review_uncapped: bool = True  # uncapped, or the clause struck out


class AutoRenewalClause(_Clause):
    type: Literal["auto_renewal"]
    standard: AutoRenewal
    max_notice_days: int = Field(default=180, ge=0, le=365)
    max_uplift_percent: Percent = Decimal(20)
    review_if_off: bool = True  # disabled, or the clause struck out


class TerminationClause(_Clause):
    type: Literal["yes_no"]
    standard: StrictBool
    review_if_granted: bool = True


class SlaCreditsClause(_Clause):
    type: Literal["percent"]
    standard: Percent
    max_percent: Percent = Decimal(100)
    review_above_percent: Percent
    review_if_removed: bool = False


class GoverningLawClause(_Clause):
    type: Literal["choice"]
    standard: str
    choices: list[str] = Field(min_length=1)
    accepted_without_review: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _known(self) -> "GoverningLawClause":
        if len(set(self.choices)) != len(self.choices):
            raise ValueError("a choice is listed twice")
        unknown = [law for law in self.accepted_without_review if law not in self.choices]
        if unknown:
            raise ValueError(f"accepted_without_review names {', '.join(unknown)}: not a choice")
        return self


# A ContractTerms field that cannot be None: its clause is in every contract.
_NEVER_REMOVED = ("payment_terms", "termination_for_convenience", "governing_law")


class Clauses(_Strict):
    payment_terms: PaymentTermsClause
    liability_cap: LiabilityCapClause
    auto_renewal: AutoRenewalClause
    termination_for_convenience: TerminationClause
    sla_credits: SlaCreditsClause
    governing_law: GoverningLawClause

    @model_validator(mode="before")
    @classmethod
    def _all_six(cls, data: Any) -> Any:
        if isinstance(data, dict):
            missing = [c for c in CLAUSE_FIELDS if c not in data]
            unknown = [str(c) for c in data if c not in CLAUSE_FIELDS]
            if missing or unknown:
                raise ValueError(
                    (f"clause {', '.join(missing)} missing" if missing else
                     f"unknown clause {', '.join(unknown)}")
                    + f"; the library has exactly these: {', '.join(CLAUSE_FIELDS)}"
                )  # fmt: skip
        return data

    @model_validator(mode="after")
    def _removable(self) -> "Clauses":
        for clause in _NEVER_REMOVED:
            if getattr(self, clause).removable:
                raise ValueError(f"{clause}: removable must be false, every contract states it")
        return self


class LegalReviewer(_Strict):
    name: str = Field(min_length=1, max_length=100)
    email: str = Field(min_length=3, max_length=254)


class LegalReview(_Strict):
    """Who reviews a risky redline, and within how many business hours (on the working
    calendar of approvers.toml [escalation])."""

    sla_business_hours: float = Field(gt=0, le=1000)
    reviewers: list[LegalReviewer] = Field(default_factory=list)

    @model_validator(mode="after")
    def _somebody(self) -> "LegalReview":
        if not self.reviewers:
            raise ValueError("no legal reviewers: a redline that needs review could never be "
                             "decided")  # fmt: skip
        names = [r.name for r in self.reviewers]
        if len(names) != len(set(names)):
            raise ValueError("a legal reviewer is listed twice")
        return self


class ClauseLibrary(_Strict):
    """config/clauses.toml: the contract's clauses and legal's review of redlines."""

    legal: LegalReview
    clauses: Clauses

    def clause(self, clause_id: str) -> _Clause:
        """The clause `clause_id` (an id of CLAUSE_FIELDS)."""
        clause: _Clause = getattr(self.clauses, clause_id)
        return clause

    def reviewers(self, excluded: set[str]) -> list[str]:
        """Who may decide a redline in legal, but nobody in `excluded` (its proposer)."""
        return [r.name for r in self.legal.reviewers if r.name not in excluded]


class BusinessRules(BaseModel):
    catalog: Catalog
    approvals: ApprovalMatrix
    policy: PolicyConfig
    tax: TaxTable = TaxTable(rates={})
    ssp: SspTable = SspTable()
    clauses: ClauseLibrary


def _load_toml(path: Path, model: type[BaseModel]) -> Any:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{path}: {explain(err)}") from None


def load_business_rules(config_dir: Path | None = None) -> BusinessRules:
    folder = config_dir or Settings.from_env().config_dir
    catalog: Catalog = _load_toml(folder / "catalog.toml", Catalog)
    policy: PolicyConfig = _load_toml(folder / "policy.toml", PolicyConfig)
    return BusinessRules(
        catalog=catalog,
        approvals=_load_toml(folder / "approvers.toml", ApprovalMatrix),
        policy=policy,
        tax=_load_toml(folder / "tax.toml", TaxTable),
        ssp=_load_ssp(folder / "ssp.toml", catalog),
        clauses=_load_clauses(folder / "clauses.toml", policy),
    )


def _load_ssp(path: Path, catalog: Catalog) -> SspTable:
    """The SSP table, complete for the price book: every product but a bundle, in every currency
    it is priced in. No file: no table (quotes then carry no performance obligations). SKUs the
    price book no longer has are kept, for deals still pricing on an older version."""
    if not path.exists():
        return SspTable()
    table: SspTable = _load_toml(path, SspTable)
    for product in catalog.products:
        if product.kind == "bundle":
            if product.sku in table.prices:
                raise ConfigError(f"{path}: {product.sku} is a bundle: its components have "
                                  "standalone selling prices, it has none of its own")  # fmt: skip
            continue
        missing = sorted(c for c in product.currencies() if table.price(product.sku, c) is None)
        if missing:
            raise ConfigError(f"{path}: {product.sku} has no standalone selling price in "
                              f"{', '.join(missing)}")  # fmt: skip
    return table


def _load_clauses(path: Path, policy: PolicyConfig) -> ClauseLibrary:
    """The clause library, each standard value within its clause's limits, rendering, and not
    flagged by its own risk rules (a contract could not start without legal review)."""
    from l2c.clauses import InvalidRedline, check_standard  # it reads the library's types

    library: ClauseLibrary = _load_toml(path, ClauseLibrary)
    try:
        check_standard(library)
    except InvalidRedline as err:
        raise ConfigError(f"{path}: {err}") from None
    payment = library.clauses.payment_terms.standard
    if payment != policy.billing.payment_terms_days:
        raise ConfigError(f"{path}: payment_terms standard {payment} is not policy.toml's "
                          f"billing.payment_terms_days ({policy.billing.payment_terms_days})")  # fmt: skip
    return library


# ---------------------------------------------------------------- process settings


class Settings(BaseModel):
    temporal_address: str = "localhost:7233"
    namespace: str = "default"
    task_queue: str = TASK_QUEUE
    data_dir: Path = PROJECT_ROOT / "data"
    config_dir: Path = PROJECT_ROOT / "config"
    database_url: str = ""
    smtp_host: str | None = None
    smtp_port: int = 25
    mail_from: str = "billing@seller.example"
    # How many open deals a worker keeps in memory; beyond it, a deal is rebuilt from its history
    # when it next has work (correct, only slower).
    max_cached_workflows: int = Field(default=2000, ge=0)
    # Fault injection for tests and drills (l2c/faults.py): activity name -> fault, as JSON.
    faults_json: str | None = None
    # The payment gateway (Stripe-compatible) that charges cards on file; `l2c dev` runs a sandbox.
    gateway_url: str | None = None
    gateway_api_key: str = "sk_test_l2c"
    # The firmographics service leads are enriched from (l2c/enrichment.py); `l2c dev` runs a
    # sandbox. None: leads are not enriched, and their deals record that.
    enrichment_url: str | None = None
    enrichment_api_key: str = "enrich_test_l2c"
    # API keys upstream systems send to the intake endpoint (`POST /leads`), comma-separated.
    intake_api_keys: list[str] = []
    # The AES-GCM keyring payloads are encrypted with (l2c/codec.py); None: stored in plain JSON.
    codec_keyring: Path | None = None

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ
        data_dir = Path(env.get("L2C_DATA_DIR", PROJECT_ROOT / "data"))
        try:
            settings = cls(
                temporal_address=env.get("TEMPORAL_ADDRESS", "localhost:7233"),
                namespace=env.get("TEMPORAL_NAMESPACE", "default"),
                data_dir=data_dir,
                config_dir=Path(env.get("L2C_CONFIG_DIR", PROJECT_ROOT / "config")),
                database_url=env.get("L2C_DATABASE_URL") or f"sqlite:///{data_dir / 'ledger.db'}",
                smtp_host=env.get("L2C_SMTP_HOST") or None,
                smtp_port=int(env.get("L2C_SMTP_PORT", "25")),
                mail_from=env.get("L2C_MAIL_FROM", "billing@seller.example"),
                max_cached_workflows=int(env.get("L2C_MAX_CACHED_WORKFLOWS", "2000")),
                faults_json=env.get("L2C_FAULTS") or None,
                gateway_url=env.get("L2C_GATEWAY_URL") or None,
                gateway_api_key=env.get("L2C_GATEWAY_API_KEY", "sk_test_l2c"),
                enrichment_url=env.get("L2C_ENRICHMENT_URL") or None,
                enrichment_api_key=env.get("L2C_ENRICHMENT_API_KEY", "enrich_test_l2c"),
                intake_api_keys=[
                    key.strip()
                    for key in env.get("L2C_INTAKE_API_KEYS", "").split(",")
                    if key.strip()
                ],
                codec_keyring=Path(env["L2C_CODEC_KEYRING"])
                if env.get("L2C_CODEC_KEYRING")
                else None,
            )
        except (ValueError, ValidationError) as err:
            raise ConfigError(f"environment: {err}") from None
        if settings.faults_json:
            from l2c.faults import FaultPlan  # checked now, so a typo stops the worker at start

            FaultPlan.parse(settings.faults_json)
        if settings.codec_keyring is not None:
            from l2c.codec import Keyring  # checked now: a bad keyring stops every command at start

            Keyring.load(settings.codec_keyring)
        return settings
