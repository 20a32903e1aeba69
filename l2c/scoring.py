"""Lead scoring rules: transparent points from config/policy.toml, pure functions. The trained
model's points (l2c/lead_model.py) are added to these by the scoring activity."""

from l2c.config import PolicyConfig
from models.deal import LeadInput
from models.documents import LeadAssessment
from models.leads import Firmographics


def email_domain(email: str) -> str:
    return email.rsplit("@", 1)[-1].lower()


def rule_points(
    policy: PolicyConfig, lead: LeadInput, firmographics: Firmographics | None = None
) -> dict[str, int]:
    """Points by rule (feature -> points). Company size is the lead's, else the enrichment's."""
    rules = policy.scoring
    breakdown: dict[str, int] = {}
    employees = lead.employees
    if employees is None and firmographics is not None:
        employees = firmographics.employees
    if employees is not None:
        reached = [band.points for band in rules.employee_bands if employees >= band.min]
        breakdown["company_size"] = max(reached, default=0)
    breakdown["source"] = rules.source_points.get(lead.source, rules.other_source_points)
    if lead.country in rules.target_countries:
        breakdown["target_country"] = rules.target_country_points
    if email_domain(lead.contact_email) not in rules.free_email_domains:
        breakdown["corporate_email"] = rules.corporate_email_points
    return breakdown


def assess_lead(policy: PolicyConfig, lead: LeadInput) -> LeadAssessment:
    """Deals from before the trained model and teams: rule points, first-match routing."""
    breakdown = rule_points(policy, lead)
    return LeadAssessment(
        score=sum(breakdown.values()), owner=route_lead(policy, lead), breakdown=breakdown
    )


def route_lead(policy: PolicyConfig, lead: LeadInput) -> str:
    for rule in policy.routing.rules:
        if rule.countries and lead.country not in rule.countries:
            continue
        if (lead.employees or 0) < rule.min_employees:
            continue
        return rule.owner
    return policy.routing.default_owner
