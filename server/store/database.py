"""One durable SQLite connection: WAL, ``synchronous=FULL``, a lock, nested transactions, group commit.

The store and the authorization registry keep their tables in the same database file through
their own ``Database``; the audit log works through the store's (so an audit record can commit
in the transaction of the writes it describes). This is the one place the connection settings
and the transaction discipline are written down.

Group commit (``batched``): with ``synchronous=FULL`` every COMMIT waits for the disk, which
costs more than the work of a small HL7 message. Callers that arrive while a commit is under way
queue up; the next of them commits the whole queue in one transaction, each caller's work in
its own savepoint (a failure undoes only that work), and every caller returns only once the
COMMIT holding its work is on disk. The connection lock is held from BEGIN to COMMIT, so no
other caller ever reads work that is not yet committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

from terminology.sqlite_driver import connect

T = TypeVar("T")
MAX_GROUP: Final = 64  # callers committed together at most: bounds the wait of the first


class _Caller:
    """One caller of ``batched``: its work, what came of it, and how it is woken."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False
        self.lead = False  # this caller's thread is to commit the next group
        self.wake = threading.Event()


class Database:
    """Thread-safe: one connection serialized by a lock; only the outermost transaction commits."""

    def __init__(self, path: Path, schema: str, *, pragmas: Sequence[str] = ()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._owner: int | None = None  # the thread whose transaction is open
        self._queue: list[_Caller] = []  # callers of ``batched`` waiting for a group
        self._queue_lock = threading.Lock()
        self._leading = False  # some caller is committing a group
        self._db = connect(path)
        # a commit is on disk when it returns: an ACK or a 201 sent after it survives a power cut
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000", *pragmas):
            self._db.execute(f"PRAGMA {pragma}")
        with self.transaction() as db:
            self._before_schema(db)
        self.apply_schema(schema)

    def apply_schema(self, schema: str) -> None:
        """Run idempotent DDL (``CREATE ... IF NOT EXISTS``), statements ended by ``;`` and a newline."""
        with self.transaction() as db:
            # executescript() would commit on its own; run the statements inside our transaction
            for statement in schema.split(";\n"):
                if statement.strip():
                    db.execute(statement)

    def _before_schema(self, db: Any) -> None:
        """Hook for checks that must run before the schema is applied (e.g. its version)."""

    def _after_rollback(self) -> None:
        """Hook to drop in-memory state that described work just rolled back (e.g. caches)."""

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._lock:
            if self._depth:  # joined an outer transaction: it commits or rolls back for us
                self._depth += 1
                try:
                    yield self._db
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth, self._owner = 1, threading.get_ident()
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                self._after_rollback()
                raise
            else:
                try:
                    self._db.execute("COMMIT")
                except BaseException:  # e.g. a deferred constraint: SQLite leaves the transaction open
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    self._after_rollback()
                    raise
            finally:
                self._depth, self._owner = 0, None

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        """Inside a transaction: undo only what the block did if it raises."""
        self._db.execute("SAVEPOINT work")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO work")
            self._db.execute("RELEASE work")
            self._after_rollback()
            raise
        self._db.execute("RELEASE work")

    def batched(self, work: Callable[[], T]) -> T:
        """Run ``work`` in a transaction, committed together with other callers' (group commit).

        Returns ``work``'s result, or raises its exception, only after the COMMIT that holds it
        is durable (or raises the COMMIT's error: then nothing of the group was stored). A
        caller already inside a transaction runs ``work`` in it, in a savepoint of its own: what
        ``work`` wrote is undone if it raises, and committed with the rest if not.
        """
        if self._owner == threading.get_ident():
            with self._savepoint():
                return work()
        caller = _Caller(work)
        with self._queue_lock:
            self._queue.append(caller)
            if not self._leading:
                self._leading = caller.lead = True
        while not caller.finished:
            if caller.lead:
                caller.lead = False
                self._commit_group()
            else:
                caller.wake.wait()
                caller.wake.clear()
        if caller.error is not None:
            raise caller.error
        return caller.result  # type: ignore[no-any-return]

    def _commit_group(self) -> None:
        with self._queue_lock:
            group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
        try:
            with self.transaction():
                for caller in group:
                    try:
                        with self._savepoint():
                            caller.result = caller.work()
                    except Exception as exc:  # handed to its own caller, raised there
                        caller.error = exc
        except BaseException as exc:  # the COMMIT (or BEGIN) failed: none of the group is stored
            for caller in group:
                if caller.error is None:
                    caller.error = exc
        finally:
            with self._queue_lock:
                if self._queue:  # the first caller still waiting commits the next group
                    self._queue[0].lead = True
                    self._queue[0].wake.set()
                else:
                    self._leading = False
            for caller in group:
                caller.finished = True
                caller.wake.set()

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """The connection, for several reads in a row: no other caller of this Database writes meanwhile."""
        with self._lock:
            yield self._db

    def query(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return list(self._db.execute(sql, parameters).fetchall())
