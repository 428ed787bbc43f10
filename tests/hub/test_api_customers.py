"""Profiles, tags, tag rules (with the auto_tagger plugin), segments and bulk jobs via HTTP."""

from __future__ import annotations

import asyncio
import json
import tracemalloc

from plugins import auto_tagger
from scrm.models import Customer, TagChange, utcnow
from tests.conftest import app_body, post_app


async def _customer(h, auth, user="u-1"):
    await post_app(h.client, app_body(user_id=user, message_id=f"m-{user}"))
    return (await h.client.get(f"/v1/customers?identity=app:mobile:{user}",
                               headers=auth)).json()["items"][0]


async def test_patch_attributes_merges_keys_and_validates(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    auth = await h.api_key()
    c = await _customer(h, auth)
    url = f"/v1/customers/{c['id']}"
    r = await h.client.patch(url, headers=auth, json={
        "display_name": "韩梅梅", "attributes": {"city": "上海", "loan": {"step": 3}}})
    assert r.status_code == 200
    r = await h.client.patch(url, headers=auth, json={"attributes": {"city": "杭州",
                                                                     "loan": None}})
    assert r.json()["attributes"] == {"city": "杭州"} and r.json()["display_name"] == "韩梅梅"
    doc = await asyncio.to_thread(lambda: Customer.objects(id=c["id"]).first())
    assert [(x["attribute"], x["value"]) for x in doc.attribute_history] == [
        ("city", "上海"), ("loan", {"step": 3})]
    bad = [({"attributes": []}, "attributes"), ({"attributes": {"a.b": 1}}, "attributes.a.b"),
           ({"attributes": {"$where": 1}}, "attributes.$where"),
           ({"attributes": {"x": {"y": {"z": {"w": {"v": {"u": 1}}}}}}}, None),
           ({"attributes": {"big": "长" * 20000}}, "attributes"),
           ({"display_name": 5}, "display_name"), ({"tags": []}, "tags")]
    for body, field in bad:
        r = await h.client.patch(url, headers=auth, json=body)
        assert r.status_code == 400, body
        if field:
            assert r.json()["error"]["field"] == field
    assert (await h.client.patch(url, headers=await h.api_key("app"), json={})).status_code == 403


async def test_lookups_by_phone_email_and_tag(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    auth = await h.api_key()
    c = await _customer(h, auth)
    await h.client.post(f"/v1/customers/{c['id']}/tags", headers=auth, json={"tags": ["vip"]})
    from scrm.models import Identity

    await asyncio.to_thread(lambda: Identity.objects(customer_id=c["id"]).update_one(
        set__phone="+8613800138000", set__email="li@example.com"))
    for query in ("phone=%2B8613800138000", "phone=13800138000", "email=LI@example.com",
                  "tag=vip", "identity=app:mobile:u-1"):
        r = await h.client.get(f"/v1/customers?{query}", headers=auth)
        assert [x["id"] for x in r.json()["items"]] == [c["id"]], query
    assert (await h.client.get("/v1/customers?phone=abc", headers=auth)).status_code == 400
    assert (await h.client.get("/v1/customers", headers=auth)).status_code == 400


async def test_tags_apply_remove_with_actor_and_time(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    auth = await h.api_key()
    c = await _customer(h, auth)
    r = await h.client.post("/v1/tags", headers=auth, json={
        "name": "高价值", "group": "value", "description": "年消费过万"})
    assert r.status_code == 201
    r = await h.client.post(f"/v1/customers/{c['id']}/tags", headers=auth,
                            json={"tags": ["高价值", "vip"]})
    assert r.json() == {"tags": ["高价值", "vip"], "added": ["高价值", "vip"]}
    r = await h.client.post(f"/v1/customers/{c['id']}/tags", headers=auth,
                            json={"tags": ["vip"]})
    assert r.json()["added"] == []
    r = await h.client.delete(f"/v1/customers/{c['id']}/tags/vip", headers=auth)
    assert r.json() == {"tags": ["高价值"], "removed": True}
    changes = await asyncio.to_thread(lambda: [(t.tag, t.action, t.actor) for t in
                                               TagChange.objects.order_by("at")])
    assert changes == [("高价值", "add", "api:agent"), ("vip", "add", "api:agent"),
                       ("vip", "remove", "api:agent")]
    tags = (await h.client.get("/v1/tags", headers=auth)).json()["items"]
    assert {"name": "高价值", "group": "value", "description": "年消费过万"} in tags
    r = await h.client.post(f"/v1/customers/{c['id']}/tags", headers=auth,
                            json={"tags": ["has space"]})
    assert r.status_code == 400


async def test_auto_tag_rules_by_keyword_channel_and_qr_scene(hub_factory, app_account):
    import plugins.auto_tagger as plugin_module

    h = await hub_factory(accounts=[app_account], extra_plugins={"auto_tagger": plugin_module})
    auth = await h.api_key()
    rules = [
        {"name": "refund", "tag": "售后", "match": {"keywords": ["退款", "refund"]}},
        {"name": "spring", "tag": "campaign-2026-spring",
         "match": {"event": "subscribe", "event_key": "campaign-2026-spring"}},
        {"name": "order number", "tag": "has-order", "match": {"regex": r"\b\d{8}\b",
                                                                "channel": "app"}},
    ]
    for rule in rules:
        r = await h.client.post("/v1/tag-rules", headers=auth, json=rule)
        assert r.status_code == 201, r.text
    r = await h.client.post("/v1/tag-rules", headers=auth, json=rules[0])
    assert r.status_code == 409
    r = await h.client.post("/v1/tag-rules", headers=auth, json={
        "name": "bad", "tag": "x", "match": {"regex": "("}})
    assert r.status_code == 400 and "regex" in r.json()["error"]["message"]
    auto_tagger._cache["at"] = 0.0
    await post_app(h.client, app_body(user_id="t1", message_id="r1",
                                      text="我要退款，订单 20261124"))
    await post_app(h.client, app_body(user_id="t1", message_id="r2", text="退款还没到"))
    await post_app(h.client, app_body(user_id="t2", message_id="r3", type="event", text=None,
                                      event={"name": "subscribe",
                                             "key": "campaign-2026-spring"}))
    await h.run_jobs()
    t1 = (await h.client.get("/v1/customers?identity=app:mobile:t1", headers=auth)).json()
    t2 = (await h.client.get("/v1/customers?identity=app:mobile:t2", headers=auth)).json()
    assert sorted(t1["items"][0]["tags"]) == ["has-order", "售后"]
    assert t2["items"][0]["tags"] == ["campaign-2026-spring"]
    changes = await asyncio.to_thread(lambda: list(TagChange.objects(tag="售后")))
    assert len(changes) == 1 and changes[0].actor == "rule:refund" and changes[0].rule_id


async def _seed(n: int, **extra):
    now = utcnow()
    docs = [{"display_name": f"客户{i}", "tags": ["vip"] if i % 2 else [],
             "channels": ["sms", "sms:text"], "opted_out": [], "created_at": now,
             "attributes": {"city": "上海" if i % 3 == 0 else "北京", "n": i}, **extra}
            for i in range(n)]
    await asyncio.to_thread(Customer._get_collection().insert_many, docs)


async def test_segment_preview_save_and_syntax_errors(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    auth = await h.api_key("marketer")
    await _seed(30)
    r = await h.client.post("/v1/segments/preview", headers=auth, json={
        "expression": 'tag:vip AND attr.city = "上海"'})
    assert r.status_code == 200
    assert r.json()["count"] == 5 and len(r.json()["sample"]) == 5
    assert r.json()["reachable"] == {"app": 0}
    r = await h.client.post("/v1/segments/preview", headers=auth,
                            json={"expression": "tag:vip AND (attr.n > 3"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "segment_syntax" and error["field"] == "expression"
    assert "position 24" in error["message"] and "expected )" in error["message"]
    shanghai_vip = {"name": "上海 VIP", "expression": 'tag:vip AND attr.city = "上海"'}
    r = await h.client.post("/v1/segments", headers=auth, json=shanghai_vip)
    assert r.status_code == 201
    r = await h.client.post("/v1/segments", headers=auth,
                            json={"name": "上海 VIP", "expression": "tag:vip"})
    assert r.status_code == 409
    agent = await h.api_key("agent")
    r = await h.client.post("/v1/segments", headers=agent,
                            json={"name": "x", "expression": "tag:vip"})
    assert r.status_code == 403


async def _export(app, auth, segment_id, fmt="csv"):
    """Drive the ASGI app directly (the test client would buffer the body): returns the
    chunk sizes, the line count, the first bytes and the peak traced memory."""
    sizes, lines, first, requested = [], 0, b"", []
    scope = {"type": "http", "method": "GET", "path": f"/v1/segments/{segment_id}/export",
             "raw_path": b"", "query_string": f"format={fmt}".encode(), "root_path": "",
             "headers": [(b"authorization", auth["Authorization"].encode())],
             "scheme": "http", "server": ("test", 80), "client": ("test", 1),
             "http_version": "1.1"}

    async def receive():
        if requested:  # the client stays connected until the response ends
            await asyncio.Event().wait()
        requested.append(True)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        nonlocal lines, first
        if message["type"] == "http.response.body" and message.get("body"):
            sizes.append(len(message["body"]))
            lines += message["body"].count(b"\n")
            first = first or message["body"][:200]

    tracemalloc.start()
    await app(scope, receive, send)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return sizes, lines, first, peak


async def test_large_segment_exports_stream_in_bounded_memory(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    auth = await h.api_key("marketer")
    await _seed(8000)
    small = (await h.client.post("/v1/segments", headers=auth, json={
        "name": "small", "expression": "channel:sms AND attr.n < 2000"})).json()
    large = (await h.client.post("/v1/segments", headers=auth, json={
        "name": "all", "expression": "channel:sms"})).json()
    small_sizes, small_lines, _, small_peak = await _export(h.app, auth, small["id"])
    sizes, lines, first, peak = await _export(h.app, auth, large["id"])
    assert (small_lines, lines) == (2001, 8001)  # header + every customer
    assert len(sizes) > 5 and max(sizes) < 200_000  # streamed in pieces, not one body
    assert "客户0".encode() in first
    # Four times the rows, not four times the memory: the export is never held whole.
    assert sum(sizes) > 3.5 * sum(small_sizes)
    assert peak < 1.5 * small_peak, (small_peak, peak)
    r = await h.client.get(f"/v1/segments/{large['id']}/export?format=jsonl", headers=auth)
    lines = r.text.splitlines()
    assert len(lines) == 8000 and json.loads(lines[0])["channels"] == ["sms", "sms:text"]
    assert (await h.client.get(f"/v1/segments/{large['id']}/export?format=xml",
                               headers=auth)).status_code == 400


async def test_bulk_tagging_a_segment_reports_progress(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    auth = await h.api_key("marketer")
    await _seed(2500)
    seg = (await h.client.post("/v1/segments", headers=auth, json={
        "name": "北京", "expression": 'attr.city = "北京"'})).json()
    r = await h.client.post(f"/v1/segments/{seg['id']}/tags", headers=auth,
                            json={"add": ["spring-2026"], "remove": ["vip"]})
    assert r.status_code == 202
    job_id, total = r.json()["job_id"], r.json()["total"]
    assert total == 1666
    await h.run_jobs()
    job = (await h.client.get(f"/v1/jobs/{job_id}", headers=auth)).json()
    assert (job["status"], job["done"], job["total"]) == ("done", 1666, 1666)
    tagged = await asyncio.to_thread(lambda: Customer.objects(tags="spring-2026").count())
    vip_left = await asyncio.to_thread(
        lambda: Customer.objects(tags="vip", attributes__city="北京").count())
    assert tagged == 1666 and vip_left == 0
