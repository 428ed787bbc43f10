"""The segment expression language, parsed with lark and compiled to one MongoDB filter.

    tag:vip AND (channel:wechat OR attr.city = "上海") AND NOT tag:churned
        AND last_seen < 30d AND consent:sms

Predicates: `tag:NAME`, `channel:ADAPTER[:ACCOUNT]`, `consent:ADAPTER[:ACCOUNT]` (has the
channel and did not opt out), `attr.PATH OP VALUE` with = != < <= > >=, `attr.PATH exists`,
`attr.PATH in [v, …]`, `last_seen OP 30d|12h|2026-01-01`, `created OP …`. Values are
"strings", numbers, true/false or dates. AND binds tighter than OR; NOT, parentheses.
Durations read as "ago": `last_seen < 30d` means seen within the last 30 days.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from scrm.models import Customer, utcnow

GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr  -> negate
         | atom
?atom: "(" or_expr ")"
     | _TAG NAME                                -> tag
     | _CHANNEL NAME (":" NAME)?                -> channel
     | _CONSENT NAME (":" NAME)?                -> consent
     | ATTR OP value                            -> compare
     | ATTR _EXISTS                             -> exists
     | ATTR _IN "[" value ("," value)* "]"      -> one_of
     | TIMEFIELD OP (DURATION | DATE)           -> when

value: ESCAPED_STRING -> string
     | SIGNED_NUMBER  -> number
     | DATE           -> date
     | _TRUE          -> true
     | _FALSE         -> false

_TAG: "tag:"
_CHANNEL: "channel:"
_CONSENT: "consent:"
_OR: /or\b/i
_AND: /and\b/i
_NOT: /not\b/i
_EXISTS: /exists\b/i
_IN: /in\b/i
_TRUE: /true\b/i
_FALSE: /false\b/i
TIMEFIELD.2: /last_seen\b|created\b/
ATTR: /attr(\.[\w\-]+)+/
OP: "!=" | "<=" | ">=" | "=" | "<" | ">"
DATE.3: /\d{4}-\d{2}-\d{2}/
DURATION.2: /\d+[dhm]\b/
NAME: /[\w\-.]+/

%import common.ESCAPED_STRING
%import common.SIGNED_NUMBER
%import common.WS
%ignore WS
"""

