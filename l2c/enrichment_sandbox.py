"""A local enrichment service that speaks the contract `l2c/enrichment.py` uses, over real HTTP.

`GET /v1/companies/<domain>` with `Authorization: Bearer <api key>` answers 200 with the
company's firmographics from a small built-in set of fictional companies (the demo's and the
tests' `.example` domains among them), 404 with a JSON error for a domain it does not know, and
401 for a missing or wrong key.

Knobs for tests and drills, set on the object: `down` (every request gets 503), `delay_seconds`
(each answer waits that long first, to outlast a client's timeout), `requests` (how many company
requests came in, to prove the cache), and `add_company(domain, **fields)`, which serves any
fields as given, valid or not, as a misbehaving provider would.

State is in memory: a restarted sandbox has the built-in companies only.
"""

import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from l2c.local_http import BackgroundServer, JsonHandler

DEFAULT_API_KEY = "enrich_test_l2c"  # Settings.enrichment_api_key's default

# Fictional companies, of varied size, industry and country; a few fields are missing, as a real
# provider's records often are.
COMPANIES: dict[str, dict[str, Any]] = {
    "acme.example": {"name": "Acme Corp", "employees": 250, "industry": "Manufacturing",
                     "country": "US"},
    "globex.example": {"name": "Globex GmbH", "employees": 1800, "industry": "Energy",
                       "country": "DE"},
    "initech.example": {"name": "Initech", "employees": 120, "industry": "Software",
                        "country": "GB"},
    "umbrella.example": {"name": "Umbrella Corporation", "employees": 42000,
                         "industry": "Pharmaceuticals", "country": "US"},
    "hooli.example": {"name": "Hooli", "employees": 9500, "industry": "Internet", "country": "US"},
    "soylent.example": {"name": "Soylent Foods", "employees": 640, "industry": "Food production",
                        "country": "FR"},
    "wayne.example": {"name": "Wayne Enterprises", "employees": 15000,
                      "industry": "Conglomerate", "country": "US"},
    "tyrell.example": {"name": "Tyrell Corporation", "employees": 3200, "industry": "Biotechnology",
                       "country": "JP"},
    "piedpiper.example": {"name": "Pied Piper", "employees": 12, "industry": "Software",
                          "country": "US"},
    "vandelay.example": {"name": "Vandelay Industries", "employees": 35,
                         "industry": "Import/export", "country": "BR"},
    "bluth.example": {"name": "Bluth Company", "employees": 80, "industry": "Real estate"},
    "oceanic.example": {"name": "Oceanic Airlines", "country": "AU"},
}  # fmt: skip


class _Handler(JsonHandler):
    server: "SandboxEnrichment"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if not path.startswith("/v1/companies/"):
            return self._error(404, "not_found", f"no such endpoint: {path}")
        sandbox = self.server
        with sandbox.lock:
            sandbox.requests += 1
            down, delay = sandbox.down, sandbox.delay_seconds
        if delay > 0:
            time.sleep(delay)
        if down:
            return self._error(503, "unavailable", "sandbox: down on purpose")
        if self.headers.get("Authorization", "") != f"Bearer {sandbox.api_key}":
            return self._error(401, "unauthorized", "invalid API key")
        domain = unquote(path.removeprefix("/v1/companies/")).strip().lower()
        with sandbox.lock:
            fields = sandbox.companies.get(domain)
        if fields is None:
            return self._error(404, "not_found", f"no company at {domain}")
        return self.send_json(200, {"domain": domain, **fields})

    def _error(self, status: int, kind: str, message: str) -> None:
        self.send_json(status, {"error": {"type": kind, "message": message}})


class SandboxEnrichment(BackgroundServer):
    """The sandbox on 127.0.0.1:`port` (0: any free port); `start()` serves it from a thread."""

    def __init__(self, port: int = 0, api_key: str = DEFAULT_API_KEY) -> None:
        super().__init__(port, _Handler)
        self.api_key = api_key
        self.lock = threading.Lock()
        self.companies = {domain: dict(fields) for domain, fields in COMPANIES.items()}
        self.down = False
        self.delay_seconds = 0.0
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_company(self, domain: str, **fields: Any) -> None:
        """Serve `fields` (name, employees, industry, country, or anything) for `domain`."""
        with self.lock:
            self.companies[domain.strip().lower()] = fields
