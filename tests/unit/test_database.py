"""Group commit: callers share one durable COMMIT; a failure stays with its own caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from server.store.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS child (
    id INTEGER PRIMARY KEY,
    parent_id INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED
)
"""


class Counting(Database):
    """A database that counts the COMMITs it issues."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SCHEMA, pragmas=("foreign_keys=ON",))
        self.commits = 0
        self._db.set_trace_callback(self._trace)

    def _trace(self, statement: str) -> None:
        self.commits += statement.strip().upper() == "COMMIT"

    def insert(self, table: str, row_id: int) -> Callable[[], int]:
        def work() -> int:
            with self.transaction() as db:
                if table == "child":
                    db.execute("INSERT INTO child (id, parent_id) VALUES (?, ?)", (row_id, row_id))
                else:
                    db.execute("INSERT INTO parent (id) VALUES (?)", (row_id,))
            return row_id

        return work

    def ids(self, table: str) -> list[int]:
        return [r[0] for r in self.query(f"SELECT id FROM {table} ORDER BY id")]  # noqa: S608


def run_together(db: Counting, works: list[Callable[[], int]]) -> list[int | BaseException]:
    """Call ``batched`` from one thread per work; the first work waits until the others are queued."""
    results: list[int | BaseException] = [0] * len(works)
    started, queued = threading.Event(), threading.Event()
    first = works[0]

    def held() -> int:
        started.set()  # its group is taken: whoever comes now waits for the next one
        queued.wait(10)
        return first()

    def call(i: int, work: Callable[[], int]) -> None:
        try:
            results[i] = db.batched(work)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(0, held))]
    threads[0].start()
    assert started.wait(10)
    threads += [threading.Thread(target=call, args=(i, w)) for i, w in enumerate(works[1:], start=1)]
    for thread in threads[1:]:
        thread.start()
    while len(db._queue) < len(works) - 1:
        time.sleep(0.001)
    queued.set()
    for thread in threads:
        thread.join(10)
    return results


def test_callers_waiting_together_share_one_commit_and_a_failure_stays_with_its_caller(tmp_path: Path) -> None:
    db = Counting(tmp_path / "group.db")
    works = [db.insert("parent", i) for i in range(1, 8)]
    works.insert(3, db.insert("parent", 2))  # a duplicate key: this caller alone fails
    commits_before = db.commits
    results = run_together(db, works)
    assert results[:3] + results[4:] == [1, 2, 3, 4, 5, 6, 7]
    assert isinstance(results[3], Exception) and "UNIQUE" in str(results[3])
    assert db.ids("parent") == [1, 2, 3, 4, 5, 6, 7]
    # the first caller committed alone; the seven that queued meanwhile, in one COMMIT
    assert db.commits - commits_before == 2


def test_a_failed_commit_fails_every_caller_of_the_group_and_stores_nothing(tmp_path: Path) -> None:
    db = Counting(tmp_path / "group.db")
    db.batched(db.insert("parent", 1))
    # a child without a parent passes its savepoint (the check is deferred) and fails the COMMIT
    works = [db.insert("parent", 10), db.insert("parent", 2), db.insert("child", 99), db.insert("parent", 3)]
    results = run_together(db, works)
    assert results[0] == 10  # committed alone, before the others queued
    assert all(isinstance(r, Exception) and "FOREIGN KEY" in str(r) for r in results[1:])
    assert db.ids("parent") == [1, 10] and db.ids("child") == []
    assert db.batched(db.insert("parent", 4)) == 4  # the connection is usable again
    assert db.ids("parent") == [1, 4, 10]


def test_a_caller_inside_a_transaction_joins_it(tmp_path: Path) -> None:
    db = Counting(tmp_path / "group.db")
    with pytest.raises(RuntimeError), db.transaction():
        db.batched(db.insert("parent", 1))
        raise RuntimeError("the outer transaction rolls back")
    assert db.ids("parent") == []


def test_a_caller_inside_a_transaction_has_its_own_savepoint(tmp_path: Path) -> None:
    db = Counting(tmp_path / "group.db")

    def fails() -> None:
        db.insert("parent", 2)()
        raise RuntimeError("only this caller's work is undone")

    with db.transaction():
        db.batched(db.insert("parent", 1))
        with pytest.raises(RuntimeError):
            db.batched(fails)
        db.batched(db.insert("parent", 3))
    assert db.ids("parent") == [1, 3] and db.commits == 1
