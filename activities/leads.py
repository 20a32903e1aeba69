"""Lead activities: capture into the ledger, score and route, nurture e-mails, closing the lead."""

from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio import activity

from l2c.config import BusinessRules
from l2c.documents import render_email
from l2c.mail import Mailer
from l2c.scoring import assess_lead, email_domain
from models.deal import DealPolicy, LeadInput, workflow_id_for
from models.documents import DealClosing, LeadAssessment, NurtureTouch
from models.ledger import Account, Lead


class LeadActivities:
    def __init__(self, engine: Engine, rules: BusinessRules, mailer: Mailer):
        self._engine = engine
        self._rules = rules
        self._mailer = mailer

    @activity.defn
    def load_deal_policy(self) -> DealPolicy:
        """The policy a new deal runs under, recorded in its history for replay and audit."""
        return self._rules.policy.deal_policy()

    @activity.defn
    def capture_lead(self, lead: LeadInput) -> None:
        domain = email_domain(lead.contact_email)
        # A free-mail address says nothing about the company, so such leads are keyed by name.
        if domain in self._rules.policy.scoring.free_email_domains:
            account_key = f"name:{lead.company.strip().lower()}"
        else:
            account_key = domain
        with Session(self._engine) as session:
            if session.get(Account, account_key) is None:
                session.add(
                    Account(account_key=account_key, name=lead.company, country=lead.country)
                )
            if session.get(Lead, lead.lead_id) is None:
                session.add(
                    Lead(
                        lead_id=lead.lead_id,
                        deal_id=workflow_id_for(lead.lead_id),
                        account_key=account_key,
                        company=lead.company,
                        contact_name=lead.contact_name,
                        contact_email=lead.contact_email,
                        source=lead.source,
                        country=lead.country,
                        employees=lead.employees,
                        currency=lead.currency,
                        captured_at=datetime.now(UTC),
                    )
                )
            session.commit()

    @activity.defn
    def assess_lead(self, lead: LeadInput) -> LeadAssessment:
        assessment = assess_lead(self._rules.policy, lead)
        with Session(self._engine) as session:
            row = session.get(Lead, lead.lead_id)
            if row is not None:
                row.score = assessment.score
                row.owner = assessment.owner
                session.add(row)
                session.commit()
        return assessment

    @activity.defn
    def send_nurture_touch(self, touch: NurtureTouch) -> bool:
        subject, body = render_email(
            "nurture_touch.txt", lead=touch.lead, touch_number=touch.touch_number
        )
        return self._mailer.send_once(
            key=f"{touch.deal_id}:nurture:{touch.touch_number}",
            deal_id=touch.deal_id,
            recipient=touch.lead.contact_email,
            subject=subject,
            body=body,
        )

    @activity.defn
    def close_deal(self, closing: DealClosing) -> None:
        with Session(self._engine) as session:
            row = session.get(Lead, closing.lead_id)
            if row is not None:
                row.status = closing.stage
                row.score = closing.score
                row.close_reason = closing.reason
                row.closed_at = closing.closed_at
                session.add(row)
                session.commit()
