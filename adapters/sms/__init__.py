"""SMS through Twilio (`adapter = "sms"`), with the `twilio` package.

* Inbound: `X-Twilio-Signature` checked with the account's auth token over the public URL
  (`public_url` + `/webhooks/sms/{account}` + query) and every received parameter.
* `From` is normalised to E.164 (phonenumbers) and recorded as the customer's verified phone.
* MMS media become attachments; `MessageSid` is the de-duplication key.
* STOP/UNSUBSCRIBE/… and 退订 withdraw consent, START/… give it back; HELP is just a message.
* Status callbacks (`MessageStatus`, `ErrorCode`) update our outbound message.
* Outbound through Twilio's REST API from the worker, at most one message per
  `send_interval_s` per sending number across all workers (a Redis slot), long texts sent as
  one concatenated SMS of up to `max_segments` segments or refused (`long_text = "reject"`).
"""

from __future__ import annotations

import asyncio
import hmac
import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import phonenumbers
import redis
from starlette.responses import Response
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.messaging_response import MessagingResponse

from hub import hookimpl
from hub.adapter import (
    Account,
    Adapter,
    Attachment,
    InboundEvent,
    IngestResult,
    SendResult,
    Services,
    WebhookRequest,
    require_setting,
)
from hub.errors import (
    BadRequest,
    ConfigError,
    SendError,
    SignatureRejected,
    Throttled,
    Unprocessable,
)

if TYPE_CHECKING:
    from hub.models import Message

# Keywords carriers and Twilio treat as opt-out / opt-in, plus common Chinese ones.
STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE",
              "退订", "TD", "取消订阅", "取消"}
START_WORDS = {"START", "YES", "UNSTOP", "OPTIN", "订阅", "重新订阅"}
DELIVERY_STATUSES = {"sent": "sent", "delivered": "delivered", "read": "read",
                     "undelivered": "failed", "failed": "failed"}
# Twilio errors after which retrying cannot help.
PERMANENT_CODES = {21211: "the number is not a valid phone number",
                   21610: "the recipient has replied STOP to this sender",
                   21614: "the number cannot receive SMS",
                   21408: "sending to this region is not enabled on the Twilio account",
                   30004: "the message is blocked", 21602: "the message body is empty"}
GSM7 = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
           "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€")
MAX_TWILIO_BODY = 1600


