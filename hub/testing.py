"""Test helpers for omnihub and for third-party adapter authors (a pytest plugin).

Use it with `pytest -p hub.testing` (or `pytest_plugins = ["hub.testing"]`). It gives:

* `omnihub_servers`: real embedded MongoDB-wire and Redis servers, once per session;
* `hub_factory`: a started `Hub` + ASGI client on a fresh database and a flushed queue;
* `fake_http`: a real HTTP server on 127.0.0.1 that records requests and answers as told,
  standing in for a channel's API or an app backend;
* `AdapterConformance`: subclass it to run the shared adapter checks against your adapter.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.adapter import MESSAGE_KINDS, Account, WebhookRequest
from hub.config import Settings
from hub.embedded import Servers, acquire, free_port, release

# ---- a fake third-party HTTP API -----------------------------------------------------------

@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class FakeHTTP:
    """Records every request; answers with queued `(status, json)` replies, then `default`."""

    url: str
    requests: list[Recorded] = field(default_factory=list)
    replies: list[tuple[int, Any]] = field(default_factory=list)
    default: tuple[int, Any] = (200, {"ok": True})
    handler: Callable[[Recorded], tuple[int, Any]] | None = None

    def reset(self) -> None:
        self.requests.clear()
        self.replies.clear()
        self.default = (200, {"ok": True})
        self.handler = None


def _fake_app(state: FakeHTTP) -> Starlette:
    async def anything(request: Request) -> Response:
        rec = Recorded(request.method, request.url.path, dict(request.headers),
                       dict(request.query_params), await request.body())
        state.requests.append(rec)
        if state.handler:
            status, payload = state.handler(rec)
        else:
            status, payload = state.replies.pop(0) if state.replies else state.default
        if isinstance(payload, bytes | str):
            return Response(payload, status_code=status)
        return Response(json.dumps(payload), status_code=status, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "POST", "PUT"])])


@pytest.fixture(scope="session")
def _fake_http_server() -> Iterator[FakeHTTP]:
    port = free_port()
    state = FakeHTTP(url=f"http://127.0.0.1:{port}")
    server = uvicorn.Server(uvicorn.Config(_fake_app(state), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield state
    server.should_exit = True
    thread.join(5)


@pytest.fixture
def fake_http(_fake_http_server: FakeHTTP) -> Iterator[FakeHTTP]:
    _fake_http_server.reset()
    yield _fake_http_server
    _fake_http_server.reset()


# ---- real servers and a hub per test ------------------------------------------------------

@pytest.fixture(scope="session")
def omnihub_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    servers = acquire(Path(tmp_path_factory.mktemp("omnihub-data")), None, None)
    yield servers
    release(servers)


@dataclass
class HubHarness:
    hub: Any
    app: Any
    client: httpx.AsyncClient

    async def run_jobs(self) -> None:
        """Run queued jobs to completion (an arq worker in burst mode)."""
        from hub.jobs import make_worker

        await make_worker(self.hub, burst=True, job_timeout=30).async_run()

    async def api_key(self, role: str = "agent") -> dict[str, str]:
        from hub.auth import create_key

        key = await asyncio.to_thread(create_key, role)
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def hub_factory(omnihub_servers: Servers) -> AsyncIterator[Callable[..., Any]]:
    """`await hub_factory(accounts=[...], plugins=("app",), **settings)` → HubHarness."""
    from hub.app import create_app
    from hub.runtime import Hub

    started: list[HubHarness] = []

    async def make(accounts: list[dict] | tuple = (), plugins: tuple[str, ...] = ("app",),
                   extra_plugins: dict[str, Any] | None = None, **overrides: Any) -> HubHarness:
        values: dict[str, Any] = dict(
            data_dir=Path("unused"), mongodb_uri=omnihub_servers.mongodb_uri,
            redis_url=omnihub_servers.redis_url, database=f"test_{uuid.uuid4().hex[:12]}",
            load_plugins=plugins, accounts=tuple(accounts), outbound_retry_base_s=0.01,
            worker_poll_s=0.01, storage_timeout_ms=1500)
        settings = Settings(**{**values, **overrides})
        hub = Hub(settings)
        hub.plugins.load_entry_points()
        for name, plugin in (extra_plugins or {}).items():
            hub.plugins.register(plugin, name)
        await hub.start()
        assert hub.queue is not None
        await hub.queue.flushdb()
        app = create_app(hub=hub)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://testserver")
        harness = HubHarness(hub, app, client)
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await harness.client.aclose()
        await harness.hub.close()


# ---- the adapter conformance suite ---------------------------------------------------------

class AdapterConformance:
    """Shared checks every adapter must pass. Subclass it in a test module and set:

    * `adapter` (the adapter's name) and `plugin` (its entry point name);
    * `account_settings(fake_url)`: the `[[accounts]]` settings, sends pointed at `fake_url`;
    * `payloads()`: raw bodies of every documented inbound payload;
    * `signed(body, settings)`: `(body, headers, query)` of a genuine delivery of that payload
      (the body may change, e.g. when the channel encrypts it);
    * optionally `reply_request()`: the body of `POST /v1/messages` for a simple reply, and
      `delivered(fake_http)` when the channel is not HTTP (e.g. a local SMTP server).
    """

    adapter: str = ""
    plugin: str = ""
    account_name = "conformance"

    def account_settings(self, fake_url: str) -> dict[str, Any]:
        raise NotImplementedError

    def payloads(self) -> list[bytes]:
        raise NotImplementedError

    def signed(self, body: bytes, settings: dict[str, Any]) -> tuple[bytes, dict[str, str],
                                                                     dict[str, str]]:
        raise NotImplementedError

    def reply_request(self) -> dict[str, Any]:
        return {"kind": "text", "text": "conformance reply 回复"}

    def delivered(self, fake_http: FakeHTTP) -> bool:
        """Whether the reply reached the channel (override for non-HTTP channels)."""
        return bool(fake_http.requests)

    async def _harness(self, hub_factory: Any, fake_http: FakeHTTP) -> tuple[Any, dict]:
        settings = self.account_settings(fake_http.url)
        account = {"adapter": self.adapter, "name": self.account_name, **settings}
        harness = await hub_factory(accounts=[account], plugins=(self.plugin,))
        return harness, settings

    def _path(self) -> str:
        return f"/webhooks/{self.adapter}/{self.account_name}"

    async def _post(self, harness: Any, body: bytes, headers: dict, query: dict) -> httpx.Response:
        return await harness.client.post(self._path(), content=body, headers=headers,
                                         params=query)

    async def test_conformance_unsigned_delivery_is_rejected(self, hub_factory, fake_http):
        harness, _ = await self._harness(hub_factory, fake_http)
        r = await harness.client.post(self._path(), content=self.payloads()[0])
        assert r.status_code == 403
        assert await self._stored(harness) == 0

    async def test_conformance_tampered_delivery_is_rejected(self, hub_factory, fake_http):
        harness, settings = await self._harness(hub_factory, fake_http)
        body, headers, query = self.signed(self.payloads()[0], settings)
        middle = len(body) // 2
        swapped = b"A" if body[middle:middle + 1] != b"A" else b"B"
        r = await self._post(harness, body[:middle] + swapped + body[middle + 1:], headers, query)
        assert r.status_code == 403
        assert await self._stored(harness) == 0

    async def test_conformance_every_payload_parses(self, hub_factory, fake_http):
        harness, settings = await self._harness(hub_factory, fake_http)
        account: Account = harness.hub.account(self.adapter, self.account_name)
        for payload in self.payloads():
            body, headers, query = self.signed(payload, settings)
            request = WebhookRequest("POST", "http://testserver" + self._path(),
                                     {k.lower(): v for k, v in headers.items()}, query, body)
            events = account.adapter.parse(request, account)
            assert events, f"no event parsed from {body[:80]!r}"
            for event in events:
                assert event.external_id and event.external_user_id
                assert event.kind in MESSAGE_KINDS

    async def test_conformance_retries_are_stored_once(self, hub_factory, fake_http):
        harness, settings = await self._harness(hub_factory, fake_http)
        body, headers, query = self.signed(self.payloads()[0], settings)
        first = await self._post(harness, body, headers, query)
        assert first.status_code == 200, first.text
        again = await asyncio.gather(*[self._post(harness, body, headers, query)
                                       for _ in range(5)])
        assert [r.status_code for r in again] == [200] * 5
        assert await self._stored(harness) == 1

    async def test_conformance_reply_goes_through_the_channel_api(self, hub_factory, fake_http):
        harness, settings = await self._harness(hub_factory, fake_http)
        body, headers, query = self.signed(self.payloads()[0], settings)
        assert (await self._post(harness, body, headers, query)).status_code == 200
        await harness.run_jobs()
        auth = await harness.api_key("agent")
        conversations = (await harness.client.get("/v1/conversations", headers=auth)).json()
        fake_http.requests.clear()
        r = await harness.client.post("/v1/messages", headers=auth, json={
            "conversation_id": conversations["items"][0]["id"], **self.reply_request()})
        assert r.status_code == 202, r.text
        await harness.run_jobs()
        assert self.delivered(fake_http), "the adapter sent nothing to the channel"
        message = (await harness.client.get(
            f"/v1/conversations/{conversations['items'][0]['id']}/messages",
            headers=auth)).json()["items"][-1]
        assert message["direction"] == "out" and message["status"] == "sent", message

    async def test_conformance_secrets_never_shown(self, hub_factory, fake_http):
        harness, settings = await self._harness(hub_factory, fake_http)
        account = harness.hub.account(self.adapter, self.account_name)
        shown = repr(account)
        secrets = [str(settings[n]) for n in account.adapter.secret_settings if n in settings]
        assert secrets, "the conformance settings set none of the adapter's secret settings"
        for secret in secrets:
            assert secret not in shown

    async def _stored(self, harness: Any) -> int:
        from hub.models import Message

        return await asyncio.to_thread(lambda: Message.objects(direction="in").count())


__all__ = ["AdapterConformance", "FakeHTTP", "HubHarness", "free_port"]
