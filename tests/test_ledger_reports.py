"""Finance reports from the ledger, and closing a period."""

import itertools
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select
from temporalio.testing import WorkflowEnvironment

from l2c.config import Settings
from l2c.journal import (
    ACCOUNTS_RECEIVABLE,
    CASH,
    DEFERRED_REVENUE,
    REVENUE_SUBSCRIPTION,
    close_period,
    post_entry,
)
from l2c.reports import (
    ar_aging,
    deferred_revenue_waterfall,
    receivables,
    revenue_by_obligation,
    trial_balance,
)
from models.ledger import JournalEntry
from models.money import ZERO
from tests.helpers import (
    account_balances,
    advance_until,
    pay_in_full,
    quote_to_signature,
    start,
)

BIN = Path(sys.executable).parent


async def test_reports_agree_with_the_journal_for_a_running_deal(
    ts_env: WorkflowEnvironment, deal_worker: Settings, sqlite_ledger: Engine
) -> None:
    handle = await start(ts_env.client, deal_worker.task_queue)
    state = await quote_to_signature(handle, term_months=3,
                                     lines=[{"sku": "PLATFORM", "quantity": 10},
                                            {"sku": "ONBOARDING", "quantity": 1}])  # fmt: skip
    await pay_in_full(handle, state.invoices[0])
    state = await advance_until(ts_env, handle, lambda s: len(s.invoices) == 3)
    balances = account_balances(sqlite_ledger, handle.id)

    trial = trial_balance(sqlite_ledger)
    total = next(r for r in trial if r["name"] == "total")
    assert total["debit"] == total["credit"] and total["balance"] == 0
    by_account = {r["account"]: r["balance"] for r in trial if r["account"]}
    assert by_account[CASH] == balances[CASH] == state.invoices[0].amount

    waterfall = deferred_revenue_waterfall(sqlite_ledger)
    assert waterfall[-1]["closing"] == -balances.get(DEFERRED_REVENUE, ZERO)
    for before, after in itertools.pairwise(waterfall):
        assert after["opening"] == before["closing"]
    billed = sum((r["billed"] for r in waterfall), ZERO)
    recognized = sum((r["recognized"] for r in waterfall), ZERO)
    # Recognized plus still deferred is what was billed in advance.
    assert recognized + waterfall[-1]["closing"] == billed

    for row in waterfall:  # the closing balance, split per deal into liabilities and assets
        assert row["contract_liabilities"] - row["contract_assets"] == row["closing"]
        assert row["contract_liabilities"] >= 0 and row["contract_assets"] >= 0

    revenue = revenue_by_obligation(sqlite_ledger)
    assert {r["obligation"] for r in revenue} == {"PLATFORM", "ONBOARDING"}
    # Everything recognized came out of deferred revenue (onboarding too, at provisioning).
    assert sum((r["recognized"] for r in revenue), ZERO) == recognized

    # Aged the day after the last invoice is due: the two unpaid ones, by how late.
    last_due = state.invoices[2].due_date
    aging = ar_aging(sqlite_ledger, last_due + timedelta(days=1))
    owed = [r for r in aging if r["deal"] == handle.id]
    assert [r["invoice"] for r in owed] == [i.number for i in state.invoices[1:]]
    assert owed[-1]["bucket"] == "1-30" and owed[-1]["days late"] == 1
    totals = sum((r["owed"] for r in aging if r["deal"] == "total"), ZERO)
    assert totals == receivables(sqlite_ledger)["USD"] == balances[ACCOUNTS_RECEIVABLE]


def test_a_posting_into_a_closed_period_is_booked_in_the_next_open_one(ledger: Engine) -> None:
    with Session(ledger) as session:
        assert close_period(session, "2026-01", "fay.finance")
        assert close_period(session, "2026-02", "fay.finance")
        assert not close_period(session, "2026-02", "fay.finance")  # once
        session.commit()
    with Session(ledger) as session:
        late = post_entry(session, entry_key="d:late", deal_id="d", currency="USD",
                          memo="Payment R-9 applied", posted_at=datetime(2026, 1, 31, 23, tzinfo=UTC),
                          lines=[(CASH, Decimal("10.00"), ZERO),
                                 (ACCOUNTS_RECEIVABLE, ZERO, Decimal("10.00"))])  # fmt: skip
        on_time = post_entry(session, entry_key="d:on-time", deal_id="d", currency="USD",
                             memo="Recognition", posted_at=datetime(2026, 4, 1, tzinfo=UTC),
                             lines=[(DEFERRED_REVENUE, Decimal("5.00"), ZERO),
                                    (REVENUE_SUBSCRIPTION, ZERO, Decimal("5.00"))])  # fmt: skip
        session.commit()
        assert (late.period, on_time.period) == ("2026-03", "2026-04")
        assert late.memo == "Payment R-9 applied [booked in 2026-03: 2026-01 is closed]"
        assert late.posted_at.month == 1  # when it happened is kept
    assert [r["balance"] for r in trial_balance(ledger, "2026-02") if r["name"] == "total"] == []
    assert len(trial_balance(ledger, "2026-03")) == 3  # cash, receivables, total
    with Session(ledger) as session:
        assert len(session.exec(select(JournalEntry)).all()) == 2


def test_the_ledger_commands_print_tables_and_csv_and_refuse_bad_periods(tmp_path: Path) -> None:
    env = {"L2C_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}", "PATH": str(BIN)}

    def l2c(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "l2c"), *args], capture_output=True, text=True,
                              env=env, timeout=60)  # fmt: skip

    nothing = l2c("ledger", "trial-balance")  # a report creates no ledger where there is none
    assert nothing.returncode != 0 and "there is no ledger at sqlite:///" in nothing.stderr
    closed = l2c("ledger", "close", "2026-05", "--by", "fay")
    assert closed.returncode == 0 and "period 2026-05 closed" in closed.stdout
    assert "already closed" in l2c("ledger", "close", "2026-05").stdout
    for period in ["2026-13", "2026-1\u00b2", "\uff12\uff10\uff12\uff16-11"]:
        bad = l2c("ledger", "close", period)
        assert bad.returncode != 0 and "expected a period as YYYY-MM" in bad.stderr
    future = l2c("ledger", "close", "2099-01")
    assert future.returncode != 0 and "has not ended yet" in future.stderr
    assert l2c("ledger", "trial-balance").stdout.strip() == "(nothing)"
    aging = l2c("ledger", "aging", "--as-of", "yesterday")
    assert aging.returncode != 0 and "expected YYYY-MM-DD" in aging.stderr
    for report in ["trial-balance", "deferred", "revenue", "aging"]:
        assert l2c("ledger", report, "--csv").returncode == 0
