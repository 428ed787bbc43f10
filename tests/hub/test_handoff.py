"""Mobile-app handoff: each way a customer can arrive, expiry, reuse, guessing, and the
route the agent's reply takes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from hub import hookimpl
from hub.models import Conversation, Handoff, HandoffAttempt
from scrm.models import Customer, utcnow
from tests.adapters.test_email import mail
from tests.adapters.test_email import post as post_email
from tests.adapters.test_sms import inbound
from tests.adapters.test_sms import post as post_sms
from tests.adapters.test_sms import settings as sms_settings
from tests.adapters.test_wechat import FakeWeChat, push
from tests.adapters.test_wechat import account_settings as wechat_settings
from tests.adapters.test_wechat import post as post_wechat
from tests.conftest import APP_SECRET, app_body, post_app

PHONE = "+8613800138000"


@pytest.fixture
async def hub(hub_factory, fake_http):
    fake_http.handler = FakeWeChat()
    resolved = []

    class Watcher:
        @hookimpl
        def handoff_resolved(self, handoff, conversation):
            resolved.append((str(handoff.id), str(conversation.id)))

    accounts = [
        {"adapter": "app", "name": "mobile", "secret": APP_SECRET,
         "callback_url": f"{fake_http.url}/cb"},
        {"adapter": "sms", "name": "text", **sms_settings(fake_http.url)},
        {"adapter": "wechat", "name": "oa", **wechat_settings(fake_http.url)},
        {"adapter": "email", "name": "support", "address": "support@shop.example.com",
         "inbound_secret": "email-inbound-secret-0123456789", "smtp_host": "127.0.0.1",
         "smtp_port": 9, "smtp_security": "none"},
    ]
    h = await hub_factory(accounts=accounts, plugins=("app", "sms", "wechat", "email"),
                          extra_plugins={"watcher": Watcher()})
    h.resolved = resolved
    h.app_key = await h.api_key("app")
    h.agent = await h.api_key("agent")
    return h


async def start_in_app(h, **customer):
    """The customer is stuck in the app; the app backend creates a handoff."""
    await post_app(h.client, app_body(user_id="u-42", message_id="stuck",
                                      text="贷款申请第3步一直报错"))
    r = await h.client.post("/v1/handoffs", headers=h.app_key, json={
        "customer": {"app_user_id": "u-42", **customer},
        "context": {"screen": "loan_form", "step": 3, "error": "E1024", "order": "20261124"}})
    assert r.status_code == 201, r.text
    return r.json()


async def app_customer_id(h) -> str:
    r = await h.client.get("/v1/customers?identity=app:mobile:u-42", headers=h.agent)
    return r.json()["items"][0]["id"]


async def assert_resolved(h, adapter: str, via: str):
    await h.run_jobs()
    customer = await app_customer_id(h)
    timeline = (await h.client.get(f"/v1/customers/{customer}/timeline",
                                   headers=h.agent)).json()["items"]
    adapters = {m["adapter"] for m in timeline}
    assert adapter in adapters, adapters  # the new channel joined the app customer
    [event] = [m for m in timeline if m["kind"] == "event" and
               m["event"]["name"] == "handoff_resolved"]
    assert event["event"]["payload"]["step"] == 3
    assert event["event"]["payload"]["resolved_via"] == via
    conv = (await h.client.get(f"/v1/conversations/{event['conversation_id']}",
                               headers=h.agent)).json()
    assert conv["context"]["handoff"]["error"] == "E1024"
    assert {c["adapter"] for c in conv["channels"]} >= {"app", adapter}
    assert len(h.resolved) == 1


async def test_create_handoff_and_its_validation(hub):
    h = hub
    created = await start_in_app(h, phone="138 0013 8000")
    assert created["token"].startswith("hof_") and len(created["code"]) == 6
    assert created["wechat_scene"].startswith("ho_")
    assert created["deep_links"]["sms"] == f"sms:+15005550006?body={created['code']}"
    assert created["token"] in created["deep_links"]["email"]
    stored = await asyncio.to_thread(lambda: Handoff.objects.first())
    assert created["token"] not in str(stored.to_mongo())  # only digests are stored
    assert stored.phone == PHONE
    for body, field in [({"context": {}}, "customer.app_user_id"),
                        ({"customer": {"app_user_id": "x"}, "ttl_s": 5}, "ttl_s"),
                        ({"customer": {"app_user_id": "x"}, "context": [1]}, "context"),
                        ({"customer": {"app_user_id": "x"}, "channels": ["fax"]}, "channels")]:
        r = await h.client.post("/v1/handoffs", headers=h.app_key, json=body)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, body
    r = await h.client.post("/v1/handoffs", headers=h.agent,
                            json={"customer": {"app_user_id": "x"}})
    assert r.status_code == 403


async def test_resolved_by_wechat_qr_scene(hub):
    created = await start_in_app(hub)
    await post_wechat(hub, push("event", openid="oStuck", Event="SCAN",
                                EventKey=created["wechat_scene"]))
    await assert_resolved(hub, "wechat", "scene")


async def test_resolved_by_sms_code(hub):
    created = await start_in_app(hub)
    await post_sms(hub, inbound(sid="SM" + "c" * 32, body=f"我的码是 {created['code']}"))
    await assert_resolved(hub, "sms", "code")


async def test_resolved_by_the_verified_phone(hub):
    await start_in_app(hub, phone=PHONE)
    await post_sms(hub, inbound(sid="SM" + "p" * 32, body="你好，我刚才在 App 里"))
    await assert_resolved(hub, "sms", "phone")


async def test_resolved_by_email_token(hub):
    created = await start_in_app(hub)
    await post_email(hub, mail(subject=f"求助 {created['token']}", text="App 卡住了"))
    await assert_resolved(hub, "email", "token")


async def test_resolved_by_the_app_itself(hub):
    created = await start_in_app(hub)
    body = app_body(user_id="u-42", message_id="back", text="我回来了",
                    context={"handoff_token": created["token"]})
    await post_app(hub.client, body)
    await hub.run_jobs()
    attempts = await asyncio.to_thread(lambda: [a.outcome for a in HandoffAttempt.objects])
    assert attempts == ["resolved"]
    conv = await asyncio.to_thread(lambda: Conversation.objects(active=True).first())
    assert conv.context["handoff"]["resolved_via"] == "token"


async def test_expired_and_reused_handoffs_do_nothing(hub):
    created = await start_in_app(hub)
    await asyncio.to_thread(lambda: Handoff.objects.update_one(
        set__expires_at=utcnow() - timedelta(seconds=1)))
    await post_sms(hub, inbound(sid="SM" + "e" * 32, body=created["code"]))
    await hub.run_jobs()
    assert hub.resolved == []
    fresh = await start_in_app(hub)
    await post_sms(hub, inbound(sid="SM" + "f" * 32, body=fresh["code"]))
    await hub.run_jobs()
    await post_wechat(hub, push("event", openid="oOther", Event="SCAN",
                                EventKey=fresh["wechat_scene"]))
    await hub.run_jobs()
    outcomes = await asyncio.to_thread(lambda: [a.outcome for a in
                                                HandoffAttempt.objects.order_by("at")])
    assert outcomes == ["expired", "resolved", "reused"]
    assert len(hub.resolved) == 1
    # the stranger who scanned a used QR code was not joined to the app customer
    customers = await asyncio.to_thread(lambda: Customer.objects(merged_into=None).count())
    assert customers == 2


async def test_guessing_codes_is_throttled_and_audited(hub):
    created = await start_in_app(hub)
    wrong = [c for c in ("111111", "222222", "333333", "444444", "555555", "666666")
             if c != created["code"]]
    for i, code in enumerate(wrong[:5]):
        r = await post_sms(hub, inbound(sid=f"SM{i:032d}", body=code, sender="+8613900139000"))
        assert r.status_code == 200 and "<Message" not in r.text  # no hint, no reply
        await hub.run_jobs()
    await post_sms(hub, inbound(sid="SM" + "z" * 32, body=created["code"],
                                sender="+8613900139000"))
    await hub.run_jobs()
    outcomes = await asyncio.to_thread(lambda: sorted(a.outcome for a in HandoffAttempt.objects))
    assert outcomes == ["throttled"] + ["wrong"] * 5
    assert hub.resolved == []
    senders = await asyncio.to_thread(lambda: {a.sender for a in HandoffAttempt.objects})
    assert senders == {"9000"}  # the audit keeps no full phone numbers
    # the real customer, from their own phone, is not locked out by someone else's guesses
    await post_sms(hub, inbound(sid="SM" + "y" * 32, body=created["code"]))
    await assert_resolved(hub, "sms", "code")


async def test_default_route_refused_suggests_channels_that_can(hub):
    h = hub
    created = await start_in_app(h, phone=PHONE)
    await post_sms(h, inbound(sid="SM" + "r" * 32, body=created["code"]))
    await post_wechat(h, push("event", openid="oStuck", Event="SCAN",
                              EventKey="not-a-handoff"))
    await post_wechat(h, push("text", openid="oStuck", MsgId="77", Content="在吗"))
    await h.run_jobs()
    customer = await app_customer_id(h)
    # link the WeChat follower too (an agent's decision), then let its window close
    wechat_customer = (await h.client.get("/v1/customers?identity=wechat:oa:oStuck",
                                          headers=h.agent)).json()["items"][0]["id"]
    if wechat_customer != customer:
        r = await h.client.post("/v1/customers/merge", headers=h.agent,
                                json={"source": wechat_customer, "target": customer})
        assert r.status_code == 200
    from hub.models import Message

    await asyncio.to_thread(lambda: Message.objects(adapter="wechat").update(
        set__created_at=utcnow() - timedelta(hours=49)))
    conv = (await h.client.get(f"/v1/conversations?customer_id={customer}&status=open",
                               headers=h.agent)).json()["items"][0]
    assert conv["last_inbound"]["adapter"] == "wechat"
    r = await h.client.post("/v1/messages", headers=h.agent,
                            json={"conversation_id": conv["id"], "text": "您好"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "window_closed"
    assert {"adapter": "sms", "account": "text"} in error["alternatives"]
    r = await h.client.post("/v1/messages", headers=h.agent, json={
        "conversation_id": conv["id"], "text": "您好，改用短信联系您", "adapter": "sms",
        "account": "text"})
    assert r.status_code == 202

