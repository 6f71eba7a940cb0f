"""The SQLite store: documents, leased jobs that survive a dead worker, one Bundle per job."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fhir_profiles.bundle import REVIEW_TAG_SYSTEM
from server.crypto import LocalKeyProvider, new_data_key
from server.errors import ConfigurationError
from server.store import JobError, SqliteStore


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "db" / "paperchart.db", LocalKeyProvider.from_key(new_data_key()))


def document(store: SqliteStore) -> str:
    resource = {
        "resourceType": "DocumentReference",
        "status": "current",
        "content": [{"attachment": {"contentType": "application/pdf"}}],
    }
    return store.create_document(resource, b"%PDF-1.4 bytes", "application/pdf", 1).id


def bundle(bundle_id: str, patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": bundle_id,
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": patient_id}},
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "o1",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": f"Patient/{patient_id}"},
                }
            },
        ],
    }


def test_documents_round_trip(store: SqliteStore) -> None:
    document_id = document(store)
    record = store.get_document(document_id)
    assert record is not None and record.resource["meta"]["versionId"] == "1"
    assert store.get_document_content(document_id) == b"%PDF-1.4 bytes"
    assert store.get_document("nope") is None


def test_enqueue_is_idempotent_while_a_job_is_pending(store: SqliteStore) -> None:
    document_id = document(store)
    assert store.enqueue_job(document_id).id == store.enqueue_job(document_id).id


def test_a_dead_workers_job_is_taken_again_after_its_lease(store: SqliteStore) -> None:
    job = store.enqueue_job(document(store))
    claimed = store.claim_job("worker-a", lease_seconds=0.2, max_attempts=3)
    assert claimed is not None and claimed.id == job.id and claimed.attempts == 1
    assert store.claim_job("worker-b", lease_seconds=0.2, max_attempts=3) is None  # lease still held
    time.sleep(0.3)  # worker-a died: no heartbeat
    reclaimed = store.claim_job("worker-b", lease_seconds=5, max_attempts=3)
    assert reclaimed is not None and reclaimed.id == job.id and reclaimed.attempts == 2
    # the dead worker's late result is refused; the live one's is stored once
    assert not store.complete_job(job.id, "worker-a", bundle("b1", "p1"))
    assert not store.heartbeat(job.id, "worker-a", 5, "ocr", 1, 1)
    assert store.complete_job(job.id, "worker-b", bundle("b1", "p1"))
    assert store.get_job(job.id).status == "succeeded"  # type: ignore[union-attr]
    found, total = store.search_resources("Bundle")
    assert total == 1 and found[0].id == "b1"


def test_completing_twice_versions_instead_of_duplicating(store: SqliteStore) -> None:
    document_id = document(store)
    for _ in range(2):
        store.enqueue_job(document_id)
        job = store.claim_job("w", 5, 3)
        assert job is not None
        store.complete_job(job.id, "w", bundle("same-bundle", "p1"))
    found, total = store.search_resources("Observation", patient="p1")
    assert total == 1 and found[0].version_id == 2


def test_failures_retry_then_give_up(store: SqliteStore) -> None:
    job = store.enqueue_job(document(store))
    error = JobError(http_status=500, issue_code="exception", message="OCR failed on page 1")
    for attempt in (1, 2):
        claimed = store.claim_job("w", 5, max_attempts=2)
        assert claimed is not None and claimed.attempts == attempt
        failed = store.fail_job(job.id, "w", error, retry=True, max_attempts=2)
        assert failed is not None
    assert failed.status == "failed" and failed.error == error
    assert store.claim_job("w", 5, max_attempts=2) is None


def test_search_by_patient(store: SqliteStore) -> None:
    document_id = document(store)
    store.enqueue_job(document_id)
    job = store.claim_job("w", 5, 3)
    assert job is not None
    store.complete_job(job.id, "w", bundle("b", "p9"))
    assert store.search_resources("Observation", patient="p9")[1] == 1
    assert store.search_resources("Observation", patient="other")[1] == 0
    assert store.read_resource("Patient", "p9") is not None


def test_a_repeated_resource_is_not_versioned_again_and_only_one_version_is_current(store: SqliteStore) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Smith"}]}
    assert store.put_resource(patient).version_id == 1
    assert store.put_resource(dict(patient)).version_id == 1  # the PID of every message about her
    changed = {**patient, "name": [{"family": "Smith-Jones"}]}
    written = store.put_resource(changed)
    assert written.version_id == 2 and written == store.read_resource("Patient", "p1")  # what was stored
    assert store.put_resource(patient).version_id == 3
    current = store.query("SELECT version_id FROM resources WHERE id = 'p1' AND current = 1")
    assert [row[0] for row in current] == [3]
    stored = store.read_resource("Patient", "p1")
    assert stored is not None and stored.resource["name"] == [{"family": "Smith"}]


def test_an_unchanged_resource_is_known_by_its_version_not_by_what_this_process_remembers(tmp_path: Path) -> None:
    """put_resource skips decrypting the current version when it wrote it itself; a version written
    by another process, or written and rolled back, must not be taken for it."""
    keys = LocalKeyProvider.from_key(new_data_key())
    path = tmp_path / "paperchart.db"
    ours, theirs = SqliteStore(path, keys), SqliteStore(path, keys)
    smith = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Smith"}]}
    jones = {**smith, "name": [{"family": "Jones"}]}
    try:
        assert ours.put_resource(smith).version_id == 1
        assert theirs.put_resource(jones).version_id == 2  # another process renames her
        assert ours.put_resource(smith).version_id == 3  # not "unchanged": version 1 is no longer current
        with pytest.raises(RuntimeError), ours.transaction():
            assert ours.put_resource(jones).version_id == 4
            raise RuntimeError("the message's other writes failed")
        brown = {**smith, "name": [{"family": "Brown"}]}
        assert theirs.put_resource(brown).version_id == 4  # a version 4, but not the one rolled back
        assert ours.put_resource(jones).version_id == 5
        stored = theirs.read_resource("Patient", "p1")
        assert stored is not None and stored.resource["name"] == [{"family": "Jones"}]
    finally:
        ours.close()
        theirs.close()


def plans_of(store: SqliteStore, action: Callable[[], object]) -> dict[str, str]:
    """The query plan of every statement ``action`` ran (from SQLite's trace of them)."""
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        action()
    finally:
        store._db.set_trace_callback(None)
    queries = [s for s in statements if s.startswith(("SELECT", "UPDATE", "DELETE"))]
    return {q: " ".join(row[3] for row in store.query(f"EXPLAIN QUERY PLAN {q}")) for q in queries}


def test_a_resource_is_found_by_its_id_not_by_scanning_its_type(store: SqliteStore) -> None:
    # the index on current versions once drew these lookups into reading every current resource
    # of the type: each new patient made receiving the next HL7 message slower
    store.put_resource({"resourceType": "Patient", "id": "p1", "gender": "female"})
    plans = plans_of(store, lambda: store.put_resource({"resourceType": "Patient", "id": "p1", "gender": "male"}))
    by_id = {q: plan for q, plan in plans.items() if "FROM resources" in q or "UPDATE resources" in q}
    assert len(by_id) == 3  # read the current version, number the next one, demote the current one
    assert all("(resource_type=? AND id=?)" in plan for plan in by_id.values()), by_id


def test_a_database_with_the_old_index_loses_it(tmp_path: Path) -> None:
    keys = LocalKeyProvider.from_key(new_data_key())
    path = tmp_path / "paperchart.db"
    old = SqliteStore(path, keys)
    with old.transaction() as db:
        db.execute("CREATE INDEX resources_current ON resources (resource_type, current, patient_id)")
    old.close()
    store = SqliteStore(path, keys)
    indexes = {row[0] for row in store.query("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "resources_current" not in indexes and "resources_current_by_patient" in indexes


def test_claiming_takes_the_oldest_of_queued_and_expired_without_sorting_the_queue(store: SqliteStore) -> None:
    first = store.enqueue_job(document(store))
    assert store.claim_job("dies", lease_seconds=0.1, max_attempts=3) is not None
    time.sleep(0.15)
    later = store.enqueue_job(document(store))  # queued after the first job's lease ran out
    claims: list[Any] = []
    plans = plans_of(store, lambda: claims.append(store.claim_job("w", 5, 3)))
    assert not any("TEMP B-TREE" in plan for plan in plans.values()), plans  # the index gives the order
    claims.append(store.claim_job("w", 5, 3))
    assert [job.id for job in claims] == [first.id, later.id]


def test_a_new_job_is_returned_as_it_was_stored(store: SqliteStore) -> None:
    job = store.enqueue_job(document(store))  # built without reading it back
    assert job == store.get_job(job.id)


def test_released_results_of_an_hl7_document_are_owed_to_its_sender(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "paperchart.db", LocalKeyProvider.from_key(new_data_key()), hl7_results=True)
    from_hl7, uploaded, to_review = document(store), document(store), document(store)
    for number, document_id in enumerate((from_hl7, to_review)):
        store.record_hl7("EPIC|RIVERSIDE", f"M{number}", "MSH|...", document_id)
    flagged = bundle("b-review", "p1")
    flagged["meta"] = {"tag": [{"system": "urn:x", "code": "requires-review"}]}
    for document_id, result in (
        (from_hl7, bundle("b-hl7", "p1")),
        (uploaded, bundle("b-up", "p1")),
        (to_review, flagged),
    ):
        store.enqueue_job(document_id)
        job = store.claim_job("w", 5, 3)
        assert job is not None and store.complete_job(job.id, "w", result)
    owed = store.claim_hl7_results(lease_seconds=60)
    assert [(o.document_id, o.bundle_id, o.receiver, o.correction) for o in owed] == [
        (from_hl7, "b-hl7", "EPIC|RIVERSIDE", False)
    ]  # the uploaded document owes nothing; the flagged Bundle waits for its reviewer
    assert store.claim_hl7_results(lease_seconds=60) == []  # leased to the first sender
    version = store.read_resource("Bundle", "b-review").version_id  # type: ignore[union-attr]
    store.release_review(to_review, "b-review", version, [], "reviewer")
    assert [o.bundle_id for o in store.claim_hl7_results(lease_seconds=60)] == ["b-review"]
    store.hl7_result_done(owed[0].id, ack_code="AA", error=None, retry_at=None)
    assert [(s.status, s.attempts, s.ack_code) for s in store.hl7_results(from_hl7)] == [("sent", 1, "AA")]
    store.enqueue_job(from_hl7)  # extracted again: the new results replace what was sent
    job = store.claim_job("w", 5, 3)
    assert job is not None
    plans = plans_of(store, lambda: store.complete_job(job.id, "w", bundle("b-hl7", "p1")))
    owed_again: list[Any] = []
    plans |= plans_of(store, lambda: owed_again.extend(store.claim_hl7_results(lease_seconds=60)))
    assert [o.correction for o in owed_again] == [True]
    # who sent the document, and what was sent before, are found by index at every release
    assert not any("SCAN hl7_" in plan for plan in plans.values()), plans


def test_nothing_is_owed_when_no_hl7_destination_is_set(store: SqliteStore) -> None:
    document_id = document(store)
    store.record_hl7("EPIC|RIVERSIDE", "M1", "MSH|...", document_id)
    store.enqueue_job(document_id)
    job = store.claim_job("w", 5, 3)
    assert job is not None and store.complete_job(job.id, "w", bundle("b", "p1"))
    assert store.claim_hl7_results(lease_seconds=60) == [] and store.hl7_results(document_id) == []


def test_a_result_whose_sender_died_mid_delivery_is_due_again_after_its_lease(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "paperchart.db", LocalKeyProvider.from_key(new_data_key()), hl7_results=True)
    document_id = document(store)
    store.record_hl7("EPIC|RIVERSIDE", "M1", "MSH|...", document_id)
    store.enqueue_job(document_id)
    job = store.claim_job("w", 5, 3)
    assert job is not None and store.complete_job(job.id, "w", bundle("b1", "p1"))
    (taken,) = store.claim_hl7_results(lease_seconds=0.2)  # then the sender's process dies
    assert store.claim_hl7_results(lease_seconds=0.2) == []
    time.sleep(0.3)
    (again,) = store.claim_hl7_results(lease_seconds=60)
    assert again.id == taken.id and again.attempts == 0  # an attempt counts only once it is recorded


def extracted(store: SqliteStore, *, flagged: bool) -> tuple[str, str]:
    """A document whose extraction finished, its Bundle tagged requires-review when ``flagged``;
    (document id, Bundle id)."""
    document_id = document(store)
    job = store.enqueue_job(document_id)
    assert store.claim_job("w", 5, 3) is not None
    result = bundle(f"b-{document_id}", f"p-{document_id}")
    if flagged:
        result["meta"] = {"tag": [{"system": REVIEW_TAG_SYSTEM, "code": "requires-review"}]}
    assert store.complete_job(job.id, "w", result)
    return document_id, result["id"]


def test_the_review_queue_finds_a_waiting_document_behind_any_number_of_others(store: SqliteStore) -> None:
    # the queue once looked only at the oldest five pages' worth of documents: past them, a
    # document waiting for review was never shown to a reviewer
    done = [extracted(store, flagged=False)[0] for _ in range(5)]
    waiting, bundle_id = extracted(store, flagged=True)
    assert store.review_candidates(waiting_only=True, count=1) == [waiting]
    assert store.review_candidates(waiting_only=False, count=10) == [*done, waiting]
    assert store.review_candidates(waiting_only=False, count=2, offset=4) == [done[4], waiting]
    store.return_review(waiting, bundle_id, 1, "reviewer", "wrong patient")
    assert store.review_candidates(waiting_only=True, count=1) == [waiting]  # returned: still waits
    store.release_review(waiting, bundle_id, 1, [], "reviewer")
    assert store.review_candidates(waiting_only=True, count=1) == []


def test_a_version_2_database_is_upgraded_with_its_waiting_documents(tmp_path: Path) -> None:
    keys = LocalKeyProvider.from_key(new_data_key())
    path = tmp_path / "paperchart.db"
    old = SqliteStore(path, keys)
    extracted(old, flagged=False)
    waiting, _ = extracted(old, flagged=True)
    with old.transaction() as db:  # as paperchart before schema version 3 left it
        db.execute("ALTER TABLE jobs DROP COLUMN needs_review")
        db.execute("UPDATE schema_version SET version = 2")
    old.close()
    with pytest.raises(ConfigurationError):  # the wrong master key upgrades nothing
        SqliteStore(path, LocalKeyProvider.from_key(new_data_key()))
    first, second = SqliteStore(path, keys), SqliteStore(path, keys)  # two processes, one upgrade
    assert first.query("SELECT version FROM schema_version") == [(3,)]
    assert first.review_candidates(waiting_only=True, count=10) == [waiting]
    assert second.review_candidates(waiting_only=True, count=10) == [waiting]


def test_shredding_a_document_finds_its_resources_by_their_key_not_by_scanning(store: SqliteStore) -> None:
    document_id, bundle_id = extracted(store, flagged=False)
    extracted(store, flagged=False)  # another document, untouched
    plans = plans_of(store, lambda: store.shred_document(document_id))
    by_owner = {q: plan for q, plan in plans.items() if "key_owner" in q}
    assert len(by_owner) == 3 and all("USING INDEX resources_owner" in p for p in by_owner.values()), by_owner
    assert store.read_resource("Bundle", bundle_id) is None
    assert len(store.search_resources("Bundle")[0]) == 1
