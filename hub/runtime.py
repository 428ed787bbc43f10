"""The running hub: settings, storage, plugins, accounts and the job queue, started once.

The web app, the worker and the CLI all start the same `Hub`, so they agree on what is
configured and where the data is.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import httpx
import redis
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from redis.exceptions import RedisError

from hub import merging  # noqa: F401  (registers conversations and messages with merges)
from hub.adapter import Account, Services
from hub.config import Settings, resolve_env_refs
from hub.embedded import Servers, acquire, release
from hub.errors import ConfigError, NotFound, Unavailable
from hub.plugins import PluginHost
from hub.storage import close_storage, open_storage

log = logging.getLogger("omnihub")

QUEUE = "omnihub:queue"


class Hub:
    def __init__(self, settings: Settings, plugins: PluginHost | None = None) -> None:
        self.settings = settings
        self.plugins = plugins or PluginHost(settings.load_plugins, settings.strict_plugins)
        self.accounts: dict[tuple[str, str], Account] = {}
        self.servers: Servers | None = None
        self.queue: ArqRedis | None = None
        self.http: httpx.AsyncClient | None = None

    # ---- start-up ------------------------------------------------------------------------

    def load_plugins(self) -> None:
        """Load entry points (once) and validate every configured account against them."""
        if not self.plugins.infos:
            self.plugins.load_entry_points()
        self.accounts = build_accounts(self.settings.accounts, self.plugins)

    def open_servers(self) -> Servers:
        s = self.settings
        self.servers = acquire(s.data_dir, s.mongodb_uri, s.redis_url)
        open_storage(self.servers.mongodb_uri, s.database, s.storage_timeout_ms)
        return self.servers

    async def start(self) -> None:
        self.load_plugins()
        await asyncio.to_thread(self.open_servers)
        assert self.servers is not None
        for adapter in self.plugins.adapters.values():
            adapter.start(Services(redis_url=self.servers.redis_url))
        self.queue = await create_pool(RedisSettings.from_dsn(self.servers.redis_url),
                                       default_queue_name=QUEUE)
        self.http = httpx.AsyncClient(timeout=self.settings.outbound_timeout_s)

    @functools.cached_property
    def redis(self) -> redis.Redis:
        """A synchronous Redis client, for counters used from worker threads."""
        assert self.servers is not None
        return redis.Redis.from_url(self.servers.redis_url)

    async def run_background(self, role: str) -> list[asyncio.Task]:
        """Start what plugins want running beside this process (see `background_tasks`)."""
        tasks = []
        offered: dict[str, Any] = {"hub": self, "role": role}
        for impl in self.plugins.pm.hook.background_tasks.get_hookimpls():
            try:
                function: Any = impl.function
                factories: list[Any] = function(**{a: offered[a] for a in impl.argnames}) or []
            except Exception:
                log.exception("background_tasks hook raised", extra={"plugin": impl.plugin_name})
                continue
            for factory in factories:
                task = asyncio.create_task(factory(), name=f"{impl.plugin_name}:{role}")
                task.add_done_callback(_report_crash)
                tasks.append(task)
        return tasks

    async def close(self) -> None:
        if self.http:
            await self.http.aclose()
        if self.queue:
            await self.queue.aclose()
        close_storage()
        if self.servers:
            await asyncio.to_thread(release, self.servers)

    # ---- use -----------------------------------------------------------------------------

    def account(self, adapter: str, name: str) -> Account:
        try:
            return self.accounts[(adapter, name)]
        except KeyError:
            raise NotFound(f"no account {name!r} is configured for adapter {adapter!r}",
                           code="unknown_account") from None

    async def enqueue(self, function: str, *args: Any, job_id: str) -> None:
        """Queue a background job; `job_id` makes re-enqueueing the same work a no-op."""
        assert self.queue is not None
        try:
            await self.queue.enqueue_job(function, *args, _job_id=job_id)
        except (OSError, RedisError) as exc:
            raise Unavailable("the job queue is unreachable; retry later",
                              code="queue_unavailable") from exc


def _report_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task stopped", exc_info=task.exception(),
                  extra={"task": task.get_name()})


def build_accounts(raw_accounts: tuple[dict[str, Any], ...],
                   plugins: PluginHost) -> dict[tuple[str, str], Account]:
    accounts = {}
    for raw in raw_accounts:
        adapter_name, name = raw["adapter"], raw["name"]
        adapter = plugins.adapters.get(adapter_name)
        if adapter is None:
            known = ", ".join(sorted(plugins.adapters)) or "none"
            raise ConfigError(f"account {name!r}: unknown adapter {adapter_name!r} "
                              f"(installed: {known})")
        options = {k: v for k, v in raw.items() if k not in ("adapter", "name")}
        options = resolve_env_refs(options, f"account {name!r}")
        accounts[(adapter_name, name)] = Account(adapter, name, adapter.configure(name, options))
    return accounts
