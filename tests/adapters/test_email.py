"""Email: mail shaped like real clients send it, through the webhook, a real SMTP receiver
and a real IMAP server (Dovecot); replies through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller

from adapters.email import EmailAdapter, poll_imap_once
from hub.models import Conversation, Media, Message
from hub.signing import signed_headers
from hub.testing import AdapterConformance, free_port
from scrm.models import Identity, utcnow

SECRET = "email-inbound-secret-0123456789"
SUPPORT = "support@shop.example.com"
CUSTOMER = "Li.Lei@Example.COM"


class Sink:
    """A real SMTP server that keeps what it receives."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.mails.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


@pytest.fixture(scope="module")
def smtp_sink():
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield sink, controller.port
    controller.stop()


def account(smtp_port: int, **extra):
    return {"adapter": "email", "name": "support", "address": SUPPORT, "inbound_secret": SECRET,
            "display_name": "商城客服", "smtp_host": "127.0.0.1", "smtp_port": smtp_port,
            "smtp_security": "none", **extra}


def mail(text: str = "你好，我的订单 20261124 还没到。", subject: str = "订单咨询",
         sender: str = CUSTOMER, charset: str = "utf-8", msgid: str | None = None,
         headers: dict | None = None) -> bytes:
    m = EmailMessage()
    m["From"] = f"李雷 <{sender}>"
    m["To"] = SUPPORT
    m["Subject"] = subject
    m["Message-ID"] = msgid or make_msgid(domain="example.com")
    m["Date"] = "Mon, 23 Nov 2026 10:00:00 +0800"
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(text, charset=charset)
    return m.as_bytes()


async def post(h, raw: bytes, secret: str = SECRET):
    return await h.client.post("/webhooks/email/support", content=raw,
                               headers=signed_headers(secret, raw, content_type="message/rfc822"))


async def email_hub(hub_factory, smtp_sink, **extra):
    return await hub_factory(accounts=[account(smtp_sink[1], **extra)], plugins=("email",))


async def inbound() -> list[Message]:
    return await asyncio.to_thread(lambda: list(Message.objects(direction="in").order_by("id")))


class TestEmailConformance(AdapterConformance):
    adapter = "email"
    plugin = "email"
    account_name = "support"

    @pytest.fixture(autouse=True)
    def _sink(self, smtp_sink):
        self.sink = smtp_sink
        self.before = len(smtp_sink[0].mails)

    def account_settings(self, fake_url):
        return {k: v for k, v in account(self.sink[1]).items() if k not in ("adapter", "name")}

    def payloads(self):
        return [mail(msgid="<conf-1@example.com>"), mail(text="", subject="附件",
                                                         msgid="<conf-2@example.com>")]

    def signed(self, body, settings):
        return body, signed_headers(settings["inbound_secret"], body,
                                    content_type="message/rfc822"), {}

    def delivered(self, fake_http):
        return len(self.sink[0].mails) > self.before


# ---- parsing what real clients send ------------------------------------------------------

def gmail_reply_gbk() -> bytes:
    """multipart/alternative, GBK, base64, a Chinese Gmail quote header."""
    outer = MIMEMultipart("alternative")
    outer["From"] = "=?GBK?B?wO7A1w==?= <li.lei@example.com>"  # 李雷 in GBK
    outer["To"] = SUPPORT
    outer["Subject"] = "=?GBK?B?u9i4tDogtqm1pdfJ0a8=?="  # 回复: 订单咨询
    outer["Message-ID"] = "<gbk-1@mail.gmail.com>"
    body = ("好的，我明天下午在家。\n\n李雷 <li.lei@example.com> 于2026年11月23日周一 10:00写道：\n"
            "> 您好，请问什么时候方便送货？\n")
    outer.attach(MIMEText(body, "plain", "gbk"))
    outer.attach(MIMEText(f"<div>{body}</div>", "html", "gbk"))
    return outer.as_bytes()


def outlook_reply_gb2312_qp() -> bytes:
    m = EmailMessage()
    m["From"] = "Li Lei <LI.LEI@example.com>"
    m["To"] = SUPPORT
    m["Subject"] = "RE: Order question 订单"
    m["Message-ID"] = "<outlook-1@example.com>"
    m.set_content("可以，谢谢。\n\n________________________________\nFrom: Support <support@shop"
                  ".example.com>\nSent: Monday, November 23, 2026 10:00 AM\nTo: Li Lei\n"
                  "Subject: Order question\n\nWhen can we deliver?\n",
                  charset="gb2312", cte="quoted-printable")
    return m.as_bytes()


