"""The hub's side of customer merges: conversations and messages follow their customer, and
`link_identity` runs the link rules and fires the `customers_merged` hook."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo.client_session import ClientSession

from hub.models import Conversation, Message
from scrm import merge as scrm_merge
from scrm.linking import apply_link_rules
from scrm.models import Identity, Merge, utcnow

if TYPE_CHECKING:
    from hub.runtime import Hub


class ConversationsAndMessages:
    """Keeps "one active conversation per customer" across a merge: the source's active
    conversation is folded into the target's (its messages move, remembering where from)."""

    def on_merge(self, session: ClientSession, source: ObjectId, target: ObjectId,
                 merge_id: ObjectId) -> dict[str, Any]:
        conversations, messages = Conversation._get_collection(), Message._get_collection()
        ids = [d["_id"] for d in conversations.find({"customer_id": source}, {"_id": 1},
                                                    session=session)]
        into = conversations.find_one({"customer_id": target, "active": True}, session=session)
        folded = conversations.find_one({"customer_id": source, "active": True}, session=session)
        moves: dict[str, Any] = {"conversations": ids}
        if into and folded:
            messages.update_many(
                {"conversation_id": folded["_id"]},
                {"$set": {"conversation_id": into["_id"], "customer_id": target,
                          "merge_origin": {"merge_id": merge_id,
                                           "conversation_id": folded["_id"]}}},
                session=session)
            conversations.update_one(
                {"_id": folded["_id"]},
                {"$set": {"active": False, "status": "resolved", "resolved_at": utcnow(),
                          "context.folded_into": into["_id"]}}, session=session)
            latest: dict[str, Any] = {"updated_at": utcnow()}
            if (folded.get("last_message_at") or utcnow().min) > \
                    (into.get("last_message_at") or utcnow().min):
                # the reply goes where the customer wrote last, whichever side that was
                latest.update(last_inbound=folded.get("last_inbound"),
                              last_message_at=folded["last_message_at"])
            conversations.update_one(
                {"_id": into["_id"]},
                {"$addToSet": {"channels": {"$each": folded.get("channels") or []}},
                 "$set": latest}, session=session)
            moves.update(folded=folded["_id"], into=into["_id"])
        conversations.update_many({"customer_id": source}, {"$set": {"customer_id": target}},
                                  session=session)
        messages.update_many({"customer_id": source}, {"$set": {"customer_id": target}},
                             session=session)
        return moves

    def on_unmerge(self, session: ClientSession, merge: dict[str, Any],
                   identity_keys: list[tuple[str, str, str]]) -> None:
        conversations, messages = Conversation._get_collection(), Message._get_collection()
        source, target, moves = merge["source"], merge["target"], merge["moves"]
        conversations.update_many({"_id": {"$in": moves.get("conversations", [])}},
                                  {"$set": {"customer_id": source}}, session=session)
        home = moves.get("folded")
        if home:
            conversations.update_one(
                {"_id": home}, {"$set": {"active": True, "status": "open"},
                                "$unset": {"resolved_at": "", "context.folded_into": ""}},
                session=session)
        else:
            latest = conversations.find_one({"customer_id": source}, sort=[("_id", -1)],
                                            session=session)
            home = latest["_id"] if latest else None
        messages.update_many({"merge_origin.merge_id": merge["_id"]},
                             [{"$set": {"customer_id": source,
                                        "conversation_id": "$merge_origin.conversation_id"}},
                              {"$unset": "merge_origin"}], session=session)
        # What the source's identities sent (or were sent) while merged goes back with them.
        for adapter, account, user in identity_keys:
            selector = {"customer_id": target, "adapter": adapter, "account": account,
                        "external_user_id": user}
            change: dict[str, Any] = {"customer_id": source}
            if home:
                change["conversation_id"] = home
            messages.update_many(selector, {"$set": change}, session=session)
        messages.update_many({"customer_id": target, "conversation_id": {
            "$in": moves.get("conversations", [])}}, {"$set": {"customer_id": source}},
            session=session)

    def sweep(self, source: ObjectId, target: ObjectId) -> int:
        conversations, messages = Conversation._get_collection(), Message._get_collection()
        into = conversations.find_one({"customer_id": target, "active": True})
        moved = 0
        for straggler in conversations.find({"customer_id": source}):
            if into and straggler.get("active"):
                moved += messages.update_many(
                    {"conversation_id": straggler["_id"]},
                    {"$set": {"conversation_id": into["_id"], "customer_id": target}}
                ).modified_count
                conversations.delete_one({"_id": straggler["_id"]})
            else:
                conversations.update_one({"_id": straggler["_id"]},
                                         {"$set": {"customer_id": target}})
        # A message stored for the source while the merge committed may sit in the
        # conversation that was folded away: it belongs in the one it was folded into.
        late = messages.distinct("conversation_id", {"customer_id": source})
        for conv in conversations.find({"_id": {"$in": late},
                                        "context.folded_into": {"$exists": True}}):
            moved += messages.update_many(
                {"customer_id": source, "conversation_id": conv["_id"]},
                {"$set": {"customer_id": target,
                          "conversation_id": conv["context"]["folded_into"]}}).modified_count
        moved += messages.update_many({"customer_id": source},
                                      {"$set": {"customer_id": target}}).modified_count
        return moved


scrm_merge.participants["conversations"] = ConversationsAndMessages()


async def merged(hub: Hub, merges: list[Merge]) -> None:
    for record in merges:
        await hub.plugins.call("customers_merged", merge=record, source_id=record.source,
                               target_id=record.target)


async def link_identity(hub: Hub, identity_id: ObjectId) -> list[Merge]:
    """Run the link rules for an identity that learnt a strong identifier."""
    merges = await asyncio.to_thread(apply_link_rules, identity_id, hub.settings.auto_merge)
    await merged(hub, merges)
    return merges


def identity_id(adapter: str, account: str, external_user_id: str) -> ObjectId | None:
    found = Identity.objects(adapter=adapter, account=account,
                             external_user_id=external_user_id).only("id").first()
    return found.id if found else None
