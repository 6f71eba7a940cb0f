"""Accepting documents and running their extraction: the one implementation behind REST, MCP and CLI.

Every function takes the ``Caller`` and checks it at the resource level (patient compartment,
query-constrained scopes); the transports check only that the interaction is allowed at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Final

import anyio.to_thread

from fhir_profiles import FhirValidationError, patient_of, validate_resource
from server.auth import Caller
from server.deid import PSEUDONYMIZED, deidentified_summary
from server.errors import Forbidden, InvalidRequest, NotFound, UnprocessableDocument, UnsupportedResource
from server.services import Services
from server.store import DocumentRecord, JobRecord

_BASE64_ALPHABET: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
_DATA: Final = "DocumentReference.content[0].attachment.data"


def decode_base64(data: str, expression: str = _DATA) -> bytes:
    compact = "".join(data.split()).encode("ascii", errors="replace")
    if not compact or not set(compact) <= _BASE64_ALPHABET:
        raise InvalidRequest("attachment data is not valid base64", expression=expression)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("attachment data is not valid base64", expression=expression) from None


async def create_document(services: Services, caller: Caller, resource: dict[str, Any]) -> DocumentRecord:
    """Store a DocumentReference whose first attachment carries the document inline (base64).

    The bytes are checked (magic bytes, size, pages, pixels) before anything is stored; the
    stored DocumentReference keeps the attachment's size and hash but not the data.
    """
    if resource.get("resourceType") != "DocumentReference":
        raise UnsupportedResource("this endpoint accepts a DocumentReference resource", expression="resourceType")
    contents: list[Any] = resource.get("content") or []
    first = contents[0] if isinstance(contents, list) and contents else None
    attachment = first.get("attachment") if isinstance(first, dict) else None
    if not isinstance(attachment, dict):
        raise UnprocessableDocument(
            "DocumentReference.content[0].attachment is required", expression="DocumentReference.content[0].attachment"
        )
    content_type, data = attachment.get("contentType"), attachment.get("data")
    if not isinstance(content_type, str) or not content_type:
        raise UnprocessableDocument(
            "attachment.contentType is required", expression="DocumentReference.content[0].attachment.contentType"
        )
    if data == "":
        raise UnprocessableDocument("document is empty", expression=_DATA)
    if not isinstance(data, str):
        raise UnprocessableDocument("attachment.data (base64) is required", expression=_DATA)
    content = await anyio.to_thread.run_sync(decode_base64, data)
    info = await anyio.to_thread.run_sync(services.pipeline.inspect, content, content_type)

    stored_attachment = {k: v for k, v in attachment.items() if k != "data"}
    stored_attachment.update(
        contentType=info.content_type,
        size=info.size,
        # FHIR R4 Attachment.hash is the base64 SHA-1 of the data
        hash=base64.b64encode(hashlib.sha1(content, usedforsecurity=False).digest()).decode(),
    )
    to_store = {**resource, "content": [{**contents[0], "attachment": stored_attachment}, *contents[1:]]}
    to_store.pop("id", None)
    to_store.setdefault("status", "current")
    caller.require_resource(to_store, "c")  # a patient/ token uploads only for its own patient
    try:
        validate_resource(to_store)
    except FhirValidationError as exc:
        raise InvalidRequest("DocumentReference is not valid FHIR R4", diagnostics="; ".join(exc.problems)) from None
    return await anyio.to_thread.run_sync(
        services.store.create_document, to_store, content, info.content_type, info.pages
    )


async def start_extraction(services: Services, caller: Caller, document_id: str) -> JobRecord:
    """Queue the document's extraction (or return the job already queued or running for it)."""
    record = await anyio.to_thread.run_sync(services.store.get_document, document_id)
    if record is None:
        raise NotFound(f"DocumentReference/{document_id} is not known")
    caller.require_resource(record.resource, "c")
    job = await anyio.to_thread.run_sync(services.store.enqueue_job, document_id)
    services.jobs.submit()
    return job


