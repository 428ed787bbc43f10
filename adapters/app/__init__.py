"""The `app` channel: a company's own mobile app backend talking to the hub over HTTPS.

We define this protocol, so it is the reference for every adapter:

* Inbound: `POST /webhooks/app/{account}` with JSON `{user_id, message_id, type, text,
  attachments, location, event, context, user_name}`; a delivery receipt is
  `{user_id, type: "receipt", message_id: <our outbound id>, status: delivered|read}`.
* Both directions are signed: header `X-Omnihub-Timestamp` (unix seconds) and
  `X-Omnihub-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>`;
  requests outside the account's `window_s` (default 300, 0 disables) are rejected.
* Replies are POSTed, signed the same way, to the account's `callback_url`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from starlette.responses import JSONResponse, Response

from hub import hookimpl
from hub.adapter import (
    MESSAGE_KINDS,
    Account,
    Adapter,
    InboundEvent,
    IngestResult,
    SendResult,
    WebhookRequest,
    attachments_from_json,
    require_setting,
)
from hub.errors import BadRequest, ConfigError, SendError
from hub.signing import sign, signed_headers, verify_signed

__all__ = ["AppAdapter", "sign", "signed_headers"]

if TYPE_CHECKING:
    from hub.models import Message

MAX_TEXT = 4096
APP_RECEIPTS = ("delivered", "read")


@dataclass(frozen=True)
class AppSettings:
    secret: str
    callback_url: str | None = None
    window_s: int = 300


class AppAdapter(Adapter):
    name = "app"
    kinds = MESSAGE_KINDS
    max_text_length = MAX_TEXT
    secret_settings = ("secret",)

    def configure(self, account: str, settings: Mapping[str, Any]) -> AppSettings:
        unknown = set(settings) - {"secret", "callback_url", "window_s"}
        if unknown:
            raise ConfigError(f"account {account!r}: unknown setting {sorted(unknown)[0]!r}")
        secret = require_setting(account, settings, "secret")
        if len(secret) < 16:
            raise ConfigError(f"account {account!r}: setting 'secret' must be at least 16 "
                              "characters")
        callback = settings.get("callback_url")
        if callback is not None:
            parts = urlsplit(str(callback))
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"account {account!r}: setting 'callback_url' must be an "
                                  "http(s) URL")
        window = settings.get("window_s", 300)
        if not isinstance(window, int) or isinstance(window, bool) or window < 0:
            raise ConfigError(f"account {account!r}: setting 'window_s' must be a whole "
                              "number of seconds, 0 to disable")
        return AppSettings(secret, callback, window)

    async def verify(self, request: WebhookRequest, account: Account) -> None:
        verify_signed(request.headers, request.body, account.settings.secret,
                      account.settings.window_s)

    def parse(self, request: WebhookRequest, account: Account) -> list[InboundEvent]:
        try:
            data = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("body is not valid JSON", code="malformed_json") from None
        if not isinstance(data, dict):
            raise BadRequest("body must be a JSON object", code="malformed_json")
        user_id = _required(data, "user_id")
        message_id = _required(data, "message_id")
        kind = data.get("type", "text")
        if kind == "receipt":
            status = data.get("status")
            if status not in APP_RECEIPTS:
                raise BadRequest(f"status must be one of {', '.join(APP_RECEIPTS)}",
                                 field="status")
            return [InboundEvent(external_id=f"receipt:{message_id}:{status}",
                                 external_user_id=user_id, kind="event", raw=data,
                                 receipt_for=message_id, receipt_status=status)]
        if kind not in MESSAGE_KINDS:
            raise BadRequest(f"type must be one of {', '.join(MESSAGE_KINDS)} or receipt",
                             field="type")
        text = _string(data, "text", limit=MAX_TEXT)
        if kind == "text" and not text:
            raise BadRequest("a text message needs a non-empty text", field="text")
        context = data.get("context") or {}
        if not isinstance(context, dict):
            raise BadRequest("context must be a JSON object", field="context")
        return [InboundEvent(
            external_id=message_id, external_user_id=user_id, kind=kind, text=text,
            attachments=attachments_from_json(data.get("attachments")),
            location=_object(data, "location"), event=_event(data), context=context,
            raw=data, display_name=_string(data, "user_name", limit=200),
            identifiers={"app_user_id": user_id},  # the app backend signs who its user is
            sent_at=_sent_at(data),
        )]

    def ack(self, request: WebhookRequest, account: Account,
            results: list[IngestResult]) -> Response:
        return JSONResponse({"id": results[0].message_id, "duplicate": results[0].duplicate})

    async def send(self, message: Message, account: Account, http: httpx.AsyncClient) -> SendResult:
        url = account.settings.callback_url
        if not url:
            raise SendError(f"account {account.name!r} has no callback_url to deliver to",
                            permanent=True)
        payload = {
            "message_id": str(message.id), "conversation_id": str(message.conversation_id),
            "customer_id": str(message.customer_id), "user_id": message.external_user_id,
            "type": message.kind, "text": message.text,
            "attachments": [a.to_mongo().to_dict() for a in message.attachments],
            "created_at": message.created_at.replace(tzinfo=UTC).isoformat(),
        }
        body = json.dumps(payload, ensure_ascii=False).encode()
        try:
            response = await http.post(url, content=body,
                                       headers=signed_headers(account.settings.secret, body))
        except httpx.HTTPError as exc:
            raise SendError(f"callback {_host(url)} unreachable: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise SendError(f"callback {_host(url)} answered {response.status_code}")
        if response.status_code >= 300:
            raise SendError(f"callback {_host(url)} refused the message with "
                            f"{response.status_code}", permanent=True)
        return SendResult(external_id=str(message.id))


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _string(data: dict, key: str, *, required: bool = False, limit: int) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise BadRequest(f"{key} is required", field=key)
        return None
    if isinstance(value, int) and not isinstance(value, bool) and key.endswith("_id"):
        value = str(value)
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string", field=key)
    if len(value) > limit:
        raise BadRequest(f"{key} is longer than {limit} characters", field=key)
    return value


def _required(data: dict, key: str) -> str:
    value = _string(data, key, required=True, limit=256)
    assert value is not None
    return value


def _object(data: dict, key: str) -> dict | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise BadRequest(f"{key} must be a JSON object", field=key)
    return value


def _event(data: dict) -> dict | None:
    event = _object(data, "event")
    if data.get("type") == "event" and not (event and isinstance(event.get("name"), str)):
        raise BadRequest("an event needs event.name", field="event.name")
    return event


def _sent_at(data: dict) -> datetime | None:
    value = data.get("sent_at")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadRequest("sent_at must be unix seconds", field="sent_at")
    try:
        return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        raise BadRequest("sent_at is out of range", field="sent_at") from None


@hookimpl
def register_adapters(register) -> None:
    register(AppAdapter())
