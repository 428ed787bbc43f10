"""Shared fixtures: `hub.testing` (loaded with -p in pyproject) provides the real servers."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from adapters.app import signed_headers

APP_SECRET = "app-secret-0123456789abcdef"


@pytest.fixture
def app_account(fake_http) -> dict[str, Any]:
    return {"adapter": "app", "name": "mobile", "secret": APP_SECRET,
            "callback_url": f"{fake_http.url}/callback"}


def app_body(user_id: str = "u-1", message_id: str | None = None, **fields: Any) -> bytes:
    payload = {"user_id": user_id, "message_id": message_id or secrets.token_hex(6),
               "type": "text", "text": "你好，我的订单还没到", **fields}
    return json.dumps(payload, ensure_ascii=False).encode()


async def post_app(client, body: bytes, account: str = "mobile", secret: str = APP_SECRET,
                   headers: dict | None = None, now: float | None = None):
    h = signed_headers(secret, body, now) if headers is None else headers
    return await client.post(f"/webhooks/app/{account}", content=body, headers=h)


@pytest.fixture
async def hub_factory_sync(hub_factory):
    """Storage opened on a fresh database, for tests of synchronous SCRM code."""
    return await hub_factory()
