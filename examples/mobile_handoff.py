"""A stuck bank-app user continues on SMS and WeChat; the agent sees where they stopped.

Run against a hub started with this example's accounts, from the same folder:

    omnihub serve --config examples/mobile_handoff.toml
    python examples/mobile_handoff.py [--hub http://127.0.0.1:8000]

The script plays three parts, all over the hub's real HTTP interface: the bank's app
backend (signed app-channel messages and `POST /v1/handoffs`), the customer (an SMS through
Twilio's signed webhook, a WeChat QR scan and message through WeChat's), and the agent (the
API key's view of the customer, the conversation and its timeline).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urlencode

import httpx
from twilio.request_validator import RequestValidator

from hub.signing import signed_headers

HERE = Path(__file__).parent


def api_key(role: str, config: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "hub.cli", "keys", "create", "--role", role,
                          "--name", f"handoff example ({role})", "--config", str(config)],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hub", default="http://127.0.0.1:8000")
    parser.add_argument("--config", type=Path, default=HERE / "mobile_handoff.toml")
    args = parser.parse_args()
    accounts = {a["adapter"]: a for a in tomllib.loads(args.config.read_text())["accounts"]}
    app, sms, wechat = accounts["app"], accounts["sms"], accounts["wechat"]
    hub = httpx.Client(base_url=args.hub, timeout=10)
    user = f"cust-{secrets.token_hex(3)}"
    phone = f"+86139{secrets.randbelow(10**8):08d}"

    print(f"1. In the bank app, {user} is stuck on step 3 of a loan form and taps 'talk to us'.")
    body = json.dumps({"user_id": user, "message_id": secrets.token_hex(6), "type": "text",
                       "user_name": "陈静", "text": "贷款申请第3步一直提示 E1024"},
                      ensure_ascii=False).encode()
    hub.post(f"/webhooks/app/{app['name']}", content=body,
             headers=signed_headers(app["secret"], body)).raise_for_status()

    app_auth = {"Authorization": f"Bearer {api_key('app', args.config)}"}

    def create_handoff() -> dict:
        r = hub.post("/v1/handoffs", headers=app_auth, json={
            "customer": {"app_user_id": user},
            "context": {"screen": "loan_application", "step": 3, "error": "E1024",
                        "order_id": "LN-20261124-0042", "amount_cny": 200000},
            "channels": ["sms", "wechat"], "ttl_s": 900})
        r.raise_for_status()
        return r.json()

    handoff = create_handoff()
    print(f"2. The app shows: call or text us with code {handoff['code']}, or scan the QR code "
          f"(scene {handoff['wechat_scene']}). SMS link: {handoff['deep_links'].get('sms')}")

    print(f"3. The customer texts the code from {phone[:6]}…")
    form = {"MessageSid": "SM" + secrets.token_hex(16), "AccountSid": sms["account_sid"],
            "From": phone, "To": sms["from_number"], "Body": f"验证码 {handoff['code']}",
            "NumMedia": "0"}
    url = f"{sms['public_url'].rstrip('/')}/webhooks/sms/{sms['name']}"
    signature = RequestValidator(sms["auth_token"]).compute_signature(url, form)
    hub.post(f"/webhooks/sms/{sms['name']}", content=urlencode(form).encode(),
             headers={"X-Twilio-Signature": signature,
                      "Content-Type": "application/x-www-form-urlencoded"}).raise_for_status()

    print("4. Later the app offers WeChat (a new, single-use handoff); they scan and write.")
    handoff = create_handoff()
    openid = "o" + secrets.token_hex(8)
    for kind, extra in (("event", f"<Event>SCAN</Event><EventKey>{handoff['wechat_scene']}"
                                  "</EventKey>"),
                        ("text", f"<Content>还是不行</Content><MsgId>{time.time_ns()}</MsgId>")):
        xml = (f"<xml><ToUserName>gh_bank</ToUserName><FromUserName>{openid}</FromUserName>"
               f"<CreateTime>{int(time.time())}</CreateTime><MsgType>{kind}</MsgType>{extra}"
               "</xml>").encode()
        timestamp, nonce = str(int(time.time())), secrets.token_hex(4)
        sig = hashlib.sha1("".join(sorted([wechat["token"], timestamp, nonce])).encode())
        query = urlencode({"signature": sig.hexdigest(), "timestamp": timestamp,
                           "nonce": nonce})
        hub.post(f"/webhooks/wechat/{wechat['name']}?{query}", content=xml).raise_for_status()

    agent = {"Authorization": f"Bearer {api_key('agent', args.config)}"}
    customer = hub.get(f"/v1/customers?identity=app:{app['name']}:{user}",
                       headers=agent).json()["items"][0]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the hub's worker resolves the handoff
        timeline = hub.get(f"/v1/customers/{customer['id']}/timeline",
                           headers=agent).json()["items"]
        resolved = [m for m in timeline if m["event"] and
                    m["event"]["name"] == "handoff_resolved"]
        if len(resolved) == 2 and any(m["adapter"] == "wechat" and m["kind"] == "text"
                                      for m in timeline):
            break
        time.sleep(0.3)
    customer = hub.get(f"/v1/customers/{customer['id']}", headers=agent).json()
    conversation = hub.get(f"/v1/conversations?customer_id={customer['id']}&status=open",
                           headers=agent).json()["items"][0]
    print("5. What the agent sees:")
    print(f"   customer {customer['display_name']} ({customer['id']}), channels: "
          + ", ".join(sorted({f"{i['adapter']}" for i in customer["identities"]})))
    print(f"   conversation {conversation['id']} [{conversation['status']}], reply goes to "
          f"{conversation['last_inbound']['adapter']}")
    handoff_context = conversation["context"].get("handoff") or {}
    print(f"   where they stopped: screen={handoff_context.get('screen')} "
          f"step={handoff_context.get('step')} error={handoff_context.get('error')} "
          f"order={handoff_context.get('order_id')}")
    print("   timeline:")
    for m in timeline:
        what = m["text"] or (m["event"] or {}).get("name")
        print(f"     [{m['adapter']:6}] {m['kind']:5} {what}")


if __name__ == "__main__":
    main()
