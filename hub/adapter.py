"""The channel adapter protocol: what every adapter, built-in or third-party, implements.

An adapter turns one channel's webhooks into `InboundEvent`s and sends `Message`s back.
`verify` checks the signature, `parse` is pure (bytes and headers in, events out, so it is
easy to test with recorded payloads), `ack` answers the channel, `send` delivers a reply.
Channel facts (text limit, supported kinds, secret settings) are declared as class data
and enforced by the hub, not by each adapter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
from starlette.responses import JSONResponse, Response

from hub.errors import BadRequest, ConfigError, NotFound, SendError

if TYPE_CHECKING:
    from hub.models import Message

MESSAGE_KINDS = ("text", "image", "audio", "video", "file", "location", "link", "card", "event")
RECEIPT_STATUSES = ("sent", "delivered", "read", "failed")


@dataclass(frozen=True)
class WebhookRequest:
    """One webhook delivery as the adapter sees it: everything needed, nothing ASGI."""

    method: str
    url: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes


@dataclass
class Attachment:
    """A file on a message. `data` (bytes the channel delivered inline, e.g. an email part)
    is stored by the hub as media and replaced by a `media_id`; it is never kept on the message.
    """

    kind: str
    url: str | None = None
    media_id: str | None = None
    mime: str | None = None
    size: int | None = None
    name: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def fields(self) -> dict[str, Any]:
        """What is stored on the message (everything but the bytes)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "data"}


@dataclass
class ThreadHints:
    """Which earlier conversation an inbound message answers (email threading)."""

    references: list[str] = field(default_factory=list)  # channel ids of earlier messages
    conversation_id: str | None = None  # from a reply token the adapter has verified
    subject: str | None = None  # normalised ("Re:" etc. removed), the last resort


@dataclass
class InboundEvent:
    """A normalised inbound message (or a delivery receipt) before it is stored.

    `external_id` is the channel's id for the delivery and the de-duplication key;
    `external_user_id` identifies the sender on this (adapter, account).
    A receipt sets `receipt_for` (our outbound message id, or the channel's id for it when
    `receipt_by_external_id`) and `receipt_status` (with `receipt_reason` when it failed).
    `identifiers` are verified facts about the sender (`phone` in E.164, `email`) recorded
    on a new identity.
    """

    external_id: str
    external_user_id: str
    kind: str = "text"
    text: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    location: dict[str, Any] | None = None
    event: dict[str, Any] | None = None
    context: dict[str, Any] = field(default_factory=dict)
    raw: Any = None
    sent_at: datetime | None = None
    display_name: str | None = None
    receipt_for: str | None = None
    receipt_status: str | None = None
    receipt_by_external_id: bool = False
    receipt_reason: str | None = None
    identifiers: dict[str, str] = field(default_factory=dict)
    identifiers_verified: bool = True  # False where the channel cannot prove them (email From)
    thread: ThreadHints | None = None
    automated: str | None = None  # "auto_reply" or "bounce": recorded, never opens or answers
    bounce_of: str | None = None  # for a bounce: the channel id of our message that bounced
    consent: bool | None = None  # the sender opted in (True) or out (False) of this channel

    @property
    def is_receipt(self) -> bool:
        return self.receipt_for is not None


@dataclass(frozen=True)
class IngestResult:
    message_id: str
    duplicate: bool
    customer_id: str | None = None
    conversation_id: str | None = None


@dataclass(frozen=True)
class SendResult:
    external_id: str | None = None


@dataclass(frozen=True)
class Services:
    """What the hub shares with adapters at start-up (shared state lives in Redis)."""

    redis_url: str


@dataclass(frozen=True)
class ReplyAllowance:
    """How long after a customer's action, and how many times, the channel lets us reply."""

    window_s: float
    quota: int | None = None


class Account:
    """One configured channel account: `/webhooks/{adapter}/{name}`.

    `settings` is whatever the adapter's `configure` returned; secret settings never
    appear in `repr`.
    """

    def __init__(self, adapter: Adapter, name: str, settings: Any) -> None:
        self.adapter = adapter
        self.name = name
        self.settings = settings

    def __repr__(self) -> str:
        shown = {}
        if dataclasses.is_dataclass(self.settings):
            for f in dataclasses.fields(self.settings):
                value = getattr(self.settings, f.name)
                shown[f.name] = "***" if f.name in self.adapter.secret_settings else value
        return f"Account({self.adapter.name}/{self.name}, {shown})"


