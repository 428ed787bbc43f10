"""The `app` channel: signatures, payload validation, receipts, and the conformance suite."""

from __future__ import annotations

import asyncio
import json
import time

from adapters.app import sign
from hub.models import Message
from hub.testing import AdapterConformance
from tests.conftest import APP_SECRET, app_body, post_app


class TestAppConformance(AdapterConformance):
    adapter = "app"
    plugin = "app"

    def account_settings(self, fake_url):
        return {"secret": APP_SECRET, "callback_url": f"{fake_url}/callback"}

    def payloads(self):
        return [
            app_body(message_id="m-text"),
            app_body(message_id="m-image", type="image", text=None,
                     attachments=[{"kind": "image", "url": "https://cdn.example.com/a.jpg",
                                   "mime": "image/jpeg", "size": 1024}]),
            app_body(message_id="m-loc", type="location", text="上海市静安区",
                     location={"lat": 31.23, "lng": 121.45, "label": "静安寺"}),
            app_body(message_id="m-event", type="event", text=None,
                     event={"name": "button", "key": "talk_to_us", "payload": {"step": 3}}),
        ]

    def signed(self, body, settings):
        return body, {"X-Omnihub-Timestamp": str(int(time.time())),
                      "X-Omnihub-Signature": sign(settings["secret"], str(int(time.time())), body),
                      "Content-Type": "application/json"}, {}


async def stored(**filters) -> int:
    return await asyncio.to_thread(lambda: Message.objects(**filters).count())


async def test_missing_signature_is_403_with_json_error(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    r = await post_app(h.client, app_body(), headers={})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "missing_signature"
    assert await stored() == 0


async def test_wrong_secret_is_403(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    r = await post_app(h.client, app_body(), secret="another-secret-0123456789")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "bad_signature"
    assert await stored() == 0


async def test_stale_and_future_timestamps_are_403(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    for skew in (-301, 301):
        r = await post_app(h.client, app_body(), now=time.time() + skew)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "stale_timestamp"
    r = await post_app(h.client, app_body(), now=time.time() - 200)
    assert r.status_code == 200
    assert await stored() == 1


async def test_window_zero_disables_the_timestamp_check(hub_factory, app_account):
    h = await hub_factory(accounts=[{**app_account, "window_s": 0}])
    r = await post_app(h.client, app_body(), now=time.time() - 86_400)
    assert r.status_code == 200


async def test_malformed_json_is_400_and_stores_nothing(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    for body, field in [(b"{not json", None), (b"[1, 2]", None),
                        (json.dumps({"message_id": "x", "text": "hi"}).encode(), "user_id"),
                        (app_body(type="sticker"), "type"),
                        (app_body(text=""), "text"),
                        (app_body(context=[1]), "context"),
                        (app_body(attachments=[{"kind": "image"}]), "attachments[0]")]:
        r = await post_app(h.client, body)
        assert r.status_code == 400, body
        error = r.json()["error"]
        assert error["message"]
        if field:
            assert error["field"] == field
    assert await stored() == 0


async def test_oversized_body_is_413(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account], max_body_bytes=2048)
    r = await post_app(h.client, app_body(text="长" * 3000))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert await stored() == 0


async def test_unknown_account_and_adapter_are_404(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    r = await post_app(h.client, app_body(), account="nobody")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_account"
    r = await h.client.post("/webhooks/fax/mobile", content=b"{}")
    assert r.status_code == 404


async def test_get_on_a_channel_without_handshake_is_404_json(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    r = await h.client.get("/webhooks/app/mobile")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "no_handshake"


async def test_receipts_move_outbound_status_forward_only(hub_factory, app_account, fake_http):
    h = await hub_factory(accounts=[app_account])
    assert (await post_app(h.client, app_body(user_id="u-r"))).status_code == 200
    auth = await h.api_key()
    conv = (await h.client.get("/v1/conversations", headers=auth)).json()["items"][0]
    sent = await h.client.post("/v1/messages", headers=auth,
                               json={"conversation_id": conv["id"], "text": "收到"})
    await h.run_jobs()
    out_id = sent.json()["id"]

    async def receipt(status):
        body = json.dumps({"user_id": "u-r", "message_id": out_id, "type": "receipt",
                           "status": status}).encode()
        return await post_app(h.client, body)

    async def status():
        msgs = (await h.client.get(f"/v1/conversations/{conv['id']}/messages",
                                   headers=auth)).json()["items"]
        return [m for m in msgs if m["id"] == out_id][0]["status"]

    assert (await receipt("read")).status_code == 200
    assert await status() == "read"
    r = await receipt("delivered")  # late, out of order: must not move it back
    assert r.status_code == 200 and r.json()["duplicate"] is True
    assert await status() == "read"
    unknown = {"user_id": "u-r", "message_id": "0" * 24, "type": "receipt", "status": "read"}
    r = await post_app(h.client, json.dumps(unknown).encode())
    assert r.status_code == 404
    assert r.json()["error"]["field"] == "message_id"
