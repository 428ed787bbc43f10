"""Facts an adapter learns about a sender after ingest, applied to the customer graph.

Today: a WeChat unionid, which is the same for one person across every Official Account
of a company. When a brand-new customer (this identity is all it has) turns out to share a
unionid with an existing customer, it is folded into that customer: identity,
conversation and messages move, nothing is lost. Anything beyond that (two customers with
history) is a real merge and belongs to the SCRM merge operation.
"""

from __future__ import annotations

import logging

from bson import ObjectId

from hub.models import Conversation, Message
from scrm.models import Customer, Identity, utcnow

log = logging.getLogger("omnihub.enrich")


def profile_fetched(adapter: str, account: str, external_user_id: str) -> bool:
    """Whether the channel was already asked about this identity (ask once, not per message)."""
    return Identity.objects(adapter=adapter, account=account, external_user_id=external_user_id,
                            profile_fetched_at__ne=None).only("id").first() is not None


def record_profile(adapter: str, account: str, external_user_id: str,
                   unionid: str | None) -> ObjectId | None:
    """Record what the channel said about the identity; returns its customer afterwards."""
    identity = Identity.objects(adapter=adapter, account=account,
                                external_user_id=external_user_id).first()
    if identity is None:
        return None
    Identity.objects(id=identity.id).update_one(set__profile_fetched_at=utcnow())
    if not unionid:
        return identity.customer_id
    Identity.objects(id=identity.id).update_one(set__unionid=unionid, set__verified=True)
    other = Identity.objects(unionid=unionid, customer_id__ne=identity.customer_id).first()
    if other is None:
        return identity.customer_id
    source, target = identity.customer_id, other.customer_id
    if Identity.objects(customer_id=source).count() > 1:
        log.info("unionid shared by two established customers; left for an agent to merge",
                 extra={"source": str(source), "target": str(target)})
        return source
    _fold_fresh_customer(source, target)
    return target


def _fold_fresh_customer(source: ObjectId, target: ObjectId) -> None:
    now = utcnow()
    Identity.objects(customer_id=source).update(set__customer_id=target)
    target_active = Conversation.objects(customer_id=target, active=True).first()
    for conversation in Conversation.objects(customer_id=source):
        if conversation.active and target_active is not None:
            Message.objects(conversation_id=conversation.id).update(
                set__conversation_id=target_active.id, set__customer_id=target)
            Conversation.objects(id=target_active.id).update_one(
                add_to_set__channels=conversation.channels, set__updated_at=now)
            conversation.delete()
        else:
            Message.objects(conversation_id=conversation.id).update(set__customer_id=target)
            Conversation.objects(id=conversation.id).update_one(set__customer_id=target)
    Message.objects(customer_id=source).update(set__customer_id=target)
    source_doc = Customer.objects(id=source).first()
    if source_doc is not None:
        target_doc = Customer.objects(id=target).first()
        updates = {f"set__consent__{k.replace('.', '_')}": v
                   for k, v in (source_doc.consent or {}).items()}
        if target_doc is not None and not target_doc.display_name and source_doc.display_name:
            updates["set__display_name"] = source_doc.display_name
        if updates:
            Customer.objects(id=target).update_one(**updates)
        Customer.objects(id=source).update_one(set__merged_into=target, set__updated_at=now)
    log.info("new customer folded into an existing one by unionid",
             extra={"source": str(source), "target": str(target)})
