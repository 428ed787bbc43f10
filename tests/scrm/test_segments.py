"""The segment language: what it accepts, the errors it gives, and the queries it runs."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from scrm.models import Customer, utcnow
from scrm.segments import SegmentSyntaxError, compile_expression, count, preview


@pytest.mark.parametrize("expression, field", [
    ("tag:vip", "tags"),
    ("tag:高价值", "tags"),
    ("channel:wechat:service", "channels"),
    ('attr.city = "上海"', "attributes.city"),
    ("attr.loan.step >= 3", "attributes.loan.step"),
    ('attr.level in ["gold", "铂金", 3]', "attributes.level"),
    ("attr.vip exists", "attributes.vip"),
    ("created > 2026-01-01", "created_at"),
])
def test_valid_predicates(expression, field):
    assert field in str(compile_expression(expression).filter)


@pytest.mark.parametrize("expression, position, expected", [
    ("tag:vip AND", 12, "tag:"),
    ("tag:vip AND (channel:wechat", 28, ")"),
    ('attr.city = ', 13, 'a "string"'),
    ("tag:vip tag:x", 9, "AND"),
    ("attr.x ~ 3", 8, "a comparison (= != < <= > >=)"),
    ("last_seen < soon", 13, "a duration like 30d"),
    ("", 0, "a predicate such as tag:vip"),
])
def test_syntax_errors_say_where_and_what_was_expected(expression, position, expected):
    with pytest.raises(SegmentSyntaxError) as err:
        compile_expression(expression)
    assert err.value.position == position
    assert expected in err.value.expected, err.value.message


async def _customers(*docs):
    now = utcnow()
    await asyncio.to_thread(Customer._get_collection().insert_many, [
        {"tags": [], "channels": [], "opted_out": [], "attributes": {}, "created_at": now,
         **d} for d in docs])


async def test_the_issue_example_selects_exactly_the_right_customers(hub_factory):
    await hub_factory()
    now = utcnow()
    base = {"tags": ["vip"], "channels": ["sms", "sms:text"], "last_seen_at": now}
    await _customers(
        {**base, "display_name": "match wechat", "channels": ["wechat", "sms", "sms:text"]},
        {**base, "display_name": "match city", "attributes": {"city": "上海"}},
        {**base, "display_name": "churned", "tags": ["vip", "churned"],
         "attributes": {"city": "上海"}},
        {**base, "display_name": "stale", "attributes": {"city": "上海"},
         "last_seen_at": now - timedelta(days=40)},
        {**base, "display_name": "opted out", "attributes": {"city": "上海"},
         "opted_out": ["sms", "sms:text"]},
        {**base, "display_name": "no vip", "tags": [], "attributes": {"city": "上海"}},
        {**base, "display_name": "other city", "attributes": {"city": "北京"}},
        {**base, "display_name": "merged", "attributes": {"city": "上海"},
         "merged_into": __import__("bson").ObjectId()},
    )
    expression = ('tag:vip AND (channel:wechat OR attr.city = "上海") AND NOT tag:churned '
                  "AND last_seen < 30d AND consent:sms")
    result = await asyncio.to_thread(preview, expression, ["sms", "wechat"])
    assert result["count"] == 2
    assert sorted(s["display_name"] for s in result["sample"]) == ["match city", "match wechat"]
    assert result["reachable"] == {"sms": 2, "wechat": 1}
    assert await asyncio.to_thread(count, "NOT tag:vip") == 1


async def test_tag_and_channel_predicates_use_an_index(hub_factory):
    await hub_factory()
    await _customers(*[{"tags": [f"t{i % 50}"], "channels": [f"c{i % 7}"]} for i in range(500)])
    collection = Customer._get_collection()
    for expression, index in (("tag:t3", "tags_1"), ("channel:c2", "channels_1")):
        compiled = compile_expression(expression + ' AND (attr.x = 1 OR NOT tag:y)')
        plan = await asyncio.to_thread(
            lambda c=compiled: collection.find(c.filter, hint=c.hint).explain())
        text = str(plan["queryPlanner"]["winningPlan"])
        assert "IXSCAN" in text and index in text, text
        assert "COLLSCAN" not in text
