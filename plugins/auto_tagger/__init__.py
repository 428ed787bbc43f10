"""Auto-tagging: rules stored in the database (managed at /v1/tag-rules) tag the senders of
matching inbound messages. Runs in the follow-up job; applying a tag twice changes nothing,
and every tag it adds is recorded with the rule that added it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hub import hookimpl
from scrm.models import TagRule
from scrm.tag_rules import matches
from scrm.tags import add_tags

RULES_TTL_S = 5.0  # rules are re-read this often, so API changes apply within seconds
_cache: dict[str, Any] = {"at": 0.0, "rules": [], "db": None}


def _rules() -> list[TagRule]:
    db = TagRule._get_db().name
    if time.monotonic() - _cache["at"] > RULES_TTL_S or _cache["db"] != db:
        _cache.update(at=time.monotonic(), db=db, rules=list(TagRule.objects(enabled=True)))
    return _cache["rules"]


def apply_rules(message: Any, customer: Any) -> list[str]:
    added = []
    for rule in _rules():
        if matches(rule.match, message, customer):
            added += add_tags(customer.id, [rule.tag], f"rule:{rule.name}", rule.id)
    return added


@hookimpl
async def message_received(message, customer) -> None:
    if message.direction == "in" and customer is not None and not message.automated:
        await asyncio.to_thread(apply_rules, message, customer)
