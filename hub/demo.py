"""`omnihub demo`: one customer writes from the app, an agent answers, the app gets the reply;
then the customer continues by SMS with a handoff code and the agent sees one conversation.

Everything runs for real: embedded servers, signed webhooks, the arq worker, and a local
HTTP server standing in for the app backend that receives the signed reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from urllib.parse import urlencode

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from hub.app import create_app
from hub.auth import create_key
from hub.config import Settings
from hub.embedded import free_port
from hub.jobs import make_worker
from hub.runtime import Hub
from hub.signing import sign, signed_headers


async def run_demo(settings: Settings) -> None:
    secret = secrets.token_hex(16)
    port = free_port()
    account = {"adapter": "app", "name": "demo-app", "secret": secret,
               "callback_url": f"http://127.0.0.1:{port}/omnihub-callback"}
    sms = {"adapter": "sms", "name": "demo-sms", "account_sid": "AC" + "0" * 32,
           "auth_token": secrets.token_hex(16), "from_number": "+15005550006",
           "public_url": "https://hub.demo.invalid"}
    settings = dataclasses.replace(settings, database=settings.database + "_demo",
                                   accounts=(*settings.accounts, account, sms),
                                   outbound_retry_base_s=0.2)
    received: list[dict] = []

    async def callback(request: Request) -> JSONResponse:
        body = await request.body()
        good = request.headers["x-omnihub-signature"] == sign(
            secret, request.headers["x-omnihub-timestamp"], body)
        received.append({"signature_ok": good, **json.loads(body)})
        return JSONResponse({"ok": True})

    backend = uvicorn.Server(uvicorn.Config(
        Starlette(routes=[Route("/omnihub-callback", callback, methods=["POST"])]),
        host="127.0.0.1", port=port, log_level="warning"))
    backend_task = asyncio.create_task(backend.serve())

    hub = Hub(settings)
    await hub.start()
    try:
        app = create_app(hub=hub)
        key = await asyncio.to_thread(create_key, "agent", "demo agent")
        worker = make_worker(hub, burst=True)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://hub") as client:
            user = f"demo-user-{secrets.token_hex(3)}"
            print(f"1. The app backend forwards a message from {user} (signed webhook):")
            body = json.dumps({
                "user_id": user, "message_id": secrets.token_hex(8), "type": "text",
                "user_name": "王小明", "text": "我的订单 20261124 还没发货，能帮我查一下吗？",
                "context": {"screen": "order_detail", "order_id": "20261124", "step": 3},
            }, ensure_ascii=False).encode()
            r = await client.post("/webhooks/app/demo-app", content=body,
                                  headers=signed_headers(secret, body))
            print(f"   -> {r.status_code} {r.json()}")
            await worker.run_check()

            auth = {"Authorization": f"Bearer {key}"}
            r = await client.get(f"/v1/customers?identity=app:demo-app:{user}", headers=auth)
            customer = r.json()["items"][0]
            r = await client.get(f"/v1/conversations?customer_id={customer['id']}", headers=auth)
            conversation = r.json()["items"][0]
            print(f"2. The agent sees customer {customer['display_name']} "
                  f"({customer['id']}) and conversation {conversation['id']} "
                  f"[{conversation['status']}] via {conversation['last_inbound']}")

            r = await client.post("/v1/messages", headers=auth, json={
                "conversation_id": conversation["id"], "kind": "text",
                "text": "您好！订单 20261124 已在打包，预计今天发出。"})
            print(f"3. The agent replies on the customer's last channel -> {r.status_code} "
                  f"{r.json()}")
            worker = make_worker(hub, burst=True)
            await worker.run_check()
            for item in received:
                print(f"4. The app backend received (signature ok: {item['signature_ok']}): "
                      f"{item['text']}")

            app_key = await asyncio.to_thread(create_key, "app", "demo app backend")
            r = await client.post("/v1/handoffs", headers={"Authorization": f"Bearer {app_key}"},
                                  json={"customer": {"app_user_id": user},
                                        "context": {"screen": "order_detail", "step": 3,
                                                    "order_id": "20261124"}})
            code = r.json()["code"]
            print(f"5. The customer leaves the app and texts the handoff code {code} by SMS.")
            form = {"MessageSid": "SM" + secrets.token_hex(16), "AccountSid": sms["account_sid"],
                    "From": "+8613800138000", "To": sms["from_number"],
                    "Body": f"我是刚才 App 里的，码 {code}", "NumMedia": "0"}
            url = f"{sms['public_url']}/webhooks/sms/demo-sms"
            signature = RequestValidator(sms["auth_token"]).compute_signature(url, form)
            await client.post("/webhooks/sms/demo-sms", content=urlencode(form).encode(),
                              headers={"X-Twilio-Signature": signature, "Content-Type":
                                       "application/x-www-form-urlencoded"})
            await make_worker(hub, burst=True).run_check()

            r = await client.get(f"/v1/customers/{customer['id']}/timeline", headers=auth)
            print("6. One customer, one conversation, both channels, as the agent sees it:")
            for m in r.json()["items"]:
                arrow = "<-" if m["direction"] == "in" else "->"
                what = m["text"] or (m["event"] or {}).get("name")
                print(f"   {arrow} [{m['adapter']}/{m['account']}] {m['status']:9} {what}")
            conv = (await client.get(f"/v1/conversations/{conversation['id']}",
                                     headers=auth)).json()
            print(f"   context the agent sees: {conv['context'].get('handoff')}")
    finally:
        await hub.close()
        backend.should_exit = True
        await backend_task
