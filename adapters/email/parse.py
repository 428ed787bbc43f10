"""RFC 822 mail → one normalised InboundEvent (pure: bytes in, event out).

The standard library's `email` package with `policy.default` decodes every transfer and
header encoding (quoted-printable, base64, RFC 2047 words in GBK/GB2312/UTF-8); inscriptis
turns HTML-only mail into text; mail-parser-reply strips quoted history.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, parseaddr
from typing import Any

from inscriptis import get_text
from mailparser_reply import EmailReplyParser

from hub.adapter import Attachment, InboundEvent, ThreadHints
from hub.errors import BadRequest

REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|wg|sv|回复|答复|转发|回覆|轉寄)\s*[:：]\s*)+",
                          re.IGNORECASE)
# Quote headers mail-parser-reply does not know: Gmail in Chinese ("…于2026年11月23日…写道：")
# and the plain separators Outlook and Foxmail put above the original.
EXTRA_QUOTE_STARTS = re.compile(
    r"^(.{0,80}于\s*\d{4}年\d{1,2}月\d{1,2}日.{0,60}写道[:：]\s*$"
    r"|-{2,}\s*(原始邮件|Original Message|原始郵件)\s*-{2,}\s*$"
    r"|On .{5,120} wrote:\s*$)", re.MULTILINE)
_replies = EmailReplyParser(languages=["en", "zh"])


def address(value: str) -> str:
    """An email address as an identity: trimmed and lower-cased."""
    return value.strip().strip("<>").lower()


def normalise_subject(subject: str) -> str:
    return REPLY_PREFIX.sub("", subject or "").strip().lower()


def message_ids(value: Any) -> list[str]:
    return re.findall(r"<([^<>\s]+)>", str(value or ""))


def strip_quoted(text: str) -> str:
    """Only the new part of a reply: what the sender wrote above the quoted history."""
    try:
        reply = _replies.parse_reply(text=text)
    except Exception:  # the library's regexes are not ours to trust with every input
        reply = text
    found = EXTRA_QUOTE_STARTS.search(reply)
    if found:
        reply = reply[:found.start()]
    return reply.strip() or text.strip()


def read(raw: bytes) -> EmailMessage:
    if not raw.strip():
        raise BadRequest("the mail is empty", code="malformed_mail")
    try:
        msg = BytesParser(policy=policy.default).parsebytes(raw)
    except Exception:
        raise BadRequest("the mail cannot be parsed as RFC 822", code="malformed_mail") from None
    if not isinstance(msg, EmailMessage) or msg.defects and not msg.keys():
        raise BadRequest("the mail has no headers", code="malformed_mail")
    return msg


def _header(msg: EmailMessage, name: str) -> str:
    try:
        return str(msg.get(name, "") or "")
    except Exception:  # an undecodable header is treated as absent, not as a crash
        return ""


def sender(msg: EmailMessage) -> tuple[str, str | None]:
    name, addr = parseaddr(_header(msg, "From"))
    if "@" not in addr:
        raise BadRequest("the mail has no valid From address", field="From")
    return address(addr), name or None


def recipients(msg: EmailMessage) -> list[str]:
    values = [_header(msg, h) for h in ("To", "Cc", "Delivered-To", "X-Original-To")]
    return [address(a) for _, a in getaddresses(values) if "@" in a]


def automation(msg: EmailMessage, from_addr: str) -> str | None:
    content_type = msg.get_content_type()
    report = str(msg.get_param("report-type", "") or "").lower()
    local = from_addr.split("@", 1)[0]
    if (content_type == "multipart/report" and report == "delivery-status") or \
            local in ("mailer-daemon", "postmaster"):
        return "bounce"
    auto = _header(msg, "Auto-Submitted").lower()
    if auto and auto != "no":
        return "auto_reply"
    if _header(msg, "X-Autoreply") or _header(msg, "X-Autorespond") or \
            _header(msg, "Precedence").lower() in ("auto_reply", "bulk", "junk"):
        return "auto_reply"
    return None


def _text_of(part: Any) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):  # unknown charset, broken encoding
        payload = part.get_payload(decode=True) or b""
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else content.decode("utf-8", "replace")


def body_text(msg: EmailMessage) -> str:
    """The plain text of a mail: its text/plain part, or its HTML converted to text."""
    plain = msg.get_body(preferencelist=("plain",))
    if plain is not None:
        return _text_of(plain)
    html = msg.get_body(preferencelist=("html",))
    if html is not None:
        return get_text(_text_of(html))
    return ""


def bounce_details(msg: EmailMessage) -> tuple[str | None, str | None]:
    """(Message-ID of the mail that bounced, the reason) from a delivery status report."""
    original, reason = None, None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            text = str(part.get_payload()) if not part.is_multipart() else "".join(
                str(p) for p in part.get_payload())
            found = re.search(r"^Diagnostic-Code:\s*(.+)$", text, re.MULTILINE | re.IGNORECASE) \
                or re.search(r"^Status:\s*(.+)$", text, re.MULTILINE | re.IGNORECASE)
            reason = found.group(1).strip() if found else reason
        elif ctype in ("message/rfc822", "text/rfc822-headers"):
            text = part.as_string() if ctype == "message/rfc822" else _text_of(part)
            ids = re.findall(r"^Message-ID:\s*<([^>]+)>", text, re.MULTILINE | re.IGNORECASE)
            original = ids[0] if ids else original
    if original is None:
        refs = message_ids(msg.get("In-Reply-To")) + message_ids(msg.get("References"))
        original = refs[0] if refs else None
    return original, reason


def attachments(msg: EmailMessage, max_bytes: int) -> tuple[list[Attachment], list[dict]]:
    """Attachments kept, and the ones refused for size (recorded on the message)."""
    kept, refused = [], []
    for part in msg.iter_attachments():
        if part.get_content_type() in ("message/delivery-status", "message/rfc822",
                                       "text/rfc822-headers"):
            continue
        payload = part.get_payload(decode=True)
        payload = payload if isinstance(payload, bytes) else b""
        name = part.get_filename() or "attachment"
        mime = part.get_content_type()
        if len(payload) > max_bytes:
            refused.append({"name": name, "mime": mime, "size": len(payload),
                            "reason": f"larger than {max_bytes} bytes"})
            continue
        major = mime.split("/", 1)[0]
        kind = {"image": "image", "audio": "audio", "video": "video"}.get(major, "file")
        kept.append(Attachment(kind=kind, name=name, mime=mime, size=len(payload),
                               data=payload))
    return kept, refused


def to_event(raw: bytes, *, max_attachment_bytes: int,
             token_conversation: str | None = None) -> InboundEvent:
    msg = read(raw)
    from_addr, name = sender(msg)
    ids = message_ids(msg.get("Message-ID"))
    external_id = ids[0] if ids else "sha256:" + hashlib.sha256(raw).hexdigest()
    subject = _header(msg, "Subject")
    automated = automation(msg, from_addr)
    files, refused = attachments(msg, max_attachment_bytes)
    text = body_text(msg)
    bounce_of = None
    if automated == "bounce":
        bounce_of, reason = bounce_details(msg)
        text = reason or subject
    else:
        text = strip_quoted(text)
    sent_at = None
    try:
        date = msg.get("Date")
        if date is not None and getattr(date, "datetime", None) is not None:
            sent_at = date.datetime.astimezone(UTC).replace(tzinfo=None)
    except Exception:
        sent_at = None
    context: dict[str, Any] = {"subject": subject}
    if refused:
        context["refused_attachments"] = refused
    return InboundEvent(
        external_id=external_id, external_user_id=from_addr, display_name=name,
        kind="text" if text or not files else files[0].kind, text=text or None,
        attachments=files, context=context, sent_at=sent_at, automated=automated,
        bounce_of=bounce_of, identifiers={"email": from_addr}, identifiers_verified=False,
        thread=ThreadHints(
            references=message_ids(msg.get("In-Reply-To")) + message_ids(msg.get("References")),
            conversation_id=token_conversation, subject=normalise_subject(subject) or None),
        raw={"message_id": external_id, "subject": subject, "from": from_addr,
             "to": recipients(msg), "references": message_ids(msg.get("References")),
             "size": len(raw)},
    )