class Adapter:
    """Base class for channel adapters; subclass it and override what the channel needs."""

    name: ClassVar[str] = ""
    kinds: ClassVar[Sequence[str]] = ("text",)
    max_text_length: ClassVar[int | None] = None
    secret_settings: ClassVar[Sequence[str]] = ()
    has_reply_window: ClassVar[bool] = False  # replies only within a window after the customer
    max_body_bytes: ClassVar[int | None] = None  # webhook body limit, if not the hub's

    def configure(self, account: str, settings: Mapping[str, Any]) -> Any:
        """Validate one `[[accounts]]` table; raise ConfigError naming account and field."""
        return dict(settings)

    def handoff_link(self, account: Account, token: str, code: str) -> str | None:
        """A link that opens this channel with a handoff's code or token filled in."""
        return None

    def replies_after_opt_out(self, account: Account) -> bool:
        """Whether replies (not marketing) may still go to a customer who opted out."""
        return False

    def check_outbound(self, kind: str, text: str | None, account: Account) -> None:
        """Refuse (raise Unprocessable) what this account cannot send, before it is queued."""

    def start(self, services: Services) -> None:
        """Called once when the hub starts, before any request (override to open clients)."""

    def reply_allowance(self, trigger: Message, account: Account) -> ReplyAllowance | None:
        """Only for adapters with `has_reply_window`: what the customer's inbound `trigger`
        allows us to send, or None if that kind of inbound opens no window.
        """
        return None

    async def handshake(self, request: WebhookRequest, account: Account) -> Response:
        """Answer a GET verification request (channels that have one override this)."""
        raise NotFound(f"{self.name} webhooks have no GET handshake", code="no_handshake")

    async def verify(self, request: WebhookRequest, account: Account) -> None:
        """Raise SignatureRejected unless the request is authentic and fresh."""
        raise NotImplementedError

    def parse(self, request: WebhookRequest, account: Account) -> list[InboundEvent]:
        """Turn a verified request into events; raise BadRequest on malformed payloads."""
        raise NotImplementedError

    def ack(self, request: WebhookRequest, account: Account,
            results: list[IngestResult]) -> Response:
        """The reply the channel expects once everything is stored."""
        return JSONResponse({"ok": True})

    async def send(self, message: Message, account: Account, http: httpx.AsyncClient) -> SendResult:
        """Deliver an outbound message; raise SendError (permanent or not) on failure."""
        raise NotImplementedError


def require_setting(account: str, settings: Mapping[str, Any], key: str, kind: type = str) -> Any:
    """Fetch a required account setting or raise a ConfigError naming account and field."""
    value = settings.get(key)
    if value is None or value == "":
        raise ConfigError(f"account {account!r}: setting {key!r} is required")
    if not isinstance(value, kind):
        raise ConfigError(f"account {account!r}: setting {key!r} must be a {kind.__name__}")
    return value


async def download(http: httpx.AsyncClient, url: str, limit: int) -> tuple[bytes, str | None]:
    """Fetch an attachment to send it on, as (bytes, content type); raises SendError
    (permanent for a 4xx or a file over `limit`) so the job knows whether to retry.
    """
    try:
        response = await http.get(url)
    except httpx.HTTPError as exc:
        raise SendError(f"cannot download {url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise SendError(f"{url} answered {response.status_code}",
                        permanent=400 <= response.status_code < 500)
    if len(response.content) > limit:
        raise SendError(f"{url} is larger than {limit} bytes", permanent=True)
    return response.content, response.headers.get("content-type")


def attachments_from_json(value: Any) -> list[Attachment]:
    """Validate a JSON list of attachments (shared by adapters and the API)."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 20:
        raise BadRequest("attachments must be a list of at most 20 objects", field="attachments")
    out = []
    for i, item in enumerate(value):
        where = f"attachments[{i}]"
        if not isinstance(item, dict) or item.get("kind") not in MESSAGE_KINDS:
            raise BadRequest(f"{where} needs a kind ({', '.join(MESSAGE_KINDS)})", field=where)
        if not item.get("url") and not item.get("media_id"):
            raise BadRequest(f"{where} needs a url or a media_id", field=where)
        size = item.get("size")
        if size is not None and (not isinstance(size, int) or size < 0):
            raise BadRequest(f"{where}.size must be a non-negative integer", field=f"{where}.size")
        for key in ("url", "media_id", "mime", "name"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise BadRequest(f"{where}.{key} must be a string", field=f"{where}.{key}")
        out.append(Attachment(kind=item["kind"], url=item.get("url"), media_id=item.get("media_id"),
                              mime=item.get("mime"), size=size, name=item.get("name")))
    return out
