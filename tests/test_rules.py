"""Pure rules: scoring, routing, the calendar, configuration, lead input (pricing and approvals:
test_pricing.py)."""

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from l2c.config import PROJECT_ROOT, BusinessRules, ConfigError, load_business_rules
from l2c.drill import drill_config
from l2c.faults import FaultPlan
from l2c.leads_io import parse_lead, read_leads
from l2c.scoring import assess_lead
from models.calendar import add_months
from tests.helpers import make_lead

BIN = Path(sys.executable).parent


def test_scoring_is_explained_and_routing_follows_rules(rules: BusinessRules) -> None:
    assessment = assess_lead(
        rules.policy, make_lead(employees=5000, country="DE", source="referral")
    )
    assert assessment.breakdown == {
        "company_size": 35,
        "source": 25,
        "target_country": 15,
        "corporate_email": 20,
    }
    assert assessment.owner == "erin.enterprise"
    assert assess_lead(rules.policy, make_lead(country="FR", employees=20)).owner == "emil.emea"
    assert assess_lead(rules.policy, make_lead(country="JP", employees=20)).owner == "sam.rep"


def test_add_months_clamps_to_month_end() -> None:
    start = datetime(2026, 1, 31, 9, tzinfo=UTC)
    assert add_months(start, 1) == datetime(2026, 2, 28, 9, tzinfo=UTC)
    assert add_months(start, 13) == datetime(2027, 2, 28, 9, tzinfo=UTC)
    assert add_months(start, 12) == datetime(2027, 1, 31, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("file", "broken", "message"),
    [
        ("approvers.toml", 'max_discount_percent = "20"', "roles must be listed from the lowest"),
        ("catalog.toml", 'kind = "one_time"', "kind"),
        (
            "policy.toml",
            "write_off_days_after_due = 60",
            "write_off_days_after_due must come after",
        ),
        ("policy.toml", "[billing]", "not valid TOML"),
    ],
)
def test_configuration_mistakes_name_the_file_and_field(
    tmp_path: Path, file: str, broken: str, message: str
) -> None:
    folder = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", folder)
    replacement = {
        'max_discount_percent = "20"': 'max_discount_percent = "40"',
        'kind = "one_time"': 'kind = "subscription"',
        "write_off_days_after_due = 60": "write_off_days_after_due = 10",
        "[billing]": "[billing",
    }[broken]
    path = folder / file
    path.write_text(path.read_text().replace(broken, replacement, 1))
    with pytest.raises(ConfigError) as error:
        load_business_rules(folder)
    assert str(path) in str(error.value) and message in str(error.value)


def test_lead_input_refusals_name_the_field() -> None:
    with pytest.raises(ValueError, match="contact_email"):
        parse_lead(
            {
                "lead_id": "L-1",
                "company": "A",
                "contact_name": "B",
                "contact_email": "nope",
                "country": "US",
            }
        )
    with pytest.raises(ValueError, match="company: Field required"):
        parse_lead(
            {"lead_id": "L-1", "contact_name": "B", "contact_email": "b@a.example", "country": "US"}
        )
    lead = parse_lead({"lead_id": "L-1", "company": "A", "contact_name": "B", "contact_email": "B@A.Example",
                       "country": "us", "crm_id": "0061x"})  # fmt: skip
    assert (
        lead.contact_email == "B@a.example"
        and lead.country == "US"
        and lead.model_extra == {"crm_id": "0061x"}
    )


def test_lead_files_report_bad_rows_by_line(tmp_path: Path) -> None:
    csv_file = tmp_path / "leads.csv"
    csv_file.write_text(
        "lead_id,company,contact_name,contact_email,country,employees\n"
        "L-1,Acme,Ada,ada@acme.example,US,250\n"
        "L-2,Globex,Hank,not-an-email,DE,10\n"
        "L-3,Initech,Bill,bill@initech.example,GB,many\n"
    )
    leads, errors = read_leads(csv_file)
    assert [lead.lead_id for lead in leads] == ["L-1"]
    assert errors[0].startswith(f"{csv_file}:3: contact_email") and errors[1].startswith(
        f"{csv_file}:4: employees"
    )
    jsonl = tmp_path / "leads.jsonl"
    jsonl.write_text(json.dumps({"lead_id": "L-9"}) + "\n{oops\n")
    leads, errors = read_leads(jsonl)
    assert leads == [] and ":1: company" in errors[0] and ":2: not JSON" in errors[1]


def test_starter_refuses_a_bad_lead_before_contacting_temporal() -> None:
    bad = json.dumps(
        {
            "lead_id": "L-1",
            "company": "Acme",
            "contact_name": "Ada",
            "contact_email": "ada@",
            "country": "US",
        }
    )
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "starter.py"), "--lead", bad],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "contact_email" in done.stderr and "valid e-mail" in done.stderr


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "L2C_FAULTS is not JSON"),
        ('{"issue_invoice": {"kind": "explode"}}', "faults.issue_invoice.kind"),
        ('{"issue_invoice": {"kind": "error", "attempts": 0}}', "faults.issue_invoice.attempts"),
        ('{"issue_invoce": {"kind": "error"}}', "unknown activities ['issue_invoce']"),
    ],
)
def test_a_fault_plan_with_a_mistake_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(reason)):
        FaultPlan.parse(text, {"issue_invoice", "apply_payment"})


def test_drill_config_changes_only_the_named_settings(tmp_path: Path) -> None:
    folder = drill_config(tmp_path / "config", month_seconds=2, retry_initial_seconds=0.1)
    policy = load_business_rules(folder).policy
    assert policy.clock.month_seconds == 2
    assert policy.activities.retry_initial_seconds == 0.1
    assert policy.activities.timeout_seconds == 60
    assert policy.deal_policy().months_after(datetime(2026, 1, 31, tzinfo=UTC), 3) == datetime(
        2026, 1, 31, 0, 0, 6, tzinfo=UTC
    )
    with pytest.raises(KeyError, match="no_such_setting"):
        drill_config(tmp_path / "other", no_such_setting=1)
