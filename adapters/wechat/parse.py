"""WeChat Official Account push XML → normalised InboundEvents (pure, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import xmltodict

from hub.adapter import Attachment, InboundEvent
from hub.errors import BadRequest

# Events that count as the user reaching out, and what WeChat then allows (since 2023-06):
# a message → 5 customer-service messages within 48 h; a menu click, a follow or a QR scan
# → 3 within 1 minute.
MESSAGE_WINDOW_S = 48 * 3600
EVENT_WINDOW_S = 60
EVENT_QUOTA = 3
TRIGGER_EVENTS = ("subscribe", "scan", "click")


def read_xml(body: bytes) -> dict[str, Any]:
    """Parse a push body; entity declarations are refused (no entity-expansion bombs)."""
    try:
        doc = xmltodict.parse(body, disable_entities=True)
    except Exception:  # expat errors, entities refused, bad encodings
        raise BadRequest("body is not well-formed WeChat XML", code="malformed_xml") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("xml"), dict):
        raise BadRequest("body has no <xml> root element", code="malformed_xml")
    return doc["xml"]


def _text(xml: dict, key: str) -> str | None:
    value = xml.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"<{key}> must be text", field=key)
    return value


def _required(xml: dict, key: str) -> str:
    value = _text(xml, key)
    if not value:
        raise BadRequest(f"<{key}> is required", field=key)
    return value


def _float(xml: dict, key: str) -> float | None:
    value = _text(xml, key)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"<{key}> must be a number", field=key) from None


def to_event(xml: dict[str, Any]) -> InboundEvent:
    """Normalise one decrypted push message or event."""
    openid = _required(xml, "FromUserName")
    created = _required(xml, "CreateTime")
    if not created.isdigit():
        raise BadRequest("<CreateTime> must be unix seconds", field="CreateTime")
    sent_at = datetime.fromtimestamp(int(created), UTC).replace(tzinfo=None)
    msg_type = (_required(xml, "MsgType")).lower()
    base: dict[str, Any] = {"external_user_id": openid, "raw": xml, "sent_at": sent_at}

    if msg_type == "event":
        return _event(xml, openid, created, base)
    msg_id = _text(xml, "MsgId") or f"{openid}:{created}:{msg_type}"
    base["external_id"] = msg_id
    media_id = _text(xml, "MediaId")
    if msg_type == "text":
        return InboundEvent(kind="text", text=_text(xml, "Content") or "", **base)
    if msg_type == "image":
        return InboundEvent(kind="image", attachments=[Attachment(
            kind="image", url=_text(xml, "PicUrl"), media_id=media_id)], **base)
    if msg_type == "voice":
        fmt = (_text(xml, "Format") or "amr").lower()
        return InboundEvent(kind="audio", text=_text(xml, "Recognition") or None,
                            attachments=[Attachment(kind="audio", media_id=media_id,
                                                    mime=f"audio/{fmt}")], **base)
    if msg_type in ("video", "shortvideo"):
        return InboundEvent(kind="video", attachments=[Attachment(
            kind="video", media_id=media_id)],
            event={"name": msg_type, "key": None,
                   "payload": {"thumb_media_id": _text(xml, "ThumbMediaId")}}, **base)
    if msg_type == "location":
        label = _text(xml, "Label")
        return InboundEvent(kind="location", text=label, location={
            "lat": _float(xml, "Location_X"), "lng": _float(xml, "Location_Y"),
            "scale": _float(xml, "Scale"), "label": label}, **base)
    if msg_type == "link":
        title = _text(xml, "Title")
        return InboundEvent(kind="link", text=_text(xml, "Description") or title,
                            attachments=[Attachment(kind="link", url=_text(xml, "Url"),
                                                    name=title)], **base)
    # Types we do not normalise yet (mini-program cards, …) are kept, not dropped.
    return InboundEvent(kind="event", event={"name": msg_type, "key": None, "payload": {}},
                        **base)


def _event(xml: dict, openid: str, created: str, base: dict[str, Any]) -> InboundEvent:
    name = (_required(xml, "Event")).lower()
    key = _text(xml, "EventKey") or None
    payload: dict[str, Any] = {}
    consent: bool | None = None
    if name == "subscribe":
        consent = True
        if key and key.startswith("qrscene_"):
            key = key[len("qrscene_"):]
            payload = {"scene": key, "ticket": _text(xml, "Ticket")}
    elif name == "unsubscribe":
        consent = False
    elif name == "scan":
        payload = {"scene": key, "ticket": _text(xml, "Ticket")}
    elif name == "location":
        payload = {"latitude": _float(xml, "Latitude"), "longitude": _float(xml, "Longitude"),
                   "precision": _float(xml, "Precision")}
    elif name == "view":
        payload = {"url": key}
    return InboundEvent(
        # WeChat retries an event with the same sender and CreateTime; the name keeps two
        # different events of one second apart.
        external_id=f"{openid}:{created}:{name}", kind="event",
        event={"name": name, "key": key, "payload": payload}, consent=consent, **base)
