"""Settings from `OMNIHUB_*` environment variables and an optional `omnihub.toml`.

Environment variables win over the file's `[hub]` table. Channel accounts live in the file
as `[[accounts]]` tables; any string value `env:NAME` is read from the environment so that
secrets stay out of the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hub.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".omnihub")
    mongodb_uri: str | None = None
    redis_url: str | None = None
    database: str = "omnihub"
    reopen_days: float = 7.0
    max_body_bytes: int = 1024 * 1024
    storage_timeout_ms: int = 3000
    outbound_max_tries: int = 8
    outbound_retry_base_s: float = 2.0
    outbound_timeout_s: float = 10.0
    worker_poll_s: float = 0.1
    load_plugins: tuple[str, ...] | None = None
    strict_plugins: bool = False
    log_level: str = "INFO"
    smtp_listen: str | None = None  # HOST:PORT for email accounts' SMTP receiver
    auto_merge: bool = True  # customers sharing a verified phone/email/app id/unionid merge
    accounts: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    config_file: Path | None = None


def _coerce(name: str, raw: Any, target: Any) -> Any:
    try:
        if target in ("Path", Path):
            return Path(raw)
        if target in ("float",):
            return float(raw)
        if target in ("int",):
            return int(raw)
        if target in ("bool",):
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        if "tuple[str, ...]" in str(target):
            if isinstance(raw, list | tuple):
                return tuple(str(x) for x in raw)
            return tuple(x.strip() for x in str(raw).split(",") if x.strip())
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r}: {raw!r} is not a valid {target}") from None


def resolve_env_refs(value: Any, where: str) -> Any:
    """Replace `env:NAME` strings (at any depth) with the environment variable's value."""
    if isinstance(value, str) and value.startswith("env:"):
        var = value[4:]
        if var not in os.environ:
            raise ConfigError(f"{where}: environment variable {var} is not set")
        return os.environ[var]
    if isinstance(value, dict):
        return {k: resolve_env_refs(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env_refs(v, where) for v in value]
    return value


def load_settings(config_path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any) and the environment into Settings."""
    explicit = config_path or os.environ.get("OMNIHUB_CONFIG")
    path = Path(explicit) if explicit else Path("omnihub.toml")
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    elif explicit:
        raise ConfigError(f"config file {path} does not exist")

    values: dict[str, Any] = {}
    hub_table = data.get("hub", {})
    if not isinstance(hub_table, dict):
        raise ConfigError(f"{path}: [hub] must be a table")
    known = {f.name: f.type for f in fields(Settings)}
    for key, raw in hub_table.items():
        if key not in known or key in ("accounts", "config_file"):
            raise ConfigError(f"{path}: [hub] has unknown setting {key!r}")
        values[key] = _coerce(key, resolve_env_refs(raw, f"[hub].{key}"), known[key])
    for key, target in known.items():
        env = os.environ.get(f"OMNIHUB_{key.upper()}")
        if env is not None and key not in ("accounts", "config_file"):
            values[key] = _coerce(f"OMNIHUB_{key.upper()}", env, target)
    values.update(overrides)

    accounts = data.get("accounts", [])
    if not isinstance(accounts, list) or not all(isinstance(a, dict) for a in accounts):
        raise ConfigError(f"{path}: accounts must be [[accounts]] tables")
    seen = set()
    for i, account in enumerate(accounts):
        for key in ("adapter", "name"):
            if not isinstance(account.get(key), str) or not account[key]:
                raise ConfigError(f"{path}: [[accounts]] #{i + 1}: field {key!r} is required")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", account["name"]):
            raise ConfigError(f"{path}: account {account['name']!r}: name may only use letters, "
                              "digits, '-' and '_' (it is part of the webhook URL)")
        ident = (account["adapter"], account["name"])
        if ident in seen:
            raise ConfigError(f"{path}: account {account['name']!r} of adapter "
                              f"{account['adapter']!r} is configured twice")
        seen.add(ident)
    values.setdefault("accounts", tuple(accounts))
    values["config_file"] = path if path.exists() else None
    return Settings(**values)
