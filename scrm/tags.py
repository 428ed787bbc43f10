"""Applying and removing tags, one customer or a whole segment, with who did it and why."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from bson import ObjectId

from scrm.models import Customer, Tag, TagChange, utcnow

TAG_NAME = re.compile(r"^[\w\-.·]{1,100}$")
BATCH = 1000


def valid_tag(name: Any) -> bool:
    return isinstance(name, str) and bool(TAG_NAME.match(name))


def ensure_tags(names: list[str]) -> None:
    """Tags used before they were described get a bare definition."""
    for name in names:
        Tag._get_collection().update_one({"name": name}, {"$setOnInsert": {
            "name": name, "created_at": utcnow()}}, upsert=True)


def add_tags(customer_id: ObjectId, names: list[str], actor: str,
             rule_id: ObjectId | None = None) -> list[str]:
    """Add tags; returns those that were new (re-applying is a no-op, not a new record)."""
    ensure_tags(names)
    customers = Customer._get_collection()
    added = []
    for name in names:
        if customers.update_one({"_id": customer_id, "tags": {"$ne": name}},
                                {"$push": {"tags": name}, "$set": {"updated_at": utcnow()}}
                                ).modified_count:
            added.append(name)
            TagChange._get_collection().insert_one({
                "customer_id": customer_id, "tag": name, "action": "add", "actor": actor,
                "rule_id": rule_id, "at": utcnow()})
    return added


def remove_tag(customer_id: ObjectId, name: str, actor: str) -> bool:
    changed = Customer._get_collection().update_one(
        {"_id": customer_id, "tags": name},
        {"$pull": {"tags": name}, "$set": {"updated_at": utcnow()}}).modified_count
    if changed:
        TagChange._get_collection().insert_one({"customer_id": customer_id, "tag": name,
                                                "action": "remove", "actor": actor,
                                                "at": utcnow()})
    return bool(changed)


def bulk_tag(query: dict, add: list[str], remove: list[str], actor: str,
             progress: Callable[[int], None]) -> int:
    """Tag every customer matching `query`, in batches, reporting progress as it goes.

    Resumable: re-running skips customers already changed (the updates are conditional).
    """
    ensure_tags(add)
    customers, changes = Customer._get_collection(), TagChange._get_collection()
    done = 0
    last: ObjectId | None = None
    while True:
        page = {"$and": [query, {"_id": {"$gt": last}}]} if last else query
        ids = [d["_id"] for d in customers.find(page, {"_id": 1}).sort("_id", 1).limit(BATCH)]
        if not ids:
            return done
        now = utcnow()
        log = []
        for name in add:
            lacking = {"_id": {"$in": ids}, "tags": {"$ne": name}}
            touched = [d["_id"] for d in customers.find(lacking, {"_id": 1})]
            if touched:
                customers.update_many({"_id": {"$in": touched}},
                                      {"$addToSet": {"tags": name}, "$set": {"updated_at": now}})
                log += [{"customer_id": c, "tag": name, "action": "add", "actor": actor,
                         "at": now} for c in touched]
        for name in remove:
            touched = [d["_id"] for d in customers.find({"_id": {"$in": ids}, "tags": name},
                                                        {"_id": 1})]
            if touched:
                customers.update_many({"_id": {"$in": touched}},
                                      {"$pull": {"tags": name}, "$set": {"updated_at": now}})
                log += [{"customer_id": c, "tag": name, "action": "remove", "actor": actor,
                         "at": now} for c in touched]
        if log:
            changes.insert_many(log)
        done += len(ids)
        last = ids[-1]
        progress(done)
