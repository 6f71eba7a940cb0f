"""Durable state: the ``Store`` protocol and its SQLite implementation."""

from server.store.base import (
    DocumentRecord,
    JobError,
    JobRecord,
    JobStatus,
    OwedResult,
    OwedResultState,
    ReviewAction,
    Store,
    StoredResource,
)
from server.store.sqlite import SqliteStore

__all__ = [
    "DocumentRecord",
    "JobError",
    "JobRecord",
    "JobStatus",
    "OwedResult",
    "OwedResultState",
    "ReviewAction",
    "SqliteStore",
    "Store",
    "StoredResource",
]
