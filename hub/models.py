"""Message, Conversation and ApiKey documents (Customer and Identity live in scrm)."""

from __future__ import annotations

from mongoengine import (
    BinaryField,
    BooleanField,
    DateTimeField,
    DictField,
    DynamicField,
    EmbeddedDocument,
    EmbeddedDocumentField,
    IntField,
    ListField,
    ObjectIdField,
    StringField,
)
from mongoengine import Document as _Document

from hub.adapter import MESSAGE_KINDS
from scrm.models import utcnow

MESSAGE_STATUSES = ("received", "queued", "sent", "delivered", "read", "failed")
CONVERSATION_STATUSES = ("open", "pending", "resolved")
ROLES = ("admin", "agent", "marketer", "app")


class Route(EmbeddedDocument):
    adapter = StringField(required=True)
    account = StringField(required=True)


class AttachmentDoc(EmbeddedDocument):
    kind = StringField(required=True)
    url = StringField()
    media_id = StringField()
    mime = StringField()
    size = IntField()
    name = StringField()


class Message(_Document):
    """One normalised message, inbound or outbound; `raw` keeps the channel's payload."""

    direction = StringField(required=True, choices=("in", "out"))
    adapter = StringField(required=True)
    account = StringField(required=True)
    external_id = StringField()
    external_user_id = StringField()
    customer_id = ObjectIdField(required=True)
    conversation_id = ObjectIdField(required=True)
    kind = StringField(required=True, choices=MESSAGE_KINDS)
    subject = StringField()
    automated = StringField(choices=("auto_reply", "bounce"))
    text = StringField()
    attachments = ListField(EmbeddedDocumentField(AttachmentDoc))
    location = DictField()
    event = DictField()
    context = DictField()
    raw = DynamicField()
    status = StringField(required=True, choices=MESSAGE_STATUSES)
    status_reason = StringField()
    attempts = IntField(default=0)
    sent_by = StringField()
    purpose = StringField(choices=("reply", "marketing"), default="reply")
    created_at = DateTimeField(default=utcnow)
    sent_at = DateTimeField()
    updated_at = DateTimeField(default=utcnow)
    processed_at = DateTimeField()
    merge_origin = DictField()  # where a merge moved it from: {merge_id, conversation_id}

    meta = {
        "collection": "messages",
        "indexes": [
            # De-duplication of channel retries; outbound messages have no external_id yet.
            {"fields": ["adapter", "account", "external_id"], "unique": True,
             "partialFilterExpression": {"direction": "in"}},
            ["conversation_id", "_id"],
            ["customer_id", "_id"],
            ["adapter", "account", "external_user_id", "-_id"],  # reply windows and quotas
        ],
    }


class Conversation(_Document):
    """One thread per customer across channels; `last_inbound` is the default reply route.

    `active` is true while the conversation is not resolved; a partial unique index keeps
    at most one active conversation per customer, even under concurrent first messages.
    """

    customer_id = ObjectIdField(required=True)
    status = StringField(required=True, choices=CONVERSATION_STATUSES, default="open")
    active = BooleanField(required=True, default=True)
    assignee = StringField()
    last_inbound = EmbeddedDocumentField(Route)
    channels = ListField(EmbeddedDocumentField(Route))
    context = DictField()
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)
    last_message_at = DateTimeField()
    resolved_at = DateTimeField()

    meta = {
        "collection": "conversations",
        "indexes": [
            {"fields": ["customer_id"], "unique": True, "name": "one_active_per_customer",
             "partialFilterExpression": {"active": True}},
            ["customer_id", "-resolved_at"],
            ["status", "-_id"],
            ["assignee", "-_id"],
        ],
    }


class Media(_Document):
    """Bytes of an attachment a channel delivered inline, keyed by their SHA-256."""

    id = StringField(primary_key=True)
    data = BinaryField(required=True)
    mime = StringField()
    name = StringField()
    size = IntField()
    created_at = DateTimeField(default=utcnow)

    meta = {"collection": "media"}


class Handoff(_Document):
    """A short-lived, single-use context token an app creates before sending its user to
    another channel. The token and the code are stored only as SHA-256 digests."""

    token_digest = StringField(required=True, unique=True)
    code_digest = StringField(required=True)
    wechat_scene = StringField(required=True, unique=True)
    customer_id = ObjectIdField(required=True)
    app_user_id = StringField(required=True)
    phone = StringField()
    email = StringField()
    context = DictField()
    channels = ListField(StringField())
    status = StringField(choices=("pending", "resolved", "expired"), default="pending")
    created_at = DateTimeField(default=utcnow)
    expires_at = DateTimeField(required=True)
    resolved_at = DateTimeField()
    resolved_by = DictField()

    meta = {"collection": "handoffs",
            "indexes": [{"fields": ["code_digest"], "name": "pending_code", "unique": True,
                         "partialFilterExpression": {"status": "pending"}},
                        ["phone", "status"], ["email", "status"]]}


class HandoffAttempt(_Document):
    """Every attempt to resolve a handoff, successful or not (the audit trail)."""

    handoff_id = ObjectIdField()
    adapter = StringField()
    account = StringField()
    sender = StringField()
    via = StringField()  # scene, code, token, phone, email
    outcome = StringField()  # resolved, wrong, expired, reused, throttled
    at = DateTimeField(default=utcnow)

    meta = {"collection": "handoff_attempts", "indexes": [["handoff_id", "at"], "-at"]}


class ApiKey(_Document):
    """An API key, stored as a SHA-256 digest (keys are 256-bit random, so no KDF needed)."""

    name = StringField(required=True, max_length=100)
    role = StringField(required=True, choices=ROLES)
    digest = StringField(required=True, unique=True)
    prefix = StringField(required=True)
    created_at = DateTimeField(default=utcnow)
    revoked_at = DateTimeField()

    meta = {"collection": "api_keys"}


DOCUMENTS: tuple[type[_Document], ...] = (Message, Conversation, ApiKey, Media, Handoff,
                                          HandoffAttempt)
