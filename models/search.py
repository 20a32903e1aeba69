"""Custom search attributes of a deal: what ops filter on in the Web UI's workflow list."""

from temporalio.common import SearchAttributeKey

DEAL_STAGE = SearchAttributeKey.for_keyword("DealStage")
DEAL_OWNER = SearchAttributeKey.for_keyword("DealOwner")
# Double because Temporal has no decimal type; it is for filtering only, the ledger holds the money.
DEAL_AMOUNT = SearchAttributeKey.for_float("DealAmount")

ALL_KEYS = (DEAL_STAGE, DEAL_OWNER, DEAL_AMOUNT)
