"""Payload encryption: AES-GCM with key rotation, the codec server the Web UI uses, and proof that
the history Temporal stores of a deal holds no customer data in plain text."""

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Engine
from temporalio.api.common.v1 import Payload, Payloads, WorkflowExecution
from temporalio.api.history.v1 import History
from temporalio.api.workflowservice.v1 import SignalWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from l2c.audit import decision_timeline, replay_files, run_histories
from l2c.cli import main
from l2c.codec import (
    ENCODING,
    KEY_ID_METADATA,
    CodecError,
    EncryptionCodec,
    Keyring,
    activate_key,
    add_key,
    data_converter,
)
from l2c.codec_server import codec_endpoint
from l2c.config import BusinessRules, ConfigError, Settings
from l2c.drill import free_port, start_time_skipping_env
from l2c.local_http import BackgroundServer
from l2c.server import wait_for_port
from models.deal import Stage
from tests.helpers import (
    accept_lead,
    own_worker,
    sign,
    signal,
    start,
    state_of,
    wait_for_stage,
    wait_until,
)

UI = "http://localhost:8233"
# Customer data the deal carries, spelled so that no other bytes of a history contain it.
PII = {
    "company": "Quillfeather Pharmaceuticals",
    "contact_name": "Philippa Quillfeather",
    "contact_email": "philippa@quillfeather-pharma.example",
}


def json_payload(value: Any) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(value).encode())


# ---------------------------------------------------------------- keyring and codec


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    path = tmp_path / "codec-keyring.toml"
    add_key(path)
    return path


def test_keyring_file_is_private_and_names_its_active_key(keyring_path: Path) -> None:
    ring = Keyring.load(keyring_path)
    assert list(ring.keys) == [ring.active]
    assert len(ring.keys[ring.active]) == 32
    assert keyring_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "no such file"),
        ("active = [", "cannot be read"),
        ('active = "a"', "a [keys] table with at least one key"),
        ('active = "a"\n[keys]\na = "not base64!"', "key 'a' is not base64"),
        (f'active = "a"\n[keys]\na = "{base64.b64encode(b"short").decode()}"', "is 5 bytes"),
        (f'active = "b"\n[keys]\na = "{base64.b64encode(bytes(32)).decode()}"', "must name one"),
        (
            f'active = "a.b"\n[keys]\n"a.b" = "{base64.b64encode(bytes(32)).decode()}"',
            "key id 'a.b' may hold only letters, digits, - and _",
        ),
    ],
)
def test_unusable_keyrings_are_refused_with_the_file_and_reason(
    tmp_path: Path, text: str | None, reason: str
) -> None:
    path = tmp_path / "ring.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(reason)) as refused:
        Keyring.load(path)
    assert str(path) in str(refused.value)


async def test_payloads_round_trip_encrypted_under_the_active_key(keyring_path: Path) -> None:
    codec = EncryptionCodec(Keyring.load(keyring_path))
    original = json_payload(PII)
    [sealed] = await codec.encode([original])
    assert sealed.metadata["encoding"] == ENCODING
    assert sealed.metadata[KEY_ID_METADATA] == codec.keyring.active.encode()
    assert b"Quillfeather" not in sealed.SerializeToString()
    assert (await codec.decode([sealed])) == [original]
    # The same value twice is two different ciphertexts (a fresh nonce each time).
    assert (await codec.encode([original]))[0].data != sealed.data


async def test_plain_payloads_from_before_encryption_still_decode(keyring_path: Path) -> None:
    codec = EncryptionCodec(Keyring.load(keyring_path))
    plain = json_payload({"approver": "mia.manager"})
    assert await codec.decode([plain]) == [plain]


async def test_a_payload_too_short_or_not_a_payload_inside_is_refused(keyring_path: Path) -> None:
    codec = EncryptionCodec(Keyring.load(keyring_path))
    key_id = codec.keyring.active.encode()
    short = Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id}, data=b"1234")
    with pytest.raises(CodecError, match="too short"):
        await codec.decode([short])
    nonce = bytes(12)
    junk = AESGCM(codec.keyring.keys[codec.keyring.active]).encrypt(nonce, b"\xff\xff", key_id)
    sealed = Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id}, data=nonce + junk)
    with pytest.raises(CodecError, match="is not a payload"):
        await codec.decode([sealed])


