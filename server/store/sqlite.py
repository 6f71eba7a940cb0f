"""SQLite implementation of ``Store``: one WAL database file, durable commits, leased jobs.

- ``synchronous=FULL``: a commit is on disk when it returns, so an acknowledgement sent after
  it survives a power cut, not only a process crash.
- Encrypted at rest: DocumentReference JSON, document bytes and every stored FHIR resource are
  sealed with AES-256-GCM under a data key of their own document (or, for resources that come
  from no document, their patient); data keys are stored wrapped by the ``KeyProvider``'s master
  key. ``shred_document`` destroys a document's data key, and with it every copy of its data.
  Identifier values are kept only as keyed HMACs, so identifier search works without plaintext.
- Jobs are claimed with a lease; a worker that dies stops heart-beating, its lease expires and
  the next ``claim_job`` takes the job again (``attempts`` counts tries; past the limit the job
  fails). ``complete_job`` is fenced on the lease owner, and resource ids are derived from the
  job id, so a job finished twice still leaves exactly one Bundle.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from fhir_profiles.bundle import needs_review
from fhir_profiles.compartment import patient_of
from fhir_profiles.retract import mark_entered_in_error
from server.crypto import KeyProvider, KeyUnavailable, new_data_key, open_sealed, seal
from server.errors import ConfigurationError, Conflict
from server.store.base import (
    DocumentRecord,
    JobError,
    JobRecord,
    OwedResult,
    OwedResultState,
    ReviewAction,
    StoredResource,
)
from server.store.database import Database

# 3: jobs.needs_review, so that the review queue is found without opening every Bundle
SCHEMA_VERSION: Final = 3
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    id TEXT PRIMARY KEY,
    version_id INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    pages INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    patient_id TEXT,
    resource BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS documents_patient ON documents (patient_id);
CREATE TABLE IF NOT EXISTS data_keys (
    owner TEXT PRIMARY KEY,
    master_key_id TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    bundle_id TEXT NOT NULL,
    bundle_version INTEGER NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('released', 'returned')),
    reviewer TEXT NOT NULL,
    comment BLOB,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_document ON reviews (document_id, id);
CREATE TABLE IF NOT EXISTS page_images (
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    page INTEGER NOT NULL,
    image BLOB NOT NULL,
    PRIMARY KEY (document_id, page)
);
CREATE TABLE IF NOT EXISTS pseudonyms (
    pseudonym TEXT PRIMARY KEY,
    original BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS document_content (
    document_id TEXT PRIMARY KEY REFERENCES documents(id) ON DELETE CASCADE,
    content BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    document_id TEXT NOT NULL REFERENCES documents(id),
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    stage TEXT,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires_at REAL,
    bundle_id TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    -- 1: the job's Bundle carries the requires-review tag (not PHI; the review queue reads it)
    needs_review INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_claimable ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_document ON jobs (document_id);
CREATE TABLE IF NOT EXISTS resources (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id INTEGER NOT NULL,
    last_updated TEXT NOT NULL,
    patient_id TEXT,
    job_id TEXT,
    key_owner TEXT NOT NULL,
    current INTEGER NOT NULL DEFAULT 1,
    resource BLOB NOT NULL,
    PRIMARY KEY (resource_type, id, version_id)
);
-- current versions by type and patient, for search. Partial, so that a lookup by type and id
-- takes the primary key: the older index on (resource_type, current, patient_id) drew those
-- lookups into scanning every current resource of the type, slower with each new patient.
DROP INDEX IF EXISTS resources_current;
CREATE INDEX IF NOT EXISTS resources_current_by_patient ON resources (resource_type, patient_id) WHERE current = 1;
-- the versions sealed with one document's key: what shredding the document deletes, without
-- reading every resource while it holds the write lock
CREATE INDEX IF NOT EXISTS resources_owner ON resources (key_owner);
CREATE TABLE IF NOT EXISTS identifiers (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    system TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (resource_type, system, value, id)
);
CREATE INDEX IF NOT EXISTS identifiers_of ON identifiers (resource_type, id);
-- released results owed to the system that sent a document over HL7 (ORU^R01), until it acknowledges
CREATE TABLE IF NOT EXISTS hl7_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    bundle_id TEXT NOT NULL,
    receiver TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    ack_code TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS hl7_outbox_due ON hl7_outbox (status, next_attempt);
CREATE INDEX IF NOT EXISTS hl7_outbox_document ON hl7_outbox (document_id, status);
CREATE TABLE IF NOT EXISTS hl7_messages (
    sender TEXT NOT NULL,
    control_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    ack TEXT NOT NULL,
    document_id TEXT,
    PRIMARY KEY (sender, control_id)
);
-- who sent a document (results are owed to them): read at every release
CREATE INDEX IF NOT EXISTS hl7_messages_document ON hl7_messages (document_id, received_at)
"""
# the columns of a resource version, as ``SqliteStore._stored`` reads them
_STORED_ROW: Final = "SELECT resource_type, id, version_id, last_updated, key_owner, resource FROM resources"
_JOB_BY_ID: Final = (
    "SELECT id, document_id, status, attempts, stage, done, total, created_at, updated_at, bundle_id, error,"
    " lease_owner FROM jobs WHERE id = ?"
)
_ACTIVE_JOB_OF_DOCUMENT: Final = (
    "SELECT id, document_id, status, attempts, stage, done, total, created_at, updated_at, bundle_id, error,"
    " lease_owner FROM jobs WHERE document_id = ? AND status IN ('queued', 'running') ORDER BY created_at LIMIT 1"
)
_encoder = msgspec.json.Encoder()
_job_error_decoder = msgspec.json.Decoder(JobError)


