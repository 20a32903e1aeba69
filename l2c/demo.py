"""Demo deals for `l2c dev`: a few leads left at different stages so the Web UI has something to show."""

from temporalio.client import Client

from l2c.runtime import start_deal, wait_for_state
from models.deal import LeadInput, Stage
from models.signals import QuoteLineInput, SubmitQuote

DEMO_LEADS = [
    LeadInput(lead_id="L-1001", company="Acme Corp", contact_name="Ada Lovelace",
              contact_email="ada@acme.example", source="web", country="US", employees=250, currency="USD"),
    LeadInput(lead_id="L-1002", company="Globex GmbH", contact_name="Hank Scorpio",
              contact_email="hank@globex.example", source="referral", country="DE", employees=1800, currency="EUR"),
    LeadInput(lead_id="L-1003", company="Initech", contact_name="Bill Lumbergh",
              contact_email="bill@initech.example", source="event", country="GB", employees=120, currency="GBP"),
    LeadInput(lead_id="L-1004", company="Tiny Startup", contact_name="Pat Doe",
              contact_email="pat.doe@gmail.com", source="web", country="BR", employees=4, currency="USD"),
]  # fmt: skip

# Acme waits for a manager's approval of 15%, Globex for a signature (5% needs no approval).
DEMO_QUOTES = {
    "L-1001": SubmitQuote(submitted_by="nora.na", discount_percent=15, term_months=12, billing_period="monthly",
                          lines=[QuoteLineInput(sku="PLATFORM", quantity=25), QuoteLineInput(sku="ONBOARDING", quantity=1)]),
    "L-1002": SubmitQuote(submitted_by="erin.enterprise", discount_percent=5, term_months=24, billing_period="annual",
                          lines=[QuoteLineInput(sku="PLATFORM", quantity=200), QuoteLineInput(sku="API_CALLS", quantity=500)]),
}  # fmt: skip


async def start_demo_deals(client: Client, task_queue: str) -> list[str]:
    started = []
    for lead in DEMO_LEADS:
        handle, created = await start_deal(client, lead, task_queue)
        started.append(handle.id)
        quote = DEMO_QUOTES.get(lead.lead_id)
        if created and quote is not None:
            # Quotes are accepted once the deal is qualified.
            await wait_for_state(handle, lambda s: s.stage == Stage.QUALIFIED, timeout=60)
            await handle.signal("submit_quote", quote)
    return started
