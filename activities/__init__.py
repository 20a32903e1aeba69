"""Every side effect of a deal: ledger writes, documents, e-mail. Each activity is idempotent:
its writes are keyed by the deal and the step, never by the attempt."""

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from activities.billing import BillingActivities
from activities.fulfilment import FulfilmentActivities
from activities.leads import LeadActivities
from activities.payments import PaymentActivities
from activities.quotes import QuoteActivities
from activities.revenue import RevenueActivities
from l2c.config import BusinessRules
from l2c.enrichment import EnrichmentClient
from l2c.gateway import PaymentGateway
from l2c.mail import Mailer


def build_activities(
    engine: Engine,
    rules: BusinessRules,
    mailer: Mailer,
    gateway: PaymentGateway | None = None,
    enrichment: EnrichmentClient | None = None,
) -> list[Callable[..., Any]]:
    leads = LeadActivities(engine, rules, mailer, enrichment)
    quotes = QuoteActivities(engine, rules, mailer)
    fulfilment = FulfilmentActivities(engine)
    billing = BillingActivities(engine, mailer, rules.tax)
    revenue = RevenueActivities(engine)
    return [
        leads.load_deal_policy,
        leads.capture_lead,
        leads.resolve_identity,
        leads.enrich_lead,
        leads.assess_lead,
        leads.score_lead,
        leads.route_lead,
        leads.start_lead_sla,
        leads.release_account,
        leads.send_nurture_touch,
        leads.close_deal,
        quotes.price_quote,
        quotes.escalate_approval,
        quotes.render_contract,
        quotes.review_redline,
        quotes.remind_legal,
        quotes.renew_quote,
        quotes.is_signed_contract,
        quotes.record_signature,
        fulfilment.provision_order,
        fulfilment.renew_entitlements,
        fulfilment.set_entitlements_active,
        fulfilment.change_quantity,
        billing.issue_invoice,
        billing.finalize_invoice,
        billing.issue_late_fee,
        billing.apply_payment,
        billing.apply_credit,
        billing.issue_credit_note,
        billing.refund_credit,
        billing.credit_proration,
        billing.open_dispute,
        billing.close_dispute,
        billing.record_chargeback,
        billing.send_dunning_reminder,
        billing.write_off_deal,
        revenue.recognize_revenue,
        PaymentActivities(gateway).charge_card,
    ]