def now_instant() -> str:
    """Current time as a FHIR instant (UTC, millisecond precision)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now_seconds() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if key != "meta"}


def _resource_place(resource_type: str, resource_id: str, version: int) -> str:
    """Associated data for a sealed resource version: the ciphertext opens only in its own row."""
    return f"resources/{resource_type}/{resource_id}/{version}"


class SqliteStore(Database):
    """``Store`` on one SQLite file. Thread-safe: one connection, serialized by a lock."""

    def __init__(self, path: Path, keys: KeyProvider, *, hl7_results: bool = False) -> None:
        """``hl7_results``: owe each released Bundle of a document that came over HL7 to its sender."""
        self._keys = keys
        self._hl7_results = hl7_results
        self._data_keys: dict[str, bytes] = {}  # owner -> unwrapped data key, for this process only
        # (type, id) -> the current version as this process last wrote or read it in put_resource
        self._put_versions: dict[tuple[str, str], StoredResource] = {}
        self._upgrading_from: int | None = None  # the schema version this start upgrades, if any
        # secure_delete: deleted rows (a shredded data key) are zeroed on disk
        super().__init__(path, _SCHEMA, pragmas=("foreign_keys=ON", "secure_delete=ON"))
        with self.transaction() as db:
            if db.execute("SELECT version FROM schema_version").fetchone() is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            try:
                self._index_key = self._data_key(db, "index")
            except KeyUnavailable:
                raise ConfigurationError(
                    "the master key does not open this database (wrong PAPERCHART_MASTER_KEY or key file)"
                ) from None
            if self._upgrading_from == 2:
                self._upgrade_from_version_2(db)

    def _after_rollback(self) -> None:
        # a data key created by the work rolled back is not in the database: never seal with it;
        # nor may a version written by that work be taken for the current one
        self._data_keys.clear()
        self._put_versions.clear()

    def _before_schema(self, db: Any) -> None:
        exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
        if exists.fetchone() is None:
            return
        row = db.execute("SELECT version FROM schema_version").fetchone()
        if row is not None and row[0] == 2:
            self._upgrading_from = 2  # upgraded once the master key is known to open the database
        elif row is not None and row[0] != SCHEMA_VERSION:
            raise ConfigurationError(
                f"the database has schema version {row[0]}, this paperchart needs {SCHEMA_VERSION}"
                " (version 1 predates encryption at rest: move the file aside and re-ingest)"
            )

    def _upgrade_from_version_2(self, db: Any) -> None:
        """Add jobs.needs_review and set it from each finished job's Bundle, in the transaction that
        opens the database (all or nothing: a crash leaves version 2, upgraded at the next start).
        A shredded document's Bundle is gone and waits for no one."""
        if db.execute("SELECT version FROM schema_version").fetchone()[0] != 2:
            return  # another process opening the same file upgraded it first
        db.execute("ALTER TABLE jobs ADD COLUMN needs_review INTEGER NOT NULL DEFAULT 0")
        jobs = db.execute("SELECT id, bundle_id FROM jobs WHERE status = 'succeeded' AND bundle_id IS NOT NULL")
        for job_id, bundle_id in jobs.fetchall():
            rows = db.execute(
                f"{_STORED_ROW} WHERE resource_type = 'Bundle' AND id = ? AND job_id = ? ORDER BY version_id LIMIT 1",
                (bundle_id, job_id),
            ).fetchall()
            try:
                flagged = bool(rows) and needs_review(self._stored(rows[0]).resource)
            except KeyUnavailable:
                flagged = False
            db.execute("UPDATE jobs SET needs_review = ? WHERE id = ?", (int(flagged), job_id))
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    # --- encryption at rest --------------------------------------------------------------

    def _data_key(self, db: Any, owner: str, *, create: bool = True, fresh: bool = False) -> bytes:
        """The owner's data key (created on first use); ``KeyUnavailable`` once it was shredded.
        ``fresh``: the owner was made just now (a new document's id), so it has no key yet."""
        key = self._data_keys.get(owner)
        if key is not None:
            return key
        row = (
            None
            if fresh
            else db.execute("SELECT master_key_id, wrapped_key FROM data_keys WHERE owner = ?", (owner,)).fetchone()
        )
        if row is not None:
            key = self._keys.unwrap(row[0], bytes(row[1]))
        elif create:
            key = new_data_key()
            master_key_id, wrapped = self._keys.wrap(key)
            db.execute(
                "INSERT INTO data_keys (owner, master_key_id, wrapped_key, created_at) VALUES (?, ?, ?, ?)",
                (owner, master_key_id, wrapped, now_instant()),
            )
        else:
            raise KeyUnavailable("the data key of this record was destroyed")
        if len(self._data_keys) > 4096:
            self._data_keys.clear()
        self._data_keys[owner] = key
        return key

    def _seal_json(self, db: Any, owner: str, where: str, value: dict[str, Any]) -> bytes:
        # msgspec reads and writes the same JSON as the stdlib, several times faster
        return seal(self._data_key(db, owner), _encoder.encode(value), where.encode())

    def _open_json(self, db: Any, owner: str, where: str, sealed: bytes) -> dict[str, Any]:
        opened = open_sealed(self._data_key(db, owner, create=False), sealed, where.encode())
        data: dict[str, Any] = msgspec.json.decode(opened)
        return data

    def _identifier_token(self, system: str, value: str) -> str:
        # HMAC, not a plain hash: identifiers (MRN, NHS number) are guessable, so a hash is not protection
        return hmac.new(self._index_key, f"{system}|{value}".encode(), hashlib.sha256).hexdigest()

    def _identifier_token_any(self, value: str) -> str:
        return hmac.new(self._index_key, f"*|{value}".encode(), hashlib.sha256).hexdigest()

    def deployment_secret(self, purpose: str) -> bytes:
        """A random 256-bit secret for this deployment (e.g. de-identification pseudonyms), kept wrapped."""
        owner = f"secret:{purpose}"
        cached = self._data_keys.get(owner)
        if cached is not None:  # no write transaction (and fsync) for a key already unwrapped
            return cached
        with self.transaction() as db:
            return self._data_key(db, owner)

    def remember_pseudonyms(self, issued: dict[str, str]) -> None:
        """Keep what each pseudonym stands for (sealed), for audited re-identification."""
        with self.transaction() as db:
            key = self._data_key(db, "pseudonyms")
            for pseudonym, original in issued.items():
                sealed = seal(key, original.encode(), f"pseudonyms/{pseudonym}".encode())
                db.execute("INSERT OR IGNORE INTO pseudonyms (pseudonym, original) VALUES (?, ?)", (pseudonym, sealed))

    def resolve_pseudonym(self, pseudonym: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT original FROM pseudonyms WHERE pseudonym = ?", (pseudonym,)).fetchone()
            if row is None:
                return None
            key = self._data_key(self._db, "pseudonyms", create=False)
        return open_sealed(key, bytes(row[0]), f"pseudonyms/{pseudonym}".encode()).decode()

    # --- human review -------------------------------------------------------------------

    def _bundle_version(self, db: Any, bundle_id: str) -> int:
        row = db.execute(
            "SELECT version_id FROM resources WHERE resource_type = 'Bundle' AND id = ? AND current = 1", (bundle_id,)
        ).fetchone()
        if row is None:
            raise KeyError(bundle_id)
        return int(row[0])

    def release_review(
        self, document_id: str, bundle_id: str, expected_version: int, resources: list[dict[str, Any]], reviewer: str
    ) -> int:
        owner = f"document:{document_id}"
        updated = now_instant()
        with self.transaction() as db:
            if self._bundle_version(db, bundle_id) != expected_version:
                raise Conflict("this document was changed by someone else since you opened it; reload it")
            job = db.execute(
                "SELECT job_id FROM resources WHERE resource_type = 'Bundle' AND id = ? AND current = 1", (bundle_id,)
            ).fetchone()
            for resource in resources:
                self._put_resource(db, resource, job[0] if job else None, updated, owner)
            version = self._bundle_version(db, bundle_id)
            db.execute(
                "INSERT INTO reviews (document_id, bundle_id, bundle_version, action, reviewer, at)"
                " VALUES (?, ?, ?, 'released', ?, ?)",
                (document_id, bundle_id, version, reviewer, updated),
            )
            self._owe_hl7_result(db, document_id, bundle_id, updated)
            return version

    def return_review(
        self, document_id: str, bundle_id: str, expected_version: int, reviewer: str, comment: str
    ) -> None:
        at = now_instant()
        with self.transaction() as db:
            if self._bundle_version(db, bundle_id) != expected_version:
                raise Conflict("this document was changed by someone else since you opened it; reload it")
            sealed = seal(self._data_key(db, f"document:{document_id}"), comment.encode(), b"reviews/comment")
            db.execute(
                "INSERT INTO reviews (document_id, bundle_id, bundle_version, action, reviewer, comment, at)"
                " VALUES (?, ?, ?, 'returned', ?, ?, ?)",
                (document_id, bundle_id, expected_version, reviewer, sealed, at),
            )

    def cache_page_image(self, document_id: str, page: int, png: bytes) -> None:
        """Keep a rendered page (sealed with the document's key, so shredding removes it too)."""
        with self.transaction() as db:
            sealed = seal(
                self._data_key(db, f"document:{document_id}"), png, f"page_images/{document_id}/{page}".encode()
            )
            db.execute(
                "INSERT OR REPLACE INTO page_images (document_id, page, image) VALUES (?, ?, ?)",
                (document_id, page, sealed),
            )

    def cached_page_image(self, document_id: str, page: int) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT image FROM page_images WHERE document_id = ? AND page = ?", (document_id, page)
            ).fetchone()
            if row is None:
                return None
            key = self._data_key(self._db, f"document:{document_id}", create=False)
        return open_sealed(key, bytes(row[0]), f"page_images/{document_id}/{page}".encode())

    def last_review(self, document_id: str) -> ReviewAction | None:
        with self._lock:
            row = self._db.execute(
                "SELECT bundle_id, bundle_version, action, reviewer, comment, at FROM reviews"
                " WHERE document_id = ? ORDER BY id DESC LIMIT 1",
                (document_id,),
            ).fetchone()
            if row is None:
                return None
            comment = None
            if row[4] is not None:
                key = self._data_key(self._db, f"document:{document_id}", create=False)
                comment = open_sealed(key, bytes(row[4]), b"reviews/comment").decode()
        return ReviewAction(
            document_id=document_id,
            bundle_id=row[0],
            bundle_version=row[1],
            action=row[2],
            reviewer=row[3],
            at=row[5],
            comment=comment,
        )

    def rewrap_data_keys(self) -> int:
        """Re-wrap every data key under the provider's current master key (master key rotation)."""
        with self.transaction() as db:
            rows = db.execute("SELECT owner, master_key_id, wrapped_key FROM data_keys").fetchall()
            for owner, master_key_id, wrapped in rows:
                new_master, new_wrapped = self._keys.wrap(self._keys.unwrap(master_key_id, bytes(wrapped)))
                db.execute(
                    "UPDATE data_keys SET master_key_id = ?, wrapped_key = ? WHERE owner = ?",
                    (new_master, new_wrapped, owner),
                )
            return len(rows)

    def shred_document(self, document_id: str) -> bool:
        """Delete a document and everything extracted from it, and destroy its data key.

        ``secure_delete`` zeroes the freed pages and the WAL is checkpointed and truncated, so the
        live files keep neither the data nor the key. Backups taken before still hold the wrapped
        key: keep them under a retention period, or use a ``KeyProvider`` whose keys live elsewhere.
        """
        owner = f"document:{document_id}"
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM documents WHERE id = ?", (document_id,)).fetchone() is None:
                return False
            db.execute(
                "DELETE FROM identifiers WHERE (resource_type, id) IN"
                " (SELECT resource_type, id FROM resources WHERE key_owner = ?)",
                (owner,),
            )
            touched = db.execute(
                "SELECT DISTINCT resource_type, id FROM resources WHERE key_owner = ?", (owner,)
            ).fetchall()
            db.execute("DELETE FROM resources WHERE key_owner = ?", (owner,))
            for resource_type, resource_id in touched:  # e.g. a Patient known before this document
                db.execute(
                    "UPDATE resources SET current = 1 WHERE resource_type = ? AND id = ? AND version_id ="
                    " (SELECT MAX(version_id) FROM resources WHERE resource_type = ? AND id = ?)",
                    (resource_type, resource_id, resource_type, resource_id),
                )
            db.execute("DELETE FROM identifiers WHERE resource_type = 'DocumentReference' AND id = ?", (document_id,))
            db.execute("DELETE FROM jobs WHERE document_id = ?", (document_id,))
            db.execute("DELETE FROM document_content WHERE document_id = ?", (document_id,))
            db.execute("DELETE FROM documents WHERE id = ?", (document_id,))
            db.execute("DELETE FROM data_keys WHERE owner = ?", (owner,))
            self._data_keys.pop(owner, None)
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return True

    def health(self) -> bool:
        try:
            return bool(self.query("SELECT 1")[0][0] == 1)
        except Exception:
            return False

    # --- documents ---------------------------------------------------------------------

    def create_document(
        self, resource: dict[str, Any], content: bytes, content_type: str, pages: int
    ) -> DocumentRecord:
        document_id = str(uuid.uuid4())
        created = now_instant()
        stored = {
            **resource,
            "id": document_id,
            "meta": {**resource.get("meta", {}), "versionId": "1", "lastUpdated": created},
        }
        content_hash = hashlib.sha256(content).hexdigest()
        record = DocumentRecord(
            id=document_id,
            version_id=1,
            content_type=content_type,
            content_hash=content_hash,
            size=len(content),
            pages=pages,
            created_at=created,
            resource=stored,
        )
        owner = f"document:{document_id}"
        with self.transaction() as db:
            self._data_key(db, owner, fresh=True)
            db.execute(
                "INSERT INTO documents (id, version_id, content_type, content_hash, size, pages, created_at,"
                " patient_id, resource) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    document_id,
                    1,
                    content_type,
                    content_hash,
                    len(content),
                    pages,
                    created,
                    patient_of(stored),
                    self._seal_json(db, owner, f"documents/{document_id}", stored),
                ),
            )
            sealed_content = seal(self._data_key(db, owner), content, f"document_content/{document_id}".encode())
            db.execute(
                "INSERT INTO document_content (document_id, content) VALUES (?, ?)", (document_id, sealed_content)
            )
            self._index_identifiers(db, stored, fresh=True)
        return record

    def update_document(self, document_id: str, resource: dict[str, Any]) -> DocumentRecord:
        """Store a new version of a DocumentReference's metadata (its bytes never change)."""
        with self.transaction() as db:
            row = db.execute("SELECT version_id FROM documents WHERE id = ?", (document_id,)).fetchone()
            if row is None:
                raise KeyError(document_id)
            version = row[0] + 1
            updated = now_instant()
            stored = {
                **resource,
                "id": document_id,
                "meta": {**resource.get("meta", {}), "versionId": str(version), "lastUpdated": updated},
            }
            db.execute(
                "UPDATE documents SET version_id = ?, patient_id = ?, resource = ? WHERE id = ?",
                (
                    version,
                    patient_of(stored),
                    self._seal_json(db, f"document:{document_id}", f"documents/{document_id}", stored),
                    document_id,
                ),
            )
            self._index_identifiers(db, stored)
        record = self.get_document(document_id)
        if record is None:  # pragma: no cover - written in the transaction above
            raise KeyError(document_id)
        return record

    def _index_identifiers(self, db: Any, resource: dict[str, Any], *, fresh: bool = False) -> None:
        """Index the resource's identifiers in place of its older version's (``fresh``: it has none)."""
        resource_type, resource_id = resource["resourceType"], resource["id"]
        if not fresh:
            db.execute("DELETE FROM identifiers WHERE resource_type = ? AND id = ?", (resource_type, resource_id))
        identifiers = list(resource.get("identifier", []))
        if isinstance(resource.get("masterIdentifier"), dict):
            identifiers.append(resource["masterIdentifier"])
        for identifier in identifiers:
            value = identifier.get("value")
            if value:
                system = identifier.get("system", "")
                for token_system, token in (
                    (system, self._identifier_token(system, value)),
                    ("*", self._identifier_token_any(value)),
                ):
                    db.execute(
                        "INSERT OR IGNORE INTO identifiers (resource_type, id, system, value) VALUES (?, ?, ?, ?)",
                        (resource_type, resource_id, token_system, token),
                    )

    def find_by_identifier(self, resource_type: str, system: str | None, value: str) -> list[str]:
        """Ids of current resources (or documents) of the type with that identifier; any system if None."""
        token_system, token = (
            ("*", self._identifier_token_any(value))
            if system is None
            else (
                system,
                self._identifier_token(system, value),
            )
        )
        rows = self.query(
            "SELECT id FROM identifiers WHERE resource_type = ? AND system = ? AND value = ? ORDER BY id",
            (resource_type, token_system, token),
        )
        return [row[0] for row in rows]

    def search_documents(
        self, *, patient: str | None = None, ids: Sequence[str] = (), count: int = 50, offset: int = 0
    ) -> tuple[list[DocumentRecord], int]:
        where, parameters = ["1 = 1"], []
        if patient is not None:
            where.append("patient_id = ?")
            parameters.append(patient)
        if ids:
            where.append(f"id IN ({', '.join('?' for _ in ids)})")
            parameters.extend(ids)
        clause = " AND ".join(where)
        total = self.query(f"SELECT COUNT(*) FROM documents WHERE {clause}", parameters)[0][0]
        ids_found = [
            r[0]
            for r in self.query(
                f"SELECT id FROM documents WHERE {clause} ORDER BY created_at, id LIMIT ? OFFSET ?",
                [*parameters, count, offset],
            )
        ]
        records = [self.get_document(i) for i in ids_found]
        return [r for r in records if r is not None], int(total)

    # --- HL7 v2 message log (idempotent receipt) ----------------------------------------

    def hl7_ack(self, sender: str, control_id: str) -> str | None:
        rows = self.query("SELECT ack FROM hl7_messages WHERE sender = ? AND control_id = ?", (sender, control_id))
        return str(rows[0][0]) if rows else None

    def record_hl7(self, sender: str, control_id: str, ack: str, document_id: str | None) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO hl7_messages (sender, control_id, received_at, ack, document_id) VALUES (?, ?, ?, ?, ?)",
                (sender, control_id, now_instant(), ack, document_id),
            )

    def put_resource(self, resource: dict[str, Any]) -> StoredResource:
        """Create or version a FHIR resource outside a job (e.g. a Patient from an HL7 PID). A resource
        the same as its current version (every message about a patient repeats its PID) is left as it is.

        The current version is known without decrypting it when this process wrote or read it last:
        its version number and time, read from the row, say whether anyone wrote it since."""
        key = (resource["resourceType"], resource["id"])
        with self.transaction() as db:
            row = db.execute(
                "SELECT version_id, last_updated FROM resources WHERE resource_type = ? AND id = ? AND current = 1",
                key,
            ).fetchone()
            current = self._put_versions.get(key)
            if row is None:
                current = None
            elif current is None or (current.version_id, current.last_updated) != tuple(row):
                current = self.read_resource(*key)
            if current is None or _without_meta(current.resource) != _without_meta(resource):
                current = self._put_resource(db, resource, None, now_instant(), self._owner_of(resource))
            if len(self._put_versions) >= 4096:
                self._put_versions.clear()
            self._put_versions[key] = current
            return current

    def retract_document_results(self, document_id: str) -> int:
        """Mark every resource extracted from the document entered-in-error (new versions)."""
        with self.transaction() as db:
            rows = db.execute(
                "SELECT r.resource_type, r.id, r.version_id, r.job_id, r.key_owner, r.resource FROM resources r"
                " JOIN jobs j ON j.id = r.job_id"
                " WHERE j.document_id = ? AND r.current = 1 AND r.resource_type NOT IN ('Patient', 'Provenance')",
                (document_id,),
            ).fetchall()
            updated = now_instant()
            for resource_type, resource_id, version, job_id, owner, sealed in rows:
                resource = self._open_json(db, owner, _resource_place(resource_type, resource_id, version), sealed)
                mark_entered_in_error(resource)
                self._put_resource(db, resource, job_id, updated, owner)
            return len(rows)

    def get_document(self, document_id: str) -> DocumentRecord | None:
        with self._lock:
            return self._get_document(self._db, document_id)

    def _get_document(self, db: Any, document_id: str) -> DocumentRecord | None:
        rows = db.execute(
            "SELECT id, version_id, content_type, content_hash, size, pages, created_at, resource"
            " FROM documents WHERE id = ?",
            (document_id,),
        ).fetchall()
        if not rows:
            return None
        row = rows[0]
        return DocumentRecord(
            id=row[0],
            version_id=row[1],
            content_type=row[2],
            content_hash=row[3],
            size=row[4],
            pages=row[5],
            created_at=row[6],
            resource=self._open_json(db, f"document:{document_id}", f"documents/{document_id}", bytes(row[7])),
        )

    def review_candidates(self, *, waiting_only: bool, count: int, offset: int = 0) -> list[str]:
        """The ids of documents with a finished extraction, oldest first; ``waiting_only``: only those
        whose latest Bundle needs review and that no reviewer has released since (none, or returned)."""
        rows = self.query(
            # the bare needs_review of a MAX() group is that of the row with the maximum (SQLite)
            "SELECT d.id FROM documents d JOIN ("
            "  SELECT document_id, needs_review, MAX(updated_at) FROM jobs"
            "  WHERE status = 'succeeded' GROUP BY document_id"
            ") latest ON latest.document_id = d.id"
            " WHERE NOT ? OR (latest.needs_review = 1 AND COALESCE(("
            "  SELECT action FROM reviews r WHERE r.document_id = d.id ORDER BY r.id DESC LIMIT 1"
            " ), 'returned') = 'returned')"
            " ORDER BY d.created_at, d.id LIMIT ? OFFSET ?",
            (waiting_only, count, offset),
        )
        return [str(row[0]) for row in rows]

    def latest_bundle_id(self, document_id: str) -> str | None:
        rows = self.query(
            "SELECT bundle_id FROM jobs WHERE document_id = ? AND status = 'succeeded'"
            " ORDER BY updated_at DESC LIMIT 1",
            (document_id,),
        )
        return str(rows[0][0]) if rows else None

    def get_document_content(self, document_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT content FROM document_content WHERE document_id = ?", (document_id,)
            ).fetchone()
            if row is None:
                return None
            key = self._data_key(self._db, f"document:{document_id}", create=False)
        return open_sealed(key, bytes(row[0]), f"document_content/{document_id}".encode())

    # --- jobs --------------------------------------------------------------------------

    @staticmethod
    def _job(row: Sequence[Any]) -> JobRecord:
        return JobRecord(
            id=row[0],
            document_id=row[1],
            status=row[2],
            attempts=row[3],
            stage=row[4],
            done=row[5],
            total=row[6],
            created_at=row[7],
            updated_at=row[8],
            bundle_id=row[9],
            error=_job_error_decoder.decode(row[10]) if row[10] else None,
            lease_owner=row[11],
        )

    def enqueue_job(self, document_id: str) -> JobRecord:
        """A new job for the document, or the one already queued or running for it."""
        with self.transaction() as db:
            row = db.execute(_ACTIVE_JOB_OF_DOCUMENT, (document_id,)).fetchone()
            if row is not None:
                return self._job(row)
            job_id = str(uuid.uuid4())
            created = now_instant()
            db.execute(
                "INSERT INTO jobs (id, document_id, status, created_at, updated_at) VALUES (?, ?, 'queued', ?, ?)",
                (job_id, document_id, created, created),
            )
            return JobRecord(
                id=job_id,
                document_id=document_id,
                status="queued",
                attempts=0,
                stage=None,
                done=0,
                total=0,
                created_at=created,
                updated_at=created,
            )

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self.query(_JOB_BY_ID, (job_id,))
        return self._job(rows[0]) if rows else None

    def claim_job(self, owner: str, lease_seconds: float, max_attempts: int) -> JobRecord | None:
        """Take the oldest queued job, or a running one whose lease expired (its worker died)."""
        with self.transaction() as db:
            while True:
                now = _now_seconds()
                # one query each, so that each walks the (status, created_at) index in order: joined
                # by OR, SQLite sorted the whole queue on every claim
                queued = db.execute(
                    "SELECT id, attempts, created_at FROM jobs WHERE status = 'queued' ORDER BY created_at LIMIT 1"
                ).fetchone()
                expired = db.execute(
                    "SELECT id, attempts, created_at FROM jobs WHERE status = 'running' AND lease_expires_at < ?"
                    " ORDER BY created_at LIMIT 1",
                    (now,),
                ).fetchone()
                candidates = [row for row in (queued, expired) if row is not None]
                if not candidates:
                    return None
                job_id, attempts, _ = min(candidates, key=lambda row: row[2])
                if attempts >= max_attempts:
                    error = JobError(
                        http_status=500,
                        issue_code="exception",
                        message=f"extraction was abandoned after {attempts} attempts",
                    )
                    db.execute(
                        "UPDATE jobs SET status = 'failed', error = ?, lease_owner = NULL, updated_at = ? WHERE id = ?",
                        (_encoder.encode(error).decode(), now_instant(), job_id),
                    )
                    continue
                db.execute(
                    "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = ?,"
                    " lease_expires_at = ?, stage = 'queued', done = 0, total = 0, updated_at = ? WHERE id = ?",
                    (owner, now + lease_seconds, now_instant(), job_id),
                )
                return self._job(db.execute(_JOB_BY_ID, (job_id,)).fetchone())

    def heartbeat(self, job_id: str, owner: str, lease_seconds: float, stage: str, done: int, total: int) -> bool:
        """Extend the lease and record progress; False when the lease was lost to another worker."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET lease_expires_at = ?, stage = ?, done = ?, total = ?, updated_at = ?"
                " WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (_now_seconds() + lease_seconds, stage, done, total, now_instant(), job_id, owner),
            )
            return bool(cursor.rowcount == 1)

    def complete_job(self, job_id: str, owner: str, bundle: dict[str, Any]) -> bool:
        """Store the Bundle and each entry's resource and mark the job done, in one transaction."""
        updated = now_instant()
        with self.transaction() as db:
            row = db.execute("SELECT status, lease_owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] != "running" or row[1] != owner:
                return False  # lease lost: another worker owns (or finished) this job
            document_id = db.execute("SELECT document_id FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            resources = [entry["resource"] for entry in bundle.get("entry", [])] + [bundle]
            for resource in resources:
                self._put_resource(db, resource, job_id, updated, f"document:{document_id}")
            flagged = needs_review(bundle)
            db.execute(
                "UPDATE jobs SET status = 'succeeded', bundle_id = ?, stage = 'done', lease_owner = NULL,"
                " lease_expires_at = NULL, error = NULL, updated_at = ?, needs_review = ? WHERE id = ?",
                (bundle["id"], updated, int(flagged), job_id),
            )
            if not flagged:  # else it is owed once a reviewer releases it
                self._owe_hl7_result(db, document_id, bundle["id"], updated)
            return True

    # --- results owed over HL7 (outbox) ----------------------------------------------------

    def _owe_hl7_result(self, db: Any, document_id: str, bundle_id: str, at: str) -> None:
        """In the releasing transaction: the Bundle is owed to whoever sent the document over HL7."""
        if not self._hl7_results:
            return
        row = db.execute(
            "SELECT sender FROM hl7_messages WHERE document_id = ? ORDER BY received_at LIMIT 1", (document_id,)
        ).fetchone()
        if row is None:
            return  # not an HL7 document
        db.execute(
            "INSERT INTO hl7_outbox (document_id, bundle_id, receiver, status, next_attempt, created_at, updated_at)"
            " VALUES (?, ?, ?, 'pending', 0, ?, ?)",
            (document_id, bundle_id, row[0], at, at),
        )

    def claim_hl7_results(self, lease_seconds: float, limit: int = 16) -> list[OwedResult]:
        """Results owed whose next delivery attempt is due, oldest first, each leased for
        ``lease_seconds`` (another sender leaves it alone; if this one dies, it is due again)."""
        now = _now_seconds()
        due = "SELECT 1 FROM hl7_outbox WHERE status = 'pending' AND next_attempt <= ? LIMIT 1"
        if not self.query(due, (now,)):  # polled every second: no write lock taken for nothing
            return []
        with self.transaction() as db:
            rows = db.execute(
                "SELECT o.id, o.document_id, o.bundle_id, o.receiver, o.attempts,"
                " EXISTS (SELECT 1 FROM hl7_outbox p WHERE p.document_id = o.document_id AND p.status = 'sent')"
                " FROM hl7_outbox o WHERE o.status = 'pending' AND o.next_attempt <= ? ORDER BY o.id LIMIT ?",
                (now, limit),
            ).fetchall()
            db.executemany(
                "UPDATE hl7_outbox SET next_attempt = ? WHERE id = ?", [(now + lease_seconds, r[0]) for r in rows]
            )
        return [
            OwedResult(id=r[0], document_id=r[1], bundle_id=r[2], receiver=r[3], attempts=r[4], correction=bool(r[5]))
            for r in rows
        ]

    def hl7_result_done(self, owed_id: int, *, ack_code: str | None, error: str | None, retry_at: float | None) -> None:
        """Record a delivery attempt: acknowledged (AA/CA), refused for good, or to be tried again at ``retry_at``."""
        status = "pending" if retry_at is not None else ("sent" if error is None else "failed")
        with self.transaction() as db:
            db.execute(
                "UPDATE hl7_outbox SET status = ?, attempts = attempts + 1, next_attempt = ?, ack_code = ?, error = ?,"
                " updated_at = ? WHERE id = ?",
                (status, retry_at or 0, ack_code, error, now_instant(), owed_id),
            )

    def hl7_results(self, document_id: str) -> list[OwedResultState]:
        """What became of each result owed for the document (for operators and tests)."""
        rows = self.query(
            "SELECT id, status, attempts, ack_code, error FROM hl7_outbox WHERE document_id = ? ORDER BY id",
            (document_id,),
        )
        return [OwedResultState(id=r[0], status=r[1], attempts=r[2], ack_code=r[3], error=r[4]) for r in rows]

    @staticmethod
    def _owner_of(resource: dict[str, Any]) -> str:
        """Whose data key seals a resource that comes from no document (e.g. an HL7 PID's Patient)."""
        patient = patient_of(resource)
        return f"patient:{patient}" if patient else "shared"

    def _put_resource(
        self, db: Any, resource: dict[str, Any], job_id: str | None, updated: str, owner: str
    ) -> StoredResource:
        resource_type, resource_id = resource["resourceType"], resource["id"]
        row = db.execute(
            "SELECT MAX(version_id) FROM resources WHERE resource_type = ? AND id = ?", (resource_type, resource_id)
        ).fetchone()
        version = (row[0] or 0) + 1
        stored = {**resource, "meta": {**resource.get("meta", {}), "versionId": str(version), "lastUpdated": updated}}
        # only the current version is demoted: the older ones already are (rewriting them all made every
        # write of a patient's resource slower with each version it had)
        db.execute(
            "UPDATE resources SET current = 0 WHERE resource_type = ? AND id = ? AND current = 1",
            (resource_type, resource_id),
        )
        db.execute(
            "INSERT INTO resources (resource_type, id, version_id, last_updated, patient_id, job_id, key_owner,"
            " current, resource) VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?)",
            (
                resource_type,
                resource_id,
                version,
                updated,
                patient_of(resource),
                job_id,
                owner,
                self._seal_json(db, owner, _resource_place(resource_type, resource_id, version), stored),
            ),
        )
        self._index_identifiers(db, stored)
        return StoredResource(
            resource_type=resource_type, id=resource_id, version_id=version, last_updated=updated, resource=stored
        )

    def fail_job(self, job_id: str, owner: str, error: JobError, *, retry: bool, max_attempts: int) -> JobRecord | None:
        """Record a failure: back to the queue when ``retry`` and attempts remain, else failed."""
        with self.transaction() as db:
            row = db.execute("SELECT attempts, lease_owner FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[1] != owner:
                return None
            status = "queued" if retry and row[0] < max_attempts else "failed"
            db.execute(
                "UPDATE jobs SET status = ?, error = ?, lease_owner = NULL, lease_expires_at = NULL, updated_at = ?"
                " WHERE id = ?",
                (status, _encoder.encode(error).decode(), now_instant(), job_id),
            )
            return self._job(db.execute(_JOB_BY_ID, (job_id,)).fetchone())

    # --- resources ---------------------------------------------------------------------

    def _stored(self, row: Sequence[Any]) -> StoredResource:
        resource_type, resource_id, version = row[0], row[1], row[2]
        place = _resource_place(resource_type, resource_id, version)
        with self._lock:
            resource = self._open_json(self._db, row[4], place, bytes(row[5]))
        return StoredResource(
            resource_type=resource_type, id=resource_id, version_id=version, last_updated=row[3], resource=resource
        )

    def read_resource(self, resource_type: str, resource_id: str) -> StoredResource | None:
        rows = self.query(
            f"{_STORED_ROW} WHERE resource_type = ? AND id = ? AND current = 1",
            (resource_type, resource_id),
        )
        return self._stored(rows[0]) if rows else None

    def search_resources(
        self,
        resource_type: str,
        *,
        patient: str | None = None,
        ids: Sequence[str] = (),
        count: int = 50,
        offset: int = 0,
    ) -> tuple[list[StoredResource], int]:
        where = ["resource_type = ?", "current = 1"]
        parameters: list[Any] = [resource_type]
        if patient is not None:
            where.append("patient_id = ?")
            parameters.append(patient)
        if ids:
            where.append(f"id IN ({', '.join('?' for _ in ids)})")
            parameters.extend(ids)
        clause = " AND ".join(where)
        total = self.query(f"SELECT COUNT(*) FROM resources WHERE {clause}", parameters)[0][0]
        rows = self.query(
            f"{_STORED_ROW} WHERE {clause} ORDER BY last_updated, id LIMIT ? OFFSET ?",
            [*parameters, count, offset],
        )
        return [self._stored(row) for row in rows], int(total)
