"""Lead enrichment: a company's firmographics by its web domain, from a configurable service over
httpx, with the answers kept in the ledger's cache (`enrichment_cache`).

The service's contract (README, *Enrichment*): `GET {base_url}/v1/companies/{domain}` with
`Authorization: Bearer <key>`; 200 with a JSON object of firmographics, 404 for a company it does
not know. Found companies are asked again after `ttl`, unknown ones after `not_found_ttl` (shorter:
a new company shows up at the provider sooner than an old one changes).

Like the payment gateway adapter, the client does not retry by itself: whatever a retry could fix
(no connection, too slow, 5xx, 429) raises `EnrichmentUnavailable`, and the activity's retry
policy decides how often to ask again before the deal goes on without it. What a retry cannot fix
(a refused key, a request the service rejects) raises `EnrichmentRefused`.
"""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from models.calendar import as_utc
from models.leads import Enrichment, Firmographics
from models.ledger import EnrichmentCacheEntry

# A host name of dot-separated labels (IDNs in their xn-- form); it also keeps anything that would
# change the request's path ("/", "?", "#", "..") out of the URL.
_DOMAIN = re.compile(r"(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")


class EnrichmentError(Exception):
    """The service gave no answer to use; `reason` says why, for the deal's events."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EnrichmentUnavailable(EnrichmentError):
    """Transient: no connection, too slow, a 5xx, a 429 or a broken answer. Worth a retry."""


class EnrichmentRefused(EnrichmentError):
    """Permanent: the service refused the key or the request. Retrying cannot help."""


class EnrichmentClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        http: httpx.Client,
        engine: Engine,
        ttl: timedelta = timedelta(days=30),
        not_found_ttl: timedelta = timedelta(days=7),
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._http = http
        self._engine = engine
        self._ttl = ttl
        self._not_found_ttl = not_found_ttl

    def lookup(self, domain: str) -> Enrichment:
        """The company at `domain`, from the cache while fresh, else from the service.

        Raises `EnrichmentUnavailable` or `EnrichmentRefused` when the service gives no answer.
        """
        domain = domain.strip().lower().rstrip(".")
        if not _DOMAIN.fullmatch(domain):
            # Nothing to ask about; a retry would not make it a domain either.
            return Enrichment(status="skipped", detail=f"not a company domain: {domain[:80]!r}")
        cached = self._cached(domain)
        if cached is not None:
            return cached
        response = self._get(domain)
        now = datetime.now(UTC)
        if response.status_code == 200:
            firmographics = _firmographics(domain, response)
            self._store(domain, firmographics, now)
            return Enrichment(status="enriched", firmographics=firmographics)
        if response.status_code == 404:
            _json_object(response)  # a 404 without one is a wrong URL, not an unknown company
            self._store(domain, None, now)
            return Enrichment(
                status="not_found", detail=f"the enrichment service knows no company at {domain}"
            )
        raise _failure(response)

    def _get(self, domain: str) -> httpx.Response:
        try:
            return self._http.get(
                f"{self._base_url}/v1/companies/{domain}",
                headers={"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"},
            )
        except httpx.TimeoutException as err:
            raise EnrichmentUnavailable(
                f"the enrichment service did not answer in time ({type(err).__name__})"
            ) from err
        except httpx.TransportError as err:  # refused, reset or dropped connections
            raise EnrichmentUnavailable(
                f"the enrichment service is unreachable ({type(err).__name__})"
            ) from err

    def _cached(self, domain: str) -> Enrichment | None:
        with Session(self._engine) as session:
            entry = session.get(EnrichmentCacheEntry, domain)
        if entry is None:
            return None
        fetched_at = entry.fetched_at
        fetched_at = as_utc(fetched_at)  # SQLite keeps no time zone; the cache writes UTC only
        ttl = self._ttl if entry.found else self._not_found_ttl
        if datetime.now(UTC) - fetched_at >= ttl:
            return None
        day = fetched_at.astimezone(UTC).date().isoformat()
        if not entry.found:
            return Enrichment(
                status="not_found",
                cached=True,
                detail=f"the enrichment service knew no company at {domain} on {day}",
            )
        try:
            firmographics = Firmographics.model_validate_json(entry.firmographics)
        except ValidationError:
            return None  # written by an older model: ask again rather than fail the lead
        return Enrichment(
            status="enriched",
            firmographics=firmographics,
            cached=True,
            detail=f"as the enrichment service knew it on {day}",
        )

    def _store(self, domain: str, firmographics: Firmographics | None, now: datetime) -> None:
        """Insert or replace the domain's answer in one statement, so that two workers enriching
        leads of the same company at once both succeed (the later answer stays)."""
        values = {
            "domain": domain,
            "found": firmographics is not None,
            "firmographics": "{}" if firmographics is None else firmographics.model_dump_json(),
            "fetched_at": now,
        }
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        statement = insert(EnrichmentCacheEntry).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=["domain"],
            set_={name: statement.excluded[name] for name in values if name != "domain"},
        )
        with self._engine.begin() as connection:
            connection.execute(statement)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        problem = f"the enrichment service sent no JSON object ({response.status_code})"
        # A 200 without one is a broken service (worth a retry); a 404 without one is not the
        # service at all (a wrong L2C_ENRICHMENT_URL, a proxy), and must not be cached as "no
        # such company".
        if response.is_success:
            raise EnrichmentUnavailable(problem)
        raise EnrichmentRefused(f"{problem}: check L2C_ENRICHMENT_URL")
    return body


def _firmographics(domain: str, response: httpx.Response) -> Firmographics:
    body = _json_object(response)
    try:
        # The domain asked for, unless the service names the company's own (canonical) one.
        return Firmographics.model_validate({"domain": domain, **body})
    except ValidationError as err:
        # A broken answer, not a crash and not "no such company": retried, never cached.
        fields = ", ".join(sorted({".".join(map(str, e["loc"])) for e in err.errors()}))
        raise EnrichmentUnavailable(
            f"the enrichment service sent invalid firmographics for {domain} ({fields})"
        ) from err


def _failure(response: httpx.Response) -> EnrichmentError:
    status = response.status_code
    if status in (401, 403):
        return EnrichmentRefused(
            f"the enrichment service refused the API key ({status}): check L2C_ENRICHMENT_API_KEY"
        )
    if status == 429:
        return EnrichmentUnavailable("the enrichment service is rate-limiting requests (429)")
    if status >= 500 or status == 408:  # it failed, or timed the request out
        return EnrichmentUnavailable(f"the enrichment service answered {status}")
    if response.is_success:  # 202 from some providers: still looking it up, ask again later
        return EnrichmentUnavailable(f"the enrichment service answered {status} without a company")
    if response.is_redirect:  # redirects are not followed: a moved service is a setting to fix
        return EnrichmentRefused(
            f"the enrichment service moved ({status} to {response.headers.get('Location', '?')}):"
            " check L2C_ENRICHMENT_URL"
        )
    return EnrichmentRefused(
        f"the enrichment service refused the request ({status}): {_message(response)}"
    )


def _message(response: httpx.Response) -> str:
    """The service's own words for a refusal, briefly, for the deal's events."""
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        text = error.get("message", error) if isinstance(error, dict) else error
    except (ValueError, UnicodeDecodeError):
        text = response.text
    return (text if isinstance(text, str) else json.dumps(text))[:200]
