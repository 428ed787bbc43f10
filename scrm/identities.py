"""Resolve a channel identity to its customer, creating both on first contact."""

from __future__ import annotations

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from scrm.models import Customer, Identity, utcnow


def resolve_customer(adapter: str, account: str, external_user_id: str,
                     display_name: str | None = None,
                     identifiers: dict[str, str] | None = None,
                     verified: bool = True) -> tuple[ObjectId, bool]:
    """Return `(customer_id, created)` for a channel identity.

    `identifiers` (`phone`, `email`) are facts the channel gives about the sender; they are
    stored as verified only when the channel proves them (an SMS comes from that number; an
    email's From can be forged).

    One read for a known identity. Safe under concurrency: the unique identity index
    decides which of two racing first contacts creates the customer.
    """
    identities = Identity._get_collection()
    key = {"adapter": adapter, "account": account, "external_user_id": external_user_id}
    found = identities.find_one(key, {"customer_id": 1})
    if found:
        return found["customer_id"], False
    now = utcnow()
    customer_id = ObjectId()
    try:
        identities.insert_one({**key, **(identifiers or {}), "customer_id": customer_id,
                               "verified": bool(identifiers) and verified, "created_at": now})
    except DuplicateKeyError:  # a concurrent first contact created it: use theirs
        return identities.find_one(key, {"customer_id": 1})["customer_id"], False
    # Upsert: re-running a first contact never creates a second profile.
    Customer._get_collection().update_one(
        {"_id": customer_id},
        {"$setOnInsert": {"display_name": display_name, "attributes": {}, "tags": [],
                          "consent": {}, "context": {}, "created_at": now, "updated_at": now}},
        upsert=True,
    )
    return customer_id, True
