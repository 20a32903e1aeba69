"""The remote codec endpoint (`l2c codec-server`): the Temporal Web UI and the `temporal` CLI send it
the encrypted payloads of a deal's history to show them decrypted, and the payloads a person types
(a signal's JSON) to have them encrypted before the server stores them.

Protocol (Temporal's remote codec): `POST {endpoint}/decode` and `POST {endpoint}/encode` with a
JSON body `{"payloads": [{"metadata": {...}, "data": "<base64>"}]}`, answered in the same shape.
The Web UI calls it from the browser, so it answers CORS preflights for the UI's origins only:
a page from anywhere else cannot have it decrypt a deal. Whoever can reach it can read the deals,
so it listens on loopback unless told otherwise; behind a proxy that authenticates, in production.
"""

import json
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from temporalio.api.common.v1 import Payloads

from l2c.codec import CodecError, EncryptionCodec
from l2c.local_http import BackgroundServer, BadRequest, JsonHandler

# What the UI sends besides Content-Type: the namespace, and its access token when configured
# to pass it on (TEMPORAL_CODEC_PASS_ACCESS_TOKEN).
ALLOWED_HEADERS = "Content-Type, X-Namespace, Authorization, Caller-Type"
BODY_LIMIT = 4 * 1024 * 1024  # a history page's payloads; the server's own blob limit is 2 MiB


def codec_handler(codec: EncryptionCodec, allowed_origins: list[str]) -> type[JsonHandler]:
    origins = frozenset(origin.rstrip("/") for origin in allowed_origins)

    class CodecHandler(JsonHandler):
        def do_OPTIONS(self) -> None:
            origin = self.headers.get("Origin")
            if origin is None or origin.rstrip("/") not in origins:
                self.send_json(403, {"error": f"origin {origin!r} may not use this codec"})
                return
            self.send_response(204)
            for name, value in self._cors(origin).items():
                self.send_header(name, value)
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
            self.send_header("Access-Control-Max-Age", "600")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0].rstrip("/").endswith("/healthz"):
                self.send_json(200, {"ok": True, "active_key": codec.keyring.active})
            else:
                self.send_json(404, {"error": "POST /encode or /decode; GET /healthz"})

        def do_POST(self) -> None:
            origin = self.headers.get("Origin")
            # No Origin: not a browser (the temporal CLI, curl); a browser's is checked.
            if origin is not None and origin.rstrip("/") not in origins:
                self.send_json(403, {"error": f"origin {origin!r} may not use this codec"})
                return
            cors = self._cors(origin) if origin is not None else {}
            path = self.path.split("?", 1)[0].rstrip("/")
            if path.endswith("/encode"):
                transform = codec.encrypt
            elif path.endswith("/decode"):
                transform = codec.decrypt
            else:
                self.send_json(404, {"error": "POST /encode or /decode"}, cors)
                return
            try:
                payloads = self._read_payloads()
                answer = Payloads(payloads=[transform(payload) for payload in payloads.payloads])
            except (BadRequest, CodecError) as err:
                status = err.status if isinstance(err, BadRequest) else 400
                self.send_json(status, {"error": str(err)}, cors)
                return
            self.send_json(200, MessageToDict(answer), cors)

        def _read_payloads(self) -> Payloads:
            body = self.read_body(limit=BODY_LIMIT)
            try:
                data: Any = json.loads(body or b"{}")
                if not isinstance(data, dict):
                    raise BadRequest('the body must be {"payloads": [...]}')
                return ParseDict(data, Payloads())
            except (ValueError, ParseError) as err:
                raise BadRequest(f'the body must be {{"payloads": [...]}}: {err}') from None

        @staticmethod
        def _cors(origin: str) -> dict[str, str]:
            return {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Vary": "Origin",
            }

    return CodecHandler


def codec_endpoint(
    port: int, codec: EncryptionCodec, allowed_origins: list[str], host: str = "127.0.0.1"
) -> BackgroundServer:
    return BackgroundServer(port, codec_handler(codec, allowed_origins), host)
