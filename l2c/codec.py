"""Payload encryption: what Temporal stores of a deal (its input, signals, activity arguments and
results, queries' answers, failures' messages) is AES-256-GCM ciphertext; only the worker, the
client, the replayer and the codec server hold the keys.

A keyring file names its keys and which one encrypts new payloads (`active`). Each payload
carries the id of the key it was encrypted with, so rotating (a new active key, the old ones
kept) needs no re-encryption: old payloads decrypt with their old key. A key may leave the ring
only once no history it encrypted is retained any more.

    # config: L2C_CODEC_KEYRING=secrets/codec-keyring.toml (`l2c codec keygen` writes it)
    active = "k20261124-3f9a"
    [keys]
    k20261124-3f9a = "<32 random bytes, base64>"
    k20260501-77c1 = "<the previous key, still decrypting older payloads>"
"""

import base64
import binascii
import contextlib
import dataclasses
import fcntl
import os
import re
import secrets
import tomllib
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from l2c.config import ConfigError

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12
TAG_BYTES = 16  # GCM's authentication tag, at the end of the ciphertext
KEY_BYTES = 32  # AES-256
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class CodecError(ValueError):
    """A payload cannot be decrypted; the message says which key and why."""


@dataclasses.dataclass(frozen=True)
class Keyring:
    path: Path
    active: str
    keys: dict[str, bytes]

    @classmethod
    def load(cls, path: Path) -> "Keyring":
        """The keyring at `path`, refused with the file and the reason when it cannot be used."""
        where = f"codec keyring {path}"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"{where}: no such file (create it with `l2c codec keygen`)"
            ) from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{where}: cannot be read: {err}") from None
        active, raw_keys = data.get("active"), data.get("keys")
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise ConfigError(f"{where}: a [keys] table with at least one key is needed")
        keys: dict[str, bytes] = {}
        for key_id, encoded in raw_keys.items():
            if not KEY_ID.fullmatch(key_id):
                raise ConfigError(
                    f"{where}: key id {key_id!r} may hold only letters, digits, - and _ "
                    "(at most 64): it travels in every payload's metadata"
                )
            try:
                key = base64.b64decode(str(encoded), validate=True)
            except (binascii.Error, ValueError):
                raise ConfigError(f"{where}: key {key_id!r} is not base64") from None
            if len(key) != KEY_BYTES:
                raise ConfigError(
                    f"{where}: key {key_id!r} is {len(key)} bytes; AES-256 keys are {KEY_BYTES}"
                )
            keys[key_id] = key
        if not isinstance(active, str) or active not in keys:
            raise ConfigError(
                f"{where}: `active` must name one of its keys ({', '.join(sorted(keys))}); "
                f"it is {active!r}"
            )
        return cls(path, active, keys)


def new_key_id(now: datetime | None = None) -> str:
    """A key id that sorts by creation date and cannot collide with a sibling made the same day."""
    day = (now or datetime.now(UTC)).strftime("%Y%m%d")
    return f"k{day}-{secrets.token_hex(2)}"


def add_key(path: Path, activate: bool = True) -> str:
    """Add a fresh random key to the keyring at `path` (created if missing); returns its id.

    Activated at once, it encrypts what is written from now on, and the older keys stay to
    decrypt what they encrypted. With several workers, add it without activating first (every
    process must hold a key before any process encrypts with it), restart them all, then
    `activate_key` and restart again."""
    with _locked(path):
        ring = Keyring.load(path) if path.exists() else None
        keys = dict(ring.keys) if ring else {}
        key_id = new_key_id()
        while key_id in keys:
            key_id = new_key_id()
        keys = {key_id: AESGCM.generate_key(bit_length=256), **keys}
        _write_keyring(path, key_id if activate or ring is None else ring.active, keys)
    return key_id


def activate_key(path: Path, key_id: str) -> None:
    with _locked(path):
        ring = Keyring.load(path)
        if key_id not in ring.keys:
            raise ConfigError(
                f"codec keyring {path}: no key {key_id!r} (it has {', '.join(sorted(ring.keys))})"
            )
        _write_keyring(path, key_id, ring.keys)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One change to the keyring at a time: two keygens at once would each drop the other's
    key, and payloads encrypted with a lost key can never be read again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write_keyring(path: Path, active: str, keys: dict[str, bytes]) -> None:
    lines = [
        "# Payload encryption keys (l2c/codec.py). Keep this file secret, and keep an old key",
        "# as long as any retained workflow history was encrypted with it.",
        f'active = "{active}"',
        "",
        "[keys]",
        *(f'{kid} = "{base64.b64encode(key).decode()}"' for kid, key in keys.items()),
    ]
    # Written beside the old file, readable by its owner only, on disk, then swapped in whole:
    # a crash mid-write never leaves a keyring without the keys the histories need.
    fresh = path.with_name(path.name + ".new")
    fresh.unlink(missing_ok=True)  # a leftover of a crash, with whatever mode it had
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(fresh, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM with a fresh 96-bit nonce per payload; the key id is authenticated too, so a
    payload cannot be passed off as another key's."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self.keyring.active
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        # Payloads written before encryption was turned on stay readable as they are.
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CodecError(
                f"payload was encrypted with key {key_id!r}, which the keyring "
                f"{self.keyring.path} does not hold (it has {', '.join(sorted(self._ciphers))})"
            )
        if len(payload.data) < NONCE_BYTES + TAG_BYTES:
            raise CodecError(f"payload marked encrypted with key {key_id!r} is too short to be")
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag:
            raise CodecError(
                f"payload does not decrypt with key {key_id!r}: the key's bytes differ from the "
                "ones it was encrypted with, or the payload was altered"
            ) from None
        decoded = Payload()
        try:
            decoded.ParseFromString(plain)
        except DecodeError:  # authentic, so written by a codec that was not this one
            raise CodecError(f"payload decrypted with key {key_id!r} is not a payload") from None
        return decoded


def data_converter(keyring_path: Path | None) -> DataConverter:
    """The project's converter (pydantic JSON), encrypting when a keyring is configured. Failure
    messages and stack traces then travel encrypted too: they can quote a customer's data."""
    if keyring_path is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(Keyring.load(keyring_path)),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )
