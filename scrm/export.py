"""Exporting the customers of a segment, streamed in constant memory."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime

from bson import ObjectId

from scrm.models import Customer, Identity


def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=UTC).isoformat() if value else None


EXPORT_FIELDS = ["id", "display_name", "phone", "email", "tags", "channels", "opted_out",
                 "attributes", "last_seen_at", "created_at"]


def export_rows(query: dict, hint: str | None = None, batch: int = 1000) -> Iterator[dict]:
    """Customers matching `query` with their phone and email: one pass, constant memory."""
    cursor = Customer._get_collection().find(query, batch_size=batch,
                                             **({"hint": hint} if hint else {}))
    while True:
        docs = [d for _, d in zip(range(batch), cursor, strict=False)]
        if not docs:
            return
        contact: dict[ObjectId, dict] = {}
        for ident in Identity._get_collection().find(
                {"customer_id": {"$in": [d["_id"] for d in docs]},
                 "$or": [{"phone": {"$ne": None}}, {"email": {"$ne": None}}]},
                {"customer_id": 1, "phone": 1, "email": 1}):
            found = contact.setdefault(ident["customer_id"], {})
            for key in ("phone", "email"):
                if ident.get(key):
                    found.setdefault(key, ident[key])
        for d in docs:
            yield {"id": str(d["_id"]), "display_name": d.get("display_name"),
                   "phone": contact.get(d["_id"], {}).get("phone"),
                   "email": contact.get(d["_id"], {}).get("email"),
                   "tags": d.get("tags", []), "channels": d.get("channels", []),
                   "opted_out": d.get("opted_out", []), "attributes": d.get("attributes", {}),
                   "last_seen_at": _iso(d.get("last_seen_at")),
                   "created_at": _iso(d.get("created_at"))}


def render(rows: Iterator[dict], fmt: str) -> Iterator[tuple[str, int]]:
    """Rows as CSV or JSON lines, in chunks of about 64 KiB: (text, rows in it)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS)
    if fmt == "csv":
        writer.writeheader()
    pending = 0
    for row in rows:
        if fmt == "jsonl":
            buffer.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            writer.writerow({**row, "tags": ";".join(row["tags"]),
                             "channels": ";".join(row["channels"]),
                             "opted_out": ";".join(row["opted_out"]),
                             "attributes": json.dumps(row["attributes"], ensure_ascii=False)})
        pending += 1
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue(), pending
            buffer.seek(0)
            buffer.truncate()
            pending = 0
    yield buffer.getvalue(), pending
