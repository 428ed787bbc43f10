"""What an auto-tagging rule's `match` may say, and whether a message matches it."""

from __future__ import annotations

import re
from typing import Any


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
