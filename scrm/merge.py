"""Merging two customers into one, and undoing it.

A merge is one transaction: identities move to the target, tags are united, attributes the
target already has keep its value while the source's goes to `attribute_history`, consent
opt-outs are kept (the safe side), and a `Merge` record keeps snapshots of both profiles so
`unmerge` can restore the source. Records owned elsewhere that point at customers
(conversations and messages, in the hub) move through registered `MergeParticipant`s, so
this module stays usable from a script without the HTTP app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from bson import ObjectId
from mongoengine.connection import get_connection
from pymongo.client_session import ClientSession

from scrm.identities import channel_keys
from scrm.models import Customer, Identity, Merge, MergeSuggestion, utcnow


class MergeError(Exception):
    """A merge or unmerge that cannot be done; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 409, code: str = "merge_conflict") -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


class MergeParticipant(Protocol):
    def on_merge(self, session: ClientSession, source: ObjectId, target: ObjectId,
                 merge_id: ObjectId) -> dict[str, Any]:
        """Move what points at `source` to `target`; return what is needed to move it back."""

    def on_unmerge(self, session: ClientSession, merge: dict[str, Any],
                   identity_keys: list[tuple[str, str, str]]) -> None:
        """Move back what `on_merge` moved, and what the source's identities sent since."""

    def sweep(self, source: ObjectId, target: ObjectId) -> int:
        """Move stragglers written for `source` while the merge committed; count them."""


participants: dict[str, MergeParticipant] = {}


def _transaction(work: Callable[[ClientSession], Any]) -> Any:
    client = get_connection()
    with client.start_session() as session:
        return session.with_transaction(work)


def _snapshot(doc: dict) -> dict:
    keep = ("display_name", "attributes", "tags", "consent", "opted_out", "channels",
            "last_seen_at")
    return {k: doc.get(k) for k in keep}


def merge(source: ObjectId, target: ObjectId, actor: str, reason: str) -> Merge:
    """Merge `source` into `target`. Idempotent: merging the same pair again returns the
    first merge. Safe to call while messages arrive: see `sweep`.
    """
    if source == target:
        raise MergeError("source and target are the same customer", 400, "same_customer")
    customers = Customer._get_collection()

    def work(session: ClientSession) -> ObjectId:
        src = customers.find_one({"_id": source}, session=session)
        tgt = customers.find_one({"_id": target}, session=session)
        if src is None or tgt is None:
            missing = source if src is None else target
            raise MergeError(f"no customer {missing}", 404, "unknown_customer")
        if src.get("merged_into") == target:
            done = Merge._get_collection().find_one(
                {"source": source, "target": target, "status": "done"}, session=session)
            if done:
                return done["_id"]
        if src.get("merged_into"):
            raise MergeError(f"customer {source} was already merged into {src['merged_into']}")
        if tgt.get("merged_into"):
            raise MergeError(f"customer {target} was merged into {tgt['merged_into']}; "
                             "merge into that one")
        merge_id = ObjectId()
        now = utcnow()
        identity_ids = [d["_id"] for d in Identity._get_collection().find(
            {"customer_id": source}, {"_id": 1}, session=session)]
        Identity._get_collection().update_many({"customer_id": source},
                                               {"$set": {"customer_id": target}},
                                               session=session)
        src_attrs, tgt_attrs = src.get("attributes") or {}, tgt.get("attributes") or {}
        copied = [k for k in src_attrs if k not in tgt_attrs]
        history = [{"attribute": k, "value": v, "from_customer": source, "merge_id": merge_id,
                    "at": now} for k, v in src_attrs.items()
                   if k in tgt_attrs and tgt_attrs[k] != v]
        added_tags = [t for t in src.get("tags") or [] if t not in (tgt.get("tags") or [])]
        consent = dict(tgt.get("consent") or {})
        for key, value in (src.get("consent") or {}).items():
            mine = consent.get(key)
            if mine is None or (value.get("at") and mine.get("at") and value["at"] > mine["at"]):
                consent[key] = value
        changes: dict[str, Any] = {
            "$set": {**{f"attributes.{k}": src_attrs[k] for k in copied}, "consent": consent,
                     "updated_at": now},
            "$addToSet": {"tags": {"$each": added_tags},
                          "channels": {"$each": src.get("channels") or []},
                          "opted_out": {"$each": src.get("opted_out") or []}},
        }
        if history:
            changes["$push"] = {"attribute_history": {"$each": history}}
        if not tgt.get("display_name") and src.get("display_name"):
            changes["$set"]["display_name"] = src["display_name"]
        if (src.get("last_seen_at") or now) > (tgt.get("last_seen_at") or now.replace(year=1970)):
            changes["$set"]["last_seen_at"] = src.get("last_seen_at")
        customers.update_one({"_id": target}, changes, session=session)
        customers.update_one({"_id": source}, {"$set": {"merged_into": target, "updated_at": now}},
                             session=session)
        moves = {name: p.on_merge(session, source, target, merge_id)
                 for name, p in participants.items()}
        Merge._get_collection().insert_one({
            "_id": merge_id, "source": source, "target": target, "actor": actor,
            "reason": reason, "status": "done", "identity_ids": identity_ids,
            "source_snapshot": _snapshot(src), "target_snapshot": _snapshot(tgt),
            "copied_attributes": copied, "added_tags": added_tags, "moves": moves,
            "created_at": now}, session=session)
        MergeSuggestion._get_collection().update_many(
            {"$or": [{"customer_id": source, "other_id": target},
                     {"customer_id": target, "other_id": source}]},
            {"$set": {"status": "merged"}}, session=session)
        return merge_id

    merge_id = _transaction(work)
    sweep(source, target)
    found = Merge.objects(id=merge_id).first()
    assert found is not None
    return found


