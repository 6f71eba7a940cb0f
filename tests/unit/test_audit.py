"""The audit log: append-only, hash-chained, and any edit, deletion or truncation is detected."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_profiles import validate_resource
from server.store.audit import AuditLog, AuditRecord, audit_event, now_instant
from terminology.sqlite_driver import connect


def record(n: int) -> AuditRecord:
    return AuditRecord(
        recorded=now_instant(),
        channel="rest",
        action="R",
        interaction="read",
        outcome=0,
        status=200,
        client_id="c1",
        scopes=("system/Patient.rs",),
        entities=(f"Patient/{n}",),
        address="127.0.0.1",
    )


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    audit = AuditLog.open(tmp_path / "paperchart.db")
    for n in range(1, 6):
        audit.append(record(n))
    return audit


def test_an_untouched_log_verifies(log: AuditLog) -> None:
    assert log.verify() == (5, [])
    entries, total = log.search(count=2, offset=1)
    assert total == 5 and [e.seq for e in entries] == [2, 3]


def test_update_and_delete_are_refused(log: AuditLog, tmp_path: Path) -> None:
    db = connect(tmp_path / "paperchart.db")
    for statement in ("UPDATE audit_log SET record = '{}' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 2"):
        with pytest.raises(Exception, match="append-only"):
            db.execute(statement)


def _tamper(path: Path, *statements: str) -> None:
    db = connect(path)
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("DROP TRIGGER audit_log_no_delete")
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()


def test_an_edited_record_is_found(log: AuditLog, tmp_path: Path) -> None:
    _tamper(
        tmp_path / "paperchart.db",
        "UPDATE audit_log SET record = replace(record, 'Patient/3', 'Patient/9') WHERE seq = 3",
    )
    checked, problems = log.verify()
    assert checked == 5 and [p.seq for p in problems] == [3]


def test_a_deleted_record_is_found(log: AuditLog, tmp_path: Path) -> None:
    _tamper(tmp_path / "paperchart.db", "DELETE FROM audit_log WHERE seq = 2")
    assert {p.seq for p in log.verify()[1]} == {3}


def test_records_cut_off_the_end_are_found(log: AuditLog, tmp_path: Path) -> None:
    _tamper(tmp_path / "paperchart.db", "DELETE FROM audit_log WHERE seq >= 4")
    problems = log.verify()[1]
    assert problems and "cut off" in problems[0].problem


def test_audit_events_are_valid_fhir(log: AuditLog) -> None:
    entry = log.read(1)
    assert entry is not None
    event = audit_event(entry, "http://127.0.0.1:8080/fhir")
    validate_resource(event)
    assert event["entity"] == [{"what": {"reference": "Patient/1"}}]
