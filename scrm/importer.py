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
from pymongo.errors import BulkWriteError

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
    existing: dict[tuple[str, str], ObjectId] = {}
    for kind in IDENTIFIERS:  # one indexed query per kind; any channel's identity counts
        values = [row.identifiers[kind] for row in rows if kind in row.identifiers]
        if values:
            for d in Identity._get_collection().find({kind: {"$in": values}},
                                                     {kind: 1, "customer_id": 1}):
                existing.setdefault((kind, d[kind]), d["customer_id"])
    ensure_tags(sorted({t for row in rows for t in row.tags}))
    new_customers, updates, new_identities = [], [], []
    for row in rows:
        known = next((existing[k] for k in row.identifiers.items() if k in existing), None)
        attributes = {f"attributes.{k}": v for k, v in row.attributes.items()}
        if known:
            report.updated += 1
            change: dict[str, Any] = {"$set": {"updated_at": now, **attributes}}
            if row.tags:
                change["$addToSet"] = {"tags": {"$each": row.tags}}
            if row.name:
                change["$set"]["display_name"] = row.name
            updates.append(UpdateOne({"_id": known}, change))
            customer_id = known
        else:
            report.created += 1
            customer_id = _stable_id(*next(iter(row.identifiers.items())))
            new_customers.append({
                "_id": customer_id, "display_name": row.name, "tags": row.tags,
                "attributes": row.attributes, "consent": {}, "opted_out": [], "channels": [],
                "context": {}, "attribute_history": [], "created_at": now, "updated_at": now})
        for kind, value in row.identifiers.items():
            if (kind, value) not in existing:
                existing[(kind, value)] = customer_id
                new_identities.append({**_key(kind, value), kind: value,
                                       "customer_id": customer_id, "verified": False,
                                       "source": "import", "created_at": now})
    # Customers first: a crash between the writes leaves no identity without its customer,
    # and the stable ids make the re-run's inserts of what already exists harmless.
    _insert_new(Customer._get_collection(), new_customers)
    if updates:
        Customer._get_collection().bulk_write(updates, ordered=False)
    _insert_new(Identity._get_collection(), new_identities)


def _insert_new(collection: Any, docs: list[dict]) -> None:
    """insert_many that skips documents a previous (interrupted) run already wrote."""
    if not docs:
        return
    try:
        collection.insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
            raise