def sweep(source: ObjectId, target: ObjectId) -> int:
    """Re-point what was written for a merged source while the merge committed."""
    moved = Identity._get_collection().update_many(
        {"customer_id": source}, {"$set": {"customer_id": target}}).modified_count
    return moved + sum(p.sweep(source, target) for p in participants.values())


def unmerge(target: ObjectId, merge_id: ObjectId, actor: str) -> Merge:
    """Undo a merge: the source comes back with its identities, conversations and messages."""
    customers = Customer._get_collection()

    def work(session: ClientSession) -> None:
        record = Merge._get_collection().find_one({"_id": merge_id}, session=session)
        if record is None or record["target"] != target:
            raise MergeError(f"no merge {merge_id} into customer {target}", 404, "unknown_merge")
        if record["status"] == "undone":
            return
        source, now = record["source"], utcnow()
        later = Merge._get_collection().find_one(
            {"source": target, "status": "done", "created_at": {"$gt": record["created_at"]}},
            session=session)
        if later:
            raise MergeError(f"customer {target} was itself merged into {later['target']} "
                             "since; undo that merge first")
        identities = Identity._get_collection()
        identities.update_many({"_id": {"$in": record["identity_ids"]}, "customer_id": target},
                               {"$set": {"customer_id": source}}, session=session)
        keys = [(d["adapter"], d["account"], d["external_user_id"]) for d in identities.find(
            {"_id": {"$in": record["identity_ids"]}}, session=session)]
        snap = record["source_snapshot"]
        customers.update_one({"_id": source}, {"$set": {**snap, "updated_at": now},
                                               "$unset": {"merged_into": ""}}, session=session)
        tgt = customers.find_one({"_id": target}, session=session) or {}
        tgt_snap = record["target_snapshot"]
        attributes = dict(tgt.get("attributes") or {})
        for key in record["copied_attributes"]:
            if attributes.get(key) == (snap.get("attributes") or {}).get(key):
                attributes.pop(key, None)
        consent = {k: v for k, v in (tgt.get("consent") or {}).items()
                   if k in (tgt_snap.get("consent") or {}) or k not in (snap.get("consent") or {})}
        for key, value in (tgt_snap.get("consent") or {}).items():
            consent.setdefault(key, value)
        customers.update_one({"_id": target}, {
            "$set": {"attributes": attributes, "consent": consent, "updated_at": now,
                     "channels": _channels(target, session),
                     "opted_out": _opted_out(consent, tgt_snap.get("opted_out") or [])},
            "$pull": {"attribute_history": {"merge_id": merge_id},
                      "tags": {"$in": record["added_tags"]}}}, session=session)
        customers.update_one({"_id": source}, {"$set": {"channels": _channels(source, session)}},
                             session=session)
        for name, participant in participants.items():
            participant.on_unmerge(session, {**record, "moves": record["moves"].get(name, {})},
                                   keys)
        Merge._get_collection().update_one(
            {"_id": merge_id}, {"$set": {"status": "undone", "undone_at": now,
                                         "undone_by": actor}}, session=session)

    _transaction(work)
    found = Merge.objects(id=merge_id).first()
    assert found is not None
    return found


def _channels(customer_id: ObjectId, session: ClientSession) -> list[str]:
    out: list[str] = []
    for d in Identity._get_collection().find({"customer_id": customer_id},
                                             {"adapter": 1, "account": 1}, session=session):
        if d["adapter"] == "profile":
            continue
        for key in channel_keys(d["adapter"], d["account"]):
            if key not in out:
                out.append(key)
    return out


def _opted_out(consent: dict, before: list[str]) -> list[str]:
    out = [k for k in before if consent.get(k, {}).get("granted") is not False or ":" not in k]
    for key, value in consent.items():
        if value.get("granted") is False:
            for k in (key.split(":", 1)[0], key):
                if k not in out:
                    out.append(k)
    return out
