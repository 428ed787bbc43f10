"""From a verified delivery to stored events and queued follow-ups: one path for every
entrance (channel webhooks, the SMTP receiver, the IMAP poller)."""

from __future__ import annotations

import asyncio
import re

from pymongo.errors import ConnectionFailure

from hub.adapter import Account, InboundEvent, WebhookRequest
from hub.errors import Unavailable
from hub.ingest import Stored, ingest
from hub.runtime import Hub

HANDOFF_HINT = re.compile(r"(?<!\d)\d{6}(?!\d)|hof_")


def may_carry_handoff(event: InboundEvent) -> bool:
    """Cheap pre-check, so only messages that could resolve a handoff cost a job."""
    scene = ((event.event or {}).get("payload") or {}).get("scene") or ""
    text = " ".join(filter(None, [event.text, str(event.context.get("subject") or ""),
                                  str(event.context.get("handoff_token") or "")]))
    return (scene.startswith("ho_") or bool(HANDOFF_HINT.search(text))
            or "phone" in event.identifiers or "email" in event.identifiers)


async def receive(hub: Hub, account: Account, incoming: WebhookRequest) -> list[Stored]:
    """Parse, store durably and queue follow-up jobs; raise Unavailable when storage is down."""
    events = account.adapter.parse(incoming, account)
    try:
        stored = [await asyncio.to_thread(ingest, event, account, hub.settings.reopen_days)
                  for event in events]
    except ConnectionFailure as exc:
        raise Unavailable("storage is unreachable; retry later",
                          code="storage_unavailable") from exc
    listening = hub.plugins.implemented("message_received", "conversation_opened")
    for item, event in zip(stored, events, strict=True):
        result = item.result
        if item.new_identity:
            await hub.enqueue("link_identity", account.adapter.name, account.name,
                              event.external_user_id,
                              job_id=f"link:{account.adapter.name}:{account.name}:"
                                     f"{event.external_user_id}")
        if item.follow_up and not result.duplicate and may_carry_handoff(event):
            await hub.enqueue("resolve_handoff", result.message_id,
                              job_id=f"handoff:{result.message_id}")
        if item.status_change and hub.plugins.implemented("message_status_changed"):
            await hub.enqueue("status_changed", result.message_id, *item.status_change,
                              job_id=f"status:{result.message_id}:{item.status_change[1]}")
        elif listening and item.follow_up:
            # Also for duplicates: a retry after a failed enqueue must not lose the job;
            # the job id makes it a no-op when the first enqueue worked.
            await hub.enqueue("process_inbound", result.message_id,
                              item.opened_conversation, job_id=f"inbound:{result.message_id}")
    return stored
