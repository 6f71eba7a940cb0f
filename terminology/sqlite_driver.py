"""The SQLite driver paperchart uses everywhere: one that can load extensions (sqlite-vec).

pyenv's CPython on our machines is built without ``enable_load_extension``; the
``pysqlite3-binary`` wheel bundles a recent SQLite that has it. Fall back to the stdlib module
where it can load extensions itself (e.g. Debian's python3).
"""

from __future__ import annotations

import sqlite3 as _stdlib_sqlite3
from pathlib import Path
from types import ModuleType
from typing import Any


def _driver() -> ModuleType:
    if hasattr(_stdlib_sqlite3.Connection, "enable_load_extension"):
        return _stdlib_sqlite3
    try:
        import pysqlite3.dbapi2 as pysqlite3  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - only on platforms without the wheel
        return _stdlib_sqlite3
    return pysqlite3  # type: ignore[no-any-return,unused-ignore]


sqlite3: Any = _driver()
Connection = Any  # the driver's Connection class; typed loosely as the two modules differ


def connect(path: Path | str, *, readonly: bool = False) -> Any:
    """A connection in autocommit mode (explicit BEGIN/COMMIT), usable from any thread."""
    if readonly:
        connection = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None, timeout=30
        )
    else:
        connection = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    return connection
