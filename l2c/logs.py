"""Worker logs: text for a terminal, or one JSON object a line for a log pipeline, each line naming
the deal it concerns so `deal_id="deal-L-1001"` finds everything a deal did across workers."""

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from temporalio import activity
from temporalio import workflow as temporal_workflow

LogFormat = Literal["text", "json"]


def deal_context(record: logging.LogRecord) -> dict[str, Any]:
    """Which deal (and which step of it) a log record comes from, if any.

    Temporal's workflow and activity loggers attach their context to the record; any other
    logger called inside an activity (the ledger's, the mailer's) is placed by the activity
    running on the thread."""
    workflow_info = getattr(record, "temporal_workflow", None)
    if isinstance(workflow_info, dict):
        return {
            "deal_id": workflow_info.get("workflow_id"),
            "run_id": workflow_info.get("run_id"),
        }
    activity_info = getattr(record, "temporal_activity", None)
    if isinstance(activity_info, dict):
        return {
            "deal_id": activity_info.get("workflow_id"),
            "run_id": activity_info.get("workflow_run_id"),
            "activity": activity_info.get("activity_type"),
            "attempt": activity_info.get("attempt"),
        }
    if activity.in_activity():
        info = activity.info()
        return {
            "deal_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "activity": info.activity_type,
            "attempt": info.attempt,
        }
    return {}


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **{key: value for key, value in deal_context(record).items() if value is not None},
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextLogFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        deal_id = deal_context(record).get("deal_id")
        # Temporal's own loggers already append their context to the message.
        if (
            deal_id
            and not hasattr(record, "temporal_workflow")
            and not hasattr(record, "temporal_activity")
        ):
            line += f" [{deal_id}]"
        return line


def configure_logging(log_format: LogFormat, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if log_format == "json" else TextLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if log_format == "json":
        # The context is a field of its own there; not repeated inside the message.
        temporal_workflow.logger.workflow_info_on_message = False
        activity.logger.activity_info_on_message = False
