"""Reading leads for `l2c start`: one JSON object, a JSON list, JSON lines or CSV; every bad row named."""

import csv
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from models.deal import LeadInput
from models.validation import explain


def parse_lead(data: Any) -> LeadInput:
    """Validate one lead; ValueError names the fields that are wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"a lead must be a JSON object, got {type(data).__name__}")
    try:
        return LeadInput.model_validate(data)
    except ValidationError as err:
        raise ValueError(explain(err)) from None


def read_leads(path: Path) -> tuple[list[LeadInput], list[str]]:
    """Good leads and one error line per bad row ('path:line: reason')."""
    rows: list[tuple[int, Any]] = []
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        for row in reader:
            cleaned = {k: v for k, v in row.items() if k and v not in (None, "")}
            rows.append((reader.line_num, cleaned))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as err:
                    rows.append((number, ValueError(f"not JSON: {err.msg}")))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            return [], [f"{path}:{err.lineno}: not JSON: {err.msg}"]
        rows = list(enumerate(data if isinstance(data, list) else [data], start=1))
    leads, errors = [], []
    for number, data in rows:
        try:
            if isinstance(data, ValueError):
                raise data
            leads.append(parse_lead(data))
        except ValueError as err:
            errors.append(f"{path}:{number}: {err}")
    return leads, errors
