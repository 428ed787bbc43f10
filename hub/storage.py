"""Connecting mongoengine to the configured (or embedded) database."""

from __future__ import annotations

from mongoengine import Document, connect, disconnect
from mongoengine.connection import get_db
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from hub.errors import Unavailable
from hub.models import DOCUMENTS
from scrm.models import DOCUMENTS as SCRM_DOCUMENTS

ALL_DOCUMENTS: tuple[type[Document], ...] = (*SCRM_DOCUMENTS, *DOCUMENTS)


def open_storage(uri: str, database: str, timeout_ms: int = 3000) -> None:
    """(Re)connect the default mongoengine alias and make sure every index exists."""
    disconnect()
    for doc in ALL_DOCUMENTS:
        doc._collection = None  # mongoengine caches the collection of the previous database
    connect(db=database, host=uri, serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms, socketTimeoutMS=max(timeout_ms, 10_000), tz_aware=False,
            uuidRepresentation="standard")
    for doc in ALL_DOCUMENTS:
        doc.ensure_indexes()


def close_storage() -> None:
    disconnect()


def ping() -> bool:
    try:
        get_db().command("ping")
        return True
    except PyMongoError:
        return False


STORAGE_ERRORS = (ConnectionFailure, OperationFailure)


def storage_unavailable(exc: Exception) -> Unavailable:
    return Unavailable("storage is unreachable; retry later", code="storage_unavailable")


__all__ = ["open_storage", "close_storage", "ping", "PyMongoError", "storage_unavailable"]
