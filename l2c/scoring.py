"""Lead scoring and routing: transparent rules from config/policy.toml, pure functions."""

from l2c.config import PolicyConfig
from models.deal import LeadInput
from models.documents import LeadAssessment


def email_domain(email: str) -> str:
    return email.rsplit("@", 1)[-1].lower()


def assess_lead(policy: PolicyConfig, lead: LeadInput) -> LeadAssessment:
    rules = policy.scoring
    breakdown: dict[str, int] = {}
    if lead.employees is not None:
        reached = [band.points for band in rules.employee_bands if lead.employees >= band.min]
        breakdown["company_size"] = max(reached, default=0)
    breakdown["source"] = rules.source_points.get(lead.source, rules.other_source_points)
    if lead.country in rules.target_countries:
        breakdown["target_country"] = rules.target_country_points
    if email_domain(lead.contact_email) not in rules.free_email_domains:
        breakdown["corporate_email"] = rules.corporate_email_points
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
