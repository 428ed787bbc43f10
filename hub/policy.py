"""Outbound rules the hub enforces for every channel, from the facts adapters declare."""

from __future__ import annotations

from datetime import timedelta

from bson import ObjectId

from hub.adapter import Account
from hub.errors import Unprocessable
from hub.models import Message
from scrm.models import Customer, utcnow

# How many recent inbound messages to look through for one that opened a window.
_TRIGGER_SCAN = 50


PURPOSES = ("reply", "marketing")


def check_outbound_allowed(account: Account, message: Message) -> None:
    """Every rule at once: consent for the purpose, then the channel's reply window."""
    check_consent(account, message.customer_id, message.purpose)
    check_reply_window(account, message.external_user_id,
                       before=message if message.id is not None else None)


def check_consent(account: Account, customer_id: ObjectId, purpose: str) -> None:
    """Refuse a send to a customer who opted out of this channel account.

    Marketing never goes to an opted-out customer; replies do only where the account says
    so (e.g. SMS `replies_after_opt_out = true` for an ongoing support conversation).
    """
    customer = Customer.objects(id=customer_id).only("consent").first()
    key = f"{account.adapter.name}:{account.name}"
    consent = (customer.consent or {}).get(key) if customer else None
    if not consent or consent.get("granted") is not False:
        return
    if purpose == "reply" and account.adapter.replies_after_opt_out(account):
        return
    when = consent.get("at")
    since = f" on {when:%Y-%m-%d %H:%M} UTC" if when else ""
    refused = "no marketing goes there" if purpose == "marketing" else "replies are not allowed"
    raise Unprocessable(f"the customer opted out of {key}{since}: {refused}; use another "
                        "channel they have", field="adapter", code="consent_withdrawn")


def check_reply_window(account: Account, external_user_id: str,
                       before: Message | None = None) -> None:
    """Raise Unprocessable unless the channel still lets us write to this user now.

    `before` is the outbound message being sent (the worker's re-check): only replies
    queued ahead of it count against the quota.
    """
    adapter = account.adapter
    if not adapter.has_reply_window:
        return
    inbound = Message.objects(direction="in", adapter=adapter.name, account=account.name,
                              external_user_id=external_user_id).order_by("-id").limit(
                                  _TRIGGER_SCAN)
    for trigger in inbound:
        allowance = adapter.reply_allowance(trigger, account)
        if allowance is not None:
            break
    else:
        raise Unprocessable(f"{adapter.name} only allows replies after the customer writes, "
                            "and they have not", field="adapter", code="window_closed")
    age = utcnow() - trigger.created_at
    window = timedelta(seconds=allowance.window_s)
    if age > window:
        raise Unprocessable(
            f"{adapter.name}'s reply window closed: the customer's last message was "
            f"{_human(age)} ago and replies are allowed for {_human(window)}; "
            "wait for them to write again or use another channel",
            field="adapter", code="window_closed")
    if allowance.quota is not None:
        sent = Message.objects(direction="out", adapter=adapter.name, account=account.name,
                               external_user_id=external_user_id, id__gt=trigger.id,
                               status__ne="failed")
        if before is not None:
            sent = sent.filter(id__lt=before.id)
        if sent.count() >= allowance.quota:
            raise Unprocessable(
                f"{adapter.name} allows {allowance.quota} replies per customer message and "
                "they are used up; wait for the customer to write again",
                field="adapter", code="reply_quota_exhausted")


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"
