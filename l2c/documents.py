"""Document rendering with jinja2: contracts, invoices and e-mails from templates/."""

import hashlib
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from l2c.config import PROJECT_ROOT

_templates = Environment(
    loader=FileSystemLoader(PROJECT_ROOT / "templates"),
    autoescape=select_autoescape(["html", "j2.html", "html.j2"]),  # .html.j2: the reports
    undefined=StrictUndefined,  # a missing value is an error, never a blank in a contract
    keep_trailing_newline=True,
)
_templates.filters["money"] = lambda amount, currency: f"{currency} {amount:,.2f}"


def render(template: str, **context: Any) -> str:
    return _templates.get_template(template).render(**context)


def render_email(template: str, **context: Any) -> tuple[str, str]:
    """Render an e-mail template whose first line is 'Subject: ...'; returns (subject, body)."""
    text = render(template, **context)
    first, _, body = text.partition("\n")
    if not first.startswith("Subject: "):
        raise ValueError(f"{template}: the first line must be 'Subject: ...'")
    return first.removeprefix("Subject: ").strip(), body.lstrip("\n")


def sha256_hex(document: str) -> str:
    return hashlib.sha256(document.encode("utf-8")).hexdigest()
