"""Record the histories under tests/histories that the replay test holds today's code to.

Run it only when a change to the workflow is meant to break replay of running deals (and then
version the change with workflow.patched instead, where deals are in flight):
    python -m tests.record_history
"""

import asyncio
import tempfile
from pathlib import Path

from l2c.config import Settings, load_business_rules
from l2c.runtime import build_worker
from models.deal import Stage
from tests.conftest import fresh_ledger, start_time_skipping_env
from tests.helpers import advance_until, signal, start, wait_for_stage, wait_until

OUT = Path(__file__).parent / "histories"


async def main() -> None:
    env = await start_time_skipping_env()
    with tempfile.TemporaryDirectory() as tmp:
        engine = fresh_ledger(f"sqlite:///{tmp}/ledger.db")
        settings = Settings(database_url="", task_queue="record")
        async with env, build_worker(env.client, engine, load_business_rules(), settings):
            handle = await start(env.client, "record", lead_id="L-recorded-1")
            await wait_for_stage(handle, Stage.QUALIFIED)
            await signal(
                handle, "approve_discount", {"approver": "mia.manager"}
            )  # refused: wrong stage
            await signal(handle, "submit_quote", {"submitted_by": "nora.na", "discount_percent": "15", "term_months": 3,
                                                  "billing_period": "monthly", "lines": [{"sku": "PLATFORM", "quantity": 25},
                                                  {"sku": "ONBOARDING", "quantity": 1}]})  # fmt: skip
            await wait_for_stage(handle, Stage.AWAITING_APPROVAL)
            await signal(handle, "approve_discount", {"approver": "mia.manager", "comment": "ok"})
            state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
            assert state.contract is not None
            await signal(handle, "sign_contract", {"signer_name": "Ada Lovelace", "signer_email": "ada@acme.example",
                                                   "document_sha256": state.contract.document_sha256})  # fmt: skip
            for n in range(3):
                state = await advance_until(env, handle, lambda s, n=n: len(s.invoices) > n)
                inv = state.invoices[n]
                await signal(
                    handle,
                    "record_payment",
                    {"invoice_number": inv.number, "amount": str(inv.amount), "reference": f"R{n}"},
                )
                await wait_until(handle, lambda s, n=n: s.invoices[n].status == "paid")
            await handle.result()
            history = await handle.fetch_history()
            OUT.mkdir(exist_ok=True)
            (OUT / f"{handle.id}.json").write_text(history.to_json())
            print(f"recorded {handle.id}: {len(history.events)} events")


if __name__ == "__main__":
    asyncio.run(main())
