"""Custom search attributes of a deal: what ops filter on in the Web UI's workflow list."""

from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey

DEAL_STAGE = SearchAttributeKey.for_keyword("DealStage")
DEAL_OWNER = SearchAttributeKey.for_keyword("DealOwner")
# Double because Temporal has no decimal type; it is for filtering only, the ledger holds the money.
DEAL_AMOUNT = SearchAttributeKey.for_float("DealAmount")

# Deals started since the ops console (marker `ops-search-attributes`) also keep these, so the
# saved list queries of docs/ops-console.md find them:
# who may still approve the pending quote or redline ("waiting for my approval"),
DEAL_APPROVERS = SearchAttributeKey.for_keyword_list("DealApprovers")
# when the deal entered its stage ("stuck in a stage over N days"),
DEAL_STAGE_SINCE = SearchAttributeKey.for_datetime("DealStageSince")
# and when its oldest open invoice fell or falls due ("overdue": before now; 9999-12-31: none
# open; not set: never invoiced).
DEAL_OLDEST_DUE = SearchAttributeKey.for_datetime("DealOldestDue")

ALL_KEYS = (DEAL_STAGE, DEAL_OWNER, DEAL_AMOUNT, DEAL_APPROVERS, DEAL_STAGE_SINCE, DEAL_OLDEST_DUE)

# Their type names as the temporal CLI and server flags spell them.
SEARCH_ATTRIBUTE_TYPES = {
    SearchAttributeIndexedValueType.KEYWORD: "Keyword",
    SearchAttributeIndexedValueType.DOUBLE: "Double",
    SearchAttributeIndexedValueType.TEXT: "Text",
    SearchAttributeIndexedValueType.INT: "Int",
    SearchAttributeIndexedValueType.KEYWORD_LIST: "KeywordList",
    SearchAttributeIndexedValueType.DATETIME: "Datetime",
}
