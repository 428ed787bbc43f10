"""Merges and unmerges keep every message; link rules merge or suggest; concurrency."""

from __future__ import annotations

import asyncio

from hub import hookimpl
from hub.models import Conversation, Message
from scrm.models import Customer, Identity, Merge, MergeSuggestion
from tests.adapters.test_sms import inbound
from tests.adapters.test_sms import post as post_sms
from tests.adapters.test_sms import settings as sms_settings
from tests.conftest import APP_SECRET, app_body, post_app


async def _two_customers(h):
    """One customer on the app with history, one on SMS, each with an open conversation."""
    await post_app(h.client, app_body(user_id="app-li", message_id="a1", text="App 里的问题"))
    await post_app(h.client, app_body(user_id="app-li", message_id="a2", text="还在吗"))
    await post_sms(h, inbound(sid="SM" + "1" * 32, body="短信里的问题"))
    auth = await h.api_key()
    app_c = (await h.client.get("/v1/customers?identity=app:mobile:app-li",
                                headers=auth)).json()["items"][0]
    sms_c = (await h.client.get("/v1/customers?phone=%2B8613800138000",
                                headers=auth)).json()["items"][0]
    return auth, app_c, sms_c


async def _sms_hub(hub_factory, fake_http, **extra):
    accounts = [{"adapter": "app", "name": "mobile", "secret": APP_SECRET,
                 "callback_url": f"{fake_http.url}/cb"},
                {"adapter": "sms", "name": "text", **sms_settings(fake_http.url)}]
    return await hub_factory(accounts=accounts, plugins=("app", "sms"), **extra)


