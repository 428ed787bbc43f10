"""Background jobs (arq): follow-up of inbound messages and outbound delivery.

Every job is idempotent (it may run twice after a worker crash) and never lets a plugin's
error stop the worker. Outbound sends retry with exponential backoff and end in `failed`
with a reason a person can read.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from arq import Retry
from arq.worker import Worker, func

from hub.errors import NotFound, SendError, Throttled, Unprocessable
from hub.handoff import resolve
from hub.merging import identity_id, link_identity
from hub.models import Conversation, Message
from hub.policy import check_outbound_allowed
from hub.runtime import QUEUE, Hub
from scrm.models import Customer, Job, Segment, utcnow
from scrm.segments import compile_expression
from scrm.tags import bulk_tag

log = logging.getLogger("omnihub.jobs")


async def process_inbound(ctx: dict[str, Any], message_id: str, opened: bool) -> None:
    """Run the event hooks for a stored inbound message, once."""
    hub: Hub = ctx["hub"]
    message = await asyncio.to_thread(Message.objects(id=message_id).first)
    if message is None or message.processed_at is not None:
        return
    customer, conversation = await asyncio.to_thread(
        lambda: (Customer.objects(id=message.customer_id).first(),
                 Conversation.objects(id=message.conversation_id).first()))
    if opened:
        await hub.plugins.call("conversation_opened", conversation=conversation,
                               customer=customer, message=message)
    account = hub.accounts.get((message.adapter, message.account))
    await hub.plugins.call("message_received", message=message, customer=customer,
                           conversation=conversation, account=account, settings=hub.settings,
                           hub=hub)
    await asyncio.to_thread(Message.objects(id=message_id).update_one,
                            set__processed_at=utcnow())


async def status_changed(ctx: dict[str, Any], message_id: str, old: str, new: str) -> None:
    hub: Hub = ctx["hub"]
    message = await asyncio.to_thread(Message.objects(id=message_id).first)
    if message is not None:
        await hub.plugins.call("message_status_changed", message=message, old_status=old,
                               new_status=new)


ORDER_WAIT_S = 0.2


def _earlier_reply_pending(message: Message) -> bool:
    return Message.objects(direction="out", adapter=message.adapter, account=message.account,
                           external_user_id=message.external_user_id, status="queued",
                           id__lt=message.id).only("id").first() is not None


async def link_identity_job(ctx: dict[str, Any], adapter: str, account: str,
                            external_user_id: str) -> int:
    """Run the link rules for a new identity that brought a phone, email or app user id."""
    hub: Hub = ctx["hub"]
    found = await asyncio.to_thread(identity_id, adapter, account, external_user_id)
    return len(await link_identity(hub, found)) if found else 0


async def bulk_tag_job(ctx: dict[str, Any], job_id: str) -> int:
    """Tag a segment in batches, recording progress on the Job for the API to show."""
    job = await asyncio.to_thread(Job.objects(id=job_id).first)
    if job is None or job.status == "done":
        return 0
    segment = await asyncio.to_thread(Segment.objects(id=job.detail["segment_id"]).first)
    if segment is None:
        await asyncio.to_thread(Job.objects(id=job_id).update_one, set__status="failed",
                                set__detail__error="the segment was deleted")
        return 0
    query = compile_expression(segment.expression).filter

    def run() -> int:
        Job.objects(id=job_id).update_one(set__status="running")
        done = bulk_tag(query, job.detail["add"], job.detail["remove"], job.detail["actor"],
                        lambda n: Job.objects(id=job_id).update_one(set__done=n))
        Job.objects(id=job_id).update_one(set__status="done", set__done=done,
                                          set__finished_at=utcnow())
        return done

    return await asyncio.to_thread(run)


async def resolve_handoff_job(ctx: dict[str, Any], message_id: str) -> str | None:
    """Resolve the handoff an inbound message may carry; fires `handoff_resolved`."""
    hub: Hub = ctx["hub"]
    message = await asyncio.to_thread(Message.objects(id=message_id).first)
    if message is None:
        return None
    handoff = await asyncio.to_thread(resolve, message, hub.redis)
    if handoff is None:
        return None
    message = await asyncio.to_thread(Message.objects(id=message_id).first)
    conversation = await asyncio.to_thread(
        Conversation.objects(id=message.conversation_id).first)
    await hub.plugins.call("handoff_resolved", handoff=handoff, message=message,
                           conversation=conversation)
    return str(handoff.id)


def backoff(attempt: int, base: float) -> float:
    """Exponential backoff with ±20 % jitter so retries of many messages spread out."""
    return base * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)


async def send_message(ctx: dict[str, Any], message_id: str) -> str:
    """Deliver one queued outbound message through its adapter."""
    hub: Hub = ctx["hub"]
    message = await asyncio.to_thread(Message.objects(id=message_id).first)
    if message is None or message.status != "queued":
        return message.status if message else "missing"  # already handled by an earlier run
    if await asyncio.to_thread(_earlier_reply_pending, message):
        # Keep the customer's order: jobs run concurrently, replies to one person must not.
        raise Retry(defer=ORDER_WAIT_S)
    attempt = message.attempts + 1
    try:
        account = hub.account(message.adapter, message.account)
        await asyncio.to_thread(check_outbound_allowed, account, message)
        assert hub.http is not None
        result = await account.adapter.send(message, account, hub.http)
    except Throttled as wait:
        raise Retry(defer=wait.defer_s) from None
    except (NotFound, Unprocessable) as exc:
        return await _finish(hub, message, "failed", f"{exc.message}; the message was not sent",
                             attempt)
    except SendError as exc:
        if exc.permanent or attempt >= hub.settings.outbound_max_tries:
            reason = exc.reason if exc.permanent else (
                f"gave up after {attempt} attempts; last error: {exc.reason}")
            return await _finish(hub, message, "failed", reason, attempt)
        await asyncio.to_thread(Message.objects(id=message_id).update_one,
                                set__attempts=attempt, set__status_reason=exc.reason,
                                set__updated_at=utcnow())
        log.warning("send failed; will retry", extra={"message_id": message_id,
                                                      "attempt": attempt, "reason": exc.reason})
        raise Retry(defer=backoff(attempt, hub.settings.outbound_retry_base_s)) from None
    return await _finish(hub, message, "sent", None, attempt, result.external_id)


async def _finish(hub: Hub, message: Message, status: str, reason: str | None, attempt: int,
                  external_id: str | None = None) -> str:
    now = utcnow()
    changes: dict[str, Any] = {"status": status, "status_reason": reason, "attempts": attempt,
                               "updated_at": now}
    if status == "sent":
        changes["sent_at"] = now
        changes["external_id"] = external_id
    for key, value in changes.items():
        setattr(message, key, value)
    # Only a queued message moves: a receipt that raced ahead (delivered) is not undone.
    await asyncio.to_thread(
        Message._get_collection().update_one,
        {"_id": message.id, "status": "queued"}, {"$set": changes})
    log.info("send finished", extra={"message_id": str(message.id), "status": status,
                                     "attempts": attempt, "reason": reason})
    await hub.plugins.call("message_status_changed", message=message, old_status="queued",
                           new_status=status)
    return status


FUNCTIONS = [
    func(process_inbound, name="process_inbound"),
    func(send_message, name="send_message", max_tries=1_000),  # our own cap applies
    func(status_changed, name="status_changed"),
    func(link_identity_job, name="link_identity"),
    func(bulk_tag_job, name="bulk_tag", timeout=3600),
    func(resolve_handoff_job, name="resolve_handoff"),
]


def make_worker(hub: Hub, *, burst: bool = False, **kwargs: Any) -> Worker:
    """An arq worker sharing the hub's queue connection, plugins and settings."""
    assert hub.queue is not None
    return Worker(
        functions=FUNCTIONS, queue_name=QUEUE, redis_pool=hub.queue, burst=burst,
        ctx={"hub": hub}, poll_delay=hub.settings.worker_poll_s, handle_signals=False,
        max_jobs=20, keep_result=3600, **kwargs,
    )
