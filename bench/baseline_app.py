"""Baseline for bench/ingest.py: the least a signed webhook endpoint can do.

Checks the same `X-Omnihub-Signature` as the app channel and does one `insert_one` into the
same database server, with pymongo's async client. Run by bench/ingest.py under uvicorn.
"""

from __future__ import annotations

import os

from pymongo import AsyncMongoClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adapters.app import sign

SECRET = os.environ["BENCH_SECRET"]
client: AsyncMongoClient = AsyncMongoClient(os.environ["BENCH_MONGODB_URI"])
collection = client[os.environ.get("BENCH_DATABASE", "bench_baseline")]["messages"]


async def webhook(request: Request) -> JSONResponse:
    body = await request.body()
    timestamp = request.headers.get("x-omnihub-timestamp", "")
    if request.headers.get("x-omnihub-signature") != sign(SECRET, timestamp, body):
        return JSONResponse({"error": {"code": "bad_signature"}}, status_code=403)
    result = await collection.insert_one({"raw": body})
    return JSONResponse({"id": str(result.inserted_id), "duplicate": False})


app = Starlette(routes=[Route("/webhooks/app/{account}", webhook, methods=["POST"])])
