"""Link rules: two customers sharing a strong identifier are (maybe) one person.

A *verified* shared identifier on both sides (phone proven by SMS, an app login, a WeChat
unionid) merges them when auto-merge is on; anything less only records a suggestion for an
agent. The older customer survives.
"""

from __future__ import annotations

from bson import ObjectId

from scrm.merge import merge
from scrm.models import STRONG_IDENTIFIERS, Customer, Identity, Merge, MergeSuggestion


def apply_link_rules(identity_id: ObjectId, auto_merge: bool, actor: str = "link-rules",
                     ) -> list[Merge]:
    merges: list[Merge] = []
    identity = Identity.objects(id=identity_id).first()
    if identity is None:
        return merges
    for field in STRONG_IDENTIFIERS:
        value = getattr(identity, field)
        if not value:
            continue
        for other in Identity.objects(**{field: value}, customer_id__ne=identity.customer_id):
            identity.reload()  # an earlier merge in this loop may have moved it
            mine, theirs = identity.customer_id, other.customer_id
            if mine == theirs:
                continue
            verified = bool(identity.verified and other.verified)
            if verified and auto_merge:
                older, newer = _by_age(mine, theirs)
                merges.append(merge(newer, older, actor,
                                    f"same verified {field} ({identity.adapter} and "
                                    f"{other.adapter})"))
            else:
                first, second = sorted([mine, theirs])
                MergeSuggestion._get_collection().update_one(
                    {"customer_id": first, "other_id": second, "identifier": field},
                    {"$setOnInsert": {"value": value, "verified": verified, "status": "open",
                                      "created_at": identity.created_at}}, upsert=True)
    return merges


def _by_age(a: ObjectId, b: ObjectId) -> tuple[ObjectId, ObjectId]:
    docs = {d.id: d.created_at for d in Customer.objects(id__in=[a, b]).only("created_at")}
    return (a, b) if (docs.get(a), a) <= (docs.get(b), b) else (b, a)
