"""The terminology index: one SQLite file with concepts, designations, FTS5 and sqlite-vec tables.

Every change builds a new file next to the live one and swaps it in with ``os.replace``: a
failed or interrupted import (bad row, wrong format, truncated file, Ctrl-C) leaves the
previous index untouched. Re-importing a code system replaces it (imports are idempotent).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from terminology.embed import Embedder
from terminology.importers import Importer
from terminology.model import ConceptRow, TerminologyImportError
from terminology.sqlite_driver import connect

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS code_system (
    system TEXT PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, licence TEXT NOT NULL,
    source TEXT NOT NULL, concepts INTEGER NOT NULL, imported_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS concept (
    id INTEGER PRIMARY KEY, system TEXT NOT NULL, code TEXT NOT NULL, display TEXT,
    semantic_type TEXT, UNIQUE (system, code)
);
CREATE TABLE IF NOT EXISTS designation (
    id INTEGER PRIMARY KEY, concept_id INTEGER NOT NULL REFERENCES concept(id) ON DELETE CASCADE,
    term TEXT NOT NULL, kind TEXT NOT NULL, embedded INTEGER NOT NULL DEFAULT 0, UNIQUE (concept_id, term)
);
CREATE INDEX IF NOT EXISTS designation_unembedded ON designation (embedded) WHERE embedded = 0;
CREATE INDEX IF NOT EXISTS designation_term ON designation (term COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS index_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS designation_fts USING fts5(
    term, content='designation', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
"""
Progress = Callable[[str, int, int], None]  # (phase, done, total)


def load_vec(db: Any) -> None:
    import sqlite_vec

    db.enable_load_extension(True)
    sqlite_vec.load(db)
    db.enable_load_extension(False)


def open_index(path: Path, *, readonly: bool = False) -> Any:
    db = connect(path, readonly=readonly)
    load_vec(db)
    if not readonly:
        db.execute("PRAGMA journal_mode=DELETE")  # a single file to swap atomically
        db.execute("PRAGMA foreign_keys=ON")
    return db


def _create(db: Any, dimensions: int) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS designation_vec USING vec0("
        f"embedding float[{int(dimensions)}] distance_metric=cosine, system text, semantic_type text)"
    )


def _remove_abandoned_builds(path: Path) -> None:
    """Delete half-built files left by builds that were killed (their process no longer exists)."""
    for leftover in path.parent.glob(f".{path.name}.*.building"):
        pid = leftover.name.removeprefix(f".{path.name}.").removesuffix(".building")
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            leftover.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            continue


class IndexWriter:
    """Writes one new version of the index file; ``commit`` swaps it in."""

    def __init__(self, path: Path, embedder: Embedder, *, fresh: bool = False) -> None:
        self.path = path
        self.embedder = embedder
        self.staging = path.with_name(f".{path.name}.{os.getpid()}.building")
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_builds(path)
        self.staging.unlink(missing_ok=True)
        if path.exists() and not fresh:
            shutil.copyfile(path, self.staging)
        self.db = open_index(self.staging)
        _create(self.db, embedder.dimensions)
        stored = self.db.execute("SELECT value FROM index_meta WHERE key = 'embedder'").fetchone()
        if stored and stored[0] != embedder.name:
            raise TerminologyImportError(
                str(path), None, f"index was built with embedder {stored[0]}, not {embedder.name}"
            )
        self.db.execute("INSERT OR REPLACE INTO index_meta (key, value) VALUES ('embedder', ?)", (embedder.name,))

    def import_system(self, importer: Importer, progress: Progress | None = None) -> int:
        """Replace the importer's code system with its rows; return the number of concepts."""
        info = importer.info
        db = self.db
        db.execute("BEGIN")
        try:
            old = [
                row[0]
                for row in db.execute(
                    "SELECT d.id FROM designation d JOIN concept c ON c.id = d.concept_id WHERE c.system = ?",
                    (info.system,),
                )
            ]
            for start in range(0, len(old), 500):
                chunk = old[start : start + 500]
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM designation_vec WHERE rowid IN ({marks})", chunk)
                db.executemany(
                    "INSERT INTO designation_fts (designation_fts, rowid, term) "
                    "SELECT 'delete', id, term FROM designation WHERE id = ?",
                    [(i,) for i in chunk],
                )
            db.execute(
                "DELETE FROM designation WHERE concept_id IN (SELECT id FROM concept WHERE system = ?)", (info.system,)
            )
            db.execute("DELETE FROM concept WHERE system = ?", (info.system,))
            count = 0
            for row in importer.rows():
                count += self._add(info.system, row)
                if progress and count % 5000 == 0:
                    progress(f"import {info.name}", count, 0)
            concepts = db.execute("SELECT COUNT(*) FROM concept WHERE system = ?", (info.system,)).fetchone()[0]
            if concepts == 0:
                raise TerminologyImportError(info.source, None, "no concepts found")
            db.execute(
                "UPDATE concept SET display = (SELECT term FROM designation WHERE concept_id = concept.id "
                "ORDER BY kind = 'preferred' DESC, id LIMIT 1) WHERE system = ? AND display IS NULL",
                (info.system,),
            )
            db.execute(
                "INSERT OR REPLACE INTO code_system (system, name, version, licence, source, concepts, imported_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    info.system,
                    info.name,
                    info.version,
                    info.licence,
                    info.source,
                    concepts,
                    dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                ),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(concepts)

    def _add(self, system: str, row: ConceptRow) -> int:
        db = self.db
        cursor = db.execute(
            "INSERT INTO concept (system, code, display, semantic_type) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (system, code) DO UPDATE SET"
            " display = COALESCE(excluded.display, concept.display),"
            " semantic_type = COALESCE(concept.semantic_type, excluded.semantic_type)"
            " RETURNING id, (SELECT COUNT(*) FROM designation WHERE concept_id = concept.id)",
            (system, row.code, row.display, row.semantic_type),
        )
        concept_id, existing = cursor.fetchone()
        for term, kind in row.designations:
            term = " ".join(term.split())
            if not term:
                continue
            inserted = db.execute(
                "INSERT OR IGNORE INTO designation (concept_id, term, kind) VALUES (?, ?, ?) RETURNING id",
                (concept_id, term, kind),
            ).fetchone()
            if inserted is not None:
                db.execute("INSERT INTO designation_fts (rowid, term) VALUES (?, ?)", (inserted[0], term))
        return 1 if existing == 0 else 0

    def embed_pending(self, progress: Progress | None = None, batch: int = 512) -> int:
        """Embed every designation not embedded yet, in batches; returns how many."""
        db = self.db
        total = db.execute("SELECT COUNT(*) FROM designation WHERE embedded = 0").fetchone()[0]
        done = 0
        while True:
            rows = db.execute(
                "SELECT d.id, d.term, c.system, COALESCE(c.semantic_type, 'other') FROM designation d"
                " JOIN concept c ON c.id = d.concept_id WHERE d.embedded = 0 LIMIT ?",
                (batch,),
            ).fetchall()
            if not rows:
                return int(done)
            vectors = self.embedder.embed([r[1] for r in rows])
            db.execute("BEGIN")
            db.executemany(
                "INSERT OR REPLACE INTO designation_vec (rowid, embedding, system, semantic_type) VALUES (?, ?, ?, ?)",
                [
                    (r[0], np.asarray(v, dtype=np.float32).tobytes(), r[2], r[3])
                    for r, v in zip(rows, vectors, strict=True)
                ],
            )
            db.executemany("UPDATE designation SET embedded = 1 WHERE id = ?", [(r[0],) for r in rows])
            db.execute("COMMIT")
            done += len(rows)
            if progress:
                progress("embed", done, total)

    def commit(self) -> None:
        self.db.execute("INSERT INTO designation_fts (designation_fts) VALUES ('optimize')")
        self.db.close()
        os.replace(self.staging, self.path)

    def abort(self) -> None:
        self.db.close()
        self.staging.unlink(missing_ok=True)