def html_only() -> bytes:
    m = EmailMessage()
    m["From"] = CUSTOMER
    m["To"] = SUPPORT
    m["Subject"] = "HTML only"
    m["Message-ID"] = "<html-1@example.com>"
    m.set_content("<html><body><p>您好，</p><p>我要<b>退货</b>。</p></body></html>",
                  subtype="html")
    return m.as_bytes()


async def test_real_client_mail_is_decoded_and_quotes_stripped(hub_factory, smtp_sink):
    h = await email_hub(hub_factory, smtp_sink)
    for raw in (gmail_reply_gbk(), outlook_reply_gb2312_qp(), html_only()):
        r = await post(h, raw)
        assert r.status_code == 200, r.text
    gmail, outlook, htmlmail = await inbound()
    assert gmail.text == "好的，我明天下午在家。"
    assert gmail.context["subject"] == "回复: 订单咨询" and gmail.subject == "订单咨询"
    assert outlook.text == "可以，谢谢。"
    assert outlook.subject == "order question 订单"
    assert htmlmail.text.split() == ["您好，", "我要退货。"]
    identities = await asyncio.to_thread(lambda: list(Identity.objects))
    assert {i.external_user_id for i in identities} == {"li.lei@example.com"}
    assert identities[0].email == "li.lei@example.com" and identities[0].verified is False


async def test_attachments_kept_and_huge_ones_recorded(hub_factory, smtp_sink):
    h = await email_hub(hub_factory, smtp_sink, max_attachment_bytes=50_000)
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = CUSTOMER, SUPPORT, "发票"
    m["Message-ID"] = "<att-1@example.com>"
    m.set_content("发票和截图见附件")
    m.add_attachment(b"%PDF-1.4 fake invoice", maintype="application", subtype="pdf",
                     filename="发票.pdf")
    m.add_attachment(b"\x89PNG" + b"0" * 60_000, maintype="image", subtype="png",
                     filename="big.png")
    assert (await post(h, m.as_bytes())).status_code == 200
    [message] = await inbound()
    [kept] = message.attachments
    assert (kept.kind, kept.name, kept.mime, kept.size) == ("file", "发票.pdf",
                                                            "application/pdf", 21)
    media = await asyncio.to_thread(lambda: Media.objects(id=kept.media_id).first())
    assert media.data == b"%PDF-1.4 fake invoice"
    assert message.context["refused_attachments"][0]["name"] == "big.png"
    auth = await h.api_key()
    r = await h.client.get(f"/v1/media/{kept.media_id}", headers=auth)
    assert r.status_code == 200 and r.content == b"%PDF-1.4 fake invoice"
    assert r.headers["content-type"] == "application/pdf"
    assert (await h.client.get(f"/v1/media/{kept.media_id}")).status_code == 401


async def test_webhook_signature_duplicates_and_bad_mail(hub_factory, smtp_sink):
    h = await email_hub(hub_factory, smtp_sink)
    raw = mail(msgid="<dup-1@example.com>")
    assert (await h.client.post("/webhooks/email/support", content=raw)).status_code == 403
    assert (await post(h, raw, secret="x" * 20)).status_code == 403
    answers = await asyncio.gather(*[post(h, raw) for _ in range(5)])
    assert {r.status_code for r in answers} == {200}
    assert sum(not r.json()["duplicate"] for r in answers) == 1
    for bad in (b"", b"\x00\x01garbage without headers", b"Subject: no sender\r\n\r\nhi"):
        r = await post(h, bad)
        assert r.status_code == 400, bad
        assert r.json()["error"]["message"]
    assert len(await inbound()) == 1


async def test_auto_replies_never_open_or_reach_plugins(hub_factory, smtp_sink):
    from hub import hookimpl

    seen = []

    class Bot:
        @hookimpl
        def message_received(self, message):
            seen.append(message.text)

    h = await hub_factory(accounts=[account(smtp_sink[1])], plugins=("email",),
                          extra_plugins={"bot": Bot()})
    ooo = mail(text="I am out of office until Monday.", subject="Automatic reply: 订单",
               headers={"Auto-Submitted": "auto-replied"})
    assert (await post(h, ooo)).status_code == 200
    await h.run_jobs()
    [message] = await inbound()
    assert message.automated == "auto_reply"
    conversations = await asyncio.to_thread(lambda: list(Conversation.objects))
    assert [c.active for c in conversations] == [False]
    assert seen == []


