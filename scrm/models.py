"""The customer graph: profiles, the identities that point at them, merges, tags, segments."""

from __future__ import annotations

from datetime import UTC, datetime

from mongoengine import (
    BooleanField,
    DateTimeField,
    DictField,
    Document,
    DynamicField,
    IntField,
    ListField,
    ObjectIdField,
    StringField,
)

STRONG_IDENTIFIERS = ("phone", "email", "app_user_id", "unionid")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Customer(Document):
    """The one profile behind many channel identities.

    `channels` ("wechat" and "wechat:service") and `opted_out` are kept in step with the
    identities and consent so that segments query one collection with indexes.
    """

    display_name = StringField(max_length=200)
    attributes = DictField()
    attribute_history = ListField(DictField())  # values replaced by merges and edits
    tags = ListField(StringField(max_length=100))
    consent = DictField()
    opted_out = ListField(StringField())
    channels = ListField(StringField())
    context = DictField()
    merged_into = ObjectIdField()
    last_seen_at = DateTimeField()
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    meta = {"collection": "customers",
            "indexes": ["tags", "channels", "opted_out", "-last_seen_at", "merged_into"]}


class Identity(Document):
    """One channel identity `(adapter, account, external_user_id)`; unique, one customer.

    Strong identifiers (phone in E.164, lower-cased email, app user id, WeChat unionid) say
    who the person is; `verified` records whether the source proved them, `source` who said so.
    Identities from profile data (an import, the API) use adapter "profile".
    """

    adapter = StringField(required=True)
    account = StringField(required=True)
    external_user_id = StringField(required=True)
    customer_id = ObjectIdField(required=True)
    phone = StringField()
    email = StringField()
    app_user_id = StringField()
    unionid = StringField()
    verified = BooleanField(default=False)
    source = StringField()
    profile_fetched_at = DateTimeField()  # when the channel was last asked who this is
    last_seen_at = DateTimeField()
    created_at = DateTimeField(default=utcnow)

    meta = {
        "collection": "identities",
        "indexes": [
            {"fields": ["adapter", "account", "external_user_id"], "unique": True},
            "customer_id",
            {"fields": ["phone"], "sparse": True},
            {"fields": ["email"], "sparse": True},
            {"fields": ["app_user_id"], "sparse": True},
            {"fields": ["unionid"], "sparse": True},
        ],
    }


class Merge(Document):
    """The audit record of one merge (and of its undoing): who, when, why, and what moved."""

    source = ObjectIdField(required=True)
    target = ObjectIdField(required=True)
    actor = StringField(required=True)
    reason = StringField(required=True)
    status = StringField(choices=("done", "undone"), default="done")
    identity_ids = ListField(ObjectIdField())
    source_snapshot = DictField()
    target_snapshot = DictField()
    copied_attributes = ListField(StringField())
    added_tags = ListField(StringField())
    moves = DictField()  # what participants (conversations, messages) moved, to move back
    created_at = DateTimeField(default=utcnow)
    undone_at = DateTimeField()
    undone_by = StringField()

    meta = {"collection": "merges", "indexes": [["source", "-created_at"], "target"]}


class MergeSuggestion(Document):
    """Two customers that may be one person, for an agent to decide."""

    customer_id = ObjectIdField(required=True)
    other_id = ObjectIdField(required=True)
    identifier = StringField(required=True)  # "phone", "email", …
    value = StringField(required=True)
    verified = BooleanField(default=False)
    status = StringField(choices=("open", "merged", "dismissed"), default="open")
    created_at = DateTimeField(default=utcnow)

    meta = {"collection": "merge_suggestions",
            "indexes": [{"fields": ["customer_id", "other_id", "identifier"], "unique": True},
                        "other_id"]}


class Tag(Document):
    name = StringField(required=True, unique=True, max_length=100)
    group = StringField(max_length=100)
    description = StringField(max_length=1000)
    created_at = DateTimeField(default=utcnow)

    meta = {"collection": "tags"}


class TagRule(Document):
    """Applies `tag` to the sender of an inbound message that matches every given condition.

    `match` keys: `keywords` (any, case-insensitive), `regex`, `channel` ("wechat" or
    "wechat:service"), `event` (name, e.g. "subscribe"), `event_key` (e.g. a QR scene),
    `attribute` ({"name": "city", "equals": "上海"}).
    """

    name = StringField(required=True, unique=True, max_length=100)
    tag = StringField(required=True, max_length=100)
    match = DictField(required=True)
    enabled = BooleanField(default=True)
    created_by = StringField()
    created_at = DateTimeField(default=utcnow)

    meta = {"collection": "tag_rules"}


class TagChange(Document):
    """Who applied or removed a tag on a customer, when, and by which rule if automatic."""

    customer_id = ObjectIdField(required=True)
    tag = StringField(required=True)
    action = StringField(choices=("add", "remove"), required=True)
    actor = StringField(required=True)
    rule_id = ObjectIdField()
    at = DateTimeField(default=utcnow)

    meta = {"collection": "tag_changes", "indexes": [["customer_id", "-at"]]}


class Segment(Document):
    name = StringField(required=True, unique=True, max_length=200)
    expression = StringField(required=True, max_length=4000)
    created_by = StringField()
    created_at = DateTimeField(default=utcnow)

    meta = {"collection": "segments"}


class Job(Document):
    """Progress of a long-running operation (bulk tagging, imports) for the API to report."""

    kind = StringField(required=True)
    status = StringField(choices=("queued", "running", "done", "failed"), default="queued")
    total = IntField(default=0)
    done = IntField(default=0)
    detail = DynamicField()
    created_at = DateTimeField(default=utcnow)
    finished_at = DateTimeField()

    meta = {"collection": "jobs"}


DOCUMENTS = (Customer, Identity, Merge, MergeSuggestion, Tag, TagRule, TagChange, Segment, Job)
