"""Resolve a channel identity to its customer, creating both on first contact."""

from __future__ import annotations

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from scrm.models import Customer, Identity, utcnow


def resolve_customer(adapter: str, account: str, external_user_id: str,
                     display_name: str | None = None) -> tuple[ObjectId, bool]:
    """Return `(customer_id, created)` for a channel identity.

    One round trip for a known identity. Safe under concurrency: the unique identity index
    decides which of two racing first contacts creates the customer.
    """
    identities = Identity._get_collection()
    now = utcnow()
    new_id = ObjectId()
    key = {"adapter": adapter, "account": account, "external_user_id": external_user_id}
    doc = None
    for _ in range(5):
        try:
            doc = identities.find_one_and_update(
                key,
                {"$setOnInsert": {"customer_id": new_id, "created_at": now, "verified": False},
                 "$set": {"last_seen_at": now}},
                upsert=True, return_document=ReturnDocument.AFTER,
                projection={"customer_id": 1},
            )
        except DuplicateKeyError:  # a concurrent first contact won the upsert
            pass
        # Read it back when the upsert raced (some servers answer None then, not the doc).
        doc = doc or identities.find_one(key, {"customer_id": 1})
        if doc:
            break
    if doc is None:
        raise RuntimeError(f"identity {adapter}/{account} could not be settled")
    customer_id = doc["customer_id"]
    created = customer_id == new_id
    if created:
        # Upsert: re-running a first contact never creates a second profile.
        Customer._get_collection().update_one(
            {"_id": customer_id},
            {"$setOnInsert": {"display_name": display_name, "attributes": {}, "tags": [],
                              "consent": {}, "context": {}, "created_at": now,
                              "updated_at": now}},
            upsert=True,
        )
    return customer_id, created