_parser = Lark(GRAMMAR, parser="lalr", maybe_placeholders=False)
_OPS = {"=": "$eq", "!=": "$ne", "<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
# Seen "< 30d" = more recently than 30 days ago, so the comparison on the date flips.
_FLIP = {"$lt": "$gt", "$lte": "$gte", "$gt": "$lt", "$gte": "$lte", "$eq": "$eq", "$ne": "$ne"}
TERMINAL_NAMES = {
    "NAME": "a name", "ATTR": "attr.<name>", "OP": "a comparison (= != < <= > >=)",
    "ESCAPED_STRING": 'a "string"', "SIGNED_NUMBER": "a number", "DATE": "a date YYYY-MM-DD",
    "DURATION": "a duration like 30d", "LPAR": "(", "RPAR": ")", "LSQB": "[", "RSQB": "]",
    "_AND": "AND", "_OR": "OR", "_NOT": "NOT", "_EXISTS": "exists", "_IN": "in",
    "TIMEFIELD": "last_seen or created", "$END": "end of expression", "COMMA": ",",
    "COLON": ":", "_TRUE": "true", "_FALSE": "false", "_TAG": "tag:", "_CHANNEL": "channel:",
    "_CONSENT": "consent:",
}


class SegmentSyntaxError(ValueError):
    def __init__(self, message: str, position: int, expected: list[str]) -> None:
        super().__init__(message)
        self.message, self.position, self.expected = message, position, expected


@dataclass(frozen=True)
class Compiled:
    """The filter, and the index to drive it when a required predicate has one.

    The hint matters on the embedded server, whose planner only picks an index for a
    single-predicate filter; on MongoDB it names the index the planner would choose anyway.
    """

    expression: str
    filter: dict[str, Any]
    hint: str | None = None


# Indexed fields, most selective first: tags, then channels, then recency.
_HINTS = (("tags", "tags_1"), ("channels", "channels_1"), ("last_seen_at", "last_seen_at_-1"))


def _required(condition: dict[str, Any]) -> list[dict[str, Any]]:
    """The conjuncts every match must satisfy (what an index may drive)."""
    if list(condition) == ["$and"]:
        return [part for inner in condition["$and"] for part in _required(inner)]
    return [condition]


def _hint(conjuncts: list[dict[str, Any]]) -> str | None:
    for field, index in _HINTS:
        for part in conjuncts:
            value = part.get(field)
            if value is not None and (not isinstance(value, dict) or
                                      set(value) <= {"$gt", "$gte", "$lt", "$lte"}):
                return index
    return None


@v_args(inline=True)
class _ToMongo(Transformer):
    def __init__(self, now: datetime) -> None:
        super().__init__()
        self.now = now

    def or_expr(self, *parts: dict) -> dict:
        return {"$or": list(parts)}

    def and_expr(self, *parts: dict) -> dict:
        return {"$and": list(parts)}

    def negate(self, part: dict) -> dict:
        return {"$nor": [part]}

    def tag(self, name: Token) -> dict:
        return {"tags": str(name)}

    def channel(self, adapter: Token, account: Token | None = None) -> dict:
        return {"channels": f"{adapter}:{account}" if account else str(adapter)}

    def consent(self, adapter: Token, account: Token | None = None) -> dict:
        key = f"{adapter}:{account}" if account else str(adapter)
        return {"channels": key, "opted_out": {"$ne": key}}

    def compare(self, attr: Token, op: Token, value: Any) -> dict:
        return {_field(attr): {_OPS[str(op)]: value}}

    def exists(self, attr: Token) -> dict:
        return {_field(attr): {"$exists": True}}

    def one_of(self, attr: Token, *values: Any) -> dict:
        return {_field(attr): {"$in": list(values)}}

    def when(self, field: Token, op: Token, value: Token) -> dict:
        name = "last_seen_at" if str(field) == "last_seen" else "created_at"
        mongo_op = _OPS[str(op)]
        if value.type == "DURATION":
            amount, unit = int(value[:-1]), value[-1]
            delta = {"d": timedelta(days=amount), "h": timedelta(hours=amount),
                     "m": timedelta(minutes=amount)}[unit]
            return {name: {_FLIP[mongo_op]: self.now - delta}}
        return {name: {mongo_op: datetime.fromisoformat(str(value))}}

    def string(self, token: Token) -> str:
        return str(token)[1:-1].encode("utf-8").decode("unicode_escape").encode(
            "latin-1").decode("utf-8") if "\\" in token else str(token)[1:-1]

    def number(self, token: Token) -> float | int:
        text = str(token)
        return float(text) if re.search(r"[.eE]", text) else int(text)

    def date(self, token: Token) -> str:
        return str(token)

    def true(self) -> bool:
        return True

    def false(self) -> bool:
        return False


def _field(attr: Token) -> str:
    return "attributes." + str(attr)[len("attr."):]


def compile_expression(expression: str, now: datetime | None = None) -> Compiled:
    """Parse and compile, or raise SegmentSyntaxError saying where and what was expected."""
    if not expression or not expression.strip():
        raise SegmentSyntaxError("the expression is empty", 0, ["a predicate such as tag:vip"])
    if len(expression) > 4000:
        raise SegmentSyntaxError("the expression is longer than 4000 characters", 4000, [])
    try:
        tree = _parser.parse(expression)
    except UnexpectedInput as exc:
        raise _syntax_error(expression, exc) from None
    conjuncts = _required(_ToMongo(now or utcnow()).transform(tree))
    # Merged-away customers are pointers, not people.
    return Compiled(expression, {"$and": [*conjuncts, {"merged_into": None}]}, _hint(conjuncts))


def _syntax_error(expression: str, exc: UnexpectedInput) -> SegmentSyntaxError:
    position = getattr(exc, "pos_in_stream", None)
    token = getattr(exc, "token", None)
    at_end = isinstance(exc, UnexpectedEOF) or (token is not None and token.type == "$END")
    if position is None or at_end:
        position = len(expression)
    expected: set[str] = set()
    if isinstance(exc, UnexpectedToken):
        expected = set(exc.expected)
    elif isinstance(exc, UnexpectedCharacters):
        expected = set(exc.allowed or ())
    elif isinstance(exc, UnexpectedEOF):
        expected = set(exc.expected)
    names = sorted({TERMINAL_NAMES.get(e, e.strip('"').lower()) for e in expected})
    snippet = expression[position:position + 12]
    found = repr(snippet) if snippet else "end of expression"
    message = (f"syntax error at position {position + 1}: unexpected {found}; expected "
               f"{', '.join(names) or 'something else'}")
    return SegmentSyntaxError(message, position + 1, names)



def count(expression: str) -> int:
    compiled = compile_expression(expression)
    return Customer._get_collection().count_documents(compiled.filter, **_index(compiled))


def _index(compiled: Compiled) -> dict[str, Any]:
    return {"hint": compiled.hint} if compiled.hint else {}


def preview(expression: str, channels: list[str], sample_size: int = 10) -> dict[str, Any]:
    """Count, a sample, and how many each channel can reach given consent."""
    compiled = compile_expression(expression)
    customers = Customer._get_collection()
    index = _index(compiled)
    total = customers.count_documents(compiled.filter, **index)
    fields = {"display_name": 1, "tags": 1, "channels": 1}
    sample = [{"id": str(d["_id"]), "display_name": d.get("display_name"),
               "tags": d.get("tags", []), "channels": d.get("channels", [])}
              for d in customers.find(compiled.filter, fields, **index).limit(sample_size)]
    reachable = {}
    for channel in channels:
        reach = {"channels": channel, "opted_out": {"$ne": channel}}
        reachable[channel] = customers.count_documents(
            {"$and": [compiled.filter, reach]}, hint=compiled.hint or "channels_1")
    return {"count": total, "sample": sample, "reachable": reachable}
