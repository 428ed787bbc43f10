"""The one ingest path every channel goes through (DESIGN.md §1).

Synchronous on purpose: mongoengine/pymongo are blocking, so the web layer runs `ingest`
in a worker thread. A known customer costs four round trips (identity, active conversation,
insert, touch), none of them findAndModify, which the embedded server runs 4-5x slower.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime, timedelta

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from hub.adapter import Account, InboundEvent, IngestResult
from hub.errors import NotFound
from hub.models import Conversation, Media, Message
from scrm.identities import channel_keys, resolve_customer
from scrm.models import Customer, utcnow

STATUS_ORDER = {"queued": 0, "sent": 1, "delivered": 2, "read": 3, "failed": 4}


@dataclasses.dataclass(frozen=True)
class Stored:
    result: IngestResult
    opened_conversation: bool = False
    status_change: tuple[str, str] | None = None  # receipts: (old, new) when it moved
    follow_up: bool = True  # run the message hooks (not for receipts or automated mail)
    new_identity: bool = False  # a first contact that brought strong identifiers: link it


def ingest(event: InboundEvent, account: Account, reopen_days: float = 7.0) -> Stored:
    """Store one inbound event durably and say whether it was new."""
    if event.is_receipt:
        return apply_receipt(event, account)
    messages = Message._get_collection()
    conversations = Conversation._get_collection()
    route = {"adapter": account.adapter.name, "account": account.name}
    key = {"direction": "in", **route, "external_id": event.external_id}
    if event.automated:
        return record_automated(event, account, key)

    customer_id, created = resolve_customer(account.adapter.name, account.name,
                                            event.external_user_id, event.display_name,
                                            event.identifiers, event.identifiers_verified)
    active = conversations.find_one({"customer_id": customer_id, "active": True}, {"_id": 1})
    if active is None:
        # Check for a retry before (re)opening, so a late retry never reopens a conversation.
        existing = messages.find_one(key, {"customer_id": 1, "conversation_id": 1})
        if existing:
            return Stored(_duplicate(existing))
        answered = threaded_conversation(event, account, customer_id)
        conversation_id, opened = open_conversation(customer_id, route, reopen_days, answered)
    else:
        conversation_id, opened = active["_id"], False

    now = utcnow()
    doc = _message(event, account, customer_id, conversation_id, now)
    try:
        inserted = messages.insert_one(doc.to_mongo())
    except DuplicateKeyError:  # a retry of a delivery we already stored
        return Stored(_duplicate(messages.find_one(key)))
    if event.consent is not None:
        record_consent(customer_id, route, event.consent, now)
    if not opened:
        conversations.update_one(
            {"_id": conversation_id},
            {"$set": {"last_inbound": route, "last_message_at": now, "updated_at": now},
             "$addToSet": {"channels": route}})
    return Stored(IngestResult(str(inserted.inserted_id), False, str(customer_id),
                               str(conversation_id)), opened,
                  new_identity=created and bool(event.identifiers))


def _message(event: InboundEvent, account: Account, customer_id: ObjectId,
             conversation_id: ObjectId, now: datetime) -> Message:
    """The Message document for an event; inline attachment bytes are stored as media."""
    attachments = []
    for a in event.attachments:
        fields = a.fields()
        if a.data is not None:
            fields["media_id"] = store_media(a.data, a.mime, a.name)
            fields["size"] = len(a.data)
        attachments.append(fields)
    doc = Message(
        direction="in", adapter=account.adapter.name, account=account.name,
        external_id=event.external_id, external_user_id=event.external_user_id,
        customer_id=customer_id, conversation_id=conversation_id, kind=event.kind,
        text=event.text, attachments=attachments, location=event.location or {},
        event=event.event or {}, context=event.context, raw=event.raw, status="received",
        created_at=now, sent_at=event.sent_at or now, updated_at=now,
        subject=event.thread.subject if event.thread else None, automated=event.automated,
    )
    doc.validate()
    return doc


def store_media(data: bytes, mime: str | None, name: str | None) -> str:
    """Keep attachment bytes once per content (idempotent under channel retries)."""
    digest = hashlib.sha256(data).hexdigest()
    Media._get_collection().update_one(
        {"_id": digest},
        {"$setOnInsert": {"data": data, "mime": mime, "name": name, "size": len(data),
                          "created_at": utcnow()}}, upsert=True)
    return digest


def threaded_conversation(event: InboundEvent, account: Account,
                          customer_id: ObjectId) -> ObjectId | None:
    """The customer's earlier conversation this message answers, if the channel says so:
    by the ids it references, then a verified reply token, then the subject.
    """
    hints = event.thread
    if hints is None:
        return None
    mine = {"customer_id": customer_id, "adapter": account.adapter.name, "account": account.name}
    if hints.references:
        found = Message.objects(external_id__in=hints.references[-20:], **mine).order_by(
            "-id").only("conversation_id").first()
        if found:
            return found.conversation_id
    if hints.conversation_id and ObjectId.is_valid(hints.conversation_id):
        conversation = Conversation.objects(id=ObjectId(hints.conversation_id),
                                            customer_id=customer_id).only("id").first()
        if conversation:
            return conversation.id
    if hints.subject:
        found = Message.objects(subject=hints.subject, **mine).order_by("-id").only(
            "conversation_id").first()
        if found:
            return found.conversation_id
    return None


def record_automated(event: InboundEvent, account: Account, key: dict) -> Stored:
    """Auto-replies and bounces are kept, but never open a conversation, move the reply
    route or reach plugins (a bot answering an out-of-office would loop).
    """
    messages = Message._get_collection()
    existing = messages.find_one(key, {"customer_id": 1, "conversation_id": 1})
    if existing:
        return Stored(_duplicate(existing), follow_up=False)
    status_change = None
    if event.automated == "bounce":
        original = Message.objects(direction="out", adapter=account.adapter.name,
                                   account=account.name, external_id=event.bounce_of).first() \
            if event.bounce_of else None
        if original is None:  # a bounce of nothing we sent: nobody to attach it to
            return Stored(IngestResult("", True), follow_up=False)
        customer_id, conversation_id = original.customer_id, original.conversation_id
        reason = f"bounced: {event.text or 'no reason given'}"[:500]
        moved = Message.objects(id=original.id, status__in=["queued", "sent", "delivered"]) \
            .update_one(set__status="failed", set__status_reason=reason,
                        set__updated_at=utcnow())
        if moved:
            status_change = (original.status, "failed")
    else:
        customer_id, _ = resolve_customer(account.adapter.name, account.name,
                                          event.external_user_id, event.display_name,
                                          event.identifiers, event.identifiers_verified)
        conversation = (Conversation.objects(customer_id=customer_id, active=True).first()
                        or Conversation.objects(customer_id=customer_id).order_by("-id").first())
        if conversation is None:  # kept in a closed thread, so nothing looks open
            conversation = Conversation(customer_id=customer_id, status="resolved",
                                        active=False, resolved_at=utcnow()).save()
        conversation_id = conversation.id
    doc = _message(event, account, customer_id, conversation_id, utcnow())
    try:
        inserted = messages.insert_one(doc.to_mongo())
    except DuplicateKeyError:
        return Stored(_duplicate(messages.find_one(key)), follow_up=False)
    result = IngestResult(str(inserted.inserted_id), False, str(customer_id),
                          str(conversation_id))
    return Stored(result, follow_up=False, status_change=status_change)


def record_consent(customer_id: ObjectId, route: dict, granted: bool, now) -> None:
    """The customer opted in to or out of this channel account (e.g. WeChat (un)subscribe)."""
    keys = channel_keys(route["adapter"], route["account"])
    change = {"$set": {f"consent.{keys[1]}": {"granted": granted, "at": now,
                                              "source": "channel"}, "updated_at": now}}
    if granted:
        change["$pullAll"] = {"opted_out": keys}
    else:
        change["$addToSet"] = {"opted_out": {"$each": keys}}
    Customer._get_collection().update_one({"_id": customer_id}, change)


def _duplicate(doc: dict) -> IngestResult:
    return IngestResult(str(doc["_id"]), True, str(doc["customer_id"]),
                        str(doc["conversation_id"]))


def open_conversation(customer_id: ObjectId, route: dict, reopen_days: float,
                      answered: ObjectId | None = None) -> tuple[ObjectId, bool]:
    """Return `(conversation_id, opened)`: the conversation the message `answered` or a
    recently resolved one reopened, a new one, or the active one another message opened
    meanwhile (the partial unique index settles it).
    """
    conversations = Conversation._get_collection()
    for _ in range(5):
        now = utcnow()
        seen = {"last_inbound": route, "last_message_at": now, "updated_at": now}
        which = ({"_id": answered} if answered else
                 {"resolved_at": {"$gte": now - timedelta(days=reopen_days)}})
        try:
            reopened = conversations.find_one_and_update(
                {"customer_id": customer_id, "active": False, "status": "resolved", **which},
                {"$set": {**seen, "status": "open", "active": True},
                 "$unset": {"resolved_at": ""}, "$addToSet": {"channels": route}},
                sort=[("resolved_at", -1)], projection={"_id": 1},
                return_document=ReturnDocument.AFTER)
            if reopened:
                return reopened["_id"], True
            new = Conversation(customer_id=customer_id, status="open", active=True,
                               channels=[route], created_at=now, **seen)
            return conversations.insert_one(new.to_mongo()).inserted_id, True
        except DuplicateKeyError:
            active = conversations.find_one({"customer_id": customer_id, "active": True})
            if active:
                conversations.update_one({"_id": active["_id"]},
                                         {"$set": seen, "$addToSet": {"channels": route}})
                return active["_id"], False
    raise RuntimeError("could not settle the active conversation")


def apply_receipt(event: InboundEvent, account: Account) -> Stored:
    """Move an outbound message forward (sent → delivered → read), never backwards."""
    messages = Message._get_collection()
    query: dict = {"direction": "out", "adapter": account.adapter.name, "account": account.name}
    if event.receipt_by_external_id:
        query["external_id"] = event.receipt_for
    elif ObjectId.is_valid(event.receipt_for):
        query["_id"] = ObjectId(event.receipt_for)
    doc = messages.find_one(query) if len(query) == 4 else None
    if doc is None:
        raise NotFound(f"no outbound message {event.receipt_for!r} on this account",
                       field="message_id", code="unknown_message")
    oid = doc["_id"]
    new_status = event.receipt_status or ""
    # Forward only; a failure report can still arrive after "sent" but not after delivery.
    lower = [s for s, rank in STATUS_ORDER.items() if rank < STATUS_ORDER[new_status]]
    if new_status == "failed":
        lower = ["queued", "sent"]
    changes = {"status": new_status, "updated_at": utcnow()}
    if event.receipt_reason:
        changes["status_reason"] = event.receipt_reason
    before = messages.find_one_and_update(
        {"_id": oid, "status": {"$in": lower}}, {"$set": changes}, projection={"status": 1})
    result = IngestResult(str(oid), before is None, str(doc["customer_id"]),
                          str(doc["conversation_id"]))
    return Stored(result, status_change=(before["status"], new_status) if before else None,
                  follow_up=False)
