"""The /v1 API: keys and roles, errors as JSON, pagination, routing of replies, ops endpoints."""

from __future__ import annotations

import asyncio
import json

from echo_channel import sign

from hub.models import ApiKey
from tests.conftest import app_body, post_app


async def test_api_needs_a_key_with_the_right_role(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    r = await h.client.get("/v1/conversations")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = await h.client.get("/v1/conversations", headers={"Authorization": "Bearer ohk_nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    app_key = await h.api_key("app")
    r = await h.client.get("/v1/conversations", headers=app_key)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_role"
    marketer = await h.api_key("marketer")
    assert (await h.client.get("/v1/conversations", headers=marketer)).status_code == 200
    r = await h.client.post("/v1/messages", headers=marketer, json={})
    assert r.status_code == 403
    admin = await h.api_key("admin")
    assert (await h.client.get("/v1/conversations", headers=admin)).status_code == 200


async def test_keys_are_stored_hashed(hub_factory):
    h = await hub_factory()
    header = await h.api_key("agent")
    key = header["Authorization"].split()[1]
    stored = await asyncio.to_thread(lambda: ApiKey.objects.first())
    assert key not in (stored.digest, stored.prefix) and len(stored.digest) == 64


async def test_errors_are_json_with_code_and_field(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    auth = await h.api_key()
    cases = [
        ("GET", "/v1/conversations/not-an-id", None, 400, "invalid_id"),
        ("GET", "/v1/conversations/000000000000000000000000", None, 404, "unknown_conversation"),
        ("GET", "/v1/conversations?limit=0", None, 400, "bad_request"),
        ("GET", "/v1/conversations?status=closed", None, 400, "bad_request"),
        ("GET", "/v1/customers?identity=app:mobile", None, 400, "bad_request"),
        ("GET", "/v1/customers/000000000000000000000000", None, 404, "unknown_customer"),
        ("POST", "/v1/messages", b"{oops", 400, "malformed_json"),
        ("POST", "/v1/messages", b'{"text": "hi"}', 400, "bad_request"),
        ("GET", "/v1/nothing-here", None, 404, "not_found"),
        ("DELETE", "/v1/messages", None, 405, "method_not_allowed"),
    ]
    for method, path, body, status, code in cases:
        r = await h.client.request(method, path, content=body, headers=auth)
        assert r.status_code == status, (path, r.text)
        assert r.json()["error"]["code"] == code, (path, r.text)


async def post_echo(h, account: dict, payload: dict):
    body = json.dumps(payload, ensure_ascii=False).encode()
    r = await h.client.post("/webhooks/echo/chat", content=body,
                            headers={"X-Echo-Signature": sign(account["token"], body).decode()})
    assert r.status_code == 200, r.text


async def test_reply_routing_and_validation(hub_factory, app_account, fake_http):
    echo = {"adapter": "echo", "name": "chat", "token": "echo-token-0123456789",
            "outbox_url": f"{fake_http.url}/outbox"}
    h = await hub_factory(accounts=[app_account, echo], plugins=("app", "echo"))
    auth = await h.api_key()
    await post_app(h.client, app_body(user_id="u-route"))
    conv = (await h.client.get("/v1/conversations", headers=auth)).json()["items"][0]

    async def send(**body):
        return await h.client.post("/v1/messages", headers=auth,
                                   json={"conversation_id": conv["id"], **body})

    r = await send(text="x" * 4097)
    assert r.status_code == 422 and r.json()["error"]["code"] == "text_too_long"
    r = await send(text="hi", adapter="echo", account="chat")
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_identity"
    r = await send(text="hi", adapter="fax", account="x")
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_account"
    r = await send(text="hi", adapter="app")
    assert r.status_code == 400 and r.json()["error"]["field"] == "account"
    r = await send(kind="image")
    assert r.status_code == 400 and r.json()["error"]["field"] == "attachments"
    r = await send(kind="image", attachments=[{"kind": "image", "url": "https://x/y.png"}])
    assert r.status_code == 202
    r = await h.client.post("/v1/messages", headers=auth, json={
        "customer_id": conv["customer_id"], "text": "by customer id"})
    assert r.status_code == 202

    # the same person writes on echo: replies now default to echo, app can still be named
    await post_echo(h, echo, {"id": "e1", "from": "u-route-echo", "text": "在吗"})
    # (linking identities across channels is the SCRM issue; here we attach it by hand)
    from scrm.models import Identity

    await asyncio.to_thread(lambda: Identity.objects(external_user_id="u-route-echo")
                            .update_one(set__customer_id=conv["customer_id"]))
    await post_echo(h, echo, {"id": "e2", "from": "u-route-echo", "text": "还在吗"})
    fresh = (await h.client.get(f"/v1/conversations/{conv['id']}", headers=auth)).json()
    assert fresh["last_inbound"] == {"adapter": "echo", "account": "chat"}
    assert {"adapter": "echo", "account": "chat"} in fresh["channels"]
    fake_http.requests.clear()
    assert (await send(text="默认走最后的渠道")).status_code == 202
    assert (await send(text="也可以指定", adapter="app", account="mobile")).status_code == 202
    await h.run_jobs()
    paths = sorted(r.path for r in fake_http.requests)
    assert paths.count("/outbox") == 1


async def test_pagination_walks_every_item_once(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    auth = await h.api_key()
    for i in range(7):
        await post_app(h.client, app_body(user_id=f"p-{i}"))
    seen, url = [], "/v1/conversations?limit=3"
    while url:
        page = (await h.client.get(url, headers=auth)).json()
        seen += [c["id"] for c in page["items"]]
        url = f"/v1/conversations?limit=3&cursor={page['next']}" if page["next"] else None
    assert len(seen) == len(set(seen)) == 7
    assert seen == sorted(seen, reverse=True)


async def test_assign_and_reopen(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    auth = await h.api_key()
    await post_app(h.client, app_body(user_id="u-a"))
    conv = (await h.client.get("/v1/conversations", headers=auth)).json()["items"][0]
    r = await h.client.post(f"/v1/conversations/{conv['id']}/assign", headers=auth,
                            json={"assignee": "韩梅梅"})
    assert r.json()["assignee"] == "韩梅梅"
    r = await h.client.get("/v1/conversations?assignee=韩梅梅", headers=auth)
    assert [c["id"] for c in r.json()["items"]] == [conv["id"]]
    r = await h.client.post(f"/v1/conversations/{conv['id']}/assign", headers=auth,
                            json={"assignee": 5})
    assert r.status_code == 400
    await h.client.post(f"/v1/conversations/{conv['id']}/resolve", headers=auth)
    await post_app(h.client, app_body(user_id="u-a"))  # reopened by the customer
    r = await h.client.post(f"/v1/conversations/{conv['id']}/reopen", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "open"


async def test_health_ready_metrics_and_openapi(hub_factory, app_account):
    h = await hub_factory(accounts=[app_account])
    assert (await h.client.get("/healthz")).json() == {"status": "ok"}
    ready = (await h.client.get("/readyz")).json()
    assert ready == {"status": "ok", "storage": True, "queue": True}
    await post_app(h.client, app_body())
    metrics = (await h.client.get("/metrics")).text
    assert 'omnihub_webhooks_total{adapter="app",outcome="ok"}' in metrics
    spec = (await h.client.get("/openapi.json")).json()
    assert "/v1/messages" in spec["paths"] and "/webhooks/{adapter}/{account}" in spec["paths"]
