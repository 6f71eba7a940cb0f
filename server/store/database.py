"""One durable SQLite connection: WAL, ``synchronous=FULL``, a lock, nested transactions.

The store, the authorization registry and the audit log each keep their tables in the same
database file through their own ``Database``; this is the one place the connection settings
and the transaction discipline are written down.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from terminology.sqlite_driver import connect


class Database:
    """Thread-safe: one connection serialized by a lock; only the outermost transaction commits."""

    def __init__(self, path: Path, schema: str, *, pragmas: Sequence[str] = ()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._db = connect(path)
        # a commit is on disk when it returns: an ACK or a 201 sent after it survives a power cut
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000", *pragmas):
            self._db.execute(f"PRAGMA {pragma}")
        with self._transaction() as db:
            self._before_schema(db)
            # executescript() would commit on its own; run the statements inside our transaction
            for statement in schema.split(";\n"):
                if statement.strip():
                    db.execute(statement)

    def _before_schema(self, db: Any) -> None:
        """Hook for checks that must run before the schema is applied (e.g. its version)."""

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._lock:
            if self._depth:  # joined an outer transaction: it commits or rolls back for us
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth = 0

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return list(self._db.execute(sql, parameters).fetchall())
