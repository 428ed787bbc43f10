"""From a verified delivery to stored events and queued follow-ups: one path for every
entrance (channel webhooks, the SMTP receiver, the IMAP poller)."""

from __future__ import annotations

import asyncio

from pymongo.errors import ConnectionFailure

from hub.adapter import Account, WebhookRequest
from hub.errors import Unavailable
from hub.ingest import Stored, ingest
from hub.runtime import Hub


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
        if item.status_change and hub.plugins.implemented("message_status_changed"):
            await hub.enqueue("status_changed", result.message_id, *item.status_change,
                              job_id=f"status:{result.message_id}:{item.status_change[1]}")
        elif listening and item.follow_up:
            # Also for duplicates: a retry after a failed enqueue must not lose the job;
            # the job id makes it a no-op when the first enqueue worked.
            await hub.enqueue("process_inbound", result.message_id,
                              item.opened_conversation, job_id=f"inbound:{result.message_id}")
    return stored
