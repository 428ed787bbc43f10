"""The `/v1` JSON API used by agents, marketers and app backends (DESIGN.md §4)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from bson import ObjectId
from bson.errors import InvalidId
from mongoengine.errors import NotUniqueError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub import auth, serialize
from hub.adapter import MESSAGE_KINDS, Account, attachments_from_json
from hub.errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    Unprocessable,
)
from hub.models import CONVERSATION_STATUSES, Conversation, Media, Message
from hub.policy import PURPOSES, check_outbound_allowed
from hub.runtime import Hub
from scrm.models import Customer, Identity, utcnow

MAX_API_BODY = 256 * 1024
AGENTS = ("agent",)
READERS = ("agent", "marketer")


def _hub(request: Request) -> Hub:
    return request.app.state.hub


async def _authorize(request: Request, roles: tuple[str, ...]) -> str:
    header = request.headers.get("authorization")
    return await run_in_threadpool(auth.check, header, roles)


def object_id(value: Any, field: str) -> ObjectId:
    try:
        return ObjectId(value)
    except (InvalidId, TypeError):
        raise BadRequest(f"{field} is not a valid id", field=field, code="invalid_id") from None


async def json_body(request: Request) -> dict:
    body = await request.body()
    if len(body) > MAX_API_BODY:
        raise PayloadTooLarge(f"body is larger than {MAX_API_BODY} bytes")
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body is not valid JSON", code="malformed_json") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object", code="malformed_json")
    return data


def page_params(request: Request) -> tuple[int, ObjectId | None]:
    raw = request.query_params.get("limit", "50")
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest("limit must be a whole number", field="limit") from None
    if not 1 <= limit <= 500:
        raise BadRequest("limit must be between 1 and 500", field="limit")
    cursor = request.query_params.get("cursor")
    return limit, object_id(cursor, "cursor") if cursor else None


def paged(queryset: Any, limit: int, cursor: ObjectId | None, newest_first: bool,
          shape: Any) -> dict:
    """Keyset pagination on `_id`: stable under inserts, O(limit) per page."""
    if cursor is not None:
        op = "id__lt" if newest_first else "id__gt"
        queryset = queryset.filter(**{op: cursor})
    docs = list(queryset.order_by("-id" if newest_first else "id").limit(limit + 1))
    more = len(docs) > limit
    docs = docs[:limit]
    return {"items": [shape(d) for d in docs], "next": str(docs[-1].id) if more else None}


# ---- conversations ----------------------------------------------------------------------

async def list_conversations(request: Request) -> JSONResponse:
    """
    summary: List conversations, newest first
    parameters: [{name: customer_id, in: query}, {name: status, in: query},
                 {name: assignee, in: query}, {name: limit, in: query}, {name: cursor, in: query}]
    responses: {200: {description: "{items, next}"}}
    """
    await _authorize(request, READERS)
    limit, cursor = page_params(request)
    filters: dict[str, Any] = {}
    q = request.query_params
    if q.get("customer_id"):
        filters["customer_id"] = object_id(q["customer_id"], "customer_id")
    if q.get("status"):
        if q["status"] not in CONVERSATION_STATUSES:
            raise BadRequest(f"status must be one of {', '.join(CONVERSATION_STATUSES)}",
                             field="status")
        filters["status"] = q["status"]
    if q.get("assignee"):
        filters["assignee"] = q["assignee"]
    return JSONResponse(await run_in_threadpool(
        paged, Conversation.objects(**filters), limit, cursor, True, serialize.conversation))


def get_or_404(document: Any, raw_id: str, what: str) -> Any:
    """The document with that id, or 400 for a malformed id and 404 for an unknown one."""
    doc = document.objects(id=object_id(raw_id, "id")).first()
    if doc is None:
        raise NotFound(f"no {what} {raw_id}", code=f"unknown_{what}")
    return doc


def _conversation(conversation_id: str) -> Conversation:
    return get_or_404(Conversation, conversation_id, "conversation")


async def get_conversation(request: Request) -> JSONResponse:
    """
    summary: One conversation with its context and the channels it used
    responses: {200: {description: conversation}, 404: {description: unknown id}}
    """
    await _authorize(request, READERS)
    doc = await run_in_threadpool(_conversation, request.path_params["id"])
    return JSONResponse(serialize.conversation(doc))


async def conversation_messages(request: Request) -> JSONResponse:
    """
    summary: Messages of a conversation, oldest first, across every channel
    responses: {200: {description: "{items, next}"}}
    """
    await _authorize(request, READERS)
    limit, cursor = page_params(request)

    def load() -> dict:
        doc = _conversation(request.path_params["id"])
        return paged(Message.objects(conversation_id=doc.id).exclude("raw"), limit, cursor,
                     False, serialize.message)

    return JSONResponse(await run_in_threadpool(load))


def _set_status(conversation_id: str, action: str, assignee: str | None = None) -> Conversation:
    doc = _conversation(conversation_id)
    now = utcnow()
    if action == "resolve":
        Conversation.objects(id=doc.id).update_one(
            set__status="resolved", set__active=False, set__resolved_at=doc.resolved_at or now,
            set__updated_at=now)
    elif action == "reopen":
        if doc.status != "resolved":
            return doc
        try:
            Conversation.objects(id=doc.id).update_one(
                set__status="open", set__active=True, unset__resolved_at=True, set__updated_at=now)
        except NotUniqueError:
            raise Conflict("the customer already has an open conversation; continue that one",
                           code="conversation_open") from None
    else:
        Conversation.objects(id=doc.id).update_one(set__assignee=assignee, set__updated_at=now)
    doc.reload()
    return doc


async def resolve_conversation(request: Request) -> JSONResponse:
    """
    summary: Resolve a conversation (the customer writing again within reopen_days reopens it)
    responses: {200: {description: conversation}}
    """
    await _authorize(request, AGENTS)
    doc = await run_in_threadpool(_set_status, request.path_params["id"], "resolve")
    return JSONResponse(serialize.conversation(doc))


async def reopen_conversation(request: Request) -> JSONResponse:
    """
    summary: Reopen a resolved conversation
    responses: {200: {description: conversation}, 409: {description: another is open}}
    """
    await _authorize(request, AGENTS)
    doc = await run_in_threadpool(_set_status, request.path_params["id"], "reopen")
    return JSONResponse(serialize.conversation(doc))


async def assign_conversation(request: Request) -> JSONResponse:
    """
    summary: Assign a conversation to an agent (null unassigns)
    requestBody: {content: {application/json: {example: {assignee: "li.lei"}}}}
    responses: {200: {description: conversation}}
    """
    await _authorize(request, AGENTS)
    data = await json_body(request)
    assignee = data.get("assignee")
    if assignee is not None and (not isinstance(assignee, str) or not 0 < len(assignee) <= 100):
        raise BadRequest("assignee must be a name of 1 to 100 characters or null",
                         field="assignee")
    doc = await run_in_threadpool(_set_status, request.path_params["id"], "assign", assignee)
    return JSONResponse(serialize.conversation(doc))


# ---- customers --------------------------------------------------------------------------

async def get_customer(request: Request) -> JSONResponse:
    """
    summary: One customer profile with its channel identities
    responses: {200: {description: customer}, 404: {description: unknown id}}
    """
    await _authorize(request, READERS)

    def load() -> dict:
        doc = get_or_404(Customer, request.path_params["id"], "customer")
        return serialize.customer(doc, list(Identity.objects(customer_id=doc.id)))

    return JSONResponse(await run_in_threadpool(load))


async def get_media(request: Request) -> Response:
    """
    summary: The bytes of an attachment a channel delivered inline (e.g. an email part)
    responses: {200: {description: the file}, 404: {description: unknown id}}
    """
    await _authorize(request, READERS)
    media = await run_in_threadpool(Media.objects(id=request.path_params["id"]).first)
    if media is None:
        raise NotFound("no such media", code="unknown_media")
    filename = quote(media.name or "attachment")
    return Response(media.data, media_type=media.mime or "application/octet-stream",
                    headers={"Content-Disposition": f"attachment; filename*=UTF-8''{filename}"})


# ---- outbound ---------------------------------------------------------------------------

def _prepare_outbound(hub: Hub, data: dict, sent_by: str) -> Message:
    """Validate everything before queuing, so a message that cannot go is refused now."""
    kind = data.get("kind", "text")
    if kind not in MESSAGE_KINDS or kind == "event":
        raise BadRequest("kind must be one of " + ", ".join(k for k in MESSAGE_KINDS
                                                             if k != "event"), field="kind")
    text = data.get("text")
    if text is not None and not isinstance(text, str):
        raise BadRequest("text must be a string", field="text")
    attachments = attachments_from_json(data.get("attachments"))
    if kind == "text" and not (text and text.strip()):
        raise BadRequest("a text message needs a non-empty text", field="text")
    if kind != "text" and not attachments and kind not in ("link", "card", "location"):
        raise BadRequest(f"a {kind} message needs an attachment", field="attachments")
    purpose = data.get("purpose", "reply")
    if purpose not in PURPOSES:
        raise BadRequest(f"purpose must be one of {', '.join(PURPOSES)}", field="purpose")

    if data.get("conversation_id"):
        conversation = _conversation(str(data["conversation_id"]))
    elif data.get("customer_id"):
        cid = object_id(data["customer_id"], "customer_id")
        if Customer.objects(id=cid).first() is None:
            raise NotFound(f"no customer {cid}", code="unknown_customer", field="customer_id")
        conversation = (Conversation.objects(customer_id=cid, active=True).first()
                        or Conversation.objects(customer_id=cid).order_by("-id").first())
        if conversation is None:
            conversation = _open_for_outbound(cid)
    else:
        raise BadRequest("give conversation_id or customer_id", field="conversation_id")

    adapter_name, account_name = data.get("adapter"), data.get("account")
    if bool(adapter_name) != bool(account_name):
        raise BadRequest("adapter and account go together", field="account" if adapter_name
                         else "adapter")
    if not adapter_name:
        if conversation.last_inbound is None:
            raise Unprocessable("the conversation has no inbound channel yet; name adapter and "
                                "account", field="adapter", code="no_route")
        adapter_name = conversation.last_inbound.adapter
        account_name = conversation.last_inbound.account
    try:
        account = hub.account(str(adapter_name), str(account_name))
    except NotFound as exc:
        raise Unprocessable(exc.message, field="account", code="unknown_account") from None
    adapter = account.adapter
    if kind not in adapter.kinds:
        raise Unprocessable(f"{adapter.name} cannot send {kind} messages (it sends "
                            f"{', '.join(adapter.kinds)})", field="kind", code="unsupported_kind")
    if text and adapter.max_text_length and len(text) > adapter.max_text_length:
        raise Unprocessable(f"text is longer than {adapter.name}'s limit of "
                            f"{adapter.max_text_length} characters", field="text",
                            code="text_too_long")
    identity = Identity.objects(customer_id=conversation.customer_id, adapter=adapter.name,
                                account=account.name).order_by("-created_at").first()
    if identity is None:
        raise Unprocessable(f"the customer has no identity on {adapter.name}/{account.name}",
                            field="adapter", code="no_identity")
    adapter.check_outbound(kind, text, account)
    now = utcnow()
    message = Message(
        direction="out", adapter=adapter.name, account=account.name,
        external_user_id=identity.external_user_id, customer_id=conversation.customer_id,
        conversation_id=conversation.id, kind=kind, text=text, purpose=purpose,
        attachments=[a.fields() for a in attachments], status="queued", sent_by=sent_by,
        created_at=now, updated_at=now,
    )
    try:
        check_outbound_allowed(account, message)
    except Unprocessable as exc:
        if not data.get("adapter"):  # the default route: say which channels can deliver
            exc.extra["alternatives"] = _alternatives(hub, message, account)
        raise
    message.save()
    Conversation.objects(id=conversation.id).update_one(set__updated_at=now,
                                                         set__last_message_at=now)
    return message


def _alternatives(hub: Hub, draft: Message, refused: Account) -> list[dict]:
    """The customer's other channels that could take this message now."""
    out = []
    for identity in Identity.objects(customer_id=draft.customer_id, adapter__ne="profile"):
        key = (identity.adapter, identity.account)
        if key == (refused.adapter.name, refused.name) or key not in hub.accounts:
            continue
        account = hub.accounts[key]
        if draft.kind not in account.adapter.kinds:
            continue
        candidate = Message(direction="out", adapter=identity.adapter, account=identity.account,
                            external_user_id=identity.external_user_id,
                            customer_id=draft.customer_id, kind=draft.kind,
                            purpose=draft.purpose)
        try:
            check_outbound_allowed(account, candidate)
        except Unprocessable:
            continue
        out.append({"adapter": identity.adapter, "account": identity.account})
    return out


