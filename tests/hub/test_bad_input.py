"""Garbage sent to every API route and webhook gets a 4xx JSON error, never a 500."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from tests.conftest import APP_SECRET

GARBAGE = [b"", b"{", b"[]", b"null", b'"text"', b"123", b'{"a": {"b": [1, {"c": null}]}}',
           '{"text": "\u0000\u202e测试", "kind": ["x"], "tags": {"a": 1}}'.encode(),
           b'{"expression": "tag:(((((", "name": 7, "source": [], "target": {}}',
           b"\xff\xfe\x00binary"]
OID = "0123456789abcdef01234567"


@pytest.mark.parametrize("body", GARBAGE)
async def test_no_route_answers_500_to_garbage(hub_factory, fake_http, body):
    h = await hub_factory(accounts=[
        {"adapter": "app", "name": "mobile", "secret": APP_SECRET,
         "callback_url": f"{fake_http.url}/cb"},
        {"adapter": "sms", "name": "text", "account_sid": "AC" + "1" * 32,
         "auth_token": "token-0123456789", "from_number": "+15005550006",
         "public_url": "https://hub.example.com"},
        {"adapter": "wechat", "name": "oa", "token": "t", "app_id": "wx1"},
        {"adapter": "email", "name": "support", "address": "s@example.com",
         "inbound_secret": "0123456789abcdef0123"}],
        plugins=("app", "sms", "wechat", "email"))
    auth = await h.api_key("admin")
    for route in h.app.routes:
        if not isinstance(route, Route):
            continue
        path = route.path.replace("{id}", OID).replace("{tag}", "vip").replace(
            "{adapter}", "app").replace("{account}", "mobile")
        for method in sorted(route.methods or ()):
            if method == "HEAD":
                continue
            r = await h.client.request(method, path + "?limit=x&cursor=zz&format=q",
                                       content=body, headers=auth)
            assert r.status_code < 500, (method, path, body, r.text)
            if r.status_code >= 400:
                assert r.json()["error"]["message"], (method, path)
    for adapter, name in (("sms", "text"), ("wechat", "oa"), ("email", "support")):
        r = await h.client.post(f"/webhooks/{adapter}/{name}", content=body)
        assert 400 <= r.status_code < 500, (adapter, body, r.text)
