"""Customer and Identity documents."""

from __future__ import annotations

from datetime import UTC, datetime

from mongoengine import (
    BooleanField,
    DateTimeField,
    DictField,
    Document,
    ListField,
    ObjectIdField,
    StringField,
)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Customer(Document):
    """The one profile behind many channel identities."""

    display_name = StringField(max_length=200)
    attributes = DictField()
    tags = ListField(StringField(max_length=100))
    consent = DictField()
    context = DictField()
    merged_into = ObjectIdField()
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)

    meta = {"collection": "customers", "indexes": ["tags"]}


class Identity(Document):
    """One channel identity `(adapter, account, external_user_id)`; unique, one customer."""

    adapter = StringField(required=True)
    account = StringField(required=True)
    external_user_id = StringField(required=True)
    customer_id = ObjectIdField(required=True)
    phone = StringField()
    email = StringField()
    app_user_id = StringField()
    unionid = StringField(sparse=True)
    verified = BooleanField(default=False)
    profile_fetched_at = DateTimeField()  # when the channel was last asked who this is
    created_at = DateTimeField(default=utcnow)

    meta = {
        "collection": "identities",
        "indexes": [
            {"fields": ["adapter", "account", "external_user_id"], "unique": True},
            "customer_id",
            {"fields": ["unionid"], "sparse": True},
        ],
    }