async def get_job(services: Services, caller: Caller, job_id: str) -> JobRecord:
    job = await anyio.to_thread.run_sync(services.store.get_job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} is not known")
    document = await anyio.to_thread.run_sync(services.store.get_document, job.document_id)
    if document is not None:
        caller.require_resource(document.resource, "c")
    return job


async def read_bundle(
    services: Services, caller: Caller, bundle_id: str, *, job_result: bool = False
) -> dict[str, Any]:
    """A stored extraction Bundle, with only the entries the caller may read.

    As the result of an extraction the caller started (``job_result``) it needs no Bundle read
    permission of its own: the caller gets the entries it may read, which may be none.
    """
    stored = await anyio.to_thread.run_sync(services.store.read_resource, "Bundle", bundle_id)
    if stored is None:
        raise NotFound(f"Bundle/{bundle_id} is not known")
    if not job_result:
        caller.require_resource(stored.resource)
    return caller.visible(stored.resource)


def search_patient(caller: Caller, resource_type: str, requested: str | None) -> str | None:
    """The patient a search is limited to: the requested one, or for a token whose only search
    permission is ``patient/``, its launch patient (asking for another is refused)."""
    if not caller.grant.patient_only(resource_type, "s"):
        return requested
    if requested is not None and requested != caller.patient:
        raise Forbidden("patient/ scopes reach only the launch patient")
    return caller.patient


async def ids_with_identifier(services: Services, resource_type: str, identifier: str) -> list[str]:
    """Token search (FHIR R4 §3.1.1.4.9) on identifiers: ``[system]|[value]`` or a value alone."""
    system, _, value = identifier.rpartition("|") if "|" in identifier else ("", "", identifier)
    return await anyio.to_thread.run_sync(
        lambda: services.store.find_by_identifier(resource_type, system or None, value)
    )


def job_progress(job: JobRecord) -> str:
    """Human-readable progress: ``queued``, ``ocr: page 2 of 5`` (pages read so far), ``extract``, ``done``."""
    if job.status in ("queued", "failed"):
        return job.status
    if job.status == "succeeded":
        return "done"
    if job.stage == "ocr" and job.total:
        return f"ocr: page {job.done} of {job.total}"
    return job.stage or job.status


# --- de-identified views ------------------------------------------------------------------------


def _deidentified(services: Services, caller: Caller, raw: dict[str, Any]) -> dict[str, Any]:
    """The de-identified Bundle, with the entries the caller may read in that form.

    A scope like ``system/Bundle.rs?_security=PSEUDED`` reaches only output labelled
    pseudonymized; an unconstrained read scope reaches it too. ``patient/`` scopes are judged
    by the real patient, before pseudonymization.
    """
    patient = patient_of(raw)
    issued: dict[str, str] = {}
    deid = services.deid.bundle(raw, issued=issued)
    services.store.remember_pseudonyms(issued)
    if not caller.grant.permits(deid, "r", patient):
        raise Forbidden("the access token does not allow de-identified reads of this Bundle")
    entries = [e for e in deid["entry"] if caller.grant.permits(e["resource"], "r", patient)]
    return {**deid, "entry": entries}


async def deidentified_bundle(services: Services, caller: Caller, bundle_id: str) -> dict[str, Any]:
    stored = await anyio.to_thread.run_sync(services.store.read_resource, "Bundle", bundle_id)
    if stored is None:
        raise NotFound(f"Bundle/{bundle_id} is not known")
    # transforming and recording pseudonyms is CPU and SQLite work: off the event loop
    return await anyio.to_thread.run_sync(_deidentified, services, caller, stored.resource)


async def _bundles_for(services: Services, *, document_id: str | None, patient_id: str | None) -> list[dict[str, Any]]:
    if document_id is not None:
        bundle_id = await anyio.to_thread.run_sync(services.store.latest_bundle_id, document_id)
        if bundle_id is None:
            raise NotFound(f"DocumentReference/{document_id} has no finished extraction")
        stored = await anyio.to_thread.run_sync(services.store.read_resource, "Bundle", bundle_id)
        return [stored.resource] if stored is not None else []
    found, _ = await anyio.to_thread.run_sync(
        lambda: services.store.search_resources("Bundle", patient=patient_id, count=100)
    )
    if not found:
        raise NotFound(f"Patient/{patient_id} has no extracted documents")
    return [s.resource for s in found]


