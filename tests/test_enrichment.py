"""The enrichment client against the sandbox enrichment service over a real socket, with its cache
in a real ledger (SQLite, and PostgreSQL when configured)."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from l2c.enrichment import EnrichmentClient, EnrichmentRefused, EnrichmentUnavailable
from l2c.enrichment_sandbox import DEFAULT_API_KEY, SandboxEnrichment
from models.leads import Firmographics
from models.ledger import EnrichmentCacheEntry

TIMEOUT = 0.3  # seconds; the sandbox's delay below outlasts it


@pytest.fixture
def sandbox() -> Iterator[SandboxEnrichment]:
    service = SandboxEnrichment(port=0)
    service.start()
    yield service
    service.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as client:
        yield client


def client_for(
    sandbox: SandboxEnrichment, http: httpx.Client, ledger: Engine, key: str = DEFAULT_API_KEY
) -> EnrichmentClient:
    return EnrichmentClient(sandbox.url, key, http, ledger)


@pytest.fixture
def enrichment(sandbox: SandboxEnrichment, http: httpx.Client, ledger: Engine) -> EnrichmentClient:
    return client_for(sandbox, http, ledger)


def age_cache(ledger: Engine, domain: str, by: timedelta) -> None:
    with Session(ledger) as session:
        entry = session.get(EnrichmentCacheEntry, domain)
        assert entry is not None
        entry.fetched_at = datetime.now(UTC) - by
        session.add(entry)
        session.commit()


def test_a_known_company_is_enriched_then_answered_from_the_cache(
    sandbox: SandboxEnrichment, enrichment: EnrichmentClient
) -> None:
    first = enrichment.lookup(" Acme.Example ")
    assert first.status == "enriched" and not first.cached
    assert first.firmographics == Firmographics(
        domain="acme.example", name="Acme Corp", employees=250, industry="Manufacturing",
        country="US",
    )  # fmt: skip
    assert sandbox.requests == 1
    again = enrichment.lookup("acme.example")
    assert again.status == "enriched" and again.cached
    assert again.firmographics == first.firmographics
    assert sandbox.requests == 1  # no call made


def test_an_expired_answer_is_fetched_again(
    sandbox: SandboxEnrichment, enrichment: EnrichmentClient, ledger: Engine
) -> None:
    enrichment.lookup("globex.example")
    age_cache(ledger, "globex.example", timedelta(days=29))
    assert enrichment.lookup("globex.example").cached
    assert sandbox.requests == 1
    sandbox.add_company("globex.example", name="Globex GmbH", employees=2100, country="DE")
    age_cache(ledger, "globex.example", timedelta(days=31))
    fresh = enrichment.lookup("globex.example")
    assert fresh.status == "enriched" and not fresh.cached
    assert fresh.firmographics is not None and fresh.firmographics.employees == 2100
    assert sandbox.requests == 2
    # The refetched answer replaced the old row, and is fresh again.
    assert enrichment.lookup("globex.example").firmographics == fresh.firmographics
    assert sandbox.requests == 2


def test_an_unknown_company_is_not_found_and_that_is_cached_for_less_long(
    sandbox: SandboxEnrichment, enrichment: EnrichmentClient, ledger: Engine
) -> None:
    missing = enrichment.lookup("nobody.example")
    assert missing.status == "not_found" and not missing.cached
    assert missing.firmographics is None and "nobody.example" in missing.detail
    again = enrichment.lookup("nobody.example")
    assert again.status == "not_found" and again.cached
    assert sandbox.requests == 1
    # A week later the service may know it.
    sandbox.add_company("nobody.example", name="Nobody Ltd", employees=3)
    age_cache(ledger, "nobody.example", timedelta(days=8))
    found = enrichment.lookup("nobody.example")
    assert found.status == "enriched" and found.firmographics is not None
    assert found.firmographics.name == "Nobody Ltd"
    assert sandbox.requests == 2


def test_a_service_that_is_down_is_unavailable_and_nothing_is_cached(
    sandbox: SandboxEnrichment, enrichment: EnrichmentClient
) -> None:
    sandbox.down = True
    with pytest.raises(EnrichmentUnavailable) as raised:
        enrichment.lookup("acme.example")
    assert raised.value.reason == "the enrichment service answered 503"
    # What the activity's retry does once the service is back.
    sandbox.down = False
    assert enrichment.lookup("acme.example").status == "enriched"
    assert sandbox.requests == 2


def test_a_service_slower_than_the_timeout_is_unavailable(
    sandbox: SandboxEnrichment, enrichment: EnrichmentClient
) -> None:
    sandbox.delay_seconds = 1.0
    with pytest.raises(EnrichmentUnavailable, match="did not answer in time"):
        enrichment.lookup("initech.example")


def test_a_service_nobody_listens_on_is_unavailable(http: httpx.Client, ledger: Engine) -> None:
    stopped = SandboxEnrichment(port=0)
    url = stopped.url
    stopped.server_close()  # the port is free again: nothing answers there
    with pytest.raises(EnrichmentUnavailable, match="unreachable"):
        EnrichmentClient(url, DEFAULT_API_KEY, http, ledger).lookup("acme.example")


def test_a_wrong_key_is_refused_for_good(
    sandbox: SandboxEnrichment, http: httpx.Client, ledger: Engine
) -> None:
    with pytest.raises(EnrichmentRefused) as raised:
        client_for(sandbox, http, ledger, key="enrich_wrong").lookup("acme.example")
    assert "refused the API key (401)" in raised.value.reason
    assert not isinstance(raised.value, EnrichmentUnavailable)


@pytest.mark.parametrize(
    "fields", [{"employees": "a lot"}, {"employees": 0}, {"name": "Broken", "country": ["US"]}]
)
def test_a_malformed_answer_is_unavailable_and_not_cached(
    sandbox: SandboxEnrichment, enrichment: EnrichmentClient, fields: dict[str, object]
) -> None:
    # A broken provider, not a refusal of ours: worth the caller's few retries, never cached.
    sandbox.add_company("broken.example", **fields)
    with pytest.raises(EnrichmentUnavailable, match=r"invalid firmographics for broken\.example"):
        enrichment.lookup("broken.example")
    sandbox.add_company("broken.example", name="Fixed Inc", employees=7)
    assert enrichment.lookup("broken.example").status == "enriched"
    assert sandbox.requests == 2


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        # A proxy's error page or a half-deployed service: worth a retry.
        (200, "<html>Service Unavailable</html>", EnrichmentUnavailable),
        (200, "[]", EnrichmentUnavailable),
        (200, '"acme"', EnrichmentUnavailable),
        # A wrong URL reaching a server that is no enrichment service: not "no such company".
        (404, "<h1>Not Found</h1>", EnrichmentRefused),
    ],
)
def test_an_answer_without_a_json_object_is_not_cached(
    ledger: Engine, status: int, body: str, error: type[Exception]
) -> None:
    # Bodies the sandbox never sends, so from a stand-in transport.
    answer = httpx.MockTransport(lambda _: httpx.Response(status, text=body))
    enrichment = EnrichmentClient("http://nowhere.invalid", DEFAULT_API_KEY,
                                  httpx.Client(transport=answer), ledger)  # fmt: skip
    with pytest.raises(error, match=f"no JSON object \\({status}\\)"):
        enrichment.lookup("acme.example")
    with Session(ledger) as session:
        assert session.get(EnrichmentCacheEntry, "acme.example") is None


def test_what_is_not_a_domain_is_skipped_without_a_call(
    sandbox: SandboxEnrichment, enrichment: EnrichmentClient
) -> None:
    for value in ["", "localhost", "../admin", "acme.example/v2", "a b.example"]:
        assert enrichment.lookup(value).status == "skipped"
    assert sandbox.requests == 0


def test_two_workers_missing_the_cache_at_once_both_store_their_answer(
    sandbox: SandboxEnrichment, http: httpx.Client, ledger: Engine
) -> None:
    # Both ask the service before either has stored: the second store meets the first's row.
    sandbox.delay_seconds = 0.1
    workers = [client_for(sandbox, http, ledger) for _ in range(2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda worker: worker.lookup("hooli.example"), workers))
    assert [answer.status for answer in answers] == ["enriched", "enriched"]
    assert sandbox.requests == 2
    assert workers[0].lookup("hooli.example").cached
