"""The deal's input, its stages and the policy snapshot it runs under."""

import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.calendar import months_after
from models.money import CurrencyCode

TASK_QUEUE = "lead-to-cash"
WORKFLOW_TYPE = "DealWorkflow"

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


def workflow_id_for(lead_id: str) -> str:
    """One deal per lead: the workflow id is derived from the lead id, never random."""
    return f"deal-{lead_id}"


def normalize_email(value: str) -> str:
    value = value.strip()
    if not _EMAIL.match(value):
        raise ValueError("is not a valid e-mail address")
    local, domain = value.rsplit("@", 1)
    return f"{local}@{domain.lower()}"


class Stage(StrEnum):
    NEW = "new"
    NURTURING = "nurturing"
    QUALIFIED = "qualified"
    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_SIGNATURE = "awaiting_signature"
    FULFILLING = "fulfilling"
    ACTIVE = "active"
    WON = "won"
    LOST = "lost"
    DISQUALIFIED = "disqualified"
    WRITTEN_OFF = "written_off"
    # The lead joined the open deal of the same person or company (`merged_into` in the state).
    MERGED = "merged"

    @property
    def is_terminal(self) -> bool:
        return self in (Stage.WON, Stage.LOST, Stage.DISQUALIFIED, Stage.WRITTEN_OFF, Stage.MERGED)


class LeadInput(BaseModel):
    """What an upstream system sends to start a deal. Extra fields are kept, not refused."""

    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)

    lead_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    company: str = Field(min_length=1, max_length=200)
    contact_name: str = Field(min_length=1, max_length=200)
    contact_email: str = Field(min_length=3, max_length=254)
    source: str = Field(default="unknown", min_length=1, max_length=40)
    country: str = Field(min_length=2, max_length=2)
    employees: int | None = Field(default=None, ge=1, le=10_000_000)
    currency: CurrencyCode = "USD"
    tax_exempt: bool = False  # e.g. a reseller: its invoices carry no tax (see config/tax.toml)

    @field_validator("contact_email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        return normalize_email(value)

    @field_validator("country", "currency", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("country")
    @classmethod
    def _alpha2(cls, value: str) -> str:
        if not value.isalpha():
            raise ValueError("must be an ISO 3166 alpha-2 country code such as US")
        return value

    @field_validator("source", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


class ActivityTiming(BaseModel):
    """How long an activity attempt may take, and how failed attempts back off (they never stop)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A stuck attempt (a hung database or mail server) is abandoned and retried after this long.
    timeout_seconds: int = Field(default=60, ge=1, le=3600)
    retry_initial_seconds: float = Field(default=1.0, ge=0.01, le=3600)
    retry_maximum_seconds: float = Field(default=120.0, ge=0.01, le=86400)

    @model_validator(mode="after")
    def _ordered(self) -> "ActivityTiming":
        if self.retry_maximum_seconds < self.retry_initial_seconds:
            raise ValueError("retry_maximum_seconds must be at least retry_initial_seconds")
        return self


class NurtureStep(BaseModel):
    """A touch of the nurture cadence: an e-mail this many days after nurture began."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    day: int = Field(ge=0)
    template: str = Field(min_length=1)  # in templates/, its first line "Subject: ..."


class DealPolicy(BaseModel):
    """The timing and scoring rules a deal runs under, snapshotted from configuration at its start."""

    qualify_at: int
    engagement_points: dict[str, int]
    nurture_cadence_days: int
    nurture_give_up_after_days: int
    payment_terms_days: int
    reminder_days_after_due: list[int]
    write_off_days_after_due: int
    # Defaults keep deals recorded before these settings existed replaying as they ran.
    activities: ActivityTiming = ActivityTiming()
    month_seconds: int = 0
    card_retry_days_after_due: list[int] = [0, 3, 7]
    continue_as_new_every_months: int = 12
    suspend_at_level: int = 0
    invoice_draft_hours: int = 0
    late_fee_percent: Decimal = Decimal(0)  # of the overdue balance; 0 = no late fees
    early_payment_discount_percent: Decimal = Decimal(0)  # 0 = no early-payment discount
    early_payment_discount_days: int = 0
    late_fee_at_level: int = 0
    # The nurture cadence (deals from before it touched every `nurture_cadence_days`).
    nurture_touches: list[NurtureStep] = []

    def months_after(self, start: datetime, months: int) -> datetime:
        """A month boundary of this deal: calendar months, or compressed ones in a demo."""
        return months_after(start, months, self.month_seconds)

    def early_payment_until(self, issued_at: datetime) -> date | None:
        """The last day (UTC) on which an invoice made final at `issued_at` may be paid with the
        early-payment discount; None when the policy offers none."""
        if self.early_payment_discount_percent <= 0:
            return None
        return (issued_at + timedelta(days=self.early_payment_discount_days)).date()

    def write_off_at(self, due_at: datetime) -> datetime:
        """When an invoice due at `due_at` and still unpaid is written off."""
        return due_at + timedelta(days=self.write_off_days_after_due)
