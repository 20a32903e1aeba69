"""Revenue recognition postings: deferred revenue becomes revenue as the service is delivered."""

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio import activity

from l2c.journal import (
    DEFERRED_REVENUE,
    REVENUE_SERVICES,
    REVENUE_SUBSCRIPTION,
    REVENUE_USAGE,
    post_entry,
)
from models.documents import RevenueRecognition
from models.money import ZERO

_REVENUE_ACCOUNT = {
    "subscription": REVENUE_SUBSCRIPTION,
    "services": REVENUE_SERVICES,
    "usage": REVENUE_USAGE,
}


class RevenueActivities:
    def __init__(self, engine: Engine):
        self._engine = engine

    @activity.defn
    def recognize_revenue(self, recognition: RevenueRecognition) -> None:
        """Dr deferred revenue, Cr the stream's revenue; a negative amount (a contract
        modification's catch-up) the other way round."""
        amount, revenue = recognition.amount, _REVENUE_ACCOUNT[recognition.stream]
        lines = [(DEFERRED_REVENUE, amount, ZERO), (revenue, ZERO, amount)]
        if amount < 0:
            lines = [(revenue, -amount, ZERO), (DEFERRED_REVENUE, ZERO, -amount)]
        with Session(self._engine) as session:
            post_entry(
                session,
                entry_key=f"{recognition.deal_id}:recognize:{recognition.key}",
                deal_id=recognition.deal_id,
                currency=recognition.currency,
                memo=recognition.memo,
                posted_at=recognition.recognized_at,
                lines=lines,
            )
            session.commit()