def test_keygen_never_leaves_a_readable_leftover(keyring_path: Path) -> None:
    leftover = keyring_path.with_name(keyring_path.name + ".new")
    leftover.write_text("from a crash")
    leftover.chmod(0o644)
    add_key(keyring_path)
    assert not leftover.exists() and keyring_path.stat().st_mode & 0o777 == 0o600
    assert len(Keyring.load(keyring_path).keys) == 2


async def test_a_payload_of_an_unknown_key_or_altered_is_refused_with_the_reason(
    keyring_path: Path, tmp_path: Path
) -> None:
    codec = EncryptionCodec(Keyring.load(keyring_path))
    [sealed] = await codec.encode([json_payload(PII)])
    add_key(tmp_path / "other.toml")
    other = EncryptionCodec(Keyring.load(tmp_path / "other.toml"))
    with pytest.raises(
        CodecError, match=re.escape(f"key '{codec.keyring.active}', which the keyring")
    ):
        await other.decode([sealed])
    altered = Payload()
    altered.CopyFrom(sealed)
    altered.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(CodecError, match=re.escape("or the payload was altered")):
        await codec.decode([altered])
    # A payload relabelled with another key id of the same ring fails authentication too.
    add_key(keyring_path, activate=False)
    ring = Keyring.load(keyring_path)
    relabelled = Payload()
    relabelled.CopyFrom(sealed)
    staged = next(key_id for key_id in ring.keys if key_id != ring.active)
    relabelled.metadata[KEY_ID_METADATA] = staged.encode()
    with pytest.raises(CodecError, match=re.escape(f"does not decrypt with key '{staged}'")):
        await EncryptionCodec(ring).decode([relabelled])


async def test_rotation_keeps_old_keys_for_old_payloads(keyring_path: Path) -> None:
    first = Keyring.load(keyring_path)
    [old] = await EncryptionCodec(first).encode([json_payload("before rotation")])

    staged = add_key(keyring_path, activate=False)
    ring = Keyring.load(keyring_path)
    assert ring.active == first.active and staged in ring.keys  # staged: decrypts, not encrypts
    activate_key(keyring_path, staged)
    rotated = EncryptionCodec(Keyring.load(keyring_path))
    [new] = await rotated.encode([json_payload("after rotation")])
    assert new.metadata[KEY_ID_METADATA] == staged.encode()
    assert [json.loads(p.data) for p in await rotated.decode([old, new])] == [
        "before rotation",
        "after rotation",
    ]
    with pytest.raises(ConfigError, match=re.escape("no key 'k-nope'")):
        activate_key(keyring_path, "k-nope")


def test_settings_refuse_a_bad_keyring_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("L2C_CODEC_KEYRING", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match=re.escape("missing.toml: no such file")):
        Settings.from_env()


def test_keygen_and_activate_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secrets" / "ring.toml"
    monkeypatch.delenv("L2C_CODEC_KEYRING", raising=False)
    assert main(["codec", "keygen"]) == 2
    assert "--keyring FILE, or set L2C_CODEC_KEYRING" in capsys.readouterr().err
    # The keyring the environment names is created by keygen, not refused for not existing.
    monkeypatch.setenv("L2C_CODEC_KEYRING", str(tmp_path / "from-env.toml"))
    assert main(["codec", "keygen"]) == 0
    assert len(Keyring.load(tmp_path / "from-env.toml").keys) == 1
    monkeypatch.delenv("L2C_CODEC_KEYRING")
    assert main(["codec", "keygen", "--keyring", str(path)]) == 0
    first = Keyring.load(path).active
    assert main(["codec", "keygen", "--keyring", str(path), "--stage"]) == 0
    out = capsys.readouterr().out
    staged = next(k for k in Keyring.load(path).keys if k != first)
    assert f"l2c codec activate {staged}" in out and Keyring.load(path).active == first
    monkeypatch.setenv("L2C_CODEC_KEYRING", str(path))
    assert main(["codec", "activate", staged]) == 0
    assert Keyring.load(path).active == staged
    assert main(["codec", "activate", "k-unknown"]) == 2
    assert "no key 'k-unknown'" in capsys.readouterr().err


# ---------------------------------------------------------------- the codec server


@pytest.fixture
def codec_server(keyring_path: Path) -> Iterator[BackgroundServer]:
    served = codec_endpoint(0, EncryptionCodec(Keyring.load(keyring_path)), [UI])
    served.start()
    yield served
    served.stop()


