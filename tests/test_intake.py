"""The intake endpoint over a real socket against a real Temporal server: a good lead starts its
deal once, and every kind of bad request is refused with a status and a reason; the lead files of
`l2c start` report their bad rows by line."""

import asyncio
import contextlib
import io
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from l2c import cli
from l2c.config import Settings
from l2c.drill import free_port
from l2c.intake import MAX_BODY, IntakeServer, intake_endpoint, intake_url
from l2c.leads_io import Progress, read_leads
from models.deal import workflow_id_for
from tests.helpers import make_lead

KEY = "intake_key_one"
OTHER_KEY = "intake_key_two"


# Deals started here have no worker: each waits with a workflow task nobody takes, which holds a
# time-skipping server's clock; a server of their own keeps that from other tests.
pytestmark = pytest.mark.own_clock


@dataclass
class Intake:
    endpoint: IntakeServer
    client: Client
    url: str
    http: httpx.AsyncClient
    lead_ids: list[str] = field(default_factory=list)

    def lead(self, **overrides: Any) -> dict[str, Any]:
        """A valid lead with an id of its own; its deal is terminated when the test ends."""
        lead: dict[str, Any] = make_lead().model_dump(mode="json")
        lead.update(overrides)
        self.lead_ids.append(str(lead["lead_id"]))
        return lead

    async def post(self, body: Any, key: str | None = KEY, **headers: str) -> httpx.Response:
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {key}")
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
        return await self.http.post(self.url, content=content, headers=headers)


async def terminate_deals(client: Client, lead_ids: list[str]) -> None:
    """Deals left waiting would hold timers on the shared time-skipping server and slow its clock."""
    for lead_id in lead_ids:
        with contextlib.suppress(RPCError):  # never started, or already ended
            await client.get_workflow_handle(workflow_id_for(lead_id)).terminate("test finished")


@pytest.fixture
async def intake(ts_env: WorkflowEnvironment) -> AsyncIterator[Intake]:
    # A task queue of its own: no worker polls it, so the deals started wait, untouched.
    queue = f"intake-{uuid.uuid4().hex[:8]}"
    endpoint = intake_endpoint(0, [KEY, OTHER_KEY], ts_env.client, queue)
    endpoint.start()
    # Async, so the event loop the endpoint reaches Temporal through stays free meanwhile.
    async with httpx.AsyncClient(timeout=30) as http:
        running = Intake(endpoint, ts_env.client, intake_url(endpoint), http)
        try:
            yield running
        finally:
            endpoint.stop()
            await terminate_deals(ts_env.client, running.lead_ids)


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send bytes as they are (headers httpx would correct), and read the status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.split(b"\r\n\r\n", 1)[1])