async def test_merge_then_unmerge_round_trip_keeps_every_message(hub_factory, fake_http):
    merges = []

    class Watcher:
        @hookimpl
        def customers_merged(self, merge):
            merges.append((str(merge.source), str(merge.target)))

    h = await _sms_hub(hub_factory, fake_http, auto_merge=False)
    h.hub.plugins.register(Watcher(), "watcher")
    auth, app_c, sms_c = await _two_customers(h)
    await h.client.post(f"/v1/customers/{app_c['id']}/tags", headers=auth, json={"tags": ["vip"]})
    await h.client.patch(f"/v1/customers/{app_c['id']}", headers=auth,
                         json={"attributes": {"city": "上海", "tier": "gold"}})
    await h.client.patch(f"/v1/customers/{sms_c['id']}", headers=auth,
                         json={"attributes": {"city": "北京", "age": 30}})
    await h.client.post(f"/v1/customers/{sms_c['id']}/tags", headers=auth,
                        json={"tags": ["sms-only"]})

    r = await h.client.post("/v1/customers/merge", headers=auth, json={
        "source": sms_c["id"], "target": app_c["id"], "reason": "电话核实为同一人"})
    assert r.status_code == 200, r.text
    merge_id = r.json()["merge_id"]
    again = await h.client.post("/v1/customers/merge", headers=auth, json={
        "source": sms_c["id"], "target": app_c["id"]})
    assert again.json()["merge_id"] == merge_id  # idempotent
    assert merges == [(sms_c["id"], app_c["id"])] * 2

    target = (await h.client.get(f"/v1/customers/{app_c['id']}", headers=auth)).json()
    assert sorted(target["tags"]) == ["sms-only", "vip"]
    assert target["attributes"] == {"city": "上海", "tier": "gold", "age": 30}
    assert {(i["adapter"]) for i in target["identities"]} == {"app", "sms"}
    doc = await asyncio.to_thread(lambda: Customer.objects(id=app_c["id"]).first())
    assert [(x["attribute"], x["value"]) for x in doc.attribute_history] == [("city", "北京")]
    timeline = (await h.client.get(f"/v1/customers/{app_c['id']}/timeline",
                                   headers=auth)).json()["items"]
    assert [m["text"] for m in timeline] == ["App 里的问题", "还在吗", "短信里的问题"]
    convs = (await h.client.get(f"/v1/conversations?customer_id={app_c['id']}&status=open",
                                headers=auth)).json()["items"]
    assert len(convs) == 1  # still one open conversation, now with both channels
    assert {c["adapter"] for c in convs[0]["channels"]} == {"app", "sms"}

    # the SMS side writes again while merged: it lands on the target
    await post_sms(h, inbound(sid="SM" + "2" * 32, body="合并后又发了一条"))
    timeline = (await h.client.get(f"/v1/customers/{app_c['id']}/timeline",
                                   headers=auth)).json()["items"]
    assert timeline[-1]["text"] == "合并后又发了一条"

    r = await h.client.post(f"/v1/customers/{app_c['id']}/unmerge", headers=auth,
                            json={"merge_id": merge_id})
    assert r.status_code == 200 and r.json()["status"] == "undone"
    source = (await h.client.get(f"/v1/customers/{sms_c['id']}", headers=auth)).json()
    target = (await h.client.get(f"/v1/customers/{app_c['id']}", headers=auth)).json()
    assert source["merged_into"] is None and source["tags"] == ["sms-only"]
    assert source["attributes"] == {"city": "北京", "age": 30}
    assert [i["adapter"] for i in source["identities"]] == ["sms"]
    assert target["tags"] == ["vip"] and target["attributes"] == {"city": "上海", "tier": "gold"}
    src_msgs = (await h.client.get(f"/v1/customers/{sms_c['id']}/timeline",
                                   headers=auth)).json()["items"]
    tgt_msgs = (await h.client.get(f"/v1/customers/{app_c['id']}/timeline",
                                   headers=auth)).json()["items"]
    assert [m["text"] for m in src_msgs] == ["短信里的问题", "合并后又发了一条"]
    assert [m["text"] for m in tgt_msgs] == ["App 里的问题", "还在吗"]
    assert len({m["conversation_id"] for m in src_msgs}) == 1
    open_convs = await asyncio.to_thread(lambda: Conversation.objects(active=True).count())
    assert open_convs == 2
    audit = (await h.client.get(f"/v1/customers/{sms_c['id']}/merges", headers=auth)).json()
    [entry] = audit["items"]
    assert entry["status"] == "undone" and entry["reason"] == "电话核实为同一人"
    assert entry["actor"] == "api:agent" and entry["undone_by"] == "api:agent"
    total = await asyncio.to_thread(lambda: Message.objects.count())
    assert total == 4  # nothing lost, nothing duplicated


async def test_merge_errors_are_clear(hub_factory, fake_http):
    h = await _sms_hub(hub_factory, fake_http, auto_merge=False)
    auth, app_c, sms_c = await _two_customers(h)
    cases = [({"source": app_c["id"], "target": app_c["id"]}, 400, "same_customer"),
             ({"source": "nope", "target": app_c["id"]}, 400, "invalid_id"),
             ({"source": "0" * 24, "target": app_c["id"]}, 404, "unknown_customer")]
    for body, status, code in cases:
        r = await h.client.post("/v1/customers/merge", headers=auth, json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code)
    r = await h.client.post(f"/v1/customers/{app_c['id']}/unmerge", headers=auth,
                            json={"merge_id": "0" * 24})
    assert r.status_code == 404
    marketer = await h.api_key("marketer")
    r = await h.client.post("/v1/customers/merge", headers=marketer,
                            json={"source": sms_c["id"], "target": app_c["id"]})
    assert r.status_code == 403


