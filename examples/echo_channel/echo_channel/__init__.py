"""An example third-party channel adapter, installable on its own.

The "echo" service posts `{"id": ..., "from": ..., "text": ...}` to the hub, signed with
`X-Echo-Signature: <hex HMAC-SHA256(token, body)>`, and accepts replies as JSON POSTs to the
account's `outbox_url`.
It shows everything an adapter needs: declared facts, configuration checks, verify, a pure
parse, ack and send, registered through the `omnihub.adapters` entry point.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.responses import PlainTextResponse, Response

from hub import hookimpl
from hub.adapter import (
    Account,
    Adapter,
    InboundEvent,
    IngestResult,
    SendResult,
    WebhookRequest,
    require_setting,
)
from hub.errors import BadRequest, SendError, SignatureRejected


def sign(token: str, body: bytes) -> bytes:
    return hmac.new(token.encode(), body, hashlib.sha256).hexdigest().encode()


@dataclass(frozen=True)
class EchoSettings:
    token: str
    outbox_url: str


class EchoAdapter(Adapter):
    name = "echo"
    kinds = ("text",)
    max_text_length = 1000
    secret_settings = ("token",)

    def configure(self, account: str, settings: Mapping[str, Any]) -> EchoSettings:
        return EchoSettings(require_setting(account, settings, "token"),
                            require_setting(account, settings, "outbox_url"))

    async def verify(self, request: WebhookRequest, account: Account) -> None:
        given = request.headers.get("x-echo-signature", "")
        if not hmac.compare_digest(given.encode(), sign(account.settings.token, request.body)):
            raise SignatureRejected("missing or wrong X-Echo-Signature")

    def parse(self, request: WebhookRequest, account: Account) -> list[InboundEvent]:
        try:
            data = json.loads(request.body)
        except ValueError:
            raise BadRequest("body is not valid JSON", code="malformed_json") from None
        if not isinstance(data, dict):
            raise BadRequest("body must be a JSON object", code="malformed_json")
        for key in ("id", "from", "text"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise BadRequest(f"{key} is required", field=key)
        return [InboundEvent(external_id=data["id"], external_user_id=data["from"],
                             kind="text", text=data["text"], raw=data)]

    def ack(self, request: WebhookRequest, account: Account,
            results: list[IngestResult]) -> Response:
        return PlainTextResponse("ok")

    async def send(self, message: Any, account: Account, http: httpx.AsyncClient) -> SendResult:
        try:
            r = await http.post(account.settings.outbox_url,
                                json={"to": message.external_user_id, "text": message.text})
        except httpx.HTTPError as exc:
            raise SendError(f"echo service unreachable: {type(exc).__name__}") from None
        if r.status_code >= 500:
            raise SendError(f"echo service answered {r.status_code}")
        if r.status_code >= 300:
            raise SendError(f"echo service refused the message ({r.status_code})", permanent=True)
        return SendResult(external_id=r.json().get("id") if r.content else None)


@hookimpl
def register_adapters(register) -> None:
    register(EchoAdapter())