async def test_reply_is_threaded_signed_and_bounces_fail_it(hub_factory, smtp_sink):
    sink, _ = smtp_sink
    h = await email_hub(hub_factory, smtp_sink)
    first = mail(msgid="<ask-1@example.com>", subject="订单咨询")
    assert (await post(h, first)).status_code == 200
    auth = await h.api_key()
    conv = (await h.client.get("/v1/conversations", headers=auth)).json()["items"][0]
    before = len(sink.mails)
    r = await h.client.post("/v1/messages", headers=auth, json={
        "conversation_id": conv["id"], "text": "您好！\n\n订单已发出，单号 SF123。",
        "attachments": [{"kind": "file", "media_id": await store(b"receipt", "text/plain"),
                         "name": "收据.txt", "mime": "text/plain"}]})
    assert r.status_code == 202
    await h.run_jobs()
    [(rcpts, raw)] = sink.mails[before:]
    assert rcpts == ["li.lei@example.com"]
    sent = message_from_bytes(raw, policy=policy.default)
    assert sent["Subject"] == "Re: 订单咨询"
    assert sent["In-Reply-To"] == "<ask-1@example.com>"
    assert "<ask-1@example.com>" in sent["References"]
    assert str(sent["From"]) == "商城客服 <support@shop.example.com>"
    token_address = sent["Reply-To"].addresses[0].addr_spec
    assert token_address.startswith("support+" + conv["id"])
    assert sent.get_body(("plain",)).get_content().startswith("您好！")
    assert "<p>您好！</p>" in sent.get_body(("html",)).get_content()
    assert [p.get_filename() for p in sent.iter_attachments()] == ["收据.txt"]
    out = await asyncio.to_thread(lambda: Message.objects(direction="out").first())
    assert out.status == "sent" and out.external_id == sent["Message-ID"].strip("<>")

    bounce = bounce_for(sent["Message-ID"], "li.lei@example.com")
    assert (await post(h, bounce)).status_code == 200
    out.reload()
    assert out.status == "failed" and "550 5.1.1" in out.status_reason


async def store(data: bytes, mime: str) -> str:
    from hub.ingest import store_media

    return await asyncio.to_thread(store_media, data, mime, None)


def bounce_for(original_id: str, rcpt: str) -> bytes:
    """A delivery status notification as Postfix sends it (RFC 3464)."""
    return f"""From: Mail Delivery System <MAILER-DAEMON@mx.example.com>
To: {SUPPORT}
Subject: Undelivered Mail Returned to Sender
Message-ID: <bounce-1@mx.example.com>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain; charset=us-ascii

Your message could not be delivered.

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com

Final-Recipient: rfc822; {rcpt}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--BOUNDARY
Content-Type: text/rfc822-headers

Message-ID: {original_id}
Subject: Re: x

--BOUNDARY--
""".replace("\n", "\r\n").encode()


async def test_replies_find_their_conversation_by_id_token_or_subject(hub_factory, smtp_sink):
    sink, _ = smtp_sink
    h = await email_hub(hub_factory, smtp_sink, default_subject="来自商城客服")
    auth = await h.api_key()
    await post(h, mail(msgid="<t-1@example.com>", subject="退款进度"))
    conv = (await h.client.get("/v1/conversations", headers=auth)).json()["items"][0]
    await h.client.post("/v1/messages", headers=auth,
                        json={"conversation_id": conv["id"], "text": "已退款"})
    await h.run_jobs()
    sent = message_from_bytes(sink.mails[-1][1], policy=policy.default)

    async def resolve_long_ago():
        await h.client.post(f"/v1/conversations/{conv['id']}/resolve", headers=auth)
        await asyncio.to_thread(lambda: Conversation.objects(id=conv["id"]).update_one(
            set__resolved_at=utcnow() - timedelta(days=30)))

    async def statuses():
        convs = (await h.client.get("/v1/conversations", headers=auth)).json()["items"]
        return [(c["id"], c["status"]) for c in convs]

    cases = [
        mail(msgid="<t-2@example.com>", subject="随便什么标题",
             headers={"In-Reply-To": sent["Message-ID"]}),
        mail(msgid="<t-3@example.com>", subject="另一个标题").replace(
            f"To: {SUPPORT}".encode(), f"To: {sent['Reply-To']}".encode()),
        mail(msgid="<t-4@example.com>", subject="Re: 退款进度"),
    ]
    for raw in cases:
        await resolve_long_ago()
        assert (await post(h, raw)).status_code == 200
        assert await statuses() == [(conv["id"], "open")], raw[:200]
    await resolve_long_ago()
    await post(h, mail(msgid="<t-5@example.com>", subject="全新的问题"))
    assert len(await statuses()) == 2  # no thread: a new conversation after reopen_days
    # the token carries a MAC: a conversation id alone (a guess) is not accepted
    settings = h.hub.account("email", "support").settings
    assert EmailAdapter().token_conversation(
        settings, [f"support+{conv['id']}0000000000@shop.example.com"]) is None


