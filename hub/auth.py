"""API keys: random 256-bit tokens, stored only as SHA-256 digests, each with one role."""

from __future__ import annotations

import hashlib
import secrets
import time

from hub.errors import Forbidden, Unauthorized
from hub.models import ROLES, ApiKey

KEY_PREFIX = "ohk_"
_CACHE_TTL_S = 10.0
_cache: dict[str, tuple[float, str | None]] = {}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(role: str, name: str = "") -> str:
    """Store a new key and return it; this is the only time the key itself is seen."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    ApiKey(name=name or role, role=role, digest=digest(key), prefix=key[:10]).save()
    return key


def role_of(key: str) -> str | None:
    """The role of a valid, unrevoked key, cached briefly to keep lookups off each request."""
    d = digest(key)
    now = time.monotonic()
    hit = _cache.get(d)
    if hit and hit[0] > now:
        return hit[1]
    doc = ApiKey.objects(digest=d, revoked_at=None).only("role").first()
    role = doc.role if doc else None
    if len(_cache) > 10_000:
        _cache.clear()
    _cache[d] = (now + _CACHE_TTL_S, role)
    return role


def check(authorization: str | None, roles: tuple[str, ...]) -> str:
    """Return the caller's role or raise 401/403. `admin` may do everything."""
    if not authorization or not authorization.startswith("Bearer "):
        raise Unauthorized("send Authorization: Bearer <api key>", code="missing_api_key")
    role = role_of(authorization[7:].strip())
    if role is None:
        raise Unauthorized("unknown or revoked API key", code="invalid_api_key")
    if role != "admin" and role not in roles:
        raise Forbidden(f"role {role!r} may not do this (needs {' or '.join(roles)})",
                        code="forbidden_role")
    return role