def url(served: BackgroundServer, path: str) -> str:
    return f"http://127.0.0.1:{served.port}{path}"


def as_json(payloads: list[Payload]) -> dict[str, Any]:
    return {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                "data": base64.b64encode(p.data).decode(),
            }
            for p in payloads
        ]
    }


def from_json(body: dict[str, Any]) -> list[Payload]:
    return [
        Payload(
            metadata={k: base64.b64decode(v) for k, v in item.get("metadata", {}).items()},
            data=base64.b64decode(item.get("data", "")),
        )
        for item in body["payloads"]
    ]


def test_codec_server_answers_the_ui_preflight_for_its_origin_only(
    codec_server: BackgroundServer,
) -> None:
    for path in ("/encode", "/decode"):
        preflight = httpx.options(
            url(codec_server, path),
            headers={
                "Origin": UI,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == UI
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "content-type" in allowed and "x-namespace" in allowed
    elsewhere = httpx.options(
        url(codec_server, "/decode"), headers={"Origin": "https://evil.example"}
    )
    assert elsewhere.status_code == 403
    assert "access-control-allow-origin" not in elsewhere.headers
    stolen = httpx.post(
        url(codec_server, "/decode"),
        json={"payloads": []},
        headers={"Origin": "https://evil.example"},
    )
    assert stolen.status_code == 403 and "may not use this codec" in stolen.json()["error"]


def test_codec_server_encodes_and_decodes_for_the_ui(
    codec_server: BackgroundServer, keyring_path: Path
) -> None:
    headers = {"Origin": UI, "X-Namespace": "default"}
    typed = json_payload({"approver": "mia.manager", "comment": PII["contact_name"]})
    encoded = httpx.post(url(codec_server, "/encode"), json=as_json([typed]), headers=headers)
    assert encoded.status_code == 200
    assert encoded.headers["access-control-allow-origin"] == UI
    [sealed] = from_json(encoded.json())
    assert sealed.metadata["encoding"] == ENCODING and b"Quillfeather" not in sealed.data
    decoded = httpx.post(url(codec_server, "/decode"), json=encoded.json(), headers=headers)
    assert from_json(decoded.json()) == [typed]
    # Without an Origin (the temporal CLI's --codec-endpoint, curl) it answers too.
    assert httpx.post(url(codec_server, "/decode"), json=encoded.json()).status_code == 200
    assert httpx.get(url(codec_server, "/healthz")).json() == {
        "ok": True,
        "active_key": Keyring.load(keyring_path).active,
    }


@pytest.mark.parametrize(
    ("path", "body", "status", "reason"),
    [
        ("/decode", b"{not json", 400, 'the body must be {"payloads": [...]}'),
        ("/decode", b"[1, 2]", 400, 'the body must be {"payloads": [...]}'),
        ("/decode", b'{"payloads": [{"nonsense": 1}]}', 400, "the body must be"),
        ("/transmogrify", b'{"payloads": []}', 404, "POST /encode or /decode"),
    ],
)
def test_codec_server_refuses_bad_requests_with_the_reason(
    codec_server: BackgroundServer, path: str, body: bytes, status: int, reason: str
) -> None:
    answer = httpx.post(url(codec_server, path), content=body, headers={"Origin": UI})
    assert answer.status_code == status
    assert reason in answer.json()["error"]


def test_codec_server_refuses_a_payload_it_cannot_decrypt(
    codec_server: BackgroundServer, tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    add_key(other)
    foreign = EncryptionCodec(Keyring.load(other)).encrypt(json_payload("secret"))
    answer = httpx.post(url(codec_server, "/decode"), json=as_json([foreign]))
    assert answer.status_code == 400 and "which the keyring" in answer.json()["error"]


def test_codec_server_command_needs_a_keyring_and_serves_with_one(
    keyring_path: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "L2C_CODEC_KEYRING"}
    refused = subprocess.run(
        [sys.executable, "-m", "l2c.cli", "codec-server"], env=env, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "set L2C_CODEC_KEYRING" in refused.stderr
    port = free_port()
    served = subprocess.Popen(
        [sys.executable, "-m", "l2c.cli", "codec-server", "--port", str(port)],
        env={**env, "L2C_CODEC_KEYRING": str(keyring_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, served, timeout=30)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["ok"] is True
    finally:
        served.terminate()
        assert served.wait(timeout=10) == 0  # SIGTERM: a clean stop


# ---------------------------------------------------------------- a deal, encrypted end to end


@pytest.fixture(scope="module")
def module_keyring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("codec") / "codec-keyring.toml"
    add_key(path)
    return path


@pytest.fixture(scope="module")
async def encrypted_env(module_keyring: Path) -> AsyncIterator[WorkflowEnvironment]:
    async with await start_time_skipping_env(data_converter(module_keyring)) as env:
        yield env


async def history_bytes(client: Client, workflow_id: str) -> bytes:
    """What the Temporal server stores of the deal, every run, as raw bytes."""
    runs = await run_histories(client, workflow_id)
    return b"".join(History(events=events).SerializeToString() for events in runs)


async def test_the_stored_history_holds_no_plaintext_customer_data(
    encrypted_env: WorkflowEnvironment,
    module_keyring: Path,
    sqlite_ledger: Engine,
    rules: BusinessRules,
    settings: Settings,
    tmp_path: Path,
) -> None:
    client = encrypted_env.client
    settings = settings.model_copy(update={"codec_keyring": module_keyring})
    codec = EncryptionCodec(Keyring.load(module_keyring))
    served = codec_endpoint(0, codec, [UI])
    served.start()
    try:
        async with own_worker(client, sqlite_ledger, rules, settings):
            handle = await start(client, settings.task_queue, **PII)
            await wait_for_stage(handle, Stage.QUALIFIED)
            await accept_lead(handle)
            await signal(handle, "submit_quote", {
                "submitted_by": "nora.na", "lines": [{"sku": "PLATFORM", "quantity": 10}],
                "discount_percent": "15", "term_months": 12, "billing_period": "monthly",
            })  # fmt: skip
            await wait_for_stage(handle, Stage.AWAITING_APPROVAL)

            # Ops approve from the Web UI: the UI has the codec server encrypt the JSON they
            # typed, then sends the signal with it; the worker decrypts it.
            typed = json_payload({"approver": "mia.manager", "comment": "ok for Philippa"})
            sealed = httpx.post(
                f"http://127.0.0.1:{served.port}/encode",
                json=as_json([typed]),
                headers={"Origin": UI},
            ).json()
            await client.workflow_service.signal_workflow_execution(
                SignalWorkflowExecutionRequest(
                    namespace=client.namespace,
                    workflow_execution=WorkflowExecution(workflow_id=handle.id),
                    signal_name="approve_discount",
                    input=Payloads(payloads=from_json(sealed)),
                    identity="temporal-ui",
                    request_id=str(uuid.uuid4()),
                )
            )
            state = await wait_for_stage(handle, Stage.AWAITING_SIGNATURE)
            await sign(handle, state)
            state = await wait_until(handle, lambda s: len(s.invoices) >= 1)
            assert state.lead.contact_email == PII["contact_email"]  # the worker reads it

            stored = await history_bytes(client, handle.id)
            assert stored.count(ENCODING) > 10  # inputs, signals, activities, results
            assert codec.keyring.active.encode() in stored
            for value in [*PII.values(), "ok for Philippa", "Ada Lovelace", "ada@acme.example"]:
                assert value.encode() not in stored, f"{value!r} is stored in plain text"

            # Whoever holds the key reads it all: the audit timeline decrypts the same history.
            timeline = await decision_timeline(client, handle.id)
            text = json.dumps([row[1:] for row in timeline])
            assert PII["contact_email"] in text and "ok for Philippa" in text

            # A client without the key sees ciphertext only, and cannot query the deal's state.
            blind = Client(**{**client.config(), "data_converter": pydantic_data_converter})
            with pytest.raises(KeyError, match="Unknown payload encoding binary/encrypted"):
                await blind.get_workflow_handle(handle.id).query("state")
            assert (await state_of(handle)).stage == Stage.ACTIVE

            # An auditor replays the exported history with the keyring, and only with it.
            exported = tmp_path / f"{handle.id}.json"
            exported.write_text((await handle.fetch_history()).to_json())
            assert await replay_files([exported], module_keyring) == [(exported, None)]
            [(_, without_key)] = await replay_files([exported])
            assert without_key is not None
    finally:
        served.stop()