async def test_smtp_receiver_accepts_only_our_mailboxes(hub_factory, smtp_sink):
    from adapters.email import run_smtp_receiver

    port = free_port()
    h = await hub_factory(accounts=[account(smtp_sink[1])], plugins=("email",),
                          smtp_listen=f"127.0.0.1:{port}")
    task = asyncio.create_task(run_smtp_receiver(h.hub))
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            await asyncio.sleep(0.05)
        raw = mail(msgid="<smtp-1@example.com>", text="通过 SMTP 收到")
        await aiosmtplib.send(raw, sender=CUSTOMER, recipients=[SUPPORT], hostname="127.0.0.1",
                              port=port)
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await aiosmtplib.send(raw, sender=CUSTOMER, recipients=["nobody@elsewhere.com"],
                                  hostname="127.0.0.1", port=port)
        [message] = await inbound()
        assert message.text == "通过 SMTP 收到"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---- IMAP against a real Dovecot ---------------------------------------------------------

DOVECOT = shutil.which("dovecot") or (Path("/usr/sbin/dovecot") if
                                      Path("/usr/sbin/dovecot").exists() else None)


@pytest.fixture(scope="module")
def imap_server():
    if DOVECOT is None:
        pytest.skip("Dovecot is not installed (apt-get install dovecot-imapd; .ci/run does): "
                    "the IMAP path needs a real IMAP server")
    if os.geteuid() != 0:
        pytest.skip("starting Dovecot with a throwaway config needs root here")
    home = Path(tempfile.mkdtemp(prefix="omnihub-imap-"))
    home.chmod(0o755)
    (home / "mail").mkdir()
    shutil.chown(home / "mail", "dovecot", "dovecot")
    (home / "run").mkdir()
    (home / "users").write_text(f"{SUPPORT}:{{PLAIN}}imap-pass-123\n")
    port = free_port()
    conf = home / "dovecot.conf"
    conf.write_text(f"""protocols = imap
listen = 127.0.0.1
base_dir = {home}/run
state_dir = {home}/run
ssl = no
disable_plaintext_auth = no
log_path = {home}/dovecot.log
mail_location = maildir:{home}/mail/%u
first_valid_uid = 1
mail_uid = dovecot
mail_gid = dovecot
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {home}/users
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={home}/mail/%u
}}
""")
    subprocess.run([str(DOVECOT), "-c", str(conf)], check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    yield port
    subprocess.run([str(DOVECOT), "-c", str(conf), "stop"], check=False)
    shutil.rmtree(home, ignore_errors=True)


async def test_imap_poll_stores_and_marks_only_what_it_stored(hub_factory, smtp_sink,
                                                              imap_server):
    import imaplib

    box = imaplib.IMAP4("127.0.0.1", imap_server)
    box.login(SUPPORT, "imap-pass-123")
    box.select("INBOX")
    box.append("INBOX", None, None, mail(msgid="<imap-1@example.com>", text="IMAP 收到的邮件"))
    box.append("INBOX", None, None, b"\r\n\r\n")  # unreadable: left flagged
    h = await email_hub(hub_factory, smtp_sink, imap_host="127.0.0.1", imap_port=imap_server,
                        imap_security="none", imap_password="imap-pass-123")
    stored = await poll_imap_once(h.hub, h.hub.account("email", "support"))
    assert stored == 1
    [message] = await inbound()
    assert message.text == "IMAP 收到的邮件"
    box.select("INBOX")
    assert box.uid("SEARCH", "UNSEEN")[1] == [b""]
    assert len(box.uid("SEARCH", "FLAGGED")[1][0].split()) == 1
    assert await poll_imap_once(h.hub, h.hub.account("email", "support")) == 0
    box.logout()


@pytest.mark.parametrize("body, expected", [
    ("Sounds good.\n\nOn Mon, Nov 23, 2026 at 10:00 AM Support <support@shop.example.com> "
     "wrote:\n> When can we call?\n", "Sounds good."),
    ("好的\n\n李雷 <li.lei@example.com> 于2026年11月23日周一 10:00写道：\n> 原文\n", "好的"),
    ("收到，谢谢\n\n-----原始邮件-----\n发件人: support@shop.example.com\n发送时间: 2026年11月23日"
     "\n主题: 订单\n\n您好\n", "收到，谢谢"),
    ("OK for me.\n\n-----Original Message-----\nFrom: Support\nSent: Monday\nTo: Li\n"
     "Subject: x\n\nHello\n", "OK for me."),
    ("没有引用的新邮件\n第二行", "没有引用的新邮件\n第二行"),
])
def test_quoted_history_is_stripped(body, expected):
    from adapters.email.parse import strip_quoted

    assert strip_quoted(body) == expected
