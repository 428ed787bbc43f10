"""Customers from a CSV file: one row per person, deduplicated by identity, safe to re-run.

Columns (header row, any order): `name`, `phone`, `email`, `app_user_id` (at least one of
those three per row), `tags` (separated by ";" or ","), and `attr.<name>` for attributes.
A row whose customer already exists (by any of its identities) updates that customer. Each
new customer's id is derived from the row's first identity, so an import that crashed
half-way and is run again creates no duplicates.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers
from bson import ObjectId
from pymongo import UpdateOne

from scrm.models import Customer, Identity, utcnow
from scrm.tags import ensure_tags, valid_tag

BATCH = 500
IDENTIFIERS = ("phone", "email", "app_user_id")


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Row:
    line: int
    name: str | None
    identifiers: dict[str, str]
    tags: list[str]
    attributes: dict[str, Any]


def parse_row(line: int, raw: dict[str, str], region: str) -> Row:
    """Validate one CSV row; raises ValueError with what is wrong."""
    identifiers = {}
    phone = (raw.get("phone") or "").strip()
    if phone:
        try:
            number = phonenumbers.parse(phone, region)
        except phonenumbers.NumberParseException:
            raise ValueError(f"phone {phone!r} is not a phone number") from None
        if not phonenumbers.is_valid_number(number):
            raise ValueError(f"phone {phone!r} is not a valid number")
        identifiers["phone"] = phonenumbers.format_number(number,
                                                          phonenumbers.PhoneNumberFormat.E164)
    email = (raw.get("email") or "").strip().lower()
    if email:
        local, _, domain = email.partition("@")
        if not local or "." not in domain or " " in email:
            raise ValueError(f"email {email!r} is not an email address")
        identifiers["email"] = email
    app_user = (raw.get("app_user_id") or "").strip()
    if app_user:
        identifiers["app_user_id"] = app_user
    if not identifiers:
        raise ValueError("needs a phone, email or app_user_id")
    tags = [t.strip() for t in (raw.get("tags") or "").replace(",", ";").split(";") if t.strip()]
    bad_tag = next((t for t in tags if not valid_tag(t)), None)
    if bad_tag:
        raise ValueError(f"tag {bad_tag!r} is not a valid tag name")
    attributes = {k[5:]: v for k, v in raw.items()
                  if k and k.startswith("attr.") and v not in (None, "")}
    if any("." in k or "$" in k or not k for k in attributes):
        raise ValueError("attribute columns are attr.<name>, without '.' or '$' in the name")
    return Row(line, (raw.get("name") or "").strip() or None, identifiers, tags, attributes)


def _key(kind: str, value: str) -> dict[str, str]:
    return {"adapter": "profile", "account": kind, "external_user_id": value}


def _stable_id(kind: str, value: str) -> ObjectId:
    return ObjectId(hashlib.sha1(f"{kind}:{value}".encode()).digest()[:12])


def _rows(path: Path, region: str, report: ImportReport) -> Iterator[Row]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not set(IDENTIFIERS) & set(reader.fieldnames):
            raise ValueError("the header row must name at least one of phone, email, "
                             "app_user_id")
        for raw in reader:
            report.rows += 1
            try:
                yield parse_row(reader.line_num, raw, region)
            except ValueError as exc:
                report.bad.append((reader.line_num, str(exc)))


def import_csv(path: Path, region: str = "CN",
               progress: Callable[[int], None] = lambda n: None) -> ImportReport:
    report = ImportReport()
    batch: list[Row] = []
    for row in _rows(path, region, report):
        batch.append(row)
        if len(batch) >= BATCH:
            _write(batch, report)
            progress(report.rows)
            batch = []
    if batch:
        _write(batch, report)
    progress(report.rows)
    return report


def _write(rows: list[Row], report: ImportReport) -> None:
    now = utcnow()
    keys = [(kind, value) for row in rows for kind, value in row.identifiers.items()]
    existing = {(d["account"], d["external_user_id"]): d["customer_id"]
                for d in Identity._get_collection().find(
                    {"adapter": "profile", "$or": [_key(k, v) for k, v in keys]},
                    {"account": 1, "external_user_id": 1, "customer_id": 1})}
    ensure_tags(sorted({t for row in rows for t in row.tags}))
    customer_ops, identity_ops = [], []
    for row in rows:
        known = next((existing[k] for k in row.identifiers.items() if k in existing), None)
        first = next(iter(row.identifiers.items()))
        customer_id = known or _stable_id(*first)
        if known:
            report.updated += 1
        else:
            report.created += 1
        update: dict[str, Any] = {
            "$setOnInsert": {"created_at": now, "consent": {}, "opted_out": [], "channels": [],
                             "context": {}, "attribute_history": []},
            "$set": {"updated_at": now, **{f"attributes.{k}": v
                                           for k, v in row.attributes.items()}},
        }
        if row.tags:
            update["$addToSet"] = {"tags": {"$each": row.tags}}
        else:
            update["$setOnInsert"]["tags"] = []
        if row.name:
            update["$set"]["display_name"] = row.name
        customer_ops.append(UpdateOne({"_id": customer_id}, update, upsert=True))
        for kind, value in row.identifiers.items():
            existing.setdefault((kind, value), customer_id)
            identity_ops.append(UpdateOne(_key(kind, value), {"$setOnInsert": {
                **_key(kind, value), kind: value, "customer_id": customer_id,
                "verified": False, "source": "import", "created_at": now}}, upsert=True))
    # Customers first: a crash between the two writes leaves no identity without its customer.
    Customer._get_collection().bulk_write(customer_ops, ordered=False)
    Identity._get_collection().bulk_write(identity_ops, ordered=False)
