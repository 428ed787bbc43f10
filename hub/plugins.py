"""Loading adapters and plugins from entry points, and calling event hooks safely.

Each entry point loads in its own try/except, so a broken third-party package shows up as
`failed: reason` in `omnihub plugins` instead of taking the hub down (unless
`OMNIHUB_STRICT_PLUGINS=1`). `OMNIHUB_LOAD_PLUGINS=a,b` is an allow-list by entry point name.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from hub import hookspecs
from hub.adapter import Adapter
from hub.errors import ConfigError

log = logging.getLogger("omnihub.plugins")

GROUPS = {"omnihub.adapters": "adapter", "omnihub.plugins": "plugin"}


@dataclass
class PluginInfo:
    name: str
    kind: str
    distribution: str
    version: str
    status: str = "ok"


class PluginHost:
    """The pluggy manager plus the adapters the plugins registered."""

    def __init__(self, allow: tuple[str, ...] | None = None, strict: bool = False) -> None:
        self.pm = pluggy.PluginManager("omnihub")
        self.pm.add_hookspecs(hookspecs)
        self.adapters: dict[str, Adapter] = {}
        self._owned: dict[str, list[str]] = {}
        self.infos: list[PluginInfo] = []
        self.allow = allow
        self.strict = strict

    def load_entry_points(self) -> None:
        for group, kind in GROUPS.items():
            for ep in sorted(entry_points(group=group), key=lambda e: e.name):
                if self.allow is not None and ep.name not in self.allow:
                    continue
                dist = ep.dist.name if ep.dist else "?"
                version = ep.dist.version if ep.dist else "?"
                try:
                    self.register(ep.load(), ep.name, kind, dist, version)
                except Exception as exc:
                    if self.strict:
                        raise
                    log.error("plugin failed to load",
                              extra={"plugin": ep.name, "reason": str(exc)})
                    self.infos.append(PluginInfo(ep.name, kind, dist, version, f"failed: {exc}"))

    def register(self, plugin: Any, name: str, kind: str = "plugin", distribution: str = "-",
                 version: str = "-") -> None:
        """Register one plugin object; its adapters (if any) are collected at once."""
        self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()  # a misspelt hook name is an error, not a silent no-op
            found: list[Adapter] = []
            for impl in self.pm.hook.register_adapters.get_hookimpls():
                if impl.plugin is plugin:
                    impl.function(register=found.append)
            for adapter in found:
                self._add_adapter(adapter)
                self._owned.setdefault(name, []).append(adapter.name)
        except Exception:
            self.unregister(name)
            raise
        if found:
            for adapter in found:
                self.infos.append(PluginInfo(adapter.name, "adapter", distribution, version))
        else:
            self.infos.append(PluginInfo(name, kind, distribution, version))

    def _add_adapter(self, adapter: Adapter) -> None:
        if not isinstance(adapter, Adapter) or not adapter.name:
            raise ConfigError(f"{adapter!r} is not an omnihub Adapter with a name")
        if adapter.name in self.adapters:
            raise ConfigError(f"two adapters are named {adapter.name!r}")
        self.adapters[adapter.name] = adapter

    def unregister(self, name: str) -> None:
        owned = self._owned.pop(name, [])
        for adapter_name in owned:
            self.adapters.pop(adapter_name, None)
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.infos = [i for i in self.infos if i.name != name and i.name not in owned]

    def implemented(self, *hooks: str) -> bool:
        return any(getattr(self.pm.hook, h).get_hookimpls() for h in hooks)

    async def call(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of an event hook, awaiting coroutines, isolating errors."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                result = impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin hook raised",
                              extra={"plugin": impl.plugin_name, "hook": hook})
