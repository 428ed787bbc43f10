"""Outbound delivery by the worker: retries with backoff, permanent failures, isolation."""

from __future__ import annotations

from hub import hookimpl
from tests.conftest import app_body, post_app


async def _reply(h, text="好的，马上处理"):
    auth = await h.api_key()
    await post_app(h.client, app_body(user_id="u-out"))
    await h.run_jobs()
    conv = (await h.client.get("/v1/conversations", headers=auth)).json()["items"][0]
    r = await h.client.post("/v1/messages", headers=auth,
                            json={"conversation_id": conv["id"], "text": text})
    assert r.status_code == 202, r.text
    return auth, conv, r.json()["id"]


async def _outbound(h, auth, conv):
    msgs = (await h.client.get(f"/v1/conversations/{conv['id']}/messages",
                               headers=auth)).json()["items"]
    return [m for m in msgs if m["direction"] == "out"][-1]


async def test_transient_failures_are_retried_until_sent(hub_factory, app_account, fake_http):
    h = await hub_factory(accounts=[app_account])
    fake_http.replies = [(503, {"busy": True}), (500, {}), (429, {})]
    auth, conv, _ = await _reply(h)
    await h.run_jobs()
    message = await _outbound(h, auth, conv)
    assert message["status"] == "sent"
    assert message["attempts"] == 4
    assert len(fake_http.requests) == 4
    # every attempt carried the same message id, so the app backend can de-duplicate
    assert len({r.json()["message_id"] for r in fake_http.requests}) == 1


async def test_permanent_refusal_fails_at_once_with_a_reason(hub_factory, app_account,
                                                             fake_http):
    h = await hub_factory(accounts=[app_account])
    fake_http.default = (400, {"error": "unknown user"})
    auth, conv, _ = await _reply(h)
    await h.run_jobs()
    message = await _outbound(h, auth, conv)
    assert message["status"] == "failed"
    assert "refused the message with 400" in message["status_reason"]
    assert len(fake_http.requests) == 1


async def test_unreachable_callback_gives_up_after_max_tries(hub_factory, app_account,
                                                             fake_http):
    account = {**app_account, "callback_url": "http://127.0.0.1:9/nothing-listens-here"}
    h = await hub_factory(accounts=[account], outbound_max_tries=3)
    auth, conv, _ = await _reply(h)
    await h.run_jobs()
    message = await _outbound(h, auth, conv)
    assert message["status"] == "failed"
    assert message["status_reason"].startswith("gave up after 3 attempts")
    assert "unreachable" in message["status_reason"]


async def test_status_hook_sees_the_final_status(hub_factory, app_account, fake_http):
    changes = []

    class Watcher:
        @hookimpl
        def message_status_changed(self, message, old_status, new_status):
            changes.append((old_status, new_status, message.status))

    h = await hub_factory(accounts=[app_account], extra_plugins={"watcher": Watcher()})
    await _reply(h)
    await h.run_jobs()
    assert changes == [("queued", "sent", "sent")]


async def test_a_raising_plugin_is_isolated(hub_factory, app_account, fake_http, caplog):
    calls = []

    class Broken:
        @hookimpl
        def message_received(self, message):
            raise RuntimeError("plugin bug")

    class Fine:
        @hookimpl
        async def message_received(self, message):
            calls.append(message.text)

    h = await hub_factory(accounts=[app_account],
                          extra_plugins={"broken": Broken(), "fine": Fine()})
    r = await post_app(h.client, app_body(text="插件出错也要保存"))
    assert r.status_code == 200
    await h.run_jobs()
    assert calls == ["插件出错也要保存"]
    failures = [rec for rec in caplog.records if rec.getMessage() == "plugin hook raised"]
    assert [rec.plugin for rec in failures] == ["broken"]
    auth = await h.api_key()
    conv = (await h.client.get("/v1/conversations", headers=auth)).json()["items"][0]
    msgs = (await h.client.get(f"/v1/conversations/{conv['id']}/messages",
                               headers=auth)).json()["items"]
    assert msgs[0]["text"] == "插件出错也要保存"