async def test_a_lead_starts_its_deal_once_and_again_gets_409(intake: Intake) -> None:
    lead = intake.lead()
    response = await intake.post(lead)
    assert response.status_code == 202, response.text
    workflow_id = f"deal-{lead['lead_id']}"
    assert response.json() == {
        "workflow_id": workflow_id,
        "lead_id": lead["lead_id"],
        "status": "started",
    }
    description = await intake.client.get_workflow_handle(workflow_id).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    assert description.workflow_type == "DealWorkflow"

    # Sent again (say the sender lost our answer), with the other key and the other header.
    again = await intake.post(lead, key=None, **{"X-API-Key": OTHER_KEY})
    assert again.status_code == 409
    assert again.json()["workflow_id"] == workflow_id
    assert "already has a deal" in again.json()["error"]

    status = await intake.http.get(
        f"http://127.0.0.1:{intake.endpoint.port}{response.headers['Location']}",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert status.status_code == 200
    assert status.json()["workflow_id"] == workflow_id
    assert status.json()["status"] == "running" and status.json()["stage"] == "new"
    unknown = await intake.http.get(f"{intake.url}/L-nobody", headers={"X-API-Key": KEY})
    assert unknown.status_code == 404 and "no deal for lead L-nobody" in unknown.json()["error"]


async def test_a_missing_or_wrong_key_gets_401_before_the_body_is_read(intake: Intake) -> None:
    missing = await intake.post(intake.lead(), key=None)
    assert missing.status_code == 401
    assert missing.json()["error"].startswith("no API key")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for headers in (
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Bearer {KEY}x"},
        {"X-API-Key": KEY[:-1]},
        {"Authorization": f"bearer {KEY} extra"},
    ):
        wrong = await intake.post(intake.lead(), key=None, **headers)
        assert (wrong.status_code, wrong.json()) == (401, {"error": "API key not recognized"})
    # Not ASCII (sent as UTF-8 bytes): refused like any other wrong key, not a crash.
    head = "POST /leads HTTP/1.1\nHost: x\nX-API-Key: clé\nContent-Length: 2\n"
    status = await asyncio.to_thread(raw_request, intake.endpoint.port, head, b"{}")
    assert status == (401, {"error": "API key not recognized"})
    # Credentials of another scheme are no API key.
    basic = await intake.post(intake.lead(), key=None, Authorization=f"Basic {KEY}")
    assert basic.status_code == 401 and basic.json()["error"].startswith("no API key")
    # The key is checked first: a stranger's garbage is not even parsed.
    garbage = await intake.post(b"{not json", key="not-a-key")
    assert garbage.status_code == 401
    # A stranger learns nothing of a lead's deal either.
    peek = await intake.http.get(f"{intake.url}/L-1001")
    assert peek.status_code == 401
    for lead_id in intake.lead_ids:
        with pytest.raises(RPCError) as err:
            await intake.client.get_workflow_handle(workflow_id_for(lead_id)).describe()
        assert err.value.status == RPCStatusCode.NOT_FOUND


async def test_a_body_that_is_not_one_json_lead_gets_400(intake: Intake) -> None:
    cases = {
        b'{"lead_id": "L-1",': "the body is not JSON: Expecting property name enclosed in double "
        "quotes (line 1 column 19)",
        b"": "the body is empty: send one lead as a JSON object",
        b"[1, 2]": "the body must be one lead as a JSON object, not an array: send one lead "
        "per request",
        b'"lead"': "the body must be one lead as a JSON object, not a string",
        b'{"company": "Soci\xe9t\xe9"}': "the body is not UTF-8 text (byte 17)",
        b"\xff\xfe{\x00}\x00": "the body is not UTF-8 text (byte 0)",  # UTF-16
        b"[" * 60_000: "the body is not JSON a lead could be: nested too deep",
    }
    for body, reason in cases.items():
        response = await intake.post(body)
        assert (response.status_code, response.json()) == (400, {"error": reason}), body[:20]


async def test_an_invalid_lead_gets_422_naming_its_fields(intake: Intake) -> None:
    lead = intake.lead()
    del lead["company"]
    response = await intake.post(lead)
    assert response.status_code == 422
    assert response.json()["error"].startswith("lead refused: company: Field required")
    worse = await intake.post(intake.lead(contact_email="ada@", country="USA", employees=0))
    assert worse.status_code == 422
    reason = worse.json()["error"]
    assert all(name in reason for name in ("contact_email", "country", "employees")), reason
    for lead_id in intake.lead_ids:  # nothing started
        with pytest.raises(RPCError):
            await intake.client.get_workflow_handle(workflow_id_for(lead_id)).describe()


async def test_bodies_are_limited_and_must_say_their_length_and_type(intake: Intake) -> None:
    oversized = await intake.post(intake.lead(notes="x" * MAX_BODY))
    assert oversized.status_code == 413
    assert oversized.json() == {"error": f"the body may be at most {MAX_BODY} bytes"}

    port = intake.endpoint.port
    auth = f"Authorization: Bearer {KEY}\nContent-Type: application/json\n"
    # Refused from the declared length alone, before reading the body.
    claimed = f"POST /leads HTTP/1.1\nHost: x\n{auth}Content-Length: 10000000\n"
    assert (await asyncio.to_thread(raw_request, port, claimed, b"{}"))[0] == 413
    chunked = f"POST /leads HTTP/1.1\nHost: x\n{auth}Transfer-Encoding: chunked\n"
    status, body = await asyncio.to_thread(raw_request, port, chunked, b"2\r\n{}\r\n0\r\n\r\n")
    assert status == 411 and "Content-Length" in body["error"]
    nonsense = f"POST /leads HTTP/1.1\nHost: x\n{auth}Content-Length: -5\n"
    status, body = await asyncio.to_thread(raw_request, port, nonsense)
    assert (status, body) == (400, {"error": "Content-Length must be a whole number of bytes"})

    form = await intake.post(
        b"lead_id=L-1", **{"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert form.status_code == 415
    assert "application/json" in form.json()["error"]
    # A JSON type with a charset is JSON.
    charset = await intake.post(
        intake.lead(), **{"Content-Type": "application/json; charset=utf-8"}
    )
    assert charset.status_code == 202


async def test_unknown_paths_get_404_and_wrong_methods_405(intake: Intake) -> None:
    base = f"http://127.0.0.1:{intake.endpoint.port}"
    headers = {"Authorization": f"Bearer {KEY}"}
    nowhere = await intake.http.post(f"{base}/lead", json=intake.lead(), headers=headers)
    assert nowhere.status_code == 404 and "/leads" in nowhere.json()["error"]
    listing = await intake.http.get(intake.url, headers=headers)
    assert listing.status_code == 405 and listing.headers["Allow"] == "POST"
    assert listing.json() == {"error": "/leads takes POST, not GET"}
    deleted = await intake.http.delete(f"{intake.url}/L-1001", headers=headers)
    assert deleted.status_code == 405 and deleted.headers["Allow"] == "GET"
    posted = await intake.http.post(f"{base}/openapi.json", headers=headers)
    assert posted.status_code == 405
    health = await intake.http.get(f"{base}/health")
    assert health.json() == {"status": "ok"}


async def test_the_openapi_document_describes_the_endpoint(intake: Intake) -> None:
    response = await intake.http.get(f"http://127.0.0.1:{intake.endpoint.port}/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    post = document["paths"]["/leads"]["post"]
    content = post["requestBody"]["content"]["application/json"]
    reference = content["schema"]["$ref"]
    assert reference == "#/components/schemas/LeadInput"
    schema = document["components"]["schemas"]["LeadInput"]
    assert set(schema["required"]) >= {"lead_id", "company", "contact_email", "country"}
    assert schema["properties"]["lead_id"]["maxLength"] == 64
    assert set(post["responses"]) >= {"202", "400", "401", "409", "413", "422", "503"}
    assert {"bearerKey": []} in post["security"] and {"apiKeyHeader": []} in post["security"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    # Every reference in it points at a schema it has.
    text = json.dumps(document)
    for name in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert name in document["components"]["schemas"], name
    # Its example is a lead the endpoint takes.
    example = {**content["example"], "lead_id": intake.lead()["lead_id"]}
    assert (await intake.post(example)).status_code == 202


async def test_temporal_out_of_reach_gets_503_send_again() -> None:
    # A client for a server that is not there: it connects lazily, on the first call, and fails.
    away = await Client.connect(
        f"127.0.0.1:{free_port()}", lazy=True, data_converter=pydantic_data_converter
    )
    endpoint = intake_endpoint(0, [KEY], away, "intake-nowhere", timeout=3)
    endpoint.start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            lead = {"lead_id": "L-1", "company": "Acme", "contact_name": "Ada",
                    "contact_email": "ada@acme.example", "country": "US"}  # fmt: skip
            response = await http.post(intake_url(endpoint), json=lead, headers={"X-API-Key": KEY})
    finally:
        endpoint.stop()
    assert response.status_code == 503
    assert response.json()["error"].endswith("send again")


async def test_an_endpoint_without_a_key_is_refused(ts_env: WorkflowEnvironment) -> None:
    with pytest.raises(ValueError, match="at least one API key"):
        intake_endpoint(0, ["", ""], ts_env.client, "intake-unused")


# ---------------------------------------------------------------- lead files


HEADER = "lead_id,company,contact_name,contact_email,country,employees\n"


def test_a_csv_file_reports_each_bad_row_by_line(tmp_path: Path) -> None:
    leads_csv = tmp_path / "leads.csv"
    # As a spreadsheet saves it: a byte-order mark, and a quoted field over two lines.
    leads_csv.write_text(
        "\ufeff" + HEADER + "L-1,Acme,Ada,ada@acme.example,US,250\n"
        "L-2,Globex,Hank,not-an-email,DE,10\n"
        '"L-3","Initech\nLtd",Bill,bill@initech.example,GB,12\n'
        "L-4,,Zoe,zoe@example.org,FR,5\n"
        "L-5,Umbrella,Alice,alice@umbrella.example,GB,many\n",
        encoding="utf-8",
    )
    leads, errors = read_leads(leads_csv)
    assert [lead.lead_id for lead in leads] == ["L-1", "L-3"]
    assert [error.split(": ", 1)[0] for error in errors] == [
        f"{leads_csv}:3",
        f"{leads_csv}:6",
        f"{leads_csv}:7",
    ]
    assert "contact_email" in errors[0] and "company" in errors[1] and "employees" in errors[2]


def test_json_lines_and_json_lists_report_bad_rows(tmp_path: Path) -> None:
    good = {"lead_id": "L-1", "company": "Acme", "contact_name": "Ada",
            "contact_email": "ada@acme.example", "country": "US"}  # fmt: skip
    lines = tmp_path / "leads.jsonl"
    lines.write_text(f"{json.dumps(good)}\n\n{{oops\n[1]\n{json.dumps({**good, 'country': 'X'})}\n")
    leads, errors = read_leads(lines)
    assert [lead.lead_id for lead in leads] == ["L-1"]
    assert errors[0].startswith(f"{lines}:3: not JSON")
    assert errors[1] == f"{lines}:4: a lead must be a JSON object, got list"
    assert errors[2].startswith(f"{lines}:5: country")

    listed = tmp_path / "leads.json"
    listed.write_text(json.dumps([good, {**good, "lead_id": ""}], indent=2))
    leads, errors = read_leads(listed)
    assert len(leads) == 1 and errors[0].startswith(f"{listed}: item 2: lead_id")

    latin = tmp_path / "latin.csv"
    latin.write_bytes(HEADER.encode() + "L-1,Société,Zoé,z@s.example,FR,3\n".encode("latin-1"))
    at = len(HEADER) + len("L-1,Soci")
    assert read_leads(latin) == ([], [f"{latin}: not UTF-8 text (byte {at}); save it as UTF-8"])


def test_progress_is_a_bar_on_a_terminal_and_tenths_in_a_log() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, out = Terminal(), io.StringIO()
    progress = Progress(4, terminal)
    for number in range(4):
        progress.note(f"started deal-L-{number}", out=out)
        progress.advance()
    progress.close()
    assert terminal.getvalue().endswith("\r[" + "#" * 30 + "] 4/4 leads\n")
    assert "\r\033[K" in terminal.getvalue() and out.getvalue().count("started") == 4

    log = io.StringIO()
    big = Progress(Progress.LARGE, log)
    for _ in range(Progress.LARGE):
        big.advance()
    assert log.getvalue().splitlines()[0] == f"{Progress.LARGE // 10}/{Progress.LARGE} leads sent"
    assert len(log.getvalue().splitlines()) == 10
    small = io.StringIO()
    Progress(3, small).advance()
    assert small.getvalue() == ""  # a small batch in a log: nothing to watch


async def test_l2c_start_starts_the_good_rows_and_sums_up(
    ts_env: WorkflowEnvironment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [f"L-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    leads_csv = tmp_path / "leads.csv"
    leads_csv.write_text(
        HEADER
        + f"{ids[0]},Acme,Ada,ada@acme.example,US,250\n"
        + f"{ids[1]},Globex,Hank,hank@globex.example,DE,x\n"
        + f"{ids[2]},Initech,Bill,bill@initech.example,GB,12\n"
    )
    queue = f"intake-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TEMPORAL_ADDRESS", ts_env.client.service_client.config.target_host)
    from_env = Settings.from_env
    monkeypatch.setattr(
        Settings, "from_env", lambda: from_env().model_copy(update={"task_queue": queue})
    )
    try:
        await ts_env.client.start_workflow(  # the first lead already has a deal
            "DealWorkflow", {"lead_id": ids[0]}, id=workflow_id_for(ids[0]), task_queue=queue
        )
        # On a thread: the command runs an event loop of its own.
        code = await asyncio.to_thread(cli.main, ["start", "--file", str(leads_csv)])
    finally:
        await terminate_deals(ts_env.client, ids)
    out, err = capsys.readouterr()
    assert code == 1  # a row was refused
    assert f"refused {leads_csv}:3: employees" in err
    assert f"started deal-{ids[2]}" in out and f"exists  deal-{ids[0]}" in out
    assert out.splitlines()[-1] == "1 started, 1 already had a deal, 1 refused"
    missing = await asyncio.to_thread(cli.main, ["start", "--file", str(tmp_path / "none.csv")])
    assert missing == 2 and "no such lead file" in capsys.readouterr().err
