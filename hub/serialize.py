"""JSON shapes of the API's resources (one function per resource)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hub.models import Conversation, Message
from scrm.models import Customer, Identity


def iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value else None


def route(r: Any) -> dict | None:
    return {"adapter": r.adapter, "account": r.account} if r else None


def message(m: Message) -> dict:
    return {
        "id": str(m.id), "direction": m.direction, "adapter": m.adapter, "account": m.account,
        "external_id": m.external_id, "customer_id": str(m.customer_id),
        "conversation_id": str(m.conversation_id), "kind": m.kind, "text": m.text,
        "attachments": [{k: v for k, v in a.to_mongo().items()} for a in m.attachments],
        "location": m.location or None, "event": m.event or None, "context": m.context or {},
        "status": m.status, "status_reason": m.status_reason, "attempts": m.attempts,
        "created_at": iso(m.created_at), "sent_at": iso(m.sent_at),
        "updated_at": iso(m.updated_at),
    }


def conversation(c: Conversation) -> dict:
    return {
        "id": str(c.id), "customer_id": str(c.customer_id), "status": c.status,
        "assignee": c.assignee, "last_inbound": route(c.last_inbound),
        "channels": [route(r) for r in c.channels], "context": c.context or {},
        "created_at": iso(c.created_at), "updated_at": iso(c.updated_at),
        "last_message_at": iso(c.last_message_at), "resolved_at": iso(c.resolved_at),
    }


def identity(i: Identity) -> dict:
    return {"adapter": i.adapter, "account": i.account, "external_user_id": i.external_user_id,
            "verified": i.verified, "created_at": iso(i.created_at)}


def customer(c: Customer, identities: list[Identity]) -> dict:
    return {
        "id": str(c.id), "display_name": c.display_name, "attributes": c.attributes or {},
        "tags": list(c.tags), "consent": c.consent or {}, "context": c.context or {},
        "merged_into": str(c.merged_into) if c.merged_into else None,
        "identities": [identity(i) for i in identities],
        "created_at": iso(c.created_at), "updated_at": iso(c.updated_at),
    }
