"""Mobile-app session handoff: the app says where its user stopped; when that person turns up
on another channel (a WeChat QR scan, an SMS with the code or from their phone, an email with
the token, or the app itself), the agent sees that context, not a blank slate.

Codes are 6 digits a person can type or say, so guessing is limited per sender and per
account (Redis counters) and every attempt is audited; a wrong guess gets no answer at all.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from mongoengine.errors import NotUniqueError
from pymongo.errors import DuplicateKeyError

from hub.models import Conversation, Handoff, HandoffAttempt, Message
from scrm.merge import MergeError, merge
from scrm.models import Customer, Identity, utcnow

if TYPE_CHECKING:
    import redis

DEFAULT_TTL_S = 1800
MAX_TTL_S = 7 * 24 * 3600
MAX_CONTEXT_BYTES = 16 * 1024
SCENE_PREFIX = "ho_"
TOKEN_PREFIX = "hof_"
CODE = re.compile(r"(?<!\d)(\d{6})(?!\d)")
TOKEN = re.compile(r"\b(hof_[A-Za-z0-9_-]{32})\b")
GUESS_WINDOW_S = 15 * 60
GUESSES_PER_SENDER = 5
GUESSES_PER_ACCOUNT = 200


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Created:
    handoff: Handoff
    token: str
    code: str


def create(customer_id: ObjectId, app_user_id: str, context: dict, channels: list[str],
           ttl_s: int, phone: str | None, email: str | None) -> Created:
    """A new pending handoff; the code is unique among pending ones (retried on collision)."""
    for _ in range(20):
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        code = f"{secrets.randbelow(1_000_000):06d}"
        now = utcnow()
        handoff = Handoff(
            token_digest=digest(token), code_digest=digest(code),
            wechat_scene=SCENE_PREFIX + secrets.token_hex(12), customer_id=customer_id,
            app_user_id=app_user_id, phone=phone, email=email, context=context,
            channels=channels, created_at=now, expires_at=now + timedelta(seconds=ttl_s))
        try:
            handoff.save()
        except NotUniqueError:  # that code is pending for someone else: draw again
            continue
        return Created(handoff, token, code)
    raise RuntimeError("could not allocate a handoff code")


def app_customer(app_user_id: str) -> ObjectId:
    """The customer the app backend means: by any identity with that app user id."""
    found = Identity.objects(app_user_id=app_user_id).order_by("created_at").first()
    if found:
        return found.customer_id
    now, customer_id = utcnow(), ObjectId()
    Customer._get_collection().insert_one({
        "_id": customer_id, "attributes": {}, "tags": [], "consent": {}, "opted_out": [],
        "channels": [], "context": {}, "created_at": now, "updated_at": now})
    try:
        Identity._get_collection().insert_one({
            "adapter": "profile", "account": "app_user_id", "external_user_id": app_user_id,
            "app_user_id": app_user_id, "customer_id": customer_id, "verified": True,
            "source": "api:handoff", "created_at": now})
    except DuplicateKeyError:
        Customer._get_collection().delete_one({"_id": customer_id})
        return app_customer(app_user_id)
    return customer_id


def candidates(message: Message, phone: str | None, email: str | None) -> list[tuple[str, str]]:
    """What in an inbound message could resolve a handoff, as (via, value)."""
    found: list[tuple[str, str]] = []
    scene = ((message.event or {}).get("payload") or {}).get("scene") or ""
    if scene.startswith(SCENE_PREFIX):
        found.append(("scene", scene))
    text = " ".join(filter(None, [message.text, str((message.context or {}).get("subject") or ""),
                                  str((message.context or {}).get("handoff_token") or "")]))
    found += [("token", t) for t in TOKEN.findall(text)]
    found += [("code", c) for c in CODE.findall(message.text or "")][:3]
    if phone:
        found.append(("phone", phone))
    if email:
        found.append(("email", email))
    return found


def _throttled(store: redis.Redis, message: Message) -> bool:
    sender = f"omnihub:handoff:guess:{message.adapter}:{message.account}:{message.external_user_id}"
    account = f"omnihub:handoff:guess:{message.adapter}:{message.account}"
    pipe = store.pipeline()
    for key in (sender, account):
        pipe.set(key, 0, ex=GUESS_WINDOW_S, nx=True)  # the window starts at the first guess
        pipe.incr(key)
    _, by_sender, _, by_account = pipe.execute()
    return by_sender > GUESSES_PER_SENDER or by_account > GUESSES_PER_ACCOUNT


def _audit(message: Message, via: str, outcome: str, handoff: Handoff | None = None) -> None:
    HandoffAttempt(handoff_id=handoff.id if handoff else None, adapter=message.adapter,
                   account=message.account, sender=message.external_user_id[-4:], via=via,
                   outcome=outcome).save()


def find(via: str, value: str) -> Handoff | None:
    if via == "scene":
        return Handoff.objects(wechat_scene=value).first()
    if via == "token":
        return Handoff.objects(token_digest=digest(value)).first()
    if via == "code":
        return Handoff.objects(code_digest=digest(value), status="pending").first()
    return Handoff.objects(**{via: value, "status": "pending"}).order_by("-created_at").first()


def resolve(message: Message, store: redis.Redis) -> Handoff | None:
    """Resolve the handoff this message carries, if any; returns it once resolved."""
    identity = Identity.objects(adapter=message.adapter, account=message.account,
                                external_user_id=message.external_user_id).first()
    phone = identity.phone if identity and identity.verified else None
    email = identity.email if identity and identity.verified else None
    for via, value in candidates(message, phone, email):
        if via == "code" and _throttled(store, message):
            _audit(message, via, "throttled")
            return None
        handoff = find(via, value)
        if handoff is None:
            if via == "code":
                _audit(message, via, "wrong")  # and no answer to the sender: nothing leaks
            continue
        if handoff.status == "resolved":
            _audit(message, via, "reused", handoff)
            continue
        if handoff.expires_at < utcnow():
            Handoff.objects(id=handoff.id, status="pending").update_one(set__status="expired")
            _audit(message, via, "expired", handoff)
            continue
        claimed = Handoff.objects(id=handoff.id, status="pending").update_one(
            set__status="resolved", set__resolved_at=utcnow(),
            set__resolved_by={"adapter": message.adapter, "account": message.account,
                              "via": via, "message_id": str(message.id)})
        if not claimed:
            _audit(message, via, "reused", handoff)
            continue
        _audit(message, via, "resolved", handoff)
        _attach(handoff, message, via)
        handoff.reload()
        return handoff
    return None


def _attach(handoff: Handoff, message: Message, via: str) -> None:
    """Join the channel identity to the app customer and put the context where agents look."""
    customer_id = handoff.customer_id
    if message.customer_id != customer_id:
        try:
            merge(message.customer_id, customer_id, "handoff",
                  f"handoff {handoff.id} resolved by {via} on {message.adapter}")
        except MergeError:
            customer_id = message.customer_id  # e.g. merged elsewhere meanwhile: keep theirs
    message.reload()
    now = utcnow()
    context = {**handoff.context, "handoff_id": str(handoff.id), "resolved_via": via,
               "channel": f"{message.adapter}:{message.account}"}
    Conversation.objects(id=message.conversation_id).update_one(
        set__context__handoff=context, set__updated_at=now)
    Customer.objects(id=customer_id).update_one(set__context=context, set__updated_at=now)
    Message(direction="in", adapter=message.adapter, account=message.account,
            external_id=f"handoff:{handoff.id}", external_user_id=message.external_user_id,
            customer_id=message.customer_id, conversation_id=message.conversation_id,
            kind="event", event={"name": "handoff_resolved", "key": str(handoff.id),
                                 "payload": context},
            context=context, status="received", created_at=now, sent_at=now,
            updated_at=now).save()


def handoff_json(created: Created, links: dict[str, str]) -> dict[str, Any]:
    from hub.serialize import iso

    h = created.handoff
    return {"id": str(h.id), "token": created.token, "code": created.code,
            "expires_at": iso(h.expires_at), "wechat_scene": h.wechat_scene,
            "customer_id": str(h.customer_id), "deep_links": links}
