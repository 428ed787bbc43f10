"""Email (`adapter = "email"`): out with aiosmtplib, in three ways through one parse.

* Out: SMTP (STARTTLS, TLS or plain; auth from config) with a proper Message-ID,
  In-Reply-To/References on the customer's last mail, a Reply-To carrying a signed
  conversation token, text and HTML parts, and attachments.
* In: `omnihub serve --smtp HOST:PORT` (aiosmtpd on the app's event loop), a periodic IMAP
  fetch (`imap_host`…, one process at a time through a Redis lock), or
  `POST /webhooks/email/{account}` with the raw RFC 822 mail, signed like the app channel.
* Threading: In-Reply-To/References, then the reply token, then the subject.
* Auto-replies and bounces are recorded but never open a conversation or reach plugins; a
  bounce fails the message it bounces.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import html
import imaplib
import logging
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from functools import partial
from typing import TYPE_CHECKING, Any

import aiosmtplib
import httpx
import redis
from aiosmtpd.smtp import SMTP, Envelope, Session
from starlette.responses import JSONResponse, Response

from adapters.email.parse import address, to_event
from hub import hookimpl
from hub.adapter import (
    Account,
    Adapter,
    InboundEvent,
    IngestResult,
    SendResult,
    Services,
    WebhookRequest,
    download,
    require_setting,
)
from hub.errors import BadRequest, ConfigError, HubError, SendError, Unavailable
from hub.inbound import receive
from hub.models import Media, Message
from hub.signing import verify_signed

if TYPE_CHECKING:
    from hub.runtime import Hub

log = logging.getLogger("omnihub.email")
SECURITY = ("starttls", "tls", "none")
MAX_MAIL_BYTES = 35 * 1024 * 1024  # a 25 MB attachment, base64-encoded


@dataclass(frozen=True)
class EmailSettings:
    address: str
    inbound_secret: str
    display_name: str | None = None
    default_subject: str = "Your conversation with us"
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_security: str = "starttls"
    smtp_username: str | None = None
    smtp_password: str | None = None
    imap_host: str | None = None
    imap_port: int = 993
    imap_security: str = "tls"
    imap_username: str | None = None
    imap_password: str | None = None
    imap_folder: str = "INBOX"
    imap_interval_s: float = 60.0
    max_attachment_bytes: int = 10 * 1024 * 1024
    window_s: int = 300

    @property
    def local(self) -> str:
        return self.address.split("@", 1)[0]

    @property
    def domain(self) -> str:
        return self.address.split("@", 1)[1]


class EmailAdapter(Adapter):
    name = "email"
    kinds = ("text", "image", "audio", "video", "file")
    max_text_length = 100_000
    secret_settings = ("inbound_secret", "smtp_password", "imap_password")
    max_body_bytes = MAX_MAIL_BYTES

    def __init__(self) -> None:
        self._redis: redis.Redis | None = None

    def configure(self, account: str, settings: Mapping[str, Any]) -> EmailSettings:
        unknown = set(settings) - set(EmailSettings.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"account {account!r}: unknown setting {sorted(unknown)[0]!r}")
        addr = address(require_setting(account, settings, "address"))
        if addr.count("@") != 1 or "+" in addr.split("@")[0]:
            raise ConfigError(f"account {account!r}: setting 'address' must be a plain mailbox "
                              "address such as support@example.com")
        secret = require_setting(account, settings, "inbound_secret")
        if len(secret) < 16:
            raise ConfigError(f"account {account!r}: setting 'inbound_secret' must be at least "
                              "16 characters")
        for key in ("smtp_security", "imap_security"):
            if settings.get(key, "tls" if key == "imap_security" else "starttls") not in SECURITY:
                raise ConfigError(f"account {account!r}: setting {key!r} must be one of "
                                  f"{', '.join(SECURITY)}")
        for key in ("smtp_port", "imap_port", "max_attachment_bytes", "window_s"):
            value = settings.get(key)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"account {account!r}: setting {key!r} must be a whole number")
        values = {k: v for k, v in settings.items() if k not in ("address", "inbound_secret")}
        return EmailSettings(address=addr, inbound_secret=secret, **values)

    def handoff_link(self, account: Account, token: str, code: str) -> str | None:
        return f"mailto:{account.settings.address}?subject={token}"

    def start(self, services: Services) -> None:
        self._redis = redis.Redis.from_url(services.redis_url)

    # ---- reply tokens -----------------------------------------------------------------------

    @staticmethod
    def reply_token(settings: EmailSettings, conversation_id: str) -> str:
        mac = hmac.new(settings.inbound_secret.encode(), conversation_id.encode(), hashlib.sha256)
        return f"{conversation_id}{mac.hexdigest()[:10]}"

    def token_conversation(self, settings: EmailSettings, recipients: list[str]) -> str | None:
        """The conversation id in a `local+TOKEN@domain` recipient, if its MAC is right."""
        prefix = settings.local + "+"
        for rcpt in recipients:
            local, _, domain = rcpt.partition("@")
            if domain != settings.domain or not local.startswith(prefix):
                continue
            token = local[len(prefix):]
            conversation_id = token[:24]
            if hmac.compare_digest(self.reply_token(settings, conversation_id), token):
                return conversation_id
        return None

    def accepts(self, settings: EmailSettings, rcpt: str) -> bool:
        local, _, domain = address(rcpt).partition("@")
        return domain == settings.domain and (local == settings.local or
                                              local.startswith(settings.local + "+"))

    # ---- inbound ----------------------------------------------------------------------------

    async def verify(self, request: WebhookRequest, account: Account) -> None:
        verify_signed(request.headers, request.body, account.settings.inbound_secret,
                      account.settings.window_s)

    def parse(self, request: WebhookRequest, account: Account) -> list[InboundEvent]:
        s: EmailSettings = account.settings
        headers = BytesHeaderParser().parsebytes(request.body)
        rcpts = [address(a) for _, a in getaddresses(
            [str(headers.get(h, "")) for h in ("To", "Cc", "Delivered-To", "X-Original-To")])]
        rcpts += [address(r) for r in request.query.get("rcpt", "").split(",") if r]
        return [to_event(request.body, max_attachment_bytes=s.max_attachment_bytes,
                         token_conversation=self.token_conversation(s, rcpts))]

    def ack(self, request: WebhookRequest, account: Account,
            results: list[IngestResult]) -> Response:
        return JSONResponse({"id": results[0].message_id or None,
                             "duplicate": results[0].duplicate})

    # ---- outbound ---------------------------------------------------------------------------

    def compose(self, message: Message, account: Account,
                attachments: list[tuple[str, str, bytes]]) -> EmailMessage:
        """The mail for an outbound message, threaded on the customer's last mail."""
        s: EmailSettings = account.settings
        last = Message.objects(conversation_id=message.conversation_id, direction="in",
                               adapter=self.name, account=account.name,
                               automated=None).order_by("-id").only("raw").first()
        raw = (last.raw or {}) if last else {}
        subject = raw.get("subject") or s.default_subject
        mail = EmailMessage()
        mail["From"] = formataddr((s.display_name or "", s.address))
        mail["To"] = message.external_user_id
        token = self.reply_token(s, str(message.conversation_id))
        mail["Reply-To"] = f"{s.local}+{token}@{s.domain}"
        mail["Subject"] = subject if not last or subject.lower().startswith("re:") \
            else f"Re: {subject}"
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = make_msgid(domain=s.domain)
        if raw.get("message_id"):
            mail["In-Reply-To"] = f"<{raw['message_id']}>"
            refs = [*raw.get("references", []), raw["message_id"]][-20:]
            mail["References"] = " ".join(f"<{r}>" for r in refs)
        text = message.text or ""
        mail.set_content(text)
        paragraphs = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>"
                             for p in text.split("\n\n"))
        mail.add_alternative(f"<html><body>{paragraphs}</body></html>", subtype="html")
        for name, mime, data in attachments:
            major, _, minor = mime.partition("/")
            mail.add_attachment(data, maintype=major or "application",
                                subtype=minor or "octet-stream", filename=name)
        return mail

    async def _attachment_bytes(self, message: Message, account: Account,
                                http: httpx.AsyncClient) -> list[tuple[str, str, bytes]]:
        limit = account.settings.max_attachment_bytes
        out = []
        for a in message.attachments:
            if a.media_id:
                media = await asyncio.to_thread(Media.objects(id=a.media_id).first)
                if media is None:
                    raise SendError(f"attachment {a.media_id} is not stored", permanent=True)
                data = media.data
            else:
                data, _ = await download(http, a.url or "", limit)
            if len(data) > limit:
                raise SendError(f"attachment {a.name or a.url} is larger than {limit} bytes",
                                permanent=True)
            out.append((a.name or (a.url or "file").rsplit("/", 1)[-1] or "file",
                        a.mime or "application/octet-stream", data))
        return out

    async def send(self, message: Message, account: Account, http: httpx.AsyncClient) -> SendResult:
        s: EmailSettings = account.settings
        if not s.smtp_host:
            raise SendError(f"account {account.name!r} has no smtp_host to send through",
                            permanent=True)
        files = await self._attachment_bytes(message, account, http)
        mail = await asyncio.to_thread(self.compose, message, account, files)
        try:
            await aiosmtplib.send(
                mail, hostname=s.smtp_host, port=s.smtp_port, username=s.smtp_username,
                password=s.smtp_password, use_tls=s.smtp_security == "tls",
                start_tls=s.smtp_security == "starttls", timeout=30)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise SendError(f"the mail server refused the recipient: {exc.recipients[0]}",
                            permanent=True) from None
        except aiosmtplib.SMTPResponseException as exc:
            permanent = 500 <= exc.code < 600
            raise SendError(f"the mail server answered {exc.code} {exc.message[:200]}",
                            permanent=permanent) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise SendError(f"mail server unreachable: {type(exc).__name__}") from None
        return SendResult(external_id=str(mail["Message-ID"]).strip("<>"))


