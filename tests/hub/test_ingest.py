"""The one ingest path: story 2 end to end, duplicates, conversations opening and reopening."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from adapters.app import sign
from hub.models import Conversation, Message
from scrm.models import Customer, Identity, utcnow
from tests.conftest import APP_SECRET, app_body, post_app


async def count(doc, **filters) -> int:
    return await asyncio.to_thread(lambda: doc.objects(**filters).count())


async def test_app_message_to_reply_on_the_callback_end_to_end(hub_factory, app_account,
                                                               fake_http):
    h = await hub_factory(accounts=[app_account])
    body = app_body(user_id="u-42", message_id="m-1", user_name="李雷",
                    text="贷款申请第3步报错", context={"screen": "loan_form", "step": 3})
    r = await post_app(h.client, body)
    assert r.status_code == 200
    assert r.json()["duplicate"] is False
    inbound_id = r.json()["id"]
    await h.run_jobs()

    auth = await h.api_key("agent")
    found = (await h.client.get("/v1/customers?identity=app:mobile:u-42", headers=auth)).json()
    customer = found["items"][0]
    assert customer["display_name"] == "李雷"
    assert customer["identities"][0]["external_user_id"] == "u-42"
    convs = (await h.client.get(f"/v1/conversations?customer_id={customer['id']}",
                                headers=auth)).json()
    conv = convs["items"][0]
    assert conv["status"] == "open"
    assert conv["last_inbound"] == {"adapter": "app", "account": "mobile"}
    msgs = (await h.client.get(f"/v1/conversations/{conv['id']}/messages",
                               headers=auth)).json()["items"]
    assert [m["id"] for m in msgs] == [inbound_id]
    assert msgs[0]["text"] == "贷款申请第3步报错"
    assert msgs[0]["context"] == {"screen": "loan_form", "step": 3}

    r = await h.client.post("/v1/messages", headers=auth,
                            json={"conversation_id": conv["id"], "text": "您好，我来帮您看看"})
    assert r.status_code == 202
    assert r.json()["status"] == "queued"
    await h.run_jobs()

    [call] = fake_http.requests
    assert call.path == "/callback"
    assert call.headers["x-omnihub-signature"] == sign(
        APP_SECRET, call.headers["x-omnihub-timestamp"], call.body)
    payload = call.json()
    assert payload["user_id"] == "u-42"
    assert payload["text"] == "您好，我来帮您看看"
    assert payload["conversation_id"] == conv["id"]
    msgs = (await h.client.get(f"/v1/conversations/{conv['id']}/messages",
                               headers=auth)).json()["items"]
    assert [(m["direction"], m["status"]) for m in msgs] == [("in", "received"), ("out", "sent")]


async def test_sequential_retry_gets_the_same_ack_and_stores_once(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    body = app_body(message_id="dup-1")
    first = await post_app(h.client, body)
    second = await post_app(h.client, body)
    assert first.status_code == second.status_code == 200
    assert second.json() == {"id": first.json()["id"], "duplicate": True}
    assert await count(Message) == 1
    assert await count(Customer) == 1
    assert await count(Conversation) == 1


async def test_concurrent_retries_and_first_contacts_store_once(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    body = app_body(user_id="racer", message_id="dup-2")
    answers = await asyncio.gather(*[post_app(h.client, body) for _ in range(12)])
    assert {r.status_code for r in answers} == {200}
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(not r.json()["duplicate"] for r in answers) == 1
    # Different messages from one brand-new customer at once: one customer, one conversation.
    bodies = [app_body(user_id="newcomer", message_id=f"n-{i}") for i in range(10)]
    answers = await asyncio.gather(*[post_app(h.client, b) for b in bodies])
    assert {r.status_code for r in answers} == {200}
    assert await count(Message, external_user_id="newcomer") == 10
    assert await count(Identity, external_user_id="newcomer") == 1
    customer_ids = await asyncio.to_thread(
        lambda: Message.objects(external_user_id="newcomer").distinct("customer_id"))
    assert len(customer_ids) == 1
    assert await count(Customer, id=customer_ids[0]) == 1
    assert await count(Conversation, customer_id=customer_ids[0]) == 1


async def test_follow_up_job_runs_message_received_once(hub_factory, app_account):
    seen = []

    class Recorder:
        from hub import hookimpl

        @hookimpl
        async def message_received(self, message, customer, conversation):
            seen.append((message.text, str(customer.id), str(conversation.id)))

        @hookimpl
        def conversation_opened(self, conversation):
            seen.append(("opened", str(conversation.id)))

    h = await hub_factory(accounts=[app_account], extra_plugins={"recorder": Recorder()})
    body = app_body(message_id="once")
    await post_app(h.client, body)
    await post_app(h.client, body)  # a retry: no second follow-up
    await h.run_jobs()
    await post_app(h.client, app_body(message_id="twice", text="再问一下"))
    await h.run_jobs()
    assert [s[0] for s in seen] == ["opened", "你好，我的订单还没到", "再问一下"]
    assert await count(Message, processed_at__ne=None) == 2


async def test_resolved_conversation_reopens_within_reopen_days_else_new(hub_factory,
                                                                        app_account):
    h = await hub_factory(accounts=[app_account], reopen_days=7)
    auth = await h.api_key()
    await post_app(h.client, app_body(user_id="u-7"))
    conv = (await h.client.get("/v1/conversations", headers=auth)).json()["items"][0]
    r = await h.client.post(f"/v1/conversations/{conv['id']}/resolve", headers=auth)
    assert r.json()["status"] == "resolved"

    await post_app(h.client, app_body(user_id="u-7", text="还是没收到"))
    again = (await h.client.get(f"/v1/conversations/{conv['id']}", headers=auth)).json()
    assert again["status"] == "open"
    assert await count(Conversation) == 1

    await h.client.post(f"/v1/conversations/{conv['id']}/resolve", headers=auth)
    await asyncio.to_thread(lambda: Conversation.objects(id=conv["id"]).update_one(
        set__resolved_at=utcnow() - timedelta(days=8)))
    await post_app(h.client, app_body(user_id="u-7", text="新问题"))
    convs = (await h.client.get("/v1/conversations", headers=auth)).json()["items"]
    assert [c["status"] for c in convs] == ["open", "resolved"]


async def test_every_message_carries_its_channel_and_raw_payload(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    body = app_body(message_id="raw-1", extra={"sdk": "ios-5.2"})
    await post_app(h.client, body)
    doc = await asyncio.to_thread(lambda: Message.objects(external_id="raw-1").first())
    assert (doc.adapter, doc.account, doc.direction) == ("app", "mobile", "in")
    assert doc.raw == json.loads(body)
