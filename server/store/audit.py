"""The audit trail: append-only, hash-chained records of who did what, served as FHIR AuditEvent.

Each record holds who (subject, client, scopes, purpose of use), what (interaction, resource
references, outcome) and where from (channel, network address) — never document text, search
values or other PHI. Its hash covers the previous record's hash, so editing or deleting any
record breaks the chain from there on; triggers refuse UPDATE and DELETE, and the AUTOINCREMENT
counter shows records cut off the end. ``paperchart audit verify`` checks all of it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from server.store.database import Database

GENESIS: Final = "0" * 64
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
"""
Action = Literal["C", "R", "U", "D", "E"]  # FHIR R4 audit-event-action
Channel = Literal["rest", "mllp", "mcp", "cli", "auth"]


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    recorded: str
    channel: Channel
    action: Action
    interaction: str  # read, search-type, create, operation:$extract, login, token...
    outcome: int  # FHIR audit-event-outcome: 0 success, 4 minor failure, 8 serious failure
    status: int | None = None  # HTTP status where there is one
    subject: str | None = None
    client_id: str | None = None
    scopes: tuple[str, ...] = ()
    purpose: str | None = None
    address: str | None = None
    entities: tuple[str, ...] = ()  # references such as "Patient/123"
    patient: str | None = None


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    record: AuditRecord


class ChainProblem(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    problem: str


_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(AuditRecord)


def now_instant() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def outcome_of(status: int) -> int:
    if status < 400:
        return 0
    return 4 if status < 500 else 8


def _chain_hash(previous: str, seq: int, record_text: str) -> str:
    return hashlib.sha256(f"{previous}\n{seq}\n{record_text}".encode()).hexdigest()


class AuditLog:
    """Appends and reads audit records in the paperchart database.

    It works through a ``Database`` it is given, usually the store itself: then a record can be
    appended inside the store's transaction (``append`` joins it), committed with the writes it
    describes or not at all, as HL7 receipt does. ``AuditLog.open`` gives it a connection of its
    own (the command-line tools).
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self._owns_database = False
        database.apply_schema(_SCHEMA)

    @classmethod
    def open(cls, path: Path) -> AuditLog:
        log = cls(Database(path, ""))
        log._owns_database = True
        return log

    def close(self) -> None:
        """Close the connection if it is the log's own (a shared one is closed by its owner)."""
        if self._owns_database:
            self.database.close()

    def append(self, record: AuditRecord) -> int:
        """Add a record to the chain; returns its sequence number once it is durable. Called inside
        a transaction of the same ``Database``, the record is part of that transaction."""
        text = _encoder.encode(record).decode()
        return self.database.batched(lambda: self._append(text))

    def _append(self, text: str) -> int:
        with self.database.transaction() as db:
            row = db.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            previous = row[1] if row else GENESIS
            next_row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchone()
            seq = (next_row[0] if next_row else 0) + 1
            db.execute(
                "INSERT INTO audit_log (seq, record, previous_hash, hash) VALUES (?, ?, ?, ?)",
                (seq, text, previous, _chain_hash(previous, seq, text)),
            )
            return int(seq)

    def read(self, seq: int) -> AuditEntry | None:
        rows = self.database.query("SELECT seq, record FROM audit_log WHERE seq = ?", (seq,))
        return AuditEntry(seq=rows[0][0], record=_decoder.decode(rows[0][1])) if rows else None

    def search(self, *, patient: str | None = None, count: int = 50, offset: int = 0) -> tuple[list[AuditEntry], int]:
        where, parameters = "1 = 1", []
        if patient is not None:
            where, parameters = "json_extract(record, '$.patient') = ?", [patient]
        with self.database.reading() as db:
            total = db.execute(f"SELECT COUNT(*) FROM audit_log WHERE {where}", parameters).fetchone()[0]  # noqa: S608
            rows = db.execute(
                f"SELECT seq, record FROM audit_log WHERE {where} ORDER BY seq LIMIT ? OFFSET ?",  # noqa: S608
                [*parameters, count, offset],
            ).fetchall()
        return [AuditEntry(seq=r[0], record=_decoder.decode(r[1])) for r in rows], int(total)

    def verify(self) -> tuple[int, list[ChainProblem]]:
        """Walk the chain; returns (records checked, problems). No problems means untouched."""
        problems: list[ChainProblem] = []
        previous, expected_seq, checked = GENESIS, 1, 0
        with self.database.reading() as db:
            rows: Sequence[Any] = db.execute(
                "SELECT seq, record, previous_hash, hash FROM audit_log ORDER BY seq"
            ).fetchall()
            counter = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchone()
        for seq, text, previous_hash, stored_hash in rows:
            checked += 1
            if seq != expected_seq:
                problems.append(ChainProblem(seq=seq, problem=f"records {expected_seq} to {seq - 1} are missing"))
            if previous_hash != previous:
                problems.append(ChainProblem(seq=seq, problem="does not follow the record before it"))
            if _chain_hash(previous_hash, seq, text) != stored_hash:
                problems.append(ChainProblem(seq=seq, problem="was edited (its hash does not match)"))
            previous, expected_seq = stored_hash, seq + 1
        last = counter[0] if counter else 0
        if last >= expected_seq:
            problems.append(ChainProblem(seq=last, problem=f"records {expected_seq} to {last} were cut off the end"))
        return checked, problems


def audit_event(entry: AuditEntry, fhir_base_url: str) -> dict[str, Any]:
    """One audit record as a FHIR R4 AuditEvent."""
    record = entry.record
    agent: dict[str, Any] = {
        "requestor": True,
        "who": {"identifier": {"system": "urn:paperchart:client-id", "value": record.client_id or "anonymous"}},
    }
    if record.subject:
        agent["altId"] = record.subject
    if record.address:
        agent["network"] = {"address": record.address, "type": "2"}  # 2 = IP address
    if record.scopes:
        agent["policy"] = [f"urn:paperchart:scope:{scope}" for scope in record.scopes]
    if record.purpose:
        agent["purposeOfUse"] = [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": record.purpose}]}
        ]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(entry.seq),
        "type": _EVENT_TYPES[record.channel],
        "subtype": [{"system": "urn:paperchart:interaction", "code": record.interaction}],
        "action": record.action,
        "recorded": record.recorded,
        "outcome": str(record.outcome),
        "agent": [agent],
        "source": {
            "site": fhir_base_url,
            "observer": {"display": "paperchart"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
        },
    }
    if record.status is not None:
        event["outcomeDesc"] = f"HTTP {record.status}"
    if record.entities:
        event["entity"] = [{"what": {"reference": reference}} for reference in record.entities]
    return event


_AUDIT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_DICOM: Final = "http://dicom.nema.org/resources/ontology/DCM"
_EVENT_TYPES: Final[dict[str, dict[str, str]]] = {
    "rest": {"system": _AUDIT_TYPE, "code": "rest", "display": "RESTful Operation"},
    "mcp": {"system": _AUDIT_TYPE, "code": "rest", "display": "RESTful Operation"},
    "mllp": {"system": _DICOM, "code": "110107", "display": "Import"},
    "cli": {"system": _DICOM, "code": "110100", "display": "Application Activity"},
    "auth": {"system": _DICOM, "code": "110114", "display": "User Authentication"},
}


__all__ = ["AuditEntry", "AuditLog", "AuditRecord", "ChainProblem", "audit_event", "now_instant", "outcome_of"]
