"""SMS via Twilio: signatures over the public URL, E.164, MMS, opt-out keywords, status
callbacks, and sends through the real twilio client pointed at a local fake Twilio API."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from twilio.request_validator import RequestValidator

from adapters.sms import segments
from hub.models import Message
from hub.testing import AdapterConformance, Recorded
from scrm.models import Customer, Identity

AUTH_TOKEN = "twilio-auth-token-0123456789"
ACCOUNT_SID = "AC" + "1" * 32
PUBLIC_URL = "https://hub.example.com"
CUSTOMER = "+8613800138000"


def settings(fake_url: str, **extra: Any) -> dict[str, Any]:
    return {"account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "from_number": "+15005550006",
            "public_url": PUBLIC_URL, "api_base_url": fake_url, "send_interval_s": 0, **extra}


def inbound(sid: str = "SM" + "a" * 32, body: str = "我的快递到哪了？", sender: str = CUSTOMER,
            **extra: str) -> dict[str, str]:
    return {"MessageSid": sid, "SmsSid": sid, "AccountSid": ACCOUNT_SID, "From": sender,
            "To": "+15005550006", "Body": body, "NumMedia": "0", "SmsStatus": "received", **extra}


def signature(params: dict, account: str = "text", query: str = "",
              token: str = AUTH_TOKEN, base: str = PUBLIC_URL) -> str:
    url = f"{base}/webhooks/sms/{account}" + (f"?{query}" if query else "")
    return RequestValidator(token).compute_signature(url, params)


async def post(h, params: dict, account: str = "text", query: str = "", sig: str | None = None):
    path = f"/webhooks/sms/{account}" + (f"?{query}" if query else "")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if sig is not False:
        headers["X-Twilio-Signature"] = sig or signature(params, account, query)
    return await h.client.post(path, content=urlencode(params).encode(), headers=headers)


@dataclass
class FakeTwilio:
    created: list[dict] = field(default_factory=list)
    at: list[float] = field(default_factory=list)
    errors: list[tuple[int, int]] = field(default_factory=list)  # (http status, twilio code)

    def __call__(self, rec: Recorded) -> tuple[int, Any]:
        if not rec.path.endswith("/Messages.json") or ACCOUNT_SID not in rec.path:
            return 404, {"code": 20404, "message": "not found", "status": 404}
        if "authorization" not in rec.headers:
            return 401, {"code": 20003, "message": "authenticate", "status": 401}
        if self.errors:
            status, code = self.errors.pop(0)
            return status, {"code": code, "message": f"error {code}", "status": status}
        form = dict(parse_qsl(rec.body.decode()))
        self.created.append(form)
        self.at.append(time.monotonic())
        sid = f"SM{len(self.created):032d}"
        return 201, {"sid": sid, "status": "queued", "to": form["To"], "body": form.get("Body"),
                     "account_sid": ACCOUNT_SID, "num_segments": "1"}


@pytest.fixture
def twilio_api(fake_http) -> FakeTwilio:
    fake = FakeTwilio()
    fake_http.handler = fake
    return fake


async def sms_hub(hub_factory, fake_http, **extra):
    return await hub_factory(accounts=[{"adapter": "sms", "name": "text",
                                        **settings(fake_http.url, **extra)}],
                             plugins=("sms",))


class TestSmsConformance(AdapterConformance):
    adapter = "sms"
    plugin = "sms"
    account_name = "text"

    def account_settings(self, fake_url):
        return settings(fake_url)

    def payloads(self):
        return [urlencode(inbound()).encode(),
                urlencode(inbound(sid="SM" + "b" * 32, body="", NumMedia="1",
                                  MediaUrl0="https://api.twilio.com/media/ME1",
                                  MediaContentType0="image/jpeg")).encode()]

    def signed(self, body, settings):
        params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        return body, {"X-Twilio-Signature": signature(params),
                      "Content-Type": "application/x-www-form-urlencoded"}, {}


@pytest.fixture(autouse=True)
def _conformance_fake(request, fake_http):
    if request.cls is TestSmsConformance:
        fake_http.handler = FakeTwilio()


def test_twilio_published_signature_vector():
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
    validator = RequestValidator("12345")
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert validator.compute_signature(url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert not validator.validate(url, {**params, "Digits": "9999"}, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")


async def test_inbound_sms_becomes_a_customer_with_a_verified_phone(hub_factory, fake_http,
                                                                   twilio_api):
    h = await sms_hub(hub_factory, fake_http, default_region="CN")
    r = await post(h, inbound(sender="138 0013 8000"), query="source=campaign")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/xml") and "<Response" in r.text
    identity = await asyncio.to_thread(lambda: Identity.objects.first())
    assert (identity.external_user_id, identity.phone, identity.verified) == (
        CUSTOMER, CUSTOMER, True)
    [message] = await asyncio.to_thread(lambda: list(Message.objects))
    assert message.text == "我的快递到哪了？"


async def test_signature_covers_public_url_query_and_every_parameter(hub_factory, fake_http,
                                                                     twilio_api):
    h = await sms_hub(hub_factory, fake_http)
    params = inbound()
    assert (await post(h, params, sig=False)).status_code == 403
    assert (await post(h, params, sig=signature(params, token="wrong"))).status_code == 403
    wrong_base = signature(params, base="https://internal:8000")
    assert (await post(h, params, sig=wrong_base)).status_code == 403
    signed = signature(params, query="a=1")
    assert (await post(h, params, query="a=2", sig=signed)).status_code == 403
    tampered = {**params, "Body": "改过的内容"}
    assert (await post(h, tampered, sig=signature(params))).status_code == 403
    r = await post(h, params, query="a=1", sig=signed)
    assert r.status_code == 200
    assert await asyncio.to_thread(lambda: Message.objects.count()) == 1


async def test_retries_stored_once_and_mms_media_kept(hub_factory, fake_http, twilio_api):
    h = await sms_hub(hub_factory, fake_http)
    mms = inbound(sid="SM" + "m" * 32, body="看图", NumMedia="2",
                  MediaUrl0="https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME1",
                  MediaContentType0="image/jpeg",
                  MediaUrl1="https://api.twilio.com/2010-04-01/Accounts/AC/Messages/MM/Media/ME2",
                  MediaContentType1="video/mp4")
    answers = await asyncio.gather(*[post(h, mms) for _ in range(6)])
    assert {r.status_code for r in answers} == {200}
    [message] = await asyncio.to_thread(lambda: list(Message.objects))
    assert [(a.kind, a.mime) for a in message.attachments] == [("image", "image/jpeg"),
                                                              ("video", "video/mp4")]


async def test_malformed_requests_are_4xx(hub_factory, fake_http, twilio_api):
    h = await sms_hub(hub_factory, fake_http)
    for params in [{"From": CUSTOMER, "Body": "no sid", "AccountSid": ACCOUNT_SID},
                   inbound(sender="not-a-number"), inbound(NumMedia="2")]:
        r = await post(h, params)
        assert r.status_code == 400, params
        assert r.json()["error"]["field"]
    raw = b"From=%FF%FE"
    sig = signature({})
    r = await h.client.post("/webhooks/sms/text", content=raw, headers={
        "X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code in (400, 403)
    assert await asyncio.to_thread(lambda: Message.objects.count()) == 0


async def _reply(h, auth, conv_id, **body):
    return await h.client.post("/v1/messages", headers=auth,
                               json={"conversation_id": conv_id, **body})


async def _conv(h, auth):
    return (await h.client.get("/v1/conversations", headers=auth)).json()["items"][0]["id"]


async def test_reply_via_twilio_and_status_callbacks(hub_factory, fake_http, twilio_api):
    h = await sms_hub(hub_factory, fake_http)
    await post(h, inbound())
    auth = await h.api_key()
    conv = await _conv(h, auth)
    r = await _reply(h, auth, conv, text="您的快递今天送达 📦")
    assert r.status_code == 202
    await h.run_jobs()
    [sent] = twilio_api.created
    assert (sent["To"], sent["From"], sent["Body"]) == (CUSTOMER, "+15005550006",
                                                        "您的快递今天送达 📦")
    assert sent["StatusCallback"] == f"{PUBLIC_URL}/webhooks/sms/text"
    out = await asyncio.to_thread(lambda: Message.objects(direction="out").first())
    assert out.status == "sent" and out.external_id == f"SM{1:032d}"

    callback = {"MessageSid": out.external_id, "MessageStatus": "delivered",
                "AccountSid": ACCOUNT_SID, "To": CUSTOMER, "From": "+15005550006"}
    assert (await post(h, callback)).status_code == 200
    out.reload()
    assert out.status == "delivered"

    await _reply(h, auth, conv, text="第二条")
    await h.run_jobs()
    second = await asyncio.to_thread(lambda: Message.objects(direction="out").order_by("-id")
                                     .first())
    failed = {"MessageSid": second.external_id, "MessageStatus": "undelivered",
              "ErrorCode": "30003", "AccountSid": ACCOUNT_SID, "To": CUSTOMER}
    assert (await post(h, failed)).status_code == 200
    second.reload()
    assert second.status == "failed" and "30003" in second.status_reason


async def test_twilio_errors_permanent_and_transient(hub_factory, fake_http, twilio_api):
    h = await sms_hub(hub_factory, fake_http)
    await post(h, inbound())
    auth = await h.api_key()
    conv = await _conv(h, auth)
    twilio_api.errors = [(400, 21211)]
    await _reply(h, auth, conv, text="a")
    await h.run_jobs()
    twilio_api.errors = [(500, 20500), (503, 20503)]
    await _reply(h, auth, conv, text="b")
    await h.run_jobs()
    outs = await asyncio.to_thread(lambda: list(Message.objects(direction="out").order_by("id")))
    assert outs[0].status == "failed" and "Twilio 21211" in outs[0].status_reason
    assert outs[1].status == "sent" and outs[1].attempts == 3


async def test_long_texts_are_segmented_or_rejected(hub_factory, fake_http, twilio_api):
    assert segments("a" * 160) == 1 and segments("a" * 161) == 2
    assert segments("中" * 70) == 1 and segments("中" * 71) == 2
    h = await sms_hub(hub_factory, fake_http, max_segments=3)
    await post(h, inbound())
    auth = await h.api_key()
    conv = await _conv(h, auth)
    assert (await _reply(h, auth, conv, text="长" * 200)).status_code == 202  # 3 segments
    r = await _reply(h, auth, conv, text="长" * 202)  # 4 segments
    assert r.status_code == 422 and "4 SMS segments" in r.json()["error"]["message"]
    strict = await hub_factory(accounts=[{"adapter": "sms", "name": "text", **settings(
        fake_http.url, long_text="reject")}], plugins=("sms",))
    await post(strict, inbound())
    auth = await strict.api_key()
    conv = await _conv(strict, auth)
    assert (await _reply(strict, auth, conv, text="短信")).status_code == 202
    assert (await _reply(strict, auth, conv, text="长" * 71)).status_code == 422


async def test_send_rate_per_number_is_respected(hub_factory, fake_http, twilio_api):
    h = await sms_hub(hub_factory, fake_http, send_interval_s=0.4)
    await post(h, inbound())
    auth = await h.api_key()
    conv = await _conv(h, auth)
    for i in range(4):
        assert (await _reply(h, auth, conv, text=f"第 {i} 条")).status_code == 202
    await h.run_jobs()
    assert [m["Body"] for m in twilio_api.created] == [f"第 {i} 条" for i in range(4)]
    gaps = [b - a for a, b in zip(twilio_api.at, twilio_api.at[1:], strict=False)]
    assert min(gaps) >= 0.35, gaps
    outs = await asyncio.to_thread(lambda: list(Message.objects(direction="out")))
    assert {o.attempts for o in outs} == {1}  # waiting for a slot spends no attempt


@pytest.mark.parametrize("stop", ["STOP", "unsubscribe", "退订", "TD"])
async def test_opt_out_keywords_block_marketing_and_replies(hub_factory, fake_http, twilio_api,
                                                            stop):
    h = await sms_hub(hub_factory, fake_http)
    await post(h, inbound())
    auth = await h.api_key()
    conv = await _conv(h, auth)
    await post(h, inbound(sid="SM" + "s" * 32, body=stop))
    customer = await asyncio.to_thread(lambda: Customer.objects.first())
    assert customer.consent["sms:text"]["granted"] is False
    r = await _reply(h, auth, conv, text="双十一大促", purpose="marketing")
    assert r.status_code == 422 and r.json()["error"]["code"] == "consent_withdrawn"
    r = await _reply(h, auth, conv, text="您的退款已处理")
    assert r.status_code == 422
    await post(h, inbound(sid="SM" + "t" * 32, body="START"))
    assert (await _reply(h, auth, conv, text="欢迎回来", purpose="marketing")).status_code == 202


async def test_operator_may_allow_replies_after_opt_out(hub_factory, fake_http, twilio_api):
    h = await sms_hub(hub_factory, fake_http, replies_after_opt_out=True)
    await post(h, inbound())
    await post(h, inbound(sid="SM" + "s" * 32, body="STOP"))
    auth = await h.api_key()
    conv = await _conv(h, auth)
    assert (await _reply(h, auth, conv, text="您的退款已处理")).status_code == 202
    r = await _reply(h, auth, conv, text="促销", purpose="marketing")
    assert r.status_code == 422
