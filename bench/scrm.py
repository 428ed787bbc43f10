"""SCRM figures on a fresh embedded database, each against a baseline in the same run:

1. Segment count for a 3-predicate expression over N synthetic customers, through
   `scrm.segments.count` (parse + compile + count) against a raw pymongo `count_documents`
   with the same filter and index; also the raw count without the index, for scale.
2. CSV import throughput (rows/s) against a raw `insert_many` of the same number of rows.
3. Identity resolution per message (`resolve_customer` for a known identity) at 10k and at
   the full identity count: it should be flat.

    python bench/scrm.py [--customers 1000000] [--import-rows 20000]
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hub.embedded import acquire, release  # noqa: E402
from hub.storage import open_storage  # noqa: E402
from scrm.identities import resolve_customer  # noqa: E402
from scrm.importer import import_csv  # noqa: E402
from scrm.models import Customer, Identity, utcnow  # noqa: E402
from scrm.segments import compile_expression, count  # noqa: E402

EXPRESSION = 'tag:vip AND attr.city = "上海" AND channel:wechat'
CITIES = ["上海", "北京", "广州", "深圳", "杭州"]
BATCH = 10_000


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - began)
    return best, result


def seed_customers(total: int) -> None:
    rng = random.Random(7)
    collection, now, done = Customer._get_collection(), utcnow(), 0
    while done < total:
        size = min(BATCH, total - done)
        collection.insert_many([{
            "tags": ["vip"] if rng.random() < 0.01 else rng.choice([[], ["new"], ["churned"]]),
            "channels": rng.choice([["wechat", "wechat:oa"], ["sms", "sms:text"],
                                    ["wechat", "wechat:oa", "sms", "sms:text"]]),
            "opted_out": [], "attributes": {"city": rng.choice(CITIES), "n": done + i},
            "created_at": now, "last_seen_at": now} for i in range(size)], ordered=False)
        done += size
        print(f"  seeded {done:,} customers", end="\r", flush=True)
    print()


def seed_identities(start: int, stop: int) -> None:
    collection, now = Identity._get_collection(), utcnow()
    for first in range(start, stop, BATCH):
        collection.insert_many([{"adapter": "app", "account": "bench",
                                 "external_user_id": f"user-{i}", "customer_id": None,
                                 "verified": False, "created_at": now, "last_seen_at": now}
                                for i in range(first, min(first + BATCH, stop))], ordered=False)


def resolve_cost(known: int, samples: int = 2000) -> float:
    rng = random.Random(known)
    ids = [f"user-{rng.randrange(known)}" for _ in range(samples)]
    began = time.perf_counter()
    for user in ids:
        resolve_customer("app", "bench", user)
    return (time.perf_counter() - began) / samples * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--import-rows", type=int, default=20_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="omnihub-bench-"))
    servers = acquire(work / "data", None, None)
    try:
        open_storage(servers.mongodb_uri, "bench_scrm", 60_000)
        print(f"identity resolution (known identity, {2000} lookups each):")
        seed_identities(0, 10_000)
        small = resolve_cost(10_000)
        seed_identities(10_000, args.customers)
        large = resolve_cost(args.customers)
        print(f"  at 10,000 identities: {small:7.0f} µs/message")
        print(f"  at {args.customers:,} identities: {large:7.0f} µs/message "
              f"(ratio {large / small:.2f}; flat is 1.00)")

        print(f"segment count over {args.customers:,} customers: {EXPRESSION}")
        seed_customers(args.customers)
        compiled = compile_expression(EXPRESSION)
        collection = Customer._get_collection()
        ours, n = timed(lambda: count(EXPRESSION))
        raw, m = timed(lambda: collection.count_documents(compiled.filter, hint=compiled.hint))
        unhinted, k = timed(lambda: collection.count_documents(compiled.filter), repeat=1)
        assert n == m == k, (n, m, k)
        print(f"  omnihub segments.count: {ours * 1000:8.1f} ms  ({n:,} customers)")
        print(f"  raw count_documents, same filter and index: {raw * 1000:8.1f} ms")
        print(f"  raw count_documents, no index hint: {unhinted * 1000:8.1f} ms")
        print(f"  ratio raw/omnihub: {raw / ours:.2f} (target ≥ 0.9)")

        print(f"import of {args.import_rows:,} CSV rows:")
        path = work / "import.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["name", "phone", "email", "tags", "attr.city"])
            for i in range(args.import_rows):
                writer.writerow([f"客户{i}", f"+861390{i:07d}", f"c{i}@example.com",
                                 "vip;import", random.choice(CITIES)])
        took, report = timed(lambda: import_csv(path, "CN"), repeat=1)
        rows = [{"name": f"客户{i}", "phone": f"+861390{i:07d}"} for i in range(args.import_rows)]
        raw_took, _ = timed(lambda: [Customer._get_collection().database["raw_import"]
                                     .insert_many(rows[i:i + 500]) for i in
                                     range(0, len(rows), 500)], repeat=1)
        print(f"  omnihub import: {args.import_rows / took:8.0f} rows/s "
              f"({report.created:,} created)")  # type: ignore[attr-defined]
        print(f"  raw insert_many of the same rows: {args.import_rows / raw_took:8.0f} rows/s")
        print(f"  ratio: {raw_took / took:.2f}")

    finally:
        release(servers)


if __name__ == "__main__":
    main()
