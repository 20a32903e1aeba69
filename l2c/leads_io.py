"""Reading leads for `l2c start`: one JSON object, a JSON list, JSON lines or CSV; every bad row
named. And the progress of a batch, shown on standard error."""

import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

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
    """Good leads and one error line per bad row ('path:line: reason'; in a JSON list, whose
    items need not be one a line, 'path: item N: reason')."""
    # Rows as (where, data); data is the ValueError to report when the row cannot even be read.
    rows: list[tuple[str, Any]] = []
    try:
        # utf-8-sig: a spreadsheet's CSV export often starts with a byte-order mark, which would
        # otherwise become part of the first column's name and fail every row.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        return [], [f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8"]
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        try:
            for row in reader:
                cleaned = {k: v for k, v in row.items() if k and v not in (None, "")}
                rows.append((f"{path}:{reader.line_num}", cleaned))
        except csv.Error as err:  # e.g. a field over the csv module's size limit
            rows.append((f"{path}:{reader.line_num}", ValueError(f"not CSV: {err}; rest skipped")))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((f"{path}:{number}", json.loads(line)))
                except json.JSONDecodeError as err:
                    rows.append((f"{path}:{number}", ValueError(f"not JSON: {err.msg}")))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            return [], [f"{path}:{err.lineno}: not JSON: {err.msg}"]
        if isinstance(data, list):
            rows = [(f"{path}: item {n}", item) for n, item in enumerate(data, start=1)]
        else:
            rows = [(f"{path}:1", data)]
    leads, errors = [], []
    for where, data in rows:
        try:
            if isinstance(data, ValueError):
                raise data
            leads.append(parse_lead(data))
        except ValueError as err:
            errors.append(f"{where}: {err}")
    return leads, errors


class Progress:
    """How far a batch of `total` leads has got, on `stream` (standard error): a bar redrawn in
    place on a terminal; elsewhere (a log file) a plain line at each tenth of a large batch, and
    nothing for a small one, which is over before anyone would look."""

    WIDTH = 30
    LARGE = 500  # leads

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.shown = total > 1 and (self.tty or total >= self.LARGE)
        self._tenths = 0

    def advance(self) -> None:
        self.done += 1
        if not self.shown:
            return
        if self.tty:
            self._draw()
        elif self.done * 10 // self.total > self._tenths:
            self._tenths = self.done * 10 // self.total
            print(f"{self.done}/{self.total} leads sent", file=self.stream, flush=True)

    def note(self, line: str, out: TextIO | None = None) -> None:
        """Print `line` on `out` (standard output) without tearing the bar on a shared terminal."""
        if self.shown and self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()
        print(line, file=out or sys.stdout, flush=True)
        if self.shown and self.tty:
            self._draw()

    def close(self) -> None:
        if self.shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        filled = self.WIDTH * self.done // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} leads")
        self.stream.flush()
