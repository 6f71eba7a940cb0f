"""The ``Store`` protocol: documents, jobs with leases, versioned FHIR resources and bundles.

Methods are synchronous (SQLite is); async callers wrap them in ``anyio.to_thread.run_sync``.
Writes that belong together happen in one transaction: a job's Bundle, its resources and its
status change commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, TypeVar

import msgspec

JobStatus = Literal["queued", "running", "succeeded", "failed"]
T = TypeVar("T")


class DocumentRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    version_id: int
    content_type: str
    content_hash: str  # sha256 hex of the bytes
    size: int
    pages: int
    created_at: str  # FHIR instant
    resource: dict[str, Any]  # the DocumentReference as stored (attachment without inline data)


class JobError(msgspec.Struct, frozen=True, kw_only=True):
    http_status: int
    issue_code: str
    message: str


class JobRecord(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    document_id: str
    status: JobStatus
    attempts: int
    stage: str | None
    done: int
    total: int
    created_at: str
    updated_at: str
    bundle_id: str | None = None
    error: JobError | None = None
    lease_owner: str | None = None


class ReviewAction(msgspec.Struct, frozen=True, kw_only=True):
    document_id: str
    bundle_id: str
    bundle_version: int  # the Bundle version the action produced (released) or looked at (returned)
    action: Literal["released", "returned"]
    reviewer: str
    at: str
    comment: str | None = None


class StoredResource(msgspec.Struct, frozen=True, kw_only=True):
    resource_type: str
    id: str
    version_id: int
    last_updated: str
    resource: dict[str, Any]


class OwedResult(msgspec.Struct, frozen=True, kw_only=True):
    """A released Bundle owed (as ORU^R01) to the system that sent its document over HL7."""

    id: int
    document_id: str
    bundle_id: str
    receiver: str  # "application|facility": MSH-3 and MSH-4 of the message that brought the document
    attempts: int
    correction: bool  # results for this document were delivered before: these replace them


class OwedResultState(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    status: Literal["pending", "sent", "failed"]
    attempts: int
    ack_code: str | None
    error: str | None


class Store(Protocol):
    def health(self) -> bool: ...

    def close(self) -> None: ...

    # documents
    def create_document(
        self, resource: dict[str, Any], content: bytes, content_type: str, pages: int
    ) -> DocumentRecord: ...

    def get_document(self, document_id: str) -> DocumentRecord | None: ...

    def get_document_content(self, document_id: str) -> bytes | None: ...

    def latest_bundle_id(self, document_id: str) -> str | None:
        """The Bundle of the document's most recent successful extraction."""
        ...

    def review_candidates(self, *, waiting_only: bool, count: int, offset: int = 0) -> list[str]:
        """The ids of documents with a finished extraction, oldest first; ``waiting_only``: only
        those whose latest Bundle needs review and that no reviewer has released since."""
        ...

    def update_document(self, document_id: str, resource: dict[str, Any]) -> DocumentRecord: ...

    def shred_document(self, document_id: str) -> bool:
        """Delete the document and its results and destroy its data key (crypto-shredding)."""
        ...

    def deployment_secret(self, purpose: str) -> bytes:
        """A stable random secret of this deployment for ``purpose``, created on first use."""
        ...

    def remember_pseudonyms(self, issued: dict[str, str]) -> None:
        """Keep (encrypted) what each de-identification pseudonym stands for."""
        ...

    def resolve_pseudonym(self, pseudonym: str) -> str | None:
        """What a pseudonym stands for (``Patient/<id>`` or ``system|value``), for re-identification."""
        ...

    def release_review(
        self, document_id: str, bundle_id: str, expected_version: int, resources: list[dict[str, Any]], reviewer: str
    ) -> int:
        """Store a reviewed Bundle and its resources as new versions, if the Bundle is still at
        ``expected_version`` (else ``Conflict``: someone else released first). Returns the new version."""
        ...

    def return_review(
        self, document_id: str, bundle_id: str, expected_version: int, reviewer: str, comment: str
    ) -> None: ...

    def last_review(self, document_id: str) -> ReviewAction | None: ...

    def cache_page_image(self, document_id: str, page: int, png: bytes) -> None: ...

    def cached_page_image(self, document_id: str, page: int) -> bytes | None: ...

    def rewrap_data_keys(self) -> int:
        """Re-wrap every data key under the current master key; returns how many."""
        ...

    def search_documents(
        self, *, patient: str | None = None, ids: Sequence[str] = (), count: int = 50, offset: int = 0
    ) -> tuple[list[DocumentRecord], int]: ...

    def find_by_identifier(self, resource_type: str, system: str | None, value: str) -> list[str]: ...

    def batched(self, work: Callable[[], T]) -> T:
        """Run ``work`` as one all-or-nothing unit, committed together with concurrent callers'
        (group commit: one disk flush for many); returns once its commit is durable."""
        ...

    # HL7 v2 receipts
    def hl7_ack(self, sender: str, control_id: str) -> str | None: ...

    def record_hl7(self, sender: str, control_id: str, ack: str, document_id: str | None) -> None: ...

    def claim_hl7_results(self, lease_seconds: float, limit: int = 16) -> list[OwedResult]: ...

    def hl7_result_done(
        self, owed_id: int, *, ack_code: str | None, error: str | None, retry_at: float | None
    ) -> None: ...

    def hl7_results(self, document_id: str) -> list[OwedResultState]: ...

    # jobs
    def enqueue_job(self, document_id: str) -> JobRecord: ...

    def get_job(self, job_id: str) -> JobRecord | None: ...

    def claim_job(self, owner: str, lease_seconds: float, max_attempts: int) -> JobRecord | None: ...

    def heartbeat(self, job_id: str, owner: str, lease_seconds: float, stage: str, done: int, total: int) -> bool: ...

    def complete_job(self, job_id: str, owner: str, bundle: dict[str, Any]) -> bool: ...

    def fail_job(
        self, job_id: str, owner: str, error: JobError, *, retry: bool, max_attempts: int
    ) -> JobRecord | None: ...

    # FHIR resources
    def read_resource(self, resource_type: str, resource_id: str) -> StoredResource | None: ...

    def put_resource(self, resource: dict[str, Any]) -> StoredResource: ...

    def retract_document_results(self, document_id: str) -> int: ...

    def search_resources(
        self,
        resource_type: str,
        *,
        patient: str | None = None,
        ids: Sequence[str] = (),
        count: int = 50,
        offset: int = 0,
    ) -> tuple[list[StoredResource], int]: ...