def segments(text: str) -> int:
    """How many SMS segments a text needs (GSM-7: 160, else UCS-2: 70; fewer when split)."""
    if all(ch in GSM7 for ch in text):
        size = sum(2 if ch in "^{}\\[~]|€" else 1 for ch in text)
        return 1 if size <= 160 else math.ceil(size / 153)
    units = len(text.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


def e164(number: str, region: str) -> str:
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        raise BadRequest(f"From {number[:4]}… is not a phone number", field="From") from None
    if not phonenumbers.is_possible_number(parsed):
        raise BadRequest("From is not a possible phone number", field="From")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def keyword(text: str) -> str:
    return text.strip().strip(string.punctuation + "。！!").upper()


@dataclass(frozen=True)
class SmsSettings:
    account_sid: str
    auth_token: str
    public_url: str
    from_number: str | None = None
    messaging_service_sid: str | None = None
    api_base_url: str | None = None
    long_text: str = "split"
    max_segments: int = 10
    send_interval_s: float = 1.0
    replies_after_opt_out: bool = False
    default_region: str = "US"


class SmsAdapter(Adapter):
    name = "sms"
    kinds = ("text", "image", "audio", "video", "file")
    max_text_length = MAX_TWILIO_BODY
    secret_settings = ("auth_token",)

    def __init__(self) -> None:
        self._redis: redis.Redis | None = None
        self._clients: dict[str, Client] = {}

    def configure(self, account: str, settings: Mapping[str, Any]) -> SmsSettings:
        unknown = set(settings) - set(SmsSettings.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"account {account!r}: unknown setting {sorted(unknown)[0]!r}")
        values = {k: require_setting(account, settings, k)
                  for k in ("account_sid", "auth_token", "public_url")}
        if urlsplit(values["public_url"]).scheme not in ("http", "https"):
            raise ConfigError(f"account {account!r}: setting 'public_url' must be the hub's "
                              "external http(s) base URL, e.g. https://hub.example.com")
        if not settings.get("from_number") and not settings.get("messaging_service_sid"):
            raise ConfigError(f"account {account!r}: set 'from_number' or "
                              "'messaging_service_sid'")
        region = str(settings.get("default_region", "US")).upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(f"account {account!r}: setting 'default_region' is not a region")
        from_number = settings.get("from_number")
        if from_number:
            try:
                from_number = e164(str(from_number), region)
            except BadRequest:
                raise ConfigError(f"account {account!r}: setting 'from_number' is not a phone "
                                  "number") from None
        long_text = settings.get("long_text", "split")
        if long_text not in ("split", "reject"):
            raise ConfigError(f"account {account!r}: setting 'long_text' must be split or reject")
        max_segments = settings.get("max_segments", 10)
        if not isinstance(max_segments, int) or not 1 <= max_segments <= 10:
            raise ConfigError(f"account {account!r}: setting 'max_segments' must be 1 to 10")
        interval = settings.get("send_interval_s", 1.0)
        if not isinstance(interval, int | float) or interval < 0:
            raise ConfigError(f"account {account!r}: setting 'send_interval_s' must be a number "
                              "of seconds, 0 or more")
        return SmsSettings(
            **values, from_number=from_number,
            messaging_service_sid=settings.get("messaging_service_sid"),
            api_base_url=settings.get("api_base_url"), long_text=long_text,
            max_segments=max_segments, send_interval_s=float(interval),
            replies_after_opt_out=bool(settings.get("replies_after_opt_out", False)),
            default_region=region)

    def start(self, services: Services) -> None:
        self._redis = redis.Redis.from_url(services.redis_url)
        self._clients.clear()

    def handoff_link(self, account: Account, token: str, code: str) -> str | None:
        number = account.settings.from_number
        return f"sms:{number}?body={code}" if number else None

    def replies_after_opt_out(self, account: Account) -> bool:
        return account.settings.replies_after_opt_out

    # ---- inbound ---------------------------------------------------------------------------

    def webhook_url(self, account: Account, request: WebhookRequest | None = None) -> str:
        """The URL Twilio signs: the public base URL, our path and the query as received."""
        url = account.settings.public_url.rstrip("/") + f"/webhooks/sms/{account.name}"
        query = urlsplit(request.url).query if request else ""
        return f"{url}?{query}" if query else url

    async def verify(self, request: WebhookRequest, account: Account) -> None:
        given = request.headers.get("x-twilio-signature")
        if not given:
            raise SignatureRejected("missing X-Twilio-Signature", code="missing_signature")
        params = _form(request.body)
        validator = RequestValidator(account.settings.auth_token)
        if not validator.validate(self.webhook_url(account, request), params, given):
            raise SignatureRejected("X-Twilio-Signature does not match; check the account's "
                                    "public_url and auth_token")
        sid = params.get("AccountSid")
        if sid and not hmac.compare_digest(sid, account.settings.account_sid):
            raise SignatureRejected("the request is for another Twilio account")

    def parse(self, request: WebhookRequest, account: Account) -> list[InboundEvent]:
        params = _form(request.body)
        sid = params.get("MessageSid") or params.get("SmsSid")
        if not sid:
            raise BadRequest("MessageSid is required", field="MessageSid")
        status = params.get("MessageStatus")
        if status and status != "received":
            mapped = DELIVERY_STATUSES.get(status)
            if mapped is None:  # queued, sending, accepted…: nothing to record
                return []
            reason = None
            if mapped == "failed":
                code = params.get("ErrorCode")
                reason = f"Twilio reports {status}" + (f" (error {code})" if code else "")
            return [InboundEvent(external_id=f"status:{sid}:{status}",
                                 external_user_id=params.get("To", "?"), kind="event",
                                 raw=params, receipt_for=sid, receipt_by_external_id=True,
                                 receipt_status=mapped, receipt_reason=reason)]
        phone = e164(params.get("From", ""), account.settings.default_region)
        text = params.get("Body", "")
        attachments = _media(params)
        opt = (params.get("OptOutType") or "").upper() or keyword(text)
        consent = False if opt in STOP_WORDS else True if opt in START_WORDS else None
        return [InboundEvent(
            external_id=sid, external_user_id=phone, text=text or None, raw=params,
            kind="text" if text or not attachments else attachments[0].kind,
            attachments=attachments, consent=consent, identifiers={"phone": phone})]

    def ack(self, request: WebhookRequest, account: Account,
            results: list[IngestResult]) -> Response:
        return Response(str(MessagingResponse()), media_type="text/xml")

    # ---- outbound --------------------------------------------------------------------------

    def check_outbound(self, kind: str, text: str | None, account: Account) -> None:
        if not text:
            return
        count = segments(text)
        limit = 1 if account.settings.long_text == "reject" else account.settings.max_segments
        if count > limit:
            raise Unprocessable(f"the text needs {count} SMS segments and this account allows "
                                f"{limit}; shorten it", field="text", code="text_too_long")

    def client(self, account: Account) -> Client:
        s: SmsSettings = account.settings
        if account.name not in self._clients:
            client = Client(s.account_sid, s.auth_token)
            if s.api_base_url:
                client.api.base_url = s.api_base_url.rstrip("/")
            self._clients[account.name] = client
        return self._clients[account.name]

    def _take_send_slot(self, account: Account) -> None:
        """At most one send per interval per sending number, across every worker."""
        s: SmsSettings = account.settings
        if not s.send_interval_s or self._redis is None:
            return
        key = f"omnihub:sms:slot:{s.from_number or s.messaging_service_sid}"
        if not self._redis.set(key, 1, nx=True, px=max(1, int(s.send_interval_s * 1000))):
            wait_ms = int(self._redis.pttl(key))  # type: ignore[arg-type]
            raise Throttled(max(wait_ms, 10) / 1000)

    async def send(self, message: Message, account: Account, http: httpx.AsyncClient) -> SendResult:
        s: SmsSettings = account.settings
        self.check_outbound(message.kind, message.text, account)  # settings may have changed
        await asyncio.to_thread(self._take_send_slot, account)
        sender: dict[str, Any] = ({"messaging_service_sid": s.messaging_service_sid}
                                  if s.messaging_service_sid else {"from_": s.from_number})
        media = [a.url for a in message.attachments if a.url]
        try:
            created = await asyncio.to_thread(
                lambda: self.client(account).messages.create(
                    to=message.external_user_id, body=message.text or "",
                    status_callback=self.webhook_url(account), **sender,
                    **({"media_url": media} if media else {})))
        except TwilioRestException as exc:
            if exc.code in PERMANENT_CODES:
                raise SendError(f"{PERMANENT_CODES[exc.code]} (Twilio {exc.code})",
                                permanent=True) from None
            if exc.status == 429 or exc.status >= 500:
                raise SendError(f"Twilio answered {exc.status}") from None
            raise SendError(f"Twilio refused the message: {exc.code or exc.status}",
                            permanent=True) from None
        except Exception as exc:  # requests' connection errors and timeouts
            raise SendError(f"Twilio unreachable: {type(exc).__name__}") from None
        return SendResult(external_id=created.sid)


def _form(body: bytes) -> dict[str, str]:
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8 form data", code="malformed_form") from None


def _media(params: dict[str, str]) -> list[Attachment]:
    try:
        count = int(params.get("NumMedia", "0") or 0)
    except ValueError:
        raise BadRequest("NumMedia must be a number", field="NumMedia") from None
    out = []
    for i in range(min(count, 10)):
        url = params.get(f"MediaUrl{i}")
        if not url:
            raise BadRequest(f"MediaUrl{i} is missing", field=f"MediaUrl{i}")
        mime = params.get(f"MediaContentType{i}", "application/octet-stream")
        major = mime.split("/", 1)[0]
        kind = {"image": "image", "audio": "audio", "video": "video"}.get(major, "file")
        out.append(Attachment(kind=kind, url=url, mime=mime))
    return out


@hookimpl
def register_adapters(register) -> None:
    register(SmsAdapter())