def _open_for_outbound(customer_id: ObjectId) -> Conversation:
    try:
        return Conversation(customer_id=customer_id).save()
    except NotUniqueError:  # one was opened concurrently
        found = Conversation.objects(customer_id=customer_id, active=True).first()
        if found is None:
            raise
        return found


async def send_message(request: Request) -> JSONResponse:
    """
    summary: Queue a reply; the channel defaults to the conversation's last inbound one
    requestBody: {content: {application/json: {example:
      {conversation_id: "...", kind: text, text: "您好，请问有什么可以帮您？"}}}}
    responses: {202: {description: "{id, status}"}, 422: {description: cannot be sent}}
    """
    role = await _authorize(request, AGENTS)
    data = await json_body(request)
    hub = _hub(request)
    message = await run_in_threadpool(_prepare_outbound, hub, data, role)
    try:
        await hub.enqueue("send_message", str(message.id), job_id=f"send:{message.id}")
    except Unavailable:
        await run_in_threadpool(Message.objects(id=message.id).update_one, set__status="failed",
                                set__status_reason="job queue unreachable; send it again")
        raise
    return JSONResponse({"id": str(message.id), "status": "queued"}, status_code=202)


ROUTES = [
    Route("/v1/messages", send_message, methods=["POST"]),
    Route("/v1/conversations", list_conversations, methods=["GET"]),
    Route("/v1/conversations/{id}", get_conversation, methods=["GET"]),
    Route("/v1/conversations/{id}/messages", conversation_messages, methods=["GET"]),
    Route("/v1/conversations/{id}/resolve", resolve_conversation, methods=["POST"]),
    Route("/v1/conversations/{id}/reopen", reopen_conversation, methods=["POST"]),
    Route("/v1/conversations/{id}/assign", assign_conversation, methods=["POST"]),
    Route("/v1/customers/{id}", get_customer, methods=["GET"]),
    Route("/v1/media/{id}", get_media, methods=["GET"]),
]