# ---- entrances besides the webhook ----------------------------------------------------------

async def deliver(hub: Hub, account: Account, raw: bytes, rcpts: Sequence[str] = ()) -> str:
    """Store one received mail; returns an SMTP-style verdict for the sending side."""
    request = WebhookRequest("SMTP", "smtp://omnihub", {}, {"rcpt": ",".join(rcpts)}, raw)
    try:
        await receive(hub, account, request)
    except Unavailable:
        return "451 4.3.0 temporarily unable to store the message; try again later"
    except BadRequest as exc:
        return f"554 5.6.0 {exc.message}"
    except HubError as exc:
        return f"451 4.3.0 {exc.message}"
    return "250 2.0.0 stored"


class Receiver:
    """aiosmtpd handler: accepts mail for the configured email accounts only."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def _accounts(self) -> list[Account]:
        return [a for (adapter, _), a in self.hub.accounts.items() if adapter == "email"]

    def _account_for(self, rcpt: str) -> Account | None:
        for account in self._accounts():
            if isinstance(account.adapter, EmailAdapter) and \
                    account.adapter.accepts(account.settings, rcpt):
                return account
        return None

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if self._account_for(address) is None:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
        accounts = {a.name: a for r in envelope.rcpt_tos if (a := self._account_for(r))}
        verdicts = [await deliver(self.hub, account, raw, envelope.rcpt_tos)
                    for account in accounts.values()]
        return next((v for v in verdicts if not v.startswith("250")), "250 2.0.0 stored")


async def run_smtp_receiver(hub: Hub) -> None:
    host, _, port = (hub.settings.smtp_listen or "").rpartition(":")
    loop = asyncio.get_running_loop()
    factory = partial(SMTP, Receiver(hub), data_size_limit=MAX_MAIL_BYTES,
                      enable_SMTPUTF8=True, decode_data=False)
    server = await loop.create_server(factory, host or "127.0.0.1", int(port))
    log.info("smtp receiver listening", extra={"listen": hub.settings.smtp_listen})
    try:
        await asyncio.Future()  # until cancelled
    finally:
        server.close()
        await server.wait_closed()


def _imap_fetch(s: EmailSettings) -> list[tuple[str, bytes]]:
    """Unseen mail in the folder, as (uid, raw); nothing is marked here."""
    with _imap(s) as box:
        box.select(s.imap_folder)
        _, data = box.uid("SEARCH", "UNSEEN")
        out = []
        for uid in (data[0] or b"").decode().split():
            _, parts = box.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((p[1] for p in parts if isinstance(p, tuple)), None)
            if raw:
                out.append((uid, raw))
        return out


def _imap_mark(s: EmailSettings, seen: list[str], flagged: list[str]) -> None:
    with _imap(s) as box:
        box.select(s.imap_folder)
        for uid in seen:
            box.uid("STORE", uid, "+FLAGS", "(\\Seen)")
        for uid in flagged:  # unreadable mail stays in the mailbox for a person to look at
            box.uid("STORE", uid, "+FLAGS", "(\\Seen \\Flagged)")


@contextlib.contextmanager
def _imap(s: EmailSettings) -> Iterator[imaplib.IMAP4]:
    if s.imap_security == "tls":
        box: imaplib.IMAP4 = imaplib.IMAP4_SSL(s.imap_host or "", s.imap_port,
                                               ssl_context=ssl.create_default_context())
    else:
        box = imaplib.IMAP4(s.imap_host or "", s.imap_port)
        if s.imap_security == "starttls":
            box.starttls(ssl.create_default_context())
    try:
        box.login(s.imap_username or s.address, s.imap_password or "")
        yield box
    finally:
        with contextlib.suppress(Exception):
            box.logout()


async def poll_imap_once(hub: Hub, account: Account) -> int:
    """Fetch unseen mail and store it; mark only what was stored (or is unreadable)."""
    s: EmailSettings = account.settings
    messages = await asyncio.to_thread(_imap_fetch, s)
    seen, flagged = [], []
    for uid, raw in messages:
        verdict = await deliver(hub, account, raw)
        if verdict.startswith("250"):
            seen.append(uid)
        elif verdict.startswith("554"):
            log.warning("unreadable mail left flagged in the mailbox",
                        extra={"account": account.name, "reason": verdict[10:]})
            flagged.append(uid)
    if seen or flagged:
        await asyncio.to_thread(_imap_mark, s, seen, flagged)
    return len(seen)


async def run_imap_poller(hub: Hub, account: Account) -> None:
    adapter: EmailAdapter = account.adapter  # type: ignore[assignment]
    interval = account.settings.imap_interval_s
    while True:
        try:
            lock = adapter._redis and adapter._redis.set(
                f"omnihub:imap:{account.name}", 1, nx=True, px=int(max(interval, 1) * 1000))
            if lock:
                await poll_imap_once(hub, account)
        except Exception as exc:  # the mailbox may be down; try again next round
            log.warning("imap poll failed", extra={"account": account.name,
                                                   "reason": f"{type(exc).__name__}: {exc}"})
        await asyncio.sleep(interval)


@hookimpl
def register_adapters(register) -> None:
    register(EmailAdapter())


@hookimpl
def background_tasks(hub, role):
    tasks = []
    email_accounts = [a for (adapter, _), a in hub.accounts.items() if adapter == "email"]
    if role == "web" and hub.settings.smtp_listen and email_accounts:
        tasks.append(partial(run_smtp_receiver, hub))
    if role == "worker":
        tasks += [partial(run_imap_poller, hub, a) for a in email_accounts
                  if a.settings.imap_host]
    return tasks
