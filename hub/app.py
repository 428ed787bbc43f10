"""The ASGI application: channel webhooks, the /v1 API and operational endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pymongo.errors import ConnectionFailure, PyMongoError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.schemas import SchemaGenerator

from hub import api, api_customers
from hub.adapter import WebhookRequest
from hub.config import Settings, load_settings
from hub.errors import HubError, PayloadTooLarge
from hub.inbound import receive
from hub.jobs import make_worker
from hub.runtime import Hub
from hub.storage import ping

log = logging.getLogger("omnihub.http")

WEBHOOKS = Counter("omnihub_webhooks_total", "Webhook deliveries by adapter and outcome",
                   ["adapter", "outcome"])
INGEST_SECONDS = Histogram("omnihub_webhook_seconds", "Webhook handling time", ["adapter"])

schemas = SchemaGenerator({"openapi": "3.0.0",
                           "info": {"title": "omnihub", "version": "0.1.0"}})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) anything over `limit` without reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def webhook(request: Request) -> Response:
    """
    summary: A channel's webhook (GET for handshakes); the adapter checks its signature
    responses: {200: {description: the channel's ack}, 403: {description: bad signature},
                404: {description: unknown account}, 503: {description: storage down}}
    """
    hub: Hub = request.app.state.hub
    adapter_name = request.path_params["adapter"]
    started = time.perf_counter()
    outcome = "error"
    try:
        account = hub.account(adapter_name, request.path_params["account"])
        body = await read_body(request, account.adapter.max_body_bytes or
                               hub.settings.max_body_bytes)
        incoming = WebhookRequest(
            method=request.method, url=str(request.url),
            headers={k.lower(): v for k, v in request.headers.items()},
            query=dict(request.query_params), body=body)
        adapter = account.adapter
        if request.method == "GET":
            outcome = "handshake"
            return await adapter.handshake(incoming, account)
        await adapter.verify(incoming, account)
        stored = await receive(hub, account, incoming)
        outcome = "duplicate" if stored and all(s.result.duplicate for s in stored) else "ok"
        return adapter.ack(incoming, account, [s.result for s in stored])
    except HubError as exc:
        outcome = exc.code
        raise
    finally:
        WEBHOOKS.labels(adapter_name, outcome).inc()
        INGEST_SECONDS.labels(adapter_name).observe(time.perf_counter() - started)


async def healthz(request: Request) -> JSONResponse:
    """
    summary: The process is up
    responses: {200: {description: ok}}
    """
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """
    summary: Storage and the job queue are reachable
    responses: {200: {description: ready}, 503: {description: not ready}}
    """
    hub: Hub = request.app.state.hub
    storage = await run_in_threadpool(ping)
    try:
        assert hub.queue is not None
        queue = bool(await asyncio.wait_for(hub.queue.ping(), 2))
    except Exception:
        queue = False
    ready = storage and queue
    return JSONResponse({"status": "ok" if ready else "unavailable",
                         "storage": storage, "queue": queue}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(schemas.get_schema(routes=request.app.routes))


def _error(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    body = {"code": code, "message": message}
    if field:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status)


async def on_hub_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HubError)
    return JSONResponse(exc.as_json(), status_code=exc.status)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return _error(exc.status_code, codes.get(exc.status_code, "http_error"), exc.detail)


async def on_storage_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ConnectionFailure):
        return _error(503, "storage_unavailable", "storage is unreachable; retry later")
    log.exception("storage error", exc_info=exc)
    return _error(500, "internal_error", "internal error; it has been logged")


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return _error(500, "internal_error", "internal error; it has been logged")


def create_app(settings: Settings | None = None, *, hub: Hub | None = None,
               run_worker: bool = False) -> Starlette:
    """The app; `run_worker` also runs an arq worker in-process (what `omnihub serve` does)."""
    the_hub = hub or Hub(settings or load_settings())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if the_hub.queue is None:
            await the_hub.start()
        tasks = await the_hub.run_background("web")
        if run_worker:
            tasks.append(asyncio.create_task(make_worker(the_hub).async_run()))
            tasks += await the_hub.run_background("worker")
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if hub is None:
                await the_hub.close()

    routes = [
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
        Route("/openapi.json", openapi, include_in_schema=False),
        Route("/webhooks/{adapter}/{account}", webhook, methods=["GET", "POST"]),
        *api.ROUTES, *api_customers.ROUTES,
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        HubError: on_hub_error, HTTPException: on_http_error, PyMongoError: on_storage_error,
        Exception: on_unexpected,
    })
    app.state.hub = the_hub
    return app
