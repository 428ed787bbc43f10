"""The shared omnihub adapter conformance suite, run against this adapter."""

import json

from echo_channel import sign

from hub.testing import AdapterConformance


class TestEchoConformance(AdapterConformance):
    adapter = "echo"
    plugin = "echo"

    def account_settings(self, fake_url):
        return {"token": "echo-token-0123456789", "outbox_url": f"{fake_url}/outbox"}

    def payloads(self):
        return [json.dumps({"id": "e-1", "from": "alice", "text": "你好 echo"}).encode()]

    def signed(self, body, settings):
        return body, {"X-Echo-Signature": sign(settings["token"], body).decode()}, {}
