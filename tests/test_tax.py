"""Tax per invoice line from config/tax.toml by the customer's country; exempt customers."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from activities.billing import BillingActivities
from l2c.config import BusinessRules, ConfigError, Settings, TaxTable, load_business_rules
from l2c.drill import drill_config
from l2c.journal import (
    ACCOUNTS_RECEIVABLE,
    CASH,
    REVENUE_SERVICES,
    REVENUE_SUBSCRIPTION,
    SALES_CREDITS,
    TAX_PAYABLE,
)
from l2c.ledger_check import check_ledger
from l2c.mail import Mailer
from models.deal import Stage
from models.documents import CreditNoteRequest, IssuedInvoice, WriteOffRequest
from models.ledger import InvoiceLineRecord, InvoiceRecord
from models.money import ZERO
from tests.helpers import (
    account_balances,
    final_state,
    make_lead,
    pay_in_full,
    quote_to_signature,
    signal,
    start,
    wait_until,
)
from tests.test_ledger_activities import env, invoice_request


async def test_a_uk_customer_pays_vat_on_each_line_and_a_credit_note_takes_its_share(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue, country="GB", currency="GBP",
                         contact_email="ada@acme.example")  # fmt: skip
    state = await quote_to_signature(handle, term_months=1, billing_period="upfront",
                                     lines=[{"sku": "PLATFORM", "quantity": 10},
                                            {"sku": "ONBOARDING", "quantity": 1}])  # fmt: skip
    invoice = state.invoices[0]
    # 10 seats x 40.00 + onboarding 2,000.00 = 2,400.00 net; 20% VAT per line.
    assert invoice.amount == Decimal("2880.00")
    with Session(sqlite_ledger) as session:
        record = session.get(InvoiceRecord, invoice.number)
        assert record is not None and record.tax_amount == Decimal("480.00")
        lines = session.exec(select(InvoiceLineRecord).where(
            InvoiceLineRecord.invoice_number == invoice.number)).all()  # fmt: skip
        assert [(ln.amount, ln.tax_rate, ln.tax_amount) for ln in lines] == [
            (Decimal("400.00"), Decimal("20.00"), Decimal("80.00")),
            (Decimal("2000.00"), Decimal("20.00"), Decimal("400.00"))]  # fmt: skip
        assert "Tax (20" in record.html
    await signal(handle, "issue_credit_note", {"invoice_number": invoice.number, "amount": "120.00",
                                              "reason": "late start", "reference": "CN-1",
                                              "issued_by": "fay.finance"})  # fmt: skip
    state = await wait_until(handle, lambda s: s.invoices[0].amount_credited > 0)
    await pay_in_full(handle, state.invoices[0])
    final = await final_state(handle)
    assert final.stage == Stage.WON
    balances = account_balances(sqlite_ledger, handle.id)
    assert balances[CASH] == Decimal("2760.00")
    assert balances.get(ACCOUNTS_RECEIVABLE, ZERO) == ZERO
    assert -balances[TAX_PAYABLE] == Decimal("480.00") - Decimal("20.00")  # 120 gross = 100 + 20
    assert balances[SALES_CREDITS] == Decimal("100.00")
    # The 2,400.00 net, allocated by standalone selling price (GBP 36.00 a seat, 2,400.00
    # onboarding): 2,400 x 360 / 2,760 to the seats, though they were billed at 400.00.
    assert -balances[REVENUE_SUBSCRIPTION] == Decimal("313.04")
    assert -balances[REVENUE_SERVICES] == Decimal("2086.96")
    assert check_ledger(sqlite_ledger) == []


async def test_an_exempt_customer_is_not_taxed(
    ts_env: WorkflowEnvironment, deal_worker: Settings
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue, country="GB", currency="GBP",
                         tax_exempt=True)  # fmt: skip
    state = await quote_to_signature(handle, term_months=1, billing_period="upfront")
    assert state.invoices[0].amount == Decimal("400.00")
    await pay_in_full(handle, state.invoices[0])
    assert (await final_state(handle)).stage == Stage.WON


def test_a_bad_tax_table_is_refused_at_start_with_the_file_and_the_reason(tmp_path: Path) -> None:
    folder = drill_config(tmp_path / "config")
    (folder / "tax.toml").write_text('[rates]\ngb = "20"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"tax\.toml.*'gb'"):
        load_business_rules(folder)
    (folder / "tax.toml").write_text('[rates]\nGB = "120"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="a rate is a percent from 0 to 100"):
        load_business_rules(folder)


# Tax shares are rounded as a running total: nothing is left on tax payable (found in review).
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def billing(ledger: Engine) -> BillingActivities:
    return BillingActivities(
        ledger, Mailer(ledger, None, 25, "x@y.example"), TaxTable(rates={"GB": Decimal("20")})
    )


def gb_invoice(rules: BusinessRules, ledger: Engine, deal: str) -> IssuedInvoice:
    req = invoice_request(rules, ledger, deal, billing_period="upfront", term_months=1)
    req = req.model_copy(update={"lead": make_lead(country="GB", currency="USD")})
    return env.run(billing(ledger).issue_invoice, req)


def credit_thirds(ledger: Engine, deal: str, invoice: IssuedInvoice, count: int) -> None:
    """`count` credit notes of a third of the invoice each: 160.00, whose tax (26.666...) is not
    a whole number of cents."""
    for n in range(count):
        env.run(billing(ledger).issue_credit_note, CreditNoteRequest(
            deal_id=deal, invoice_number=invoice.number, amount=invoice.amount / 3, to_credit=ZERO,
            currency="USD", reference=f"CN-{n}", reason="goodwill", issued_by="fay",
            issued_at=NOW))  # fmt: skip


def test_three_equal_credit_notes_take_back_exactly_the_invoices_tax(
    rules: BusinessRules, ledger: Engine
) -> None:
    credit_thirds(ledger, "D-tax-1", gb_invoice(rules, ledger, "D-tax-1"), 3)
    balances = account_balances(ledger, "D-tax-1")
    assert balances.get(ACCOUNTS_RECEIVABLE, ZERO) == ZERO
    assert balances.get(TAX_PAYABLE, ZERO) == ZERO, balances


def test_credit_notes_then_a_write_off_take_back_exactly_the_invoices_tax(
    rules: BusinessRules, ledger: Engine
) -> None:
    credit_thirds(ledger, "D-tax-2", gb_invoice(rules, ledger, "D-tax-2"), 2)
    env.run(billing(ledger).write_off_deal, WriteOffRequest(
        deal_id="D-tax-2", currency="USD", written_off_at=NOW, reason="unpaid"))  # fmt: skip
    balances = account_balances(ledger, "D-tax-2")
    assert balances.get(TAX_PAYABLE, ZERO) == ZERO, balances
    assert balances.get(ACCOUNTS_RECEIVABLE, ZERO) == ZERO
