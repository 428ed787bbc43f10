"""Throughput and latency of signed app webhooks through `omnihub serve`, against a baseline.

Both servers run as their own processes against one fresh embedded MongoDB-wire server
(and omnihub also against one Redis); this process generates the load with the same client
for both. Prints requests/s and p50/p99 latency for each and the ratio omnihub/baseline.

    python bench/ingest.py [--requests 3000] [--concurrency 32] [--users 300] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.app import signed_headers  # noqa: E402
from hub.embedded import acquire, release  # noqa: E402
from hub.testing import free_port  # noqa: E402

SECRET = "bench-secret-0123456789abcdef"


def start(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(args, env={**os.environ, **env}, cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT)


async def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"server exited; see {log}")
            try:
                await client.post(url, content=b"{}")
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise SystemExit(f"server did not start; see {log}")


async def load(url: str, total: int, concurrency: int, users: int, tag: str,
               latencies: list[float]) -> tuple[float, int]:
    """Send `total` requests with `concurrency` in flight; returns (seconds, errors)."""
    errors = 0
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        async def one_worker() -> None:
            nonlocal errors
            for i in counter:
                body = json.dumps({"user_id": f"user-{i % users}", "message_id": f"{tag}-{i}",
                                   "type": "text", "text": f"第 {i} 条消息：我的订单怎么样了？"},
                                  ensure_ascii=False).encode()
                started = time.perf_counter()
                r = await client.post(url, content=body, headers=signed_headers(SECRET, body))
                latencies.append(time.perf_counter() - started)
                if r.status_code != 200:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*[one_worker() for _ in range(concurrency)])
        return time.perf_counter() - began, errors


def summary(latencies: list[float], seconds: float, errors: int) -> dict:
    latencies = sorted(latencies)
    return {"rps": len(latencies) / seconds, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000, "errors": errors}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="omnihub-bench-"))
    servers = acquire(work / "data", None, None)  # a fresh database server for every run
    procs: list[subprocess.Popen] = []
    try:
        base_port, hub_port = free_port(), free_port()
        procs.append(start(
            [sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--port", str(base_port),
             "--log-level", "warning"],
            {"BENCH_SECRET": SECRET, "BENCH_MONGODB_URI": servers.mongodb_uri,
             "PYTHONPATH": str(ROOT)}, ROOT, work / "baseline.log"))
        (work / "omnihub.toml").write_text(
            f'[[accounts]]\nadapter = "app"\nname = "bench"\nsecret = "{SECRET}"\n')
        procs.append(start(
            [sys.executable, "-m", "hub.cli", "serve", "--port", str(hub_port),
             *os.environ.get("BENCH_SERVE_ARGS", "").split()],
            {"OMNIHUB_MONGODB_URI": servers.mongodb_uri, "OMNIHUB_REDIS_URL": servers.redis_url,
             "OMNIHUB_DATABASE": "bench_omnihub", "OMNIHUB_LOG_LEVEL": "WARNING",
             "OMNIHUB_LOAD_PLUGINS": "app"}, work, work / "omnihub.log"))
        base_url = f"http://127.0.0.1:{base_port}/webhooks/app/bench"
        hub_url = f"http://127.0.0.1:{hub_port}/webhooks/app/bench"
        await wait_ready(base_url, procs[0], work / "baseline.log")
        await wait_ready(hub_url, procs[1], work / "omnihub.log")

        warm = max(100, args.requests // 10)
        await load(base_url, warm, args.concurrency, args.users, "warm", [])
        await load(hub_url, warm, args.concurrency, args.users, "warm", [])
        # Alternate rounds, so a database server that slows as it fills hurts both alike.
        latencies: dict[str, list[float]] = {base_url: [], hub_url: []}
        seconds = {base_url: 0.0, hub_url: 0.0}
        errors = {base_url: 0, hub_url: 0}
        rounds: dict[str, list[float]] = {base_url: [], hub_url: []}
        per_round = args.requests // args.rounds
        for n in range(args.rounds):
            order = (base_url, hub_url) if n % 2 == 0 else (hub_url, base_url)
            for url in order:
                took, failed = await load(url, per_round, args.concurrency, args.users,
                                          f"run{n}", latencies[url])
                seconds[url] += took
                rounds[url].append(per_round / took)
                errors[url] += failed
        baseline, omnihub = ({**summary(latencies[u], seconds[u], errors[u]),
                              "rounds": rounds[u]} for u in (base_url, hub_url))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        release(servers)

    print(f"{args.requests} signed app webhooks, concurrency {args.concurrency}, "
          f"{args.users} distinct customers, one fresh embedded database server")
    for name, r in (("baseline (verify + 1 insert_one)", baseline),
                    ("omnihub serve (full ingest path)", omnihub)):
        print(f"  {name:36} {r['rps']:8.0f} req/s   p50 {r['p50_ms']:6.1f} ms   "
              f"p99 {r['p99_ms']:6.1f} ms   errors {r['errors']}")
        print(f"  {'':36} per round: " + ", ".join(f"{x:.0f}" for x in r["rounds"]))
    print(f"  ratio omnihub/baseline throughput: {omnihub['rps'] / baseline['rps']:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
