"""Storage outages: the webhook answers 503 so the channel retries, and nothing is lost."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from hub.embedded import _mongo_alive
from hub.models import Message
from hub.testing import free_port
from tests.conftest import app_body, post_app


def start_db(port: int, path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "secantus", "--host", "127.0.0.1",
                             "--port", str(port), "--storage-path", str(path),
                             "--log-level", "ERROR"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if _mongo_alive(f"mongodb://127.0.0.1:{port}/", 200):
            return proc
    proc.kill()
    raise RuntimeError("database did not start")


async def test_storage_down_answers_503_and_the_retry_is_stored(hub_factory, app_account,
                                                                tmp_path):
    port = free_port()
    db = await asyncio.to_thread(start_db, port, tmp_path / "db")
    try:
        h = await hub_factory(accounts=[app_account],
                              mongodb_uri=f"mongodb://127.0.0.1:{port}/", storage_timeout_ms=500)
        assert (await post_app(h.client, app_body(message_id="before"))).status_code == 200

        db.terminate()
        db.wait(10)
        body = app_body(message_id="during-outage", text="存储挂了也别丢")
        r = await post_app(h.client, body)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "storage_unavailable"
        ready = await h.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["storage"] is False
        auth_free = await h.client.get("/healthz")
        assert auth_free.status_code == 200

        db = await asyncio.to_thread(start_db, port, tmp_path / "db")
        r = await post_app(h.client, body)  # the channel's retry
        assert r.status_code == 200 and r.json()["duplicate"] is False
        texts = await asyncio.to_thread(lambda: sorted(m.external_id for m in Message.objects))
        assert texts == ["before", "during-outage"]
        assert (await h.client.get("/readyz")).status_code == 200
    finally:
        db.kill()
        db.wait()
