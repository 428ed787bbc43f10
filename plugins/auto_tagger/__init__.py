"""Auto-tagging: rules stored in the database (managed at /v1/tag-rules) tag the senders of
matching inbound messages. Runs in the follow-up job; applying a tag twice changes nothing,
and every tag it adds is recorded with the rule that added it.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from hub import hookimpl
from scrm.models import TagRule
from scrm.tags import add_tags

RULES_TTL_S = 5.0  # rules are re-read this often, so API changes apply within seconds
_cache: dict[str, Any] = {"at": 0.0, "rules": [], "db": None}


def validate_match(match: Any) -> str | None:
    """Why a rule's `match` is unusable, or None when it is fine."""
    if not isinstance(match, dict) or not match:
        return "match must be an object with at least one condition"
    known = {"keywords", "regex", "channel", "event", "event_key", "attribute"}
    unknown = set(match) - known
    if unknown:
        return f"unknown condition {sorted(unknown)[0]!r} (use {', '.join(sorted(known))})"
    keywords = match.get("keywords")
    if keywords is not None and (not isinstance(keywords, list) or not keywords or
                                 not all(isinstance(k, str) and k for k in keywords)):
        return "keywords must be a non-empty list of strings"
    if "regex" in match:
        try:
            re.compile(match["regex"])
        except (re.error, TypeError) as exc:
            return f"regex does not compile: {exc}"
    attribute = match.get("attribute")
    if attribute is not None and not (isinstance(attribute, dict) and
                                      isinstance(attribute.get("name"), str)):
        return 'attribute must look like {"name": "city", "equals": "上海"}'
    return None


def matches(match: dict, message: Any, customer: Any) -> bool:
    text = (message.text or "").lower()
    if "keywords" in match and not any(k.lower() in text for k in match["keywords"]):
        return False
    if "regex" in match and not re.search(match["regex"], message.text or ""):
        return False
    if "channel" in match and match["channel"] not in (
            message.adapter, f"{message.adapter}:{message.account}"):
        return False
    event = message.event or {}
    if "event" in match and (message.kind != "event" or
                             str(event.get("name", "")).lower() != match["event"].lower()):
        return False
    if "event_key" in match and event.get("key") != match["event_key"]:
        return False
    if "attribute" in match:
        attribute = match["attribute"]
        value: Any = customer.attributes or {}
        for part in attribute["name"].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if "equals" in attribute and value != attribute["equals"]:
            return False
        if "equals" not in attribute and value is None:
            return False
    return True


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
