"""Facts an adapter learns about a sender after ingest (today: a WeChat unionid, the same
for one person across every Official Account of a company). The link rules then decide
whether two customers are one (`hub.merging.link_identity`).
"""

from __future__ import annotations

from bson import ObjectId

from scrm.models import Identity, utcnow


def profile_fetched(adapter: str, account: str, external_user_id: str) -> bool:
    """Whether the channel was already asked about this identity (ask once, not per message)."""
    return Identity.objects(adapter=adapter, account=account, external_user_id=external_user_id,
                            profile_fetched_at__ne=None).only("id").first() is not None


def record_profile(adapter: str, account: str, external_user_id: str,
                   unionid: str | None) -> ObjectId | None:
    """Record what the channel said about the identity; returns the identity's id when it
    learnt a strong identifier (so the link rules should run), else None.
    """
    identity = Identity.objects(adapter=adapter, account=account,
                                external_user_id=external_user_id).first()
    if identity is None:
        return None
    changes: dict[str, object] = {"set__profile_fetched_at": utcnow()}
    if unionid:
        changes.update(set__unionid=unionid, set__verified=True)
    Identity.objects(id=identity.id).update_one(**changes)
    return identity.id if unionid else None
