"""The command line as a user runs it: `omnihub serve`, `keys create`, `plugins`, `demo`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from echo_channel import sign

from adapters.app import signed_headers
from hub.testing import free_port
from tests.hub.test_plugins import broken_distribution

OMNIHUB = [sys.executable, "-m", "hub.cli"]


def run(args, cwd, env=None, timeout=90) -> subprocess.CompletedProcess:
    return subprocess.run(OMNIHUB + args, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_plugins_lists_built_in_and_installed_adapters(tmp_path):
    out = run(["plugins"], tmp_path, env={"PYTHONPATH": broken_distribution(tmp_path)})
    assert out.returncode == 0, out.stderr
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    assert ["app", "adapter", "omnihub 0.1.0", "ok"] in lines
    assert ["echo", "adapter", "omnihub-echo-channel 0.1.0", "ok"] in lines
    broken = [line for line in lines if line[0] == "broken"][0]
    assert broken[3].startswith("failed: No module named")


def test_invalid_config_stops_start_up_naming_account_and_field(tmp_path):
    (tmp_path / "omnihub.toml").write_text('[[accounts]]\nadapter = "app"\nname = "shop"\n')
    out = run(["serve", "--port", str(free_port())], tmp_path)
    assert out.returncode == 2
    assert "account 'shop': setting 'secret' is required" in out.stderr
    out = run(["keys", "create", "--role", "wizard"], tmp_path)
    assert out.returncode == 2 and "admin, agent, marketer, app" in out.stderr


def start_serve(cwd: Path, args: list[str], env: dict,
                port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`omnihub serve` in its own process; returns it and its base URL once it is ready."""
    port = port or free_port()
    log = cwd / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(OMNIHUB + ["serve", "--port", str(port), *args], cwd=cwd,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    pytest.fail(f"serve did not become ready: {log.read_text()}")


def stop_serve(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


@pytest.fixture
def served(tmp_path, fake_http):
    """`omnihub serve` in its own process, with no database or Redis configured."""
    (tmp_path / "omnihub.toml").write_text(f"""
[[accounts]]
adapter = "app"
name = "mobile"
secret = "env:APP_SECRET"
callback_url = "{fake_http.url}/callback"

[[accounts]]
adapter = "echo"
name = "chat"
token = "echo-token-0123456789"
outbox_url = "{fake_http.url}/outbox"
""")
    env = {**os.environ, "APP_SECRET": "secret-of-the-app-0123", "OMNIHUB_LOG_LEVEL": "WARNING"}
    proc, base = start_serve(tmp_path, [], env)
    yield base, tmp_path, proc
    stop_serve(proc)


def test_serve_with_embedded_servers_end_to_end(served, fake_http):
    base, cwd, proc = served
    state = json.loads((cwd / ".omnihub" / "servers.json").read_text())

    # keys create reaches the servers that serve started (no restart, no second database)
    out = run(["keys", "create", "--role", "agent", "--name", "值班客服"], cwd)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("ohk_")
    assert json.loads((cwd / ".omnihub" / "servers.json").read_text()) == state

    body = json.dumps({"user_id": "u-serve", "message_id": "s-1", "type": "text",
                       "text": "从 App 发来的消息"}, ensure_ascii=False).encode()
    r = httpx.post(f"{base}/webhooks/app/mobile", content=body,
                   headers=signed_headers("secret-of-the-app-0123", body))
    assert r.status_code == 200 and r.json()["duplicate"] is False
    echo_body = json.dumps({"id": "e-1", "from": "echo-user", "text": "third-party"}).encode()
    r = httpx.post(f"{base}/webhooks/echo/chat", content=echo_body,
                   headers={"X-Echo-Signature": sign("echo-token-0123456789", echo_body).decode()})
    assert r.status_code == 200 and r.text == "ok"

    auth = {"Authorization": f"Bearer {key}"}
    convs = httpx.get(f"{base}/v1/conversations", headers=auth).json()["items"]
    assert {c["last_inbound"]["adapter"] for c in convs} == {"app", "echo"}
    app_conv = [c for c in convs if c["last_inbound"]["adapter"] == "app"][0]
    r = httpx.post(f"{base}/v1/messages", headers=auth,
                   json={"conversation_id": app_conv["id"], "text": "服务端的回复"})
    assert r.status_code == 202
    deadline = time.monotonic() + 20  # the in-process worker delivers it
    while not fake_http.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [q.json()["text"] for q in fake_http.requests] == ["服务端的回复"]

    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    for pid in (state["mongodb_pid"], state["redis_pid"]):
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists(), "serve left an embedded server running"


def test_data_survives_a_restart_and_cli_starts_servers_itself(tmp_path):
    out = run(["keys", "create", "--role", "admin"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / ".omnihub" / "mongo").is_dir()
    out = run(["keys", "create", "--role", "agent"], tmp_path)
    assert out.returncode == 0, out.stderr


def test_demo_walks_a_customer_through(tmp_path):
    out = run(["demo"], tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "signature ok: True" in out.stdout
    assert "-> [app/demo-app] sent" in out.stdout
    assert "<- [sms/demo-sms] received  handoff_resolved" in out.stdout


def test_mobile_handoff_example_runs_against_serve(tmp_path):
    """examples/mobile_handoff.py, as its docstring says to run it."""
    root = Path(__file__).resolve().parents[2]
    port = free_port()
    config = tmp_path / "handoff.toml"
    config.write_text((root / "examples" / "mobile_handoff.toml").read_text().replace(
        "http://127.0.0.1:8000", f"http://127.0.0.1:{port}"))
    env = {**os.environ, "OMNIHUB_LOG_LEVEL": "WARNING"}
    serve, base = start_serve(tmp_path, ["--config", str(config)], env, port)
    try:
        out = subprocess.run([sys.executable, str(root / "examples" / "mobile_handoff.py"),
                              "--hub", base, "--config", str(config)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "where they stopped: screen=loan_application step=3 error=E1024" in out.stdout
        assert "channels: app, sms, wechat" in out.stdout
        assert "handoff_resolved" in out.stdout
    finally:
        stop_serve(serve)


def test_web_without_worker_and_a_separate_worker_process(tmp_path, fake_http):
    """Production shape: `serve --no-worker` queues, `omnihub worker` delivers."""
    (tmp_path / "omnihub.toml").write_text(
        f'[[accounts]]\nadapter = "app"\nname = "mobile"\nsecret = "secret-of-the-app-0123"\n'
        f'callback_url = "{fake_http.url}/callback"\n')
    env = {**os.environ, "OMNIHUB_LOG_LEVEL": "WARNING"}
    serve, base = start_serve(tmp_path, ["--no-worker"], env)
    try:
        key = run(["keys", "create", "--role", "agent"], tmp_path).stdout.strip().splitlines()[-1]
        body = json.dumps({"user_id": "u-w", "message_id": "w-1", "text": "hi"}).encode()
        httpx.post(f"{base}/webhooks/app/mobile", content=body,
                   headers=signed_headers("secret-of-the-app-0123", body)).raise_for_status()
        auth = {"Authorization": f"Bearer {key}"}
        conv = httpx.get(f"{base}/v1/conversations", headers=auth).json()["items"][0]
        r = httpx.post(f"{base}/v1/messages", headers=auth,
                       json={"conversation_id": conv["id"], "text": "由独立 worker 发送"})
        assert r.status_code == 202
        time.sleep(1)
        assert fake_http.requests == []  # nothing delivers without a worker
        out = run(["worker", "--burst"], tmp_path, env={"OMNIHUB_LOG_LEVEL": "WARNING"})
        assert out.returncode == 0, out.stderr
        assert [q.json()["text"] for q in fake_http.requests] == ["由独立 worker 发送"]
    finally:
        stop_serve(serve)
