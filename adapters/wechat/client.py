"""A wechatpy client whose access_token is shared by every process through Redis.

WeChat issues one access_token per app id and invalidates the previous one (after a short
grace period) whenever anyone fetches a new one, so processes must not each fetch their own.
The token lives in Redis with a TTL a few minutes shorter than WeChat's `expires_in`, so it
is refreshed before it expires; a Redis lock lets one process at a time fetch it; errors
40001/42001 (invalid/expired token) make wechatpy call `fetch_access_token`, which then
refreshes at once unless another process already did.
"""

from __future__ import annotations

import threading

import redis
from wechatpy import WeChatClient
from wechatpy.session.redisstorage import RedisStorage

REFRESH_MARGIN_S = 300
LOCK_TIMEOUT_S = 15


class SharedTokenClient(WeChatClient):
    def __init__(self, app_id: str, app_secret: str, api_base_url: str, redis_client: redis.Redis,
                 timeout: float = 10) -> None:
        super().__init__(app_id, app_secret, timeout=timeout,
                         session=RedisStorage(redis_client, prefix="omnihub:wechat"))
        self.API_BASE_URL = api_base_url.rstrip("/") + "/cgi-bin/"
        self._redis = redis_client
        self._local = threading.local()  # per thread: the token it last handed out

    @property
    def access_token(self) -> str:
        token = self.session.get(self.access_token_key)
        if not token:
            self.fetch_access_token()
            token = self.session.get(self.access_token_key)
        self._local.used = token
        return token

    def fetch_access_token(self) -> dict:
        lock = self._redis.lock(f"omnihub:wechat:{self.appid}:token-lock",
                                timeout=LOCK_TIMEOUT_S, blocking_timeout=LOCK_TIMEOUT_S)
        with lock:
            current = self.session.get(self.access_token_key)
            if current and current != getattr(self._local, "used", None):
                return {"access_token": current}  # another thread or process refreshed it
            result = self._fetch_access_token(
                url=self.API_BASE_URL + "token",
                params={"grant_type": "client_credential", "appid": self.appid,
                        "secret": self.secret})
            expires_in = int(result.get("expires_in", 7200))
            self.session.set(self.access_token_key, result["access_token"],
                             max(60, expires_in - REFRESH_MARGIN_S))
            return result