async def deidentified_view(
    services: Services, caller: Caller, *, document_id: str | None = None, patient_id: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """A de-identified clinical summary and the de-identified Bundles of a document or a patient."""
    if (document_id is None) == (patient_id is None):
        raise InvalidRequest("give either a document id or a patient id")
    raws = await _bundles_for(services, document_id=document_id, patient_id=patient_id)
    bundles = [await anyio.to_thread.run_sync(_deidentified, services, caller, raw) for raw in raws]
    writer = _summary_writer(services)
    summaries = [
        # the LLM (when configured) is a blocking HTTP call: off the event loop
        await anyio.to_thread.run_sync(deidentified_summary, raw, services.deid.known_phi(raw), None, writer)
        for raw in raws
    ]
    return "\n\n".join(summaries), bundles


def _summary_writer(services: Services) -> Any:
    """The LLM's text completion when the LLM extractor is configured, else None (template summaries)."""
    from server.pipeline.extract.llm import LlmExtractor

    extractor = services.pipeline.extractor
    return extractor.client.complete_text if isinstance(extractor, LlmExtractor) else None


async def page_image(services: Services, caller: Caller, document_id: str, page: int, *, deidentified: bool) -> bytes:
    """One page as PNG; ``deidentified``: with every identifier blacked out (needs only the de-id scope).

    The plain page is rendered without OCR and cached (sealed with the document's key); the
    de-identified one needs the page's words, so it is read (OCR for a scan) each time.
    """
    from server.deid.image import png_bytes, redact_page

    record = await anyio.to_thread.run_sync(services.store.get_document, document_id)
    if record is None:
        raise NotFound(f"DocumentReference/{document_id} is not known")
    patient = patient_of(record.resource)
    if not deidentified:
        caller.require_compartment("Binary", patient)
        cached = await anyio.to_thread.run_sync(services.store.cached_page_image, document_id, page)
        if cached is not None:
            return cached
    else:
        probe = {"resourceType": "Binary", "meta": {"security": [dict(PSEUDONYMIZED)]}}
        if not caller.grant.permits(probe, "r", patient):
            raise Forbidden("the access token does not allow de-identified reads of this document")
    content = await anyio.to_thread.run_sync(services.store.get_document_content, document_id)
    if content is None:
        raise NotFound(f"DocumentReference/{document_id} is not known")
    if not deidentified:
        image = await anyio.to_thread.run_sync(services.pipeline.render_page, content, record.content_type, page)
        png = await anyio.to_thread.run_sync(png_bytes, image)
        await anyio.to_thread.run_sync(services.store.cache_page_image, document_id, page, png)
        return png
    image, words = await anyio.to_thread.run_sync(services.pipeline.page_with_words, content, record.content_type, page)
    known: list[str] = []
    bundle_id = await anyio.to_thread.run_sync(services.store.latest_bundle_id, document_id)
    if bundle_id is not None:
        stored = await anyio.to_thread.run_sync(services.store.read_resource, "Bundle", bundle_id)
        known = services.deid.known_phi(stored.resource) if stored is not None else []
    redacted = await anyio.to_thread.run_sync(redact_page, image, words, known)
    return await anyio.to_thread.run_sync(png_bytes, redacted)


def reidentify(services: Services, pseudonym: str) -> str:
    """What a pseudonym stands for. The route that calls this needs its own scope and is audited."""
    value = pseudonym.rsplit("/", 1)[-1].removeprefix("urn:uuid:").replace("-", "") if "/" in pseudonym else pseudonym
    original = services.store.resolve_pseudonym(value)
    if original is None:
        raise NotFound("this pseudonym was not issued by this deployment")
    return original
