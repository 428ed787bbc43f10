"""WeChat ack latency through `omnihub serve` against WeChat's 5-second deadline.

Safe-mode (encrypted) text pushes from many followers at once; every push must be stored
and acknowledged well inside 5 s or WeChat retries. The baseline in the same run is the
app channel through the same server (same ingest path, no XML, no AES).

    python bench/wechat_ack.py [--requests 1500] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import xmltodict
from wechatpy.crypto import WeChatCrypto

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.app import signed_headers  # noqa: E402
from bench.ingest import start, summary, wait_ready  # noqa: E402
from hub.embedded import acquire, release  # noqa: E402
from hub.testing import free_port  # noqa: E402

TOKEN, AES_KEY, APP_ID = "bench-token", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wxbench"
SECRET = "bench-secret-0123456789abcdef"


def wechat_request(i: int, crypto: WeChatCrypto) -> tuple[dict, bytes]:
    timestamp, nonce = str(int(time.time())), str(10_000 + i)
    plain = (f"<xml><ToUserName>gh_bench</ToUserName><FromUserName>o-{i % 300}</FromUserName>"
             f"<CreateTime>{timestamp}</CreateTime><MsgType>text</MsgType>"
             f"<Content>第 {i} 条</Content><MsgId>{i}</MsgId></xml>")
    fields = xmltodict.parse(crypto.encrypt_message(plain, nonce, timestamp))["xml"]
    query = {"signature": hashlib.sha1("".join(sorted([TOKEN, timestamp, nonce])).encode())
             .hexdigest(), "timestamp": timestamp, "nonce": nonce, "encrypt_type": "aes",
             "msg_signature": fields["MsgSignature"]}
    body = f"<xml><Encrypt><![CDATA[{fields['Encrypt']}]]></Encrypt></xml>".encode()
    return query, body


async def run(base: str, kind: str, total: int, concurrency: int) -> dict:
    crypto = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async with httpx.AsyncClient(timeout=30) as client:
        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if kind == "wechat":
                    query, body = wechat_request(i, crypto)
                    url, headers = f"{base}/webhooks/wechat/bench", {}
                else:
                    body = json.dumps({"user_id": f"u-{i % 300}", "message_id": str(i),
                                       "text": f"第 {i} 条"}).encode()
                    query, url = {}, f"{base}/webhooks/app/bench"
                    headers = signed_headers(SECRET, body)
                began = time.perf_counter()
                r = await client.post(url, params=query, content=body, headers=headers)
                latencies.append(time.perf_counter() - began)
                errors += r.status_code != 200

        began = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return {**summary(latencies, time.perf_counter() - began, errors),
                "max_ms": max(latencies) * 1000}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="omnihub-bench-"))
    servers = acquire(work / "data", None, None)
    (work / "omnihub.toml").write_text(
        f'[[accounts]]\nadapter = "wechat"\nname = "bench"\ntoken = "{TOKEN}"\n'
        f'encoding_aes_key = "{AES_KEY}"\napp_id = "{APP_ID}"\n\n'
        f'[[accounts]]\nadapter = "app"\nname = "bench"\nsecret = "{SECRET}"\n')
    port = free_port()
    proc = start([sys.executable, "-m", "hub.cli", "serve", "--port", str(port)],
                 {"OMNIHUB_MONGODB_URI": servers.mongodb_uri, "OMNIHUB_REDIS_URL":
                  servers.redis_url, "OMNIHUB_LOG_LEVEL": "WARNING",
                  "OMNIHUB_LOAD_PLUGINS": "app,wechat", **os.environ}, work, work / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(f"{base}/webhooks/app/bench", proc, work / "serve.log")
        results = {}
        for kind in ("app", "wechat"):
            results[kind] = await run(base, kind, args.requests, args.concurrency)
    finally:
        proc.terminate()
        proc.wait(30)
        release(servers)
    print(f"{args.requests} pushes per channel, concurrency {args.concurrency}, 300 followers")
    for kind, r in results.items():
        print(f"  {kind:7} {r['rps']:6.0f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 "
              f"{r['p99_ms']:7.1f} ms  max {r['max_ms']:7.1f} ms  errors {r['errors']}")
    print(f"  wechat max ack / WeChat's 5 s deadline: {results['wechat']['max_ms'] / 5000:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
