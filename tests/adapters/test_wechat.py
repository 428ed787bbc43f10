"""The WeChat Official Account adapter against WeChat's own sample vectors and a local fake
of the WeChat API (token, custom/send, media/upload, user/info) driven by the real wechatpy.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
import xmltodict
from wechatpy.crypto import WeChatCrypto

from adapters.wechat import WeChatAdapter
from hub.adapter import Account, WebhookRequest
from hub.errors import SignatureRejected
from hub.models import Conversation, Message
from hub.testing import AdapterConformance, Recorded
from scrm.models import Customer, Identity, utcnow

# WeChat's published sample (WXBizMsgCrypt demo): token, EncodingAESKey, app id, a request.
SAMPLE_TOKEN = "spamtest"
SAMPLE_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
SAMPLE_APP_ID = "wx2c2769f8efd9abc2"
SAMPLE_TIMESTAMP = "1409735669"
SAMPLE_NONCE = "1320562132"
SAMPLE_SIGNATURE = "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a"
SAMPLE_MSG_SIGNATURE = "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
SAMPLE_ENCRYPTED = (
    "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6"
    "F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T33"
    "2jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCg"
    "avjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6Oewp"
    "usjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=")
SAMPLE_BODY = (
    "<xml><ToUserName><![CDATA[gh_10f6c3c3ac5a]]></ToUserName><FromUserName><![CDATA["
    "oyORnuP8q7ou2gfYjqLzSIWZf0rs]]></FromUserName><CreateTime>1409735668</CreateTime>"
    "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[abcdteT]]></Content><MsgId>"
    f"6054768590064713728</MsgId><Encrypt><![CDATA[{SAMPLE_ENCRYPTED}]]></Encrypt></xml>"
).encode()

TOKEN = "omnihub-wechat-token"
APP_ID = "wx0000000000000001"


def sha1(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def signed_query(token: str = TOKEN, **extra: str) -> dict[str, str]:
    timestamp, nonce = str(int(time.time())), "81726354"
    return {"signature": sha1(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce,
            "openid": "o-any", **extra}


def push(msg_type: str, openid: str = "oUser1", created: int | None = None, **fields: str) -> bytes:
    created = created or int(time.time())
    inner = "".join(f"<{k}><![CDATA[{v}]]></{k}>" if not v.isdigit() else f"<{k}>{v}</{k}>"
                    for k, v in fields.items())
    return (f"<xml><ToUserName><![CDATA[gh_omnihub]]></ToUserName><FromUserName><![CDATA["
            f"{openid}]]></FromUserName><CreateTime>{created}</CreateTime><MsgType><![CDATA["
            f"{msg_type}]]></MsgType>{inner}</xml>").encode()


@dataclass
class FakeWeChat:
    """The parts of api.weixin.qq.com the adapter uses, with WeChat's answers."""

    tokens_issued: int = 0
    expires_in: int = 7200
    sent: list[dict] = field(default_factory=list)
    uploads: int = 0
    user_info_calls: int = 0
    send_errors: list[int] = field(default_factory=list)
    unionids: dict[str, str] = field(default_factory=dict)
    image: bytes = b"\x89PNG\r\n\x1a\n" + b"0" * 256

    def valid(self, rec: Recorded) -> bool:
        return rec.query.get("access_token") == f"TOKEN-{self.tokens_issued}"

    def __call__(self, rec: Recorded) -> tuple[int, Any]:
        if rec.path == "/cgi-bin/token":
            if rec.query.get("secret") != "app-secret-1":
                return 200, {"errcode": 40001, "errmsg": "invalid credential"}
            self.tokens_issued += 1
            return 200, {"access_token": f"TOKEN-{self.tokens_issued}",
                         "expires_in": self.expires_in}
        if rec.path == "/static/photo.png":
            return 200, self.image
        if not self.valid(rec):
            return 200, {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"}
        if rec.path == "/cgi-bin/message/custom/send":
            if self.send_errors:
                code = self.send_errors.pop(0)
                return 200, {"errcode": code, "errmsg": f"error {code}"}
            self.sent.append(rec.json())
            return 200, {"errcode": 0, "errmsg": "ok"}
        if rec.path == "/cgi-bin/media/upload":
            self.uploads += 1
            assert b"filename=" in rec.body and self.image in rec.body
            return 200, {"type": "image", "media_id": f"MEDIA-{self.uploads}", "created_at": 1}
        if rec.path == "/cgi-bin/user/info":
            self.user_info_calls += 1
            openid = rec.query["openid"]
            info = {"subscribe": 1, "openid": openid}
            if openid in self.unionids:
                info["unionid"] = self.unionids[openid]
            return 200, info
        return 404, {"errcode": 404}


@pytest.fixture
def wechat_api(fake_http) -> FakeWeChat:
    fake = FakeWeChat()
    fake_http.handler = fake
    return fake


def account_settings(fake_url: str, **extra: Any) -> dict[str, Any]:
    return {"token": TOKEN, "app_id": APP_ID, "app_secret": "app-secret-1",
            "encoding_aes_key": SAMPLE_AES_KEY, "api_base_url": fake_url, **extra}


async def wechat_hub(hub_factory, fake_http, *names: str, hub_settings: dict | None = None,
                     **extra: Any):
    accounts = [{"adapter": "wechat", "name": n, **account_settings(fake_http.url, **extra)}
                for n in (names or ("oa",))]
    return await hub_factory(accounts=accounts, plugins=("app", "wechat"), **(hub_settings or {}))


async def post(h, body: bytes, account: str = "oa", query: dict | None = None):
    q = signed_query() if query is None else query
    return await h.client.post(f"/webhooks/wechat/{account}?{urlencode(q)}", content=body)


async def stored(**filters) -> list[Message]:
    return await asyncio.to_thread(lambda: list(Message.objects(**filters).order_by("id")))


class TestWeChatConformance(AdapterConformance):
    adapter = "wechat"
    plugin = "wechat"

    def account_settings(self, fake_url):
        return account_settings(fake_url)

    def payloads(self):
        return [push("text", MsgId="1001", Content="你好"), push("image", MsgId="1002",
                PicUrl="https://mmbiz.qpic.cn/x.jpg", MediaId="m1"),
                push("event", Event="subscribe", EventKey="qrscene_spring")]

    def signed(self, body, settings):
        """Safe mode: in plain mode WeChat's signature does not cover the body at all."""
        crypto = WeChatCrypto(settings["token"], settings["encoding_aes_key"],
                              settings["app_id"])
        query = signed_query(settings["token"], encrypt_type="aes")
        wrapped = crypto.encrypt_message(body.decode(), query["nonce"], query["timestamp"])
        fields = xmltodict.parse(wrapped)["xml"]
        query["msg_signature"] = fields["MsgSignature"]
        envelope = (f"<xml><ToUserName><![CDATA[gh_omnihub]]></ToUserName><Encrypt><![CDATA["
                    f"{fields['Encrypt']}]]></Encrypt></xml>").encode()
        return envelope, {}, query


@pytest.fixture(autouse=True)
def _conformance_fake(request, fake_http):
    if request.cls is TestWeChatConformance:  # the suite's replies need WeChat's answers
        fake_http.handler = FakeWeChat()


# ---- verification and signatures ---------------------------------------------------------

async def test_url_verification_echoes_echostr(hub_factory, fake_http, wechat_api):
    h = await wechat_hub(hub_factory, fake_http)
    q = signed_query(echostr="4862893519523476480")
    r = await h.client.get(f"/webhooks/wechat/oa?{urlencode(q)}")
    assert r.status_code == 200 and r.text == "4862893519523476480"
    q["signature"] = "0" * 40
    r = await h.client.get(f"/webhooks/wechat/oa?{urlencode(q)}")
    assert r.status_code == 403 and r.json()["error"]["code"] == "bad_signature"
    r = await h.client.get("/webhooks/wechat/oa?echostr=1")
    assert r.status_code == 403 and r.json()["error"]["code"] == "missing_signature"


async def test_wechat_official_sample_decrypts_end_to_end(hub_factory, fake_http, wechat_api):
    sample = {"adapter": "wechat", "name": "sample", "token": SAMPLE_TOKEN,
              "app_id": SAMPLE_APP_ID, "encoding_aes_key": SAMPLE_AES_KEY,
              "api_base_url": fake_http.url}
    h = await hub_factory(accounts=[sample], plugins=("wechat",))
    query = {"signature": SAMPLE_SIGNATURE, "timestamp": SAMPLE_TIMESTAMP,
             "nonce": SAMPLE_NONCE, "encrypt_type": "aes", "msg_signature": SAMPLE_MSG_SIGNATURE}
    r = await post(h, SAMPLE_BODY, "sample", query)
    assert r.status_code == 200
    crypto = WeChatCrypto(SAMPLE_TOKEN, SAMPLE_AES_KEY, SAMPLE_APP_ID)
    reply = r.text
    fields = xmltodict.parse(reply)["xml"]
    assert crypto.decrypt_message(reply, fields["MsgSignature"], fields["TimeStamp"],
                                  fields["Nonce"]) == "success"
    [message] = await stored()
    assert (message.external_id, message.external_user_id, message.text) == (
        "6054768590064713728", "oyORnuP8q7ou2gfYjqLzSIWZf0rs", "abcdteT")


async def test_safe_mode_rejects_tampering_and_a_foreign_app_id(hub_factory, fake_http,
                                                               wechat_api):
    base = {"adapter": "wechat", "token": SAMPLE_TOKEN, "encoding_aes_key": SAMPLE_AES_KEY,
            "api_base_url": fake_http.url}
    h = await hub_factory(accounts=[{**base, "name": "other", "app_id": "wx_someone_else"},
                                    {**base, "name": "sample", "app_id": SAMPLE_APP_ID}],
                          plugins=("wechat",))
    query = {"signature": SAMPLE_SIGNATURE, "timestamp": SAMPLE_TIMESTAMP,
             "nonce": SAMPLE_NONCE, "encrypt_type": "aes", "msg_signature": SAMPLE_MSG_SIGNATURE}
    r = await post(h, SAMPLE_BODY, "other", query)
    assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_app_id"
    tampered = SAMPLE_BODY.replace(b"hyzAe4", b"hyzAe5")
    r = await post(h, tampered, "sample", query)
    assert r.status_code == 403
    r = await post(h, SAMPLE_BODY, "sample", {**query, "msg_signature": "0" * 40})
    assert r.status_code == 403
    assert await stored() == []


async def test_plain_mode_signature_and_opt_in_window(hub_factory, fake_http, wechat_api):
    h = await wechat_hub(hub_factory, fake_http, "oa", "strict")
    body = push("text", MsgId="2001", Content="hi")
    assert (await post(h, body, query={})).status_code == 403
    assert (await post(h, body, query=signed_query("wrong-token"))).status_code == 403
    old = str(int(time.time()) - 3600)
    q = {"signature": sha1(TOKEN, old, "1"), "timestamp": old, "nonce": "1"}
    assert (await post(h, body, query=q)).status_code == 200  # no window by default
    h2 = await wechat_hub(hub_factory, fake_http, "oa", window_s=300)
    r = await post(h2, push("text", MsgId="2002", Content="hi"), query=q)
    assert r.status_code == 403 and r.json()["error"]["code"] == "stale_timestamp"


# ---- every documented type ---------------------------------------------------------------

async def test_every_message_and_event_type_is_normalised(hub_factory, fake_http, wechat_api):
    h = await wechat_hub(hub_factory, fake_http)
    t = int(time.time())
    bodies = [
        push("text", MsgId="1", Content="我想查询订单"),
        push("image", MsgId="2", PicUrl="https://mmbiz.qpic.cn/pic.jpg", MediaId="img-1"),
        push("voice", MsgId="3", MediaId="voice-1", Format="amr", Recognition="帮我转人工"),
        push("video", MsgId="4", MediaId="video-1", ThumbMediaId="thumb-1"),
        push("shortvideo", MsgId="5", MediaId="sv-1", ThumbMediaId="thumb-2"),
        push("location", MsgId="6", Location_X="31.2304", Location_Y="121.4737", Scale="15",
             Label="上海市黄浦区"),
        push("link", MsgId="7", Title="订单详情", Description="第 20261124 号订单",
             Url="https://shop.example.com/o/20261124"),
        push("event", created=t, Event="subscribe"),
        push("event", created=t + 1, Event="subscribe", EventKey="qrscene_campaign-2026-spring",
             Ticket="TICKET1"),
        push("event", created=t + 2, Event="SCAN", EventKey="campaign-2026-spring",
             Ticket="TICKET2"),
        push("event", created=t + 3, Event="CLICK", EventKey="MENU_HELP"),
        push("event", created=t + 4, Event="VIEW", EventKey="https://shop.example.com/"),
        push("event", created=t + 5, Event="LOCATION", Latitude="31.23", Longitude="121.47",
             Precision="65.0"),
        push("event", created=t + 6, Event="unsubscribe"),
    ]
    for body in bodies:
        r = await post(h, body)
        assert r.status_code == 200 and r.text == "success", body
    got = await stored()
    by_id = {m.external_id: m for m in got}
    assert by_id["1"].kind == "text" and by_id["1"].text == "我想查询订单"
    assert by_id["2"].attachments[0].media_id == "img-1"
    assert by_id["2"].attachments[0].url == "https://mmbiz.qpic.cn/pic.jpg"
    assert by_id["3"].kind == "audio" and by_id["3"].text == "帮我转人工"
    assert by_id["3"].attachments[0].mime == "audio/amr"
    assert by_id["4"].kind == by_id["5"].kind == "video"
    assert by_id["5"].event["name"] == "shortvideo"
    assert by_id["6"].location == {"lat": 31.2304, "lng": 121.4737, "scale": 15.0,
                                   "label": "上海市黄浦区"}
    assert by_id["7"].attachments[0].url == "https://shop.example.com/o/20261124"
    events = [(m.event["name"], m.event["key"], m.event["payload"]) for m in got
              if m.kind == "event" and m.event["name"] != "shortvideo"]
    assert events == [
        ("subscribe", None, {}),
        ("subscribe", "campaign-2026-spring", {"scene": "campaign-2026-spring",
                                               "ticket": "TICKET1"}),
        ("scan", "campaign-2026-spring", {"scene": "campaign-2026-spring", "ticket": "TICKET2"}),
        ("click", "MENU_HELP", {}),
        ("view", "https://shop.example.com/", {"url": "https://shop.example.com/"}),
        ("location", None, {"latitude": 31.23, "longitude": 121.47, "precision": 65.0}),
        ("unsubscribe", None, {}),
    ]
    assert len({m.customer_id for m in got}) == 1
    customer = await asyncio.to_thread(lambda: Customer.objects.first())
    assert customer.consent["wechat:oa"]["granted"] is False  # the last word: unsubscribed


async def test_scene_is_available_to_plugins(hub_factory, fake_http, wechat_api):
    from hub import hookimpl

    scenes = []

    class SceneWatcher:
        @hookimpl
        def message_received(self, message):
            if message.kind == "event":
                scenes.append(message.event["payload"].get("scene"))

    h = await hub_factory(accounts=[{"adapter": "wechat", "name": "oa",
                                     **account_settings(fake_http.url)}],
                          plugins=("wechat",), extra_plugins={"scenes": SceneWatcher()})
    await post(h, push("event", Event="subscribe", EventKey="qrscene_campaign-2026-spring"))
    await h.run_jobs()
    assert scenes == ["campaign-2026-spring"]


# ---- retries and bad input ---------------------------------------------------------------

async def test_concurrent_retries_store_once(hub_factory, fake_http, wechat_api):
    h = await wechat_hub(hub_factory, fake_http)
    message = push("text", MsgId="9001", Content="重试")
    event = push("event", created=1_795_000_000, Event="CLICK", EventKey="K")
    answers = await asyncio.gather(*[post(h, b) for b in [message] * 8 + [event] * 8])
    assert {(r.status_code, r.text) for r in answers} == {(200, "success")}
    assert len(await stored()) == 2


async def test_malformed_oversized_and_entity_bombs_are_4xx(hub_factory, fake_http, wechat_api):
    h = await wechat_hub(hub_factory, fake_http, hub_settings={"max_body_bytes": 4096})
    bomb = (b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;">]>'
            b"<xml><ToUserName>x</ToUserName><FromUserName>o</FromUserName><CreateTime>1"
            b"</CreateTime><MsgType>text</MsgType><Content>&c;</Content><MsgId>1</MsgId></xml>")
    cases = [b"<xml><unclosed>", b"not xml at all", bomb, b"<root/>",
             push("text", MsgId="1", Content="x" * 5000),
             b"<xml><FromUserName>o</FromUserName><MsgType>text</MsgType></xml>"]
    for body in cases:
        r = await post(h, body)
        assert 400 <= r.status_code < 500, body[:40]
        assert r.json()["error"]["message"]
    assert await stored() == []


def test_parse_is_pure_and_rejects_an_unsigned_safe_mode_request():
    adapter = WeChatAdapter()
    account = Account(adapter, "sample", adapter.configure("sample", {
        "token": SAMPLE_TOKEN, "app_id": SAMPLE_APP_ID, "encoding_aes_key": SAMPLE_AES_KEY}))
    query = {"signature": SAMPLE_SIGNATURE, "timestamp": SAMPLE_TIMESTAMP, "nonce": SAMPLE_NONCE,
             "encrypt_type": "aes", "msg_signature": SAMPLE_MSG_SIGNATURE}
    request = WebhookRequest("POST", "http://x/webhooks/wechat/sample", {}, query, SAMPLE_BODY)
    [event] = adapter.parse(request, account)
    assert event.text == "abcdteT"
    unsigned = WebhookRequest("POST", "http://x", {}, {"encrypt_type": "aes"}, SAMPLE_BODY)
    with pytest.raises(SignatureRejected):
        asyncio.run(adapter.verify(unsigned, account))


# ---- replies ------------------------------------------------------------------------------

async def _conversation(h, auth):
    return (await h.client.get("/v1/conversations", headers=auth)).json()["items"][0]


async def test_text_image_and_link_replies_through_the_customer_service_api(
        hub_factory, fake_http, wechat_api):
    h = await wechat_hub(hub_factory, fake_http)
    await post(h, push("text", openid="oReply", MsgId="3001", Content="在吗"))
    await h.run_jobs()
    auth = await h.api_key()
    conv = await _conversation(h, auth)
    replies = [
        {"text": "在的，请问有什么可以帮您？"},
        {"kind": "image", "attachments": [{"kind": "image",
                                           "url": f"{fake_http.url}/static/photo.png"}]},
        {"kind": "link", "text": "点击查看物流", "attachments": [
            {"kind": "link", "url": "https://shop.example.com/track", "name": "物流详情"}]},
    ]
    for reply in replies:
        r = await h.client.post("/v1/messages", headers=auth,
                                json={"conversation_id": conv["id"], **reply})
        assert r.status_code == 202, r.text
    await h.run_jobs()
    assert [m["msgtype"] for m in wechat_api.sent] == ["text", "image", "news"]
    assert all(m["touser"] == "oReply" for m in wechat_api.sent)
    assert wechat_api.sent[0]["text"]["content"] == "在的，请问有什么可以帮您？"
    assert wechat_api.sent[1]["image"]["media_id"] == "MEDIA-1"
    assert wechat_api.sent[2]["news"]["articles"][0]["title"] == "物流详情"
    assert wechat_api.tokens_issued == 1  # one token for all three calls and the user info
    statuses = [m.status for m in await stored(direction="out")]
    assert statuses == ["sent"] * 3


async def test_outside_the_48_hour_window_fails_before_sending(hub_factory, fake_http,
                                                               wechat_api):
    h = await wechat_hub(hub_factory, fake_http)
    await post(h, push("text", openid="oLate", MsgId="4001", Content="hello"))
    await asyncio.to_thread(lambda: Message.objects(external_id="4001").update_one(
        set__created_at=utcnow() - timedelta(hours=49)))
    auth = await h.api_key()
    conv = await _conversation(h, auth)
    r = await h.client.post("/v1/messages", headers=auth,
                            json={"conversation_id": conv["id"], "text": "sorry for the wait"})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "window_closed"
    assert "48.0 h" in r.json()["error"]["message"]
    assert wechat_api.sent == []


async def test_reply_quota_per_trigger(hub_factory, fake_http, wechat_api):
    h = await wechat_hub(hub_factory, fake_http, reply_quota=2)
    await post(h, push("text", openid="oQuota", MsgId="5001", Content="hello"))
    auth = await h.api_key()
    conv = await _conversation(h, auth)

    async def reply():
        return await h.client.post("/v1/messages", headers=auth,
                                   json={"conversation_id": conv["id"], "text": "回复"})

    assert [(await reply()).status_code for _ in range(3)] == [202, 202, 422]
    await post(h, push("text", openid="oQuota", MsgId="5002", Content="again"))
    assert (await reply()).status_code == 202  # a new message renews the quota
    await h.run_jobs()
    assert len(wechat_api.sent) == 3


async def test_a_follow_allows_three_replies_for_a_minute(hub_factory, fake_http, wechat_api):
    h = await wechat_hub(hub_factory, fake_http)
    await post(h, push("event", openid="oFollow", Event="subscribe"))
    auth = await h.api_key()
    conv = await _conversation(h, auth)
    codes = [(await h.client.post("/v1/messages", headers=auth, json={
        "conversation_id": conv["id"], "text": f"欢迎 {i}"})).status_code for i in range(4)]
    assert codes == [202, 202, 202, 422]


async def test_window_closing_while_queued_fails_in_the_worker(hub_factory, fake_http,
                                                              wechat_api):
    h = await wechat_hub(hub_factory, fake_http)
    await post(h, push("text", openid="oSlow", MsgId="6001", Content="hello"))
    auth = await h.api_key()
    conv = await _conversation(h, auth)
    r = await h.client.post("/v1/messages", headers=auth,
                            json={"conversation_id": conv["id"], "text": "late"})
    assert r.status_code == 202
    await asyncio.to_thread(lambda: Message.objects(external_id="6001").update_one(
        set__created_at=utcnow() - timedelta(hours=49)))
    await h.run_jobs()
    [out] = await stored(direction="out")
    assert out.status == "failed" and "reply window closed" in out.status_reason
    assert wechat_api.sent == []


async def test_wechat_refusal_45015_is_permanent(hub_factory, fake_http, wechat_api):
    h = await wechat_hub(hub_factory, fake_http)
    await post(h, push("text", openid="oGone", MsgId="7001", Content="hi"))
    auth = await h.api_key()
    conv = await _conversation(h, auth)
    wechat_api.send_errors = [45015]
    await h.client.post("/v1/messages", headers=auth,
                        json={"conversation_id": conv["id"], "text": "hello?"})
    await h.run_jobs()
    [out] = await stored(direction="out")
    assert out.status == "failed" and "(45015)" in out.status_reason and out.attempts == 1


# ---- the access token ----------------------------------------------------------------------

async def test_token_is_shared_refreshed_early_and_on_40001(hub_factory, fake_http, wechat_api):
    h = await wechat_hub(hub_factory, fake_http)
    other_process = await wechat_hub(hub_factory, fake_http)  # same Redis, separate adapter
    adapter_a = h.hub.plugins.adapters["wechat"]
    adapter_b = other_process.hub.plugins.adapters["wechat"]
    assert adapter_a is not adapter_b
    client_a = adapter_a.client(h.hub.account("wechat", "oa"))
    client_b = adapter_b.client(other_process.hub.account("wechat", "oa"))
    tokens = await asyncio.gather(*[asyncio.to_thread(lambda c=c: c.access_token)
                                    for c in [client_a, client_b] * 5])
    assert set(tokens) == {"TOKEN-1"} and wechat_api.tokens_issued == 1
    ttl = await h.hub.queue.ttl(f"omnihub:wechat:{APP_ID}_access_token")
    assert 7200 - 300 - 5 <= ttl <= 7200 - 300

    # WeChat invalidated the token (e.g. someone fetched one elsewhere): 40001 → refresh
    wechat_api.tokens_issued += 1  # the fake now only accepts TOKEN-2, which it never issued
    await post(h, push("text", openid="oTok", MsgId="8001", Content="hi"))
    auth = await h.api_key()
    conv = await _conversation(h, auth)
    await h.client.post("/v1/messages", headers=auth,
                        json={"conversation_id": conv["id"], "text": "after refresh"})
    await h.run_jobs()
    assert [m["text"]["content"] for m in wechat_api.sent] == ["after refresh"]
    assert wechat_api.tokens_issued == 3
    assert client_b.access_token == "TOKEN-3"  # the other process sees the new token at once


# ---- consent and unionid -----------------------------------------------------------------

async def test_identities_sharing_a_unionid_become_one_customer(hub_factory, fake_http,
                                                                wechat_api):
    h = await wechat_hub(hub_factory, fake_http, "service", "shop")
    wechat_api.unionids = {"oOnService": "union-42", "oOnShop": "union-42"}
    await post(h, push("text", openid="oOnService", MsgId="1", Content="服务号上的问题"),
               "service")
    await h.run_jobs()
    await post(h, push("event", openid="oOnShop", Event="subscribe"), "shop")
    await post(h, push("text", openid="oOnShop", MsgId="2", Content="订阅号上的追问"), "shop")
    await h.run_jobs()
    identities = await asyncio.to_thread(lambda: list(Identity.objects.order_by("created_at")))
    assert [i.unionid for i in identities] == ["union-42", "union-42"]
    assert len({i.customer_id for i in identities}) == 1
    messages = await stored()
    assert {m.customer_id for m in messages} == {identities[0].customer_id}
    assert len({m.conversation_id for m in messages}) == 1
    conv = await asyncio.to_thread(lambda: Conversation.objects(active=True).first())
    assert {(c.adapter, c.account) for c in conv.channels} == {("wechat", "service"),
                                                               ("wechat", "shop")}
    survivor = await asyncio.to_thread(lambda: Customer.objects(
        id=identities[0].customer_id).first())
    assert survivor.consent["wechat:shop"]["granted"] is True
    calls = wechat_api.user_info_calls
    await post(h, push("text", openid="oOnShop", MsgId="3", Content="第三条"), "shop")
    await h.run_jobs()
    assert wechat_api.user_info_calls == calls  # asked once per identity, not per message