async def test_concurrent_inbound_during_merge_ends_on_the_target(hub_factory, fake_http):
    h = await _sms_hub(hub_factory, fake_http, auto_merge=False)
    auth, app_c, sms_c = await _two_customers(h)

    async def sms_burst():
        return await asyncio.gather(*[post_sms(h, inbound(sid=f"SM{i:032d}", body=f"并发 {i}"))
                                      for i in range(20)])

    async def app_burst():
        return await asyncio.gather(*[post_app(h.client, app_body(
            user_id="app-li", message_id=f"c{i}", text=f"app 并发 {i}")) for i in range(20)])

    results = await asyncio.gather(
        sms_burst(), app_burst(),
        h.client.post("/v1/customers/merge", headers=auth,
                      json={"source": sms_c["id"], "target": app_c["id"]}))
    assert results[2].status_code == 200
    assert all(r.status_code == 200 for r in results[0] + results[1])
    from bson import ObjectId

    from scrm.merge import sweep

    await asyncio.to_thread(sweep, ObjectId(sms_c["id"]), ObjectId(app_c["id"]))
    messages = await asyncio.to_thread(lambda: list(Message.objects))
    assert len(messages) == 3 + 40
    assert {str(m.customer_id) for m in messages} == {app_c["id"]}
    active = await asyncio.to_thread(lambda: list(Conversation.objects(active=True)))
    assert len(active) == 1
    assert {str(m.conversation_id) for m in messages} == {str(active[0].id)}


async def test_verified_phone_links_app_and_sms_automatically(hub_factory, fake_http):
    h = await _sms_hub(hub_factory, fake_http)
    await post_sms(h, inbound(sid="SM" + "9" * 32, body="短信先到"))
    # the app backend says its user logged in with that (verified) phone
    body = app_body(user_id="app-li", message_id="x1", text="App 登录后")
    await post_app(h.client, body)
    await h.run_jobs()
    identity = await asyncio.to_thread(
        lambda: Identity.objects(adapter="app").first())
    await asyncio.to_thread(lambda: Identity.objects(id=identity.id).update_one(
        set__phone="+8613800138000", set__verified=True))
    from hub.merging import link_identity

    merges = await link_identity(h.hub, identity.id)
    assert len(merges) == 1
    customers = await asyncio.to_thread(lambda: list(Customer.objects(merged_into=None)))
    assert len(customers) == 1
    assert await asyncio.to_thread(lambda: Merge.objects.count()) == 1


async def test_auto_merge_off_records_a_suggestion_instead(hub_factory, fake_http):
    h = await _sms_hub(hub_factory, fake_http, auto_merge=False)
    await post_sms(h, inbound(sid="SM" + "8" * 32, body="短信"))
    await post_app(h.client, app_body(user_id="app-wang", message_id="y1"))
    identity = await asyncio.to_thread(lambda: Identity.objects(adapter="app").first())
    await asyncio.to_thread(lambda: Identity.objects(id=identity.id).update_one(
        set__phone="+8613800138000", set__verified=True))
    from hub.merging import link_identity

    assert await link_identity(h.hub, identity.id) == []
    auth = await h.api_key()
    r = await h.client.get(f"/v1/customers/{identity.customer_id}/suggestions", headers=auth)
    [suggestion] = r.json()["items"]
    assert suggestion["identifier"] == "phone" and suggestion["verified"] is True
    assert await asyncio.to_thread(lambda: Customer.objects(merged_into=None).count()) == 2


async def test_unverified_matches_only_suggest(hub_factory, fake_http):
    h = await _sms_hub(hub_factory, fake_http)  # auto-merge on
    await post_app(h.client, app_body(user_id="a", message_id="1"))
    await post_app(h.client, app_body(user_id="b", message_id="2"))
    ids = await asyncio.to_thread(lambda: [i.id for i in Identity.objects(adapter="app")])
    await asyncio.to_thread(lambda: Identity.objects(id=ids[0]).update_one(
        set__email="same@example.com", set__verified=False))
    await asyncio.to_thread(lambda: Identity.objects(id=ids[1]).update_one(
        set__email="same@example.com", set__verified=True))
    from hub.merging import link_identity

    assert await link_identity(h.hub, ids[1]) == []
    assert await asyncio.to_thread(lambda: MergeSuggestion.objects.count()) == 1
