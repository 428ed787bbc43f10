"""`/v1` endpoints of the customer graph: profiles, merges, tags, tag rules, segments."""

from __future__ import annotations

import json
import re
from typing import Any

from mongoengine.errors import NotUniqueError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from hub import handoff, serialize
from hub.api import (
    READERS,
    _authorize,
    _hub,
    get_or_404,
    json_body,
    object_id,
    page_params,
    paged,
)
from hub.errors import BadRequest, Conflict, HubError, NotFound
from hub.merging import merged
from hub.models import Message
from scrm import merge as merging
from scrm.export import export_rows, render
from scrm.models import (
    Customer,
    Identity,
    Job,
    Merge,
    MergeSuggestion,
    Segment,
    Tag,
    TagRule,
    utcnow,
)
from scrm.segments import SegmentSyntaxError, compile_expression, preview
from scrm.tag_rules import validate_match
from scrm.tags import add_tags, remove_tag, valid_tag

EDITORS = ("agent", "marketer")
MARKETERS = ("marketer",)
MAX_ATTRIBUTES_BYTES = 16 * 1024
MAX_ATTRIBUTE_DEPTH = 5
ATTRIBUTE_KEY = re.compile(r"^[^.$\x00]{1,64}$")


def _customer(customer_id: str) -> Customer:
    return get_or_404(Customer, customer_id, "customer")


def _actor(request: Request, role: str) -> str:
    return f"api:{role}"


# ---- profiles --------------------------------------------------------------------------------

