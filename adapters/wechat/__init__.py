"""The WeChat Official Account channel (`adapter = "wechat"`), built on wechatpy.

* GET URL verification: SHA-1 over the sorted token/timestamp/nonce; `echostr` echoed.
* Pushes in plain mode (`signature`) and safe mode (`encrypt_type=aes`, `msg_signature`,
  AES-CBC with the account's EncodingAESKey; the app id inside is checked).
* The ack is "success" (encrypted in safe mode), sent once the message is stored; replies
  go later through the customer-service message API, from the worker.
* Replies are allowed in WeChat's window after the user's action, with its quotas.
* subscribe/unsubscribe record consent; with an app secret the user's unionid is fetched
  so that identities of one person across accounts share one customer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import redis
from starlette.responses import PlainTextResponse, Response
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import (
    InvalidAppIdException,
    InvalidSignatureException,
    WeChatClientException,
)

from adapters.wechat.client import SharedTokenClient
from adapters.wechat.parse import (
    EVENT_QUOTA,
    EVENT_WINDOW_S,
    MESSAGE_WINDOW_S,
    TRIGGER_EVENTS,
    read_xml,
    to_event,
)
from hub import hookimpl
from hub.adapter import (
    Account,
    Adapter,
    InboundEvent,
    IngestResult,
    ReplyAllowance,
    SendResult,
    Services,
    WebhookRequest,
    download,
    require_setting,
)
from hub.enrich import profile_fetched, record_profile
from hub.errors import BadRequest, ConfigError, SendError, SignatureRejected
from hub.merging import link_identity

if TYPE_CHECKING:
    from hub.models import Message

log = logging.getLogger("omnihub.wechat")

DEFAULT_API = "https://api.weixin.qq.com"
MAX_IMAGE_BYTES = 10 * 1024 * 1024  # WeChat's limit for temporary image media
# Codes after which retrying cannot help (window closed / unsubscribed, quota, bad openid…).
PERMANENT_ERRORS = {
    45015: "outside WeChat's reply window, or the user unsubscribed",
    45047: "WeChat's reply quota for this user is used up",
    40003: "WeChat does not know this openid for the account",
    43004: "the user does not follow the account",
    40007: "WeChat rejected the media id",
    45002: "the message is too long for WeChat",
}


@dataclass(frozen=True)
class WeChatSettings:
    token: str
    app_id: str
    app_secret: str | None = None
    encoding_aes_key: str | None = None
    api_base_url: str = DEFAULT_API
    reply_quota: int = 5
    window_s: int = 0  # WeChat signs timestamps but defines no window: opt-in
    fetch_user_info: bool = True


def signature(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


class WeChatAdapter(Adapter):
    name = "wechat"
    kinds = ("text", "image", "link", "card")
    max_text_length = 2048
    secret_settings = ("token", "app_secret", "encoding_aes_key")
    has_reply_window = True

    def __init__(self) -> None:
        self._redis: redis.Redis | None = None
        self._clients: dict[str, SharedTokenClient] = {}

    def configure(self, account: str, settings: Mapping[str, Any]) -> WeChatSettings:
        allowed = {f for f in WeChatSettings.__dataclass_fields__}
        unknown = set(settings) - allowed
        if unknown:
            raise ConfigError(f"account {account!r}: unknown setting {sorted(unknown)[0]!r}")
        token = require_setting(account, settings, "token")
        app_id = require_setting(account, settings, "app_id")
        aes_key = settings.get("encoding_aes_key")
        if aes_key is not None:
            if not isinstance(aes_key, str) or len(aes_key) != 43:
                raise ConfigError(f"account {account!r}: setting 'encoding_aes_key' must be "
                                  "the 43-character EncodingAESKey from the WeChat console")
            try:
                WeChatCrypto(token, aes_key, app_id)
            except Exception:
                raise ConfigError(f"account {account!r}: setting 'encoding_aes_key' is not "
                                  "valid base64") from None
        base = settings.get("api_base_url", DEFAULT_API)
        if urlsplit(str(base)).scheme not in ("http", "https"):
            raise ConfigError(f"account {account!r}: setting 'api_base_url' must be an http(s) "
                              "URL")
        for key in ("reply_quota", "window_s"):
            value = settings.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"account {account!r}: setting {key!r} must be a whole "
                                  "number, 0 or more")
        return WeChatSettings(
            token=token, app_id=app_id, app_secret=settings.get("app_secret"),
            encoding_aes_key=aes_key, api_base_url=str(base),
            reply_quota=settings.get("reply_quota", 5), window_s=settings.get("window_s", 0),
            fetch_user_info=bool(settings.get("fetch_user_info", True)))

    def start(self, services: Services) -> None:
        self._redis = redis.Redis.from_url(services.redis_url)
        self._clients.clear()

    def client(self, account: Account) -> SharedTokenClient:
        s: WeChatSettings = account.settings
        if not s.app_secret:
            raise SendError(f"account {account.name!r} has no app_secret, so it cannot call "
                            "the WeChat API", permanent=True)
        if account.name not in self._clients:
            assert self._redis is not None, "the hub has not started this adapter"
            self._clients[account.name] = SharedTokenClient(s.app_id, s.app_secret,
                                                            s.api_base_url, self._redis)
        return self._clients[account.name]

    # ---- inbound ---------------------------------------------------------------------------

    def _check_signature(self, request: WebhookRequest, account: Account) -> None:
        q = request.query
        timestamp, nonce = q.get("timestamp", ""), q.get("nonce", "")
        given = q.get("signature", "")
        if not (timestamp and nonce and given):
            raise SignatureRejected("missing signature, timestamp or nonce",
                                    code="missing_signature")
        if not hmac.compare_digest(signature(account.settings.token, timestamp, nonce), given):
            raise SignatureRejected("signature does not match the account token")
        window = account.settings.window_s
        if window:
            try:
                age = abs(time.time() - int(timestamp))
            except ValueError:
                raise SignatureRejected("timestamp must be unix seconds",
                                        code="bad_timestamp") from None
            if age > window:
                raise SignatureRejected(f"timestamp is outside the {window} s window",
                                        code="stale_timestamp")

    async def handshake(self, request: WebhookRequest, account: Account) -> Response:
        self._check_signature(request, account)
        return PlainTextResponse(request.query.get("echostr", ""))

    async def verify(self, request: WebhookRequest, account: Account) -> None:
        self._check_signature(request, account)
        if request.query.get("encrypt_type") == "aes":
            if not account.settings.encoding_aes_key:
                raise SignatureRejected("safe-mode push but no encoding_aes_key is configured",
                                        code="not_configured")
            given = request.query.get("msg_signature", "")
            encrypted = read_xml(request.body).get("Encrypt")
            if not isinstance(encrypted, str) or not encrypted:
                raise BadRequest("safe-mode push without <Encrypt>", field="Encrypt")
            expected = signature(account.settings.token, request.query["timestamp"],
                                 request.query["nonce"], encrypted)
            if not hmac.compare_digest(expected, given):
                raise SignatureRejected("msg_signature does not match the encrypted body")

    def parse(self, request: WebhookRequest, account: Account) -> list[InboundEvent]:
        body = request.body
        if request.query.get("encrypt_type") == "aes":
            body = self._decrypt(request, account)
        return [to_event(read_xml(body))]

    def _decrypt(self, request: WebhookRequest, account: Account) -> bytes:
        s: WeChatSettings = account.settings
        crypto = WeChatCrypto(s.token, s.encoding_aes_key, s.app_id)
        q = request.query
        try:
            return crypto.decrypt_message(request.body, q.get("msg_signature"),
                                          q.get("timestamp"), q.get("nonce")).encode()
        except InvalidAppIdException:
            raise SignatureRejected("the encrypted message is for another app id",
                                    code="wrong_app_id") from None
        except InvalidSignatureException:
            raise SignatureRejected("msg_signature does not match the encrypted body") from None
        except Exception:
            raise BadRequest("the encrypted message cannot be decrypted with this account's "
                             "EncodingAESKey", code="undecryptable") from None

    def ack(self, request: WebhookRequest, account: Account,
            results: list[IngestResult]) -> Response:
        q = request.query
        if q.get("encrypt_type") == "aes":
            s: WeChatSettings = account.settings
            crypto = WeChatCrypto(s.token, s.encoding_aes_key, s.app_id)
            reply = crypto.encrypt_message("success", q.get("nonce"), q.get("timestamp"))
            return Response(reply, media_type="application/xml")
        return PlainTextResponse("success")

    def reply_allowance(self, trigger: Message, account: Account) -> ReplyAllowance | None:
        if trigger.kind != "event":
            return ReplyAllowance(MESSAGE_WINDOW_S, account.settings.reply_quota or None)
        if (trigger.event or {}).get("name") in TRIGGER_EVENTS:
            return ReplyAllowance(EVENT_WINDOW_S, EVENT_QUOTA)
        return None

    # ---- outbound --------------------------------------------------------------------------

    async def send(self, message: Message, account: Account, http: httpx.AsyncClient) -> SendResult:
        client = self.client(account)
        openid = message.external_user_id
        if message.kind == "text":
            call = lambda: client.message.send_text(openid, message.text)  # noqa: E731
        elif message.kind == "image":
            media_id = await self._image_media_id(message, client, http)
            call = lambda: client.message.send_image(openid, media_id)  # noqa: E731
        else:  # link / card: one news article
            link = next((a for a in message.attachments if a.kind in ("link", "card")), None)
            image = next((a for a in message.attachments if a.kind == "image"), None)
            if link is None or not link.url:
                raise SendError("a link message needs an attachment of kind link with a url",
                                permanent=True)
            article = {"title": link.name or message.text or link.url,
                       "description": message.text or "", "url": link.url,
                       "image": image.url if image else None}
            call = lambda: client.message.send_articles(openid, [article])  # noqa: E731
        await self._call(call)
        return SendResult(external_id=None)

    async def _image_media_id(self, message: Message, client: SharedTokenClient,
                              http: httpx.AsyncClient) -> str:
        image = next((a for a in message.attachments if a.kind == "image"), None)
        if image is None:
            raise SendError("an image message needs an image attachment", permanent=True)
        if image.media_id:
            return str(image.media_id)
        data, content_type = await download(http, image.url or "", MAX_IMAGE_BYTES)
        name = urlsplit(image.url).path.rsplit("/", 1)[-1] or "image.jpg"
        mime = image.mime or content_type or "image/jpeg"
        upload = (name, io.BytesIO(data), mime)
        result = await self._call(lambda: client.media.upload("image", upload))
        return str(result["media_id"])

    async def _call(self, call: Any) -> Any:
        """Run a (blocking, requests-based) wechatpy call in a thread, mapping its errors."""
        try:
            return await asyncio.to_thread(call)
        except WeChatClientException as exc:
            code = exc.errcode
            if code in PERMANENT_ERRORS:
                raise SendError(f"{PERMANENT_ERRORS[code]} ({code})", permanent=True) from None
            if code is None:
                status = exc.response.status_code if exc.response is not None else "no answer"
                raise SendError(f"WeChat API HTTP error ({status})") from None
            raise SendError(f"WeChat API error {code}: {exc.errmsg}") from None
        except Exception as exc:  # requests' connection errors and timeouts
            raise SendError(f"WeChat API unreachable: {type(exc).__name__}") from None

    # ---- enrichment (in the background job) ------------------------------------------------

    async def fetch_user(self, account: Account, openid: str) -> dict | None:
        if not (account.settings.app_secret and account.settings.fetch_user_info):
            return None
        client = self.client(account)
        try:
            return await self._call(lambda: client.user.get(openid))
        except SendError as exc:
            log.warning("wechat user info unavailable", extra={"account": account.name,
                                                               "reason": exc.reason})
            return None


@hookimpl
def register_adapters(register) -> None:
    register(WeChatAdapter())


@hookimpl
async def message_received(message, account, hub) -> None:
    """Record the user's unionid, which ties their identities across accounts together."""
    if account is None or not isinstance(account.adapter, WeChatAdapter):
        return
    if message.kind == "event" and (message.event or {}).get("name") == "unsubscribe":
        return
    key = (message.adapter, message.account, message.external_user_id)
    if await asyncio.to_thread(profile_fetched, *key):
        return
    info = await account.adapter.fetch_user(account, message.external_user_id)
    if info is not None:
        learnt = await asyncio.to_thread(record_profile, *key, info.get("unionid"))
        if learnt is not None:
            await link_identity(hub, learnt)