def build_index(
    path: Path,
    embedder: Embedder,
    importers: Iterable[Importer],
    *,
    fresh: bool = False,
    progress: Progress | None = None,
    meta: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Import each code system and embed its designations, then swap the new index in (with
    ``meta`` written to its ``index_meta``)."""
    writer = IndexWriter(path, embedder, fresh=fresh)
    try:
        counts = {importer.info.name: writer.import_system(importer, progress) for importer in importers}
        writer.embed_pending(progress)
        writer.db.executemany("INSERT OR REPLACE INTO index_meta (key, value) VALUES (?, ?)", (meta or {}).items())
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    return counts


# What the built-in importers yield, as a number raised whenever it changes, so that an index
# built by an older paperchart can say what `paperchart terminology build` would add to it.
# 2: ICD-10-CM names from the tabular's Includes and Excludes notes.
# 3: a name that notes point at several codes names none of them ("herpes zoster", "tuberculosis"),
#    and a category with no "unspecified" code puts its own names at its "without complications"
#    one ("shingles" at B02.9).
# 4: a category's default leaf is also its title with an axis left open ("... of unspecified lower
#    extremity": "Deep vein thrombosis NOS" at I82.409) or its "uncomplicated" code; the synonym in
#    a category title's brackets names it ("chickenpox" at B01.9); a name read in context goes to
#    a category pointer only if that category holds all its codes ("syphilis" no longer at A52.10).
# 5: a billable code's title's bracketed synonym names it ("common cold" at J00), brackets that
#    qualify ("[any part, except ear drum]") name nothing; notes that point a name at different
#    categories name none of them ("rheumatoid arthritis"), and a note of one qualifying word
#    ("chlamydial", "larynx") names nothing.
# 6: a category whose one child is its title with "without ..." added and no "with" has that child
#    as its default leaf ("hiatus hernia" of K44 at K44.9 "... without obstruction or gangrene",
#    "Raynaud's disease" of I73.0 at I73.00 "... without gangrene").
# 7: UCUM's inch ([in_i]), in which US notes give a height, and the units of US and renal reports
#    (meq/L, pg/mL, ng/dL, ng/L, ug/L, mm/h, mg/mmol, mL/min/{1.73_m2}, {INR}); 42 more LOINC lab
#    tests (chloride, bicarbonate, liver function, lipids, full blood count, thyroid, INR, cardiac).
BUILTIN_CONTENT: Final = 7
BUILTIN_CONTENT_KEY: Final = "builtin_content"


def builtin_sources() -> frozenset[str]:
    """The ``source`` the built-in importers record for their code systems."""
    return frozenset(importer.info.source for importer in builtin_importers())


def builtin_importers(*, icd_prefixes: tuple[str, ...] = (), snomed_limit: int | None = None) -> list[Importer]:
    """What ``paperchart terminology build`` loads: only what may be redistributed."""
    from terminology.importers.builtin import LoincBuiltinImporter, UcumBuiltinImporter
    from terminology.importers.icd10cm import Icd10cmBuiltinImporter
    from terminology.importers.snomed import SnomedGpsImporter

    return [
        Icd10cmBuiltinImporter(prefixes=icd_prefixes),
        SnomedGpsImporter(limit=snomed_limit),
        LoincBuiltinImporter(),
        UcumBuiltinImporter(),
    ]