def check_attributes(value: Any, path: str = "attributes", depth: int = 0) -> None:
    if depth > MAX_ATTRIBUTE_DEPTH:
        raise BadRequest(f"{path} nests deeper than {MAX_ATTRIBUTE_DEPTH} levels", field=path)
    if isinstance(value, dict):
        for key, inner in value.items():
            if not ATTRIBUTE_KEY.match(key):
                raise BadRequest(f"attribute name {key!r} may not contain '.' or '$' and has "
                                 "1 to 64 characters", field=f"{path}.{key}")
            check_attributes(inner, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            check_attributes(inner, f"{path}[{i}]", depth + 1)
    elif not (value is None or isinstance(value, str | int | float | bool)):
        raise BadRequest(f"{path} has a value JSON cannot hold", field=path)


async def patch_customer(request: Request) -> JSONResponse:
    """
    summary: Update a profile; attributes merge key by key (null removes a key)
    requestBody: {content: {application/json: {example:
      {display_name: "李雷", attributes: {city: "上海", loan: {step: 3}}}}}}
    responses: {200: {description: customer}, 400: {description: invalid attributes}}
    """
    role = await _authorize(request, EDITORS)
    data = await json_body(request)
    unknown = set(data) - {"display_name", "attributes"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    name = data.get("display_name")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise BadRequest("display_name must be a string of at most 200 characters",
                         field="display_name")
    attributes = data.get("attributes")
    if attributes is not None:
        if not isinstance(attributes, dict):
            raise BadRequest("attributes must be an object", field="attributes")
        check_attributes(attributes)

    def update() -> dict:
        doc = _customer(request.path_params["id"])
        current = dict(doc.attributes or {})
        history = []
        for key, value in (attributes or {}).items():
            if key in current and current[key] != value:
                history.append({"attribute": key, "value": current[key], "at": utcnow(),
                                "by": _actor(request, role)})
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        if len(json.dumps(current, ensure_ascii=False).encode()) > MAX_ATTRIBUTES_BYTES:
            raise BadRequest(f"attributes would exceed {MAX_ATTRIBUTES_BYTES} bytes",
                             field="attributes")
        changes: dict[str, Any] = {"set__attributes": current, "set__updated_at": utcnow()}
        if name is not None:
            changes["set__display_name"] = name
        if history:
            changes["push_all__attribute_history"] = history
        Customer.objects(id=doc.id).update_one(**changes)
        doc.reload()
        return serialize.customer(doc, list(Identity.objects(customer_id=doc.id)))

    return JSONResponse(await run_in_threadpool(update))


async def find_customers(request: Request) -> JSONResponse:
    """
    summary: Find customers by identity, phone, email or tag
    parameters: [{name: identity, in: query}, {name: phone, in: query},
                 {name: email, in: query}, {name: tag, in: query}]
    responses: {200: {description: "{items, next}"}}
    """
    await _authorize(request, READERS)
    q = request.query_params
    limit, cursor = page_params(request)

    def load() -> dict:
        if q.get("identity"):
            parts = q["identity"].split(":", 2)
            if len(parts) != 3 or not all(parts):
                raise BadRequest("identity must be adapter:account:external_user_id",
                                 field="identity")
            ids = Identity.objects(adapter=parts[0], account=parts[1],
                                   external_user_id=parts[2]).distinct("customer_id")
        elif q.get("phone"):
            ids = Identity.objects(phone=_e164(q["phone"])).distinct("customer_id")
        elif q.get("email"):
            ids = Identity.objects(email=q["email"].strip().lower()).distinct("customer_id")
        elif q.get("tag"):
            return paged(Customer.objects(tags=q["tag"], merged_into=None), limit, cursor,
                         True, lambda c: serialize.customer(c, []))
        else:
            raise BadRequest("give identity, phone, email or tag", field="identity")
        docs = list(Customer.objects(id__in=ids))
        return {"items": [serialize.customer(d, list(Identity.objects(customer_id=d.id)))
                          for d in docs], "next": None}

    return JSONResponse(await run_in_threadpool(load))


def _e164(raw: str) -> str:
    import phonenumbers

    try:
        number = phonenumbers.parse(raw, None if raw.strip().startswith("+") else "CN")
    except phonenumbers.NumberParseException:
        raise BadRequest("phone is not a phone number", field="phone") from None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


async def timeline(request: Request) -> JSONResponse:
    """
    summary: Every message and event of the customer across channels, oldest first
    responses: {200: {description: "{items, next}"}}
    """
    await _authorize(request, READERS)
    limit, cursor = page_params(request)

    def load() -> dict:
        doc = _customer(request.path_params["id"])
        return paged(Message.objects(customer_id=doc.id).exclude("raw"), limit, cursor, False,
                     serialize.message)

    return JSONResponse(await run_in_threadpool(load))


# ---- merges ----------------------------------------------------------------------------------

def _merge_json(record: Merge) -> dict:
    return {"merge_id": str(record.id), "source": str(record.source),
            "target": str(record.target), "status": record.status, "actor": record.actor,
            "reason": record.reason, "created_at": serialize.iso(record.created_at),
            "undone_at": serialize.iso(record.undone_at), "undone_by": record.undone_by}


def _merge_errors(error: merging.MergeError) -> HubError:
    return HubError(error.message, code=error.code, status=error.status)


async def merge_customers(request: Request) -> JSONResponse:
    """
    summary: Merge source into target (atomic, idempotent, audited, undoable)
    requestBody: {content: {application/json: {example: {source: "...", target: "...",
      reason: "same person, confirmed on the phone"}}}}
    responses: {200: {description: "{merge_id, source, target, status}"}}
    """
    role = await _authorize(request, ("agent",))
    data = await json_body(request)
    source, target = object_id(data.get("source"), "source"), object_id(data.get("target"),
                                                                        "target")
    reason = data.get("reason") or "merged by an agent"
    if not isinstance(reason, str) or len(reason) > 500:
        raise BadRequest("reason must be text of at most 500 characters", field="reason")
    try:
        record = await run_in_threadpool(merging.merge, source, target, _actor(request, role),
                                         reason)
    except merging.MergeError as exc:
        raise _merge_errors(exc) from None
    await merged(_hub(request), [record])
    return JSONResponse(_merge_json(record))


async def unmerge_customer(request: Request) -> JSONResponse:
    """
    summary: Undo a merge into this (target) customer; the source comes back whole
    requestBody: {content: {application/json: {example: {merge_id: "..."}}}}
    responses: {200: {description: the merge record, now undone}}
    """
    role = await _authorize(request, ("agent",))
    data = await json_body(request)
    target = object_id(request.path_params["id"], "id")
    merge_id = object_id(data.get("merge_id"), "merge_id")
    try:
        record = await run_in_threadpool(merging.unmerge, target, merge_id,
                                         _actor(request, role))
    except merging.MergeError as exc:
        raise _merge_errors(exc) from None
    return JSONResponse(_merge_json(record))


async def suggestions(request: Request) -> JSONResponse:
    """
    summary: Customers that may be the same person as this one, for an agent to decide
    responses: {200: {description: "{items}"}}
    """
    await _authorize(request, READERS)

    def load() -> dict:
        doc = _customer(request.path_params["id"])
        found = MergeSuggestion.objects(status="open").filter(
            __raw__={"$or": [{"customer_id": doc.id}, {"other_id": doc.id}]})
        return {"items": [{
            "customer_id": str(doc.id),
            "other_customer_id": str(s.other_id if s.customer_id == doc.id else s.customer_id),
            "identifier": s.identifier, "value": s.value, "verified": s.verified,
            "created_at": serialize.iso(s.created_at)} for s in found], "next": None}

    return JSONResponse(await run_in_threadpool(load))


async def merges_of(request: Request) -> JSONResponse:
    """
    summary: The merge audit trail of a customer (as source or target)
    responses: {200: {description: "{items}"}}
    """
    await _authorize(request, READERS)
    cid = object_id(request.path_params["id"], "id")

    def load() -> dict:
        found = Merge.objects().filter(__raw__={"$or": [{"source": cid}, {"target": cid}]})
        return {"items": [_merge_json(m) for m in found.order_by("created_at")], "next": None}

    return JSONResponse(await run_in_threadpool(load))


# ---- tags ------------------------------------------------------------------------------------

async def list_tags(request: Request) -> JSONResponse:
    """
    summary: Tag definitions
    responses: {200: {description: "{items}"}}
    """
    await _authorize(request, READERS)
    tags = await run_in_threadpool(lambda: list(Tag.objects.order_by("group", "name")))
    return JSONResponse({"items": [{"name": t.name, "group": t.group,
                                    "description": t.description} for t in tags],
                         "next": None})


async def define_tag(request: Request) -> JSONResponse:
    """
    summary: Define (or describe) a tag
    requestBody: {content: {application/json: {example:
      {name: "高价值", group: "value", description: "spent over 10,000 this year"}}}}
    responses: {201: {description: the tag}}
    """
    await _authorize(request, EDITORS)
    data = await json_body(request)
    if not valid_tag(data.get("name")):
        raise BadRequest("name must be 1 to 100 letters, digits, '-', '_' or '.'", field="name")
    for key in ("group", "description"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise BadRequest(f"{key} must be text", field=key)

    def save() -> None:
        Tag._get_collection().update_one(
            {"name": data["name"]},
            {"$set": {"group": data.get("group"), "description": data.get("description")},
             "$setOnInsert": {"created_at": utcnow()}}, upsert=True)

    await run_in_threadpool(save)
    return JSONResponse({"name": data["name"], "group": data.get("group"),
                         "description": data.get("description")}, status_code=201)


async def tag_customer(request: Request) -> JSONResponse:
    """
    summary: Add tags to a customer
    requestBody: {content: {application/json: {example: {tags: ["vip", "高价值"]}}}}
    responses: {200: {description: "{tags, added}"}}
    """
    role = await _authorize(request, EDITORS)
    data = await json_body(request)
    tags = data.get("tags")
    if not isinstance(tags, list) or not tags or len(tags) > 50 or \
            not all(valid_tag(t) for t in tags):
        raise BadRequest("tags must be a list of 1 to 50 tag names", field="tags")

    def apply() -> dict:
        doc = _customer(request.path_params["id"])
        added = add_tags(doc.id, list(dict.fromkeys(tags)), _actor(request, role))
        doc.reload()
        return {"tags": list(doc.tags), "added": added}

    return JSONResponse(await run_in_threadpool(apply))


async def untag_customer(request: Request) -> JSONResponse:
    """
    summary: Remove a tag from a customer
    responses: {200: {description: "{tags, removed}"}}
    """
    role = await _authorize(request, EDITORS)

    def apply() -> dict:
        doc = _customer(request.path_params["id"])
        removed = remove_tag(doc.id, request.path_params["tag"], _actor(request, role))
        doc.reload()
        return {"tags": list(doc.tags), "removed": removed}

    return JSONResponse(await run_in_threadpool(apply))


# ---- tag rules -------------------------------------------------------------------------------

def _rule_json(rule: TagRule) -> dict:
    return {"id": str(rule.id), "name": rule.name, "tag": rule.tag, "match": rule.match,
            "enabled": rule.enabled}


async def list_rules(request: Request) -> JSONResponse:
    """
    summary: Auto-tagging rules
    responses: {200: {description: "{items}"}}
    """
    await _authorize(request, READERS)
    rules = await run_in_threadpool(lambda: list(TagRule.objects.order_by("name")))
    return JSONResponse({"items": [_rule_json(r) for r in rules], "next": None})


async def create_rule(request: Request) -> JSONResponse:
    """
    summary: Create an auto-tagging rule
    requestBody: {content: {application/json: {example: {name: "spring QR", tag:
      "campaign-2026-spring", match: {event: subscribe, event_key: campaign-2026-spring}}}}}
    responses: {201: {description: the rule}, 409: {description: name taken}}
    """
    role = await _authorize(request, EDITORS)
    data = await json_body(request)
    if not isinstance(data.get("name"), str) or not 0 < len(data["name"]) <= 100:
        raise BadRequest("name must be text of 1 to 100 characters", field="name")
    if not valid_tag(data.get("tag")):
        raise BadRequest("tag must be a tag name", field="tag")
    problem = validate_match(data.get("match"))
    if problem:
        raise BadRequest(problem, field="match")

    def save() -> TagRule:
        try:
            return TagRule(name=data["name"], tag=data["tag"], match=data["match"],
                           enabled=bool(data.get("enabled", True)),
                           created_by=_actor(request, role)).save()
        except NotUniqueError:
            raise Conflict(f"a rule named {data['name']!r} exists", field="name") from None

    return JSONResponse(_rule_json(await run_in_threadpool(save)), status_code=201)


async def delete_rule(request: Request) -> JSONResponse:
    """
    summary: Delete an auto-tagging rule (tags it applied stay)
    responses: {200: {description: deleted}}
    """
    await _authorize(request, EDITORS)
    rid = object_id(request.path_params["id"], "id")
    deleted = await run_in_threadpool(lambda: TagRule.objects(id=rid).delete())
    if not deleted:
        raise NotFound(f"no rule {rid}", code="unknown_rule")
    return JSONResponse({"deleted": str(rid)})


# ---- segments --------------------------------------------------------------------------------

def _compile(expression: Any) -> dict:
    if not isinstance(expression, str):
        raise BadRequest("expression must be text", field="expression")
    try:
        return compile_expression(expression).filter
    except SegmentSyntaxError as exc:
        raise HubError(exc.message, field="expression", code="segment_syntax",
                       status=400) from None


async def preview_segment(request: Request) -> JSONResponse:
    """
    summary: Count, a sample, and the count reachable per channel given consent
    requestBody: {content: {application/json: {example:
      {expression: 'tag:vip AND attr.city = "上海" AND consent:sms'}}}}
    responses: {200: {description: "{count, sample, reachable}"},
                400: {description: syntax error with position}}
    """
    await _authorize(request, READERS)
    data = await json_body(request)
    _compile(data.get("expression"))
    channels = sorted({adapter for adapter, _ in _hub(request).accounts})
    return JSONResponse(await run_in_threadpool(preview, data["expression"], channels))


def _segment_json(segment: Segment) -> dict:
    return {"id": str(segment.id), "name": segment.name, "expression": segment.expression,
            "created_by": segment.created_by, "created_at": serialize.iso(segment.created_at)}


async def save_segment(request: Request) -> JSONResponse:
    """
    summary: Save a segment
    requestBody: {content: {application/json: {example: {name: "上海 VIP", expression:
      'tag:vip AND attr.city = "上海"'}}}}
    responses: {201: {description: the segment}}
    """
    role = await _authorize(request, MARKETERS)
    data = await json_body(request)
    if not isinstance(data.get("name"), str) or not 0 < len(data["name"]) <= 200:
        raise BadRequest("name must be text of 1 to 200 characters", field="name")
    _compile(data.get("expression"))

    def save() -> Segment:
        try:
            return Segment(name=data["name"], expression=data["expression"],
                           created_by=_actor(request, role)).save()
        except NotUniqueError:
            raise Conflict(f"a segment named {data['name']!r} exists", field="name") from None

    return JSONResponse(_segment_json(await run_in_threadpool(save)), status_code=201)


async def list_segments(request: Request) -> JSONResponse:
    """
    summary: Saved segments
    responses: {200: {description: "{items}"}}
    """
    await _authorize(request, READERS)
    found = await run_in_threadpool(lambda: list(Segment.objects.order_by("name")))
    return JSONResponse({"items": [_segment_json(s) for s in found], "next": None})


def _segment(segment_id: str) -> Segment:
    return get_or_404(Segment, segment_id, "segment")


async def export_segment(request: Request) -> StreamingResponse:
    """
    summary: Export a saved segment as CSV or JSON lines, streamed
    parameters: [{name: format, in: query, description: "csv (default) or jsonl"}]
    responses: {200: {description: the rows}}
    """
    await _authorize(request, MARKETERS)
    fmt = request.query_params.get("format", "csv")
    if fmt not in ("csv", "jsonl"):
        raise BadRequest("format must be csv or jsonl", field="format")
    segment = await run_in_threadpool(_segment, request.path_params["id"])
    _compile(segment.expression)
    compiled = compile_expression(segment.expression)
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    filename = f"segment-{segment.id}.{fmt}"
    rows = export_rows(compiled.filter, compiled.hint)
    return StreamingResponse((text for text, _ in render(rows, fmt)),
                             media_type=media,
                             headers={"Content-Disposition": f"attachment; filename={filename}"})


async def bulk_tag_segment(request: Request) -> JSONResponse:
    """
    summary: Add or remove tags on every customer of a segment, as a background job
    requestBody: {content: {application/json: {example: {add: ["spring-2026"], remove: []}}}}
    responses: {202: {description: "{job_id}; follow it at /v1/jobs/{job_id}"}}
    """
    role = await _authorize(request, MARKETERS)
    data = await json_body(request)
    add, remove = data.get("add") or [], data.get("remove") or []
    if not isinstance(add, list) or not isinstance(remove, list) or not (add or remove) or \
            not all(valid_tag(t) for t in add + remove):
        raise BadRequest("give add and/or remove as lists of tag names", field="add")
    segment = await run_in_threadpool(_segment, request.path_params["id"])
    total = await run_in_threadpool(
        lambda: Customer._get_collection().count_documents(_compile(segment.expression)))
    job = await run_in_threadpool(lambda: Job(kind="bulk_tag", total=total, detail={
        "segment_id": str(segment.id), "add": add, "remove": remove,
        "actor": _actor(request, role)}).save())
    await _hub(request).enqueue("bulk_tag", str(job.id), job_id=f"bulk_tag:{job.id}")
    return JSONResponse({"job_id": str(job.id), "total": total}, status_code=202)


async def get_job(request: Request) -> JSONResponse:
    """
    summary: Progress of a background job
    responses: {200: {description: "{status, total, done}"}}
    """
    await _authorize(request, READERS)
    jid = object_id(request.path_params["id"], "id")
    job = await run_in_threadpool(Job.objects(id=jid).first)
    if job is None:
        raise NotFound(f"no job {jid}", code="unknown_job")
    return JSONResponse({"id": str(job.id), "kind": job.kind, "status": job.status,
                         "total": job.total, "done": job.done,
                         "finished_at": serialize.iso(job.finished_at)})


# ---- handoffs -------------------------------------------------------------------------------

async def create_handoff(request: Request) -> JSONResponse:
    """
    summary: An app hands its user to another channel with where they stopped
    requestBody: {content: {application/json: {example: {customer: {app_user_id: "u-42",
      phone: "+8613800138000"}, context: {screen: loan_form, step: 3, order: "20261124"},
      channels: [wechat, sms], ttl_s: 1800}}}}
    responses: {201: {description: "{token, code, expires_at, wechat_scene, deep_links}"}}
    """
    await _authorize(request, ("app",))
    data = await json_body(request)
    person = data.get("customer")
    if not isinstance(person, dict) or not isinstance(person.get("app_user_id"), str) or \
            not 0 < len(person["app_user_id"]) <= 256:
        raise BadRequest("customer.app_user_id is required", field="customer.app_user_id")
    context = data.get("context") or {}
    if not isinstance(context, dict):
        raise BadRequest("context must be an object", field="context")
    check_attributes(context, "context")
    if len(json.dumps(context, ensure_ascii=False).encode()) > handoff.MAX_CONTEXT_BYTES:
        raise BadRequest(f"context is larger than {handoff.MAX_CONTEXT_BYTES} bytes",
                         field="context")
    ttl = data.get("ttl_s", handoff.DEFAULT_TTL_S)
    if not isinstance(ttl, int) or not 60 <= ttl <= handoff.MAX_TTL_S:
        raise BadRequest(f"ttl_s must be 60 to {handoff.MAX_TTL_S} seconds", field="ttl_s")
    hub = _hub(request)
    configured = sorted({adapter for adapter, _ in hub.accounts})
    channels = data.get("channels") or configured
    if not isinstance(channels, list) or any(c not in configured for c in channels):
        raise BadRequest(f"channels must be among the configured ones: {', '.join(configured)}",
                         field="channels")
    phone = _e164(person["phone"]) if person.get("phone") else None
    email = str(person["email"]).strip().lower() if person.get("email") else None
    if email is not None and "@" not in email:
        raise BadRequest("customer.email is not an email address", field="customer.email")

    def make() -> dict:
        customer_id = handoff.app_customer(person["app_user_id"])
        created = handoff.create(customer_id, person["app_user_id"], context, channels, ttl,
                                 phone, email)
        links: dict[str, str] = {}
        for (adapter, _), account in sorted(hub.accounts.items()):
            if adapter in channels:
                link = account.adapter.handoff_link(account, created.token, created.code)
                if link:
                    links.setdefault(adapter, link)
        return handoff.handoff_json(created, links)

    return JSONResponse(await run_in_threadpool(make), status_code=201)


ROUTES = [
    Route("/v1/handoffs", create_handoff, methods=["POST"]),
    Route("/v1/customers/merge", merge_customers, methods=["POST"]),
    Route("/v1/customers", find_customers, methods=["GET"]),
    Route("/v1/customers/{id}", patch_customer, methods=["PATCH"]),
    Route("/v1/customers/{id}/unmerge", unmerge_customer, methods=["POST"]),
    Route("/v1/customers/{id}/suggestions", suggestions, methods=["GET"]),
    Route("/v1/customers/{id}/merges", merges_of, methods=["GET"]),
    Route("/v1/customers/{id}/timeline", timeline, methods=["GET"]),
    Route("/v1/customers/{id}/tags", tag_customer, methods=["POST"]),
    Route("/v1/customers/{id}/tags/{tag}", untag_customer, methods=["DELETE"]),
    Route("/v1/tags", list_tags, methods=["GET"]),
    Route("/v1/tags", define_tag, methods=["POST"]),
    Route("/v1/tag-rules", list_rules, methods=["GET"]),
    Route("/v1/tag-rules", create_rule, methods=["POST"]),
    Route("/v1/tag-rules/{id}", delete_rule, methods=["DELETE"]),
    Route("/v1/segments", list_segments, methods=["GET"]),
    Route("/v1/segments", save_segment, methods=["POST"]),
    Route("/v1/segments/preview", preview_segment, methods=["POST"]),
    Route("/v1/segments/{id}/export", export_segment, methods=["GET"]),
    Route("/v1/segments/{id}/tags", bulk_tag_segment, methods=["POST"]),
    Route("/v1/jobs/{id}", get_job, methods=["GET"]),
]
