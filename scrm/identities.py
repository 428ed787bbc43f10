"""Resolve a channel identity to its customer, creating both on first contact."""

from __future__ import annotations

from datetime import timedelta

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from scrm.models import Customer, Identity, utcnow

LAST_SEEN_RESOLUTION = timedelta(hours=1)  # last_seen_at is written at most this often


def channel_keys(adapter: str, account: str) -> list[str]:
    """How a channel appears in `Customer.channels` and segment expressions."""
    return [adapter, f"{adapter}:{account}"]


def resolve_customer(adapter: str, account: str, external_user_id: str,
                     display_name: str | None = None,
                     identifiers: dict[str, str] | None = None,
                     verified: bool = True) -> tuple[ObjectId, bool]:
    """Return `(customer_id, created)` for a channel identity.

    One read for a known identity (plus, at most hourly, a last-seen write). Safe under
    concurrency: the unique identity index decides which of two racing first contacts
    creates the customer. `identifiers` (`phone`, `email`, `app_user_id`) are facts the
    channel gives about the sender; they are stored as verified only when the channel proves
    them (an SMS comes from that number; an email's From can be forged).
    """
    identities = Identity._get_collection()
    key = {"adapter": adapter, "account": account, "external_user_id": external_user_id}
    now = utcnow()
    found = identities.find_one(key, {"customer_id": 1, "last_seen_at": 1})
    if found:
        seen = found.get("last_seen_at")
        if seen is None or now - seen > LAST_SEEN_RESOLUTION:
            identities.update_one({"_id": found["_id"]}, {"$set": {"last_seen_at": now}})
            Customer._get_collection().update_one({"_id": found["customer_id"]},
                                                  {"$set": {"last_seen_at": now}})
        return found["customer_id"], False
    customer_id = ObjectId()
    try:
        identities.insert_one({**key, **(identifiers or {}), "customer_id": customer_id,
                               "verified": bool(identifiers) and verified,
                               "source": f"channel:{adapter}/{account}", "created_at": now,
                               "last_seen_at": now})
    except DuplicateKeyError:  # a concurrent first contact created it: use theirs
        return identities.find_one(key, {"customer_id": 1})["customer_id"], False
    # Upsert: re-running a first contact never creates a second profile.
    Customer._get_collection().update_one(
        {"_id": customer_id},
        {"$setOnInsert": {"display_name": display_name, "attributes": {}, "tags": [],
                          "consent": {}, "opted_out": [], "context": {}, "created_at": now,
                          "updated_at": now, "last_seen_at": now,
                          "channels": channel_keys(adapter, account)}},
        upsert=True,
    )
    return customer_id, True
