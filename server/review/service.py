"""The review queue and the review of one document, over the store and the caller's scopes.

Reviewing needs a ``user/`` token (a person, signed in through the built-in SMART server) with
read on Bundle, DocumentReference and Binary, and ``u`` (``c`` for additions) on every type the
reviewer changes. The queue shows as little PHI as the task needs: initials, document type, age.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Mapping
from typing import Any, Final

import anyio.to_thread
import msgspec

from fhir_profiles.bundle import EVIDENCE_EXTENSION, REVIEW_REASON_EXTENSION, REVIEW_TAG_SYSTEM
from fhir_profiles.extraction import Allergy, Diagnosis, Extraction, Medication, Procedure
from server.auth import Caller
from server.errors import InvalidRequest, NotFound
from server.pipeline.code import code_extraction
from server.review.edits import Decision, Reviewer, added_type, apply_decision, fields_of
from server.services import Services
from server.store import ReviewAction, Store
from server.store.sqlite import now_instant
from terminology import TerminologyService

REVIEWER_CONTEXTS: Final = ("user",)


class Box(msgspec.Struct, frozen=True, kw_only=True):
    page: int
    x0: float
    y0: float
    x1: float
    y1: float


class FieldView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    label: str
    value: str


class ItemView(msgspec.Struct, frozen=True, kw_only=True):
    reference: str
    kind: str
    title: str
    flagged: bool
    rejected: bool
    fields: list[FieldView]
    boxes: list[Box]


class DocumentView(msgspec.Struct, frozen=True, kw_only=True):
    document_id: str
    bundle_id: str
    bundle_version: int
    pages: int
    document_type: str
    reasons: list[str]
    items: list[ItemView]
    last_review: ReviewAction | None


class QueueItem(msgspec.Struct, frozen=True, kw_only=True):
    document_id: str
    received: str
    document_type: str
    initials: str
    reasons: list[str]
    flagged: int
    status: str  # "to review", "released", "returned"
    waiting_days: int


def require_reviewer(caller: Caller, *interactions_on_bundle: str) -> None:
    caller.require("Bundle", *interactions_on_bundle, contexts=REVIEWER_CONTEXTS, identified=True)


def _tags(resource: Mapping[str, Any]) -> set[str]:
    return {t.get("code", "") for t in resource.get("meta", {}).get("tag", []) if t.get("system") == REVIEW_TAG_SYSTEM}


def _reasons(bundle: Mapping[str, Any]) -> list[str]:
    return [
        str(e["valueCoding"].get("display", e["valueCoding"].get("code")))
        for e in bundle.get("meta", {}).get("extension", [])
        if e.get("url") == REVIEW_REASON_EXTENSION
    ]


def _initials(bundle: Mapping[str, Any]) -> str:
    patient: Mapping[str, Any] = next(
        (e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "Patient"), {}
    )
    name = (patient.get("name") or [{}])[0]
    words = re.findall(r"[A-Za-z]+", name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]))
    return "".join(w[0].upper() for w in words[:3]) or "?"


_KIND_OF_FILE: Final = {"application/pdf": "PDF", "image/tiff": "TIFF fax", "text/plain": "transcribed note"}


def _document_type(resource: Mapping[str, Any]) -> str:
    """What the document is, without PHI: its type, else its title, else what kind of file it is."""
    concept = resource.get("type") or {}
    coding = (concept.get("coding") or [{}])[0]
    attachment = ((resource.get("content") or [{}])[0]).get("attachment", {})
    kind = _KIND_OF_FILE.get(str(attachment.get("contentType")), "image")
    return str(concept.get("text") or coding.get("display") or f"{kind} document")


async def queue(services: Services, caller: Caller, *, show_all: bool = False, limit: int = 200) -> list[QueueItem]:
    """Documents waiting for review (or all extracted ones), oldest first. The store picks them out
    (no Bundle is opened for a document that does not wait), page by page until ``limit`` are found
    that the caller may see."""
    require_reviewer(caller, "s")
    store = services.store
    today = dt.datetime.now(dt.UTC).date()
    items: list[QueueItem] = []
    offset = 0
    while len(items) < limit:
        page = functools.partial(store.review_candidates, waiting_only=not show_all, count=limit, offset=offset)
        document_ids = await anyio.to_thread.run_sync(page)
        offset += len(document_ids)
        for document_id in document_ids:
            item = await anyio.to_thread.run_sync(_queue_item, store, caller, document_id, show_all, today)
            if item is not None:
                items.append(item)
                if len(items) >= limit:
                    break
        if len(document_ids) < limit:
            break
    return items


def _queue_item(store: Store, caller: Caller, document_id: str, show_all: bool, today: dt.date) -> QueueItem | None:
    """The queue's line for a document, or None where the caller may not see it or it waits for no one."""
    document = store.get_document(document_id)
    if document is None or not caller.permits(document.resource, "s"):
        return None
    bundle_id = store.latest_bundle_id(document.id)
    stored = None if bundle_id is None else store.read_resource("Bundle", bundle_id)
    if stored is None:
        return None
    bundle = stored.resource
    last = store.last_review(document.id)
    status = "to review" if last is None else last.action
    needs_review = "requires-review" in _tags(bundle) and (last is None or last.action == "returned")
    if not (show_all or needs_review):
        return None
    flagged = sum(1 for e in bundle.get("entry", []) if "requires-review" in _tags(e["resource"]))
    received = dt.date.fromisoformat(document.created_at[:10])
    return QueueItem(
        document_id=document.id,
        received=document.created_at,
        document_type=_document_type(document.resource),
        initials=_initials(bundle),
        reasons=_reasons(bundle),
        flagged=flagged,
        status=status,
        waiting_days=(today - received).days,
    )


def _boxes(bundle: Mapping[str, Any]) -> dict[str, list[Box]]:
    boxes: dict[str, list[Box]] = {}
    for entry in bundle.get("entry", []):
        provenance = entry["resource"]
        if provenance["resourceType"] != "Provenance":
            continue
        for entity in provenance.get("entity", []):
            for extension in entity.get("extension", []):
                if extension.get("url") != EVIDENCE_EXTENSION:
                    continue
                parts = extension.get("extension", [])
                page = next((p["valueInteger"] for p in parts if p["url"] == "page"), 1)
                for part in parts:
                    if part["url"] == "box":
                        x0, y0, x1, y1 = (float(v) for v in part["valueString"].split(","))
                        for target in provenance.get("target", []):
                            reference = target["reference"].split("/_history/")[0]
                            boxes.setdefault(reference, []).append(Box(page=page, x0=x0, y0=y0, x1=x1, y1=y1))
    return boxes


def _title(resource: Mapping[str, Any]) -> str:
    if resource["resourceType"] == "FamilyMemberHistory":  # "Mother: Breast cancer"
        relative = (resource.get("relationship", {}).get("coding") or [{}])[0].get("display", "Relative")
        condition = (resource.get("condition") or [{}])[0].get("code", {}).get("text", "")
        return f"{relative}: {condition}" if condition else str(relative)
    if resource["resourceType"] == "Encounter":  # "ambulatory · Cardiology"
        parts = [resource.get("class", {}).get("display"), resource.get("serviceType", {}).get("text")]
        return " · ".join(str(p) for p in parts if p) or "Encounter"
    for path in (("code", "text"), ("medicationCodeableConcept", "text"), ("description",)):
        value: Any = resource
        for step in path:
            value = value.get(step) if isinstance(value, Mapping) else None
        if value:
            return str(value)
    if resource["resourceType"] == "Patient":
        return "Patient"
    coding = (resource.get("code", {}).get("coding") or [{}])[0]
    return str(coding.get("display") or resource["resourceType"])


async def document_view(services: Services, caller: Caller, document_id: str) -> DocumentView:
    require_reviewer(caller, "r")
    store = services.store
    document = await anyio.to_thread.run_sync(store.get_document, document_id)
    if document is None:
        raise NotFound(f"DocumentReference/{document_id} is not known")
    caller.require_resource(document.resource)
    bundle_id = await anyio.to_thread.run_sync(store.latest_bundle_id, document_id)
    stored = await anyio.to_thread.run_sync(store.read_resource, "Bundle", bundle_id) if bundle_id else None
    if stored is None or bundle_id is None:
        raise NotFound("this document has no finished extraction to review")
    bundle = stored.resource
    boxes = _boxes(bundle)
    items = []
    # every resource the release marks reviewed, but the DiagnosticReport that groups the results
    order = {
        "Patient": 0,
        "Encounter": 1,
        "Condition": 2,
        "FamilyMemberHistory": 3,
        "MedicationStatement": 4,
        "MedicationRequest": 4,
        "AllergyIntolerance": 5,
        "Observation": 6,
        "Procedure": 7,
        "CarePlan": 8,
    }
    entries = sorted(
        (e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] in order),
        key=lambda r: order[r["resourceType"]],
    )
    for resource in entries:
        reference = f"{resource['resourceType']}/{resource['id']}"
        status = resource.get("status") or (resource.get("verificationStatus", {}).get("coding") or [{}])[0].get("code")
        items.append(
            ItemView(
                reference=reference,
                kind=resource["resourceType"],
                title=_title(resource),
                flagged="requires-review" in _tags(resource),
                rejected=status == "entered-in-error",
                fields=[FieldView(name=n, label=label, value=v) for n, label, v in fields_of(resource)],
                boxes=boxes.get(reference, []),
            )
        )
    return DocumentView(
        document_id=document_id,
        bundle_id=bundle_id,
        bundle_version=stored.version_id,
        pages=document.pages,
        document_type=_document_type(document.resource),
        reasons=_reasons(bundle),
        items=items,
        last_review=await anyio.to_thread.run_sync(store.last_review, document_id),
    )


def code_additions(decision: Decision, terminology: TerminologyService | None, threshold: float) -> Decision:
    """``decision`` with each added finding the reviewer gave no code coded as the pipeline codes
    a document's mentions: in every system the index has, the lookup's top candidate where it is
    sure (``threshold``, ``PAPERCHART_CODE_ACCEPT_SIMILARITY``), else none. No LLM chooser here:
    the reviewer picks a code through the type-ahead when the lookup is not sure. A lab result is
    coded from the built-in LOINC table when the Bundle is made."""
    families = {"Condition": "diagnoses", "MedicationStatement": "medications"}
    families |= {"AllergyIntolerance": "allergies", "Procedure": "procedures"}
    todo = [i for i, f in enumerate(decision.added) if not f.codings and f.kind in families]
    if terminology is None or not todo:
        return decision
    mentions: dict[str, list[int]] = {}
    for i in todo:
        mentions.setdefault(families[decision.added[i].kind], []).append(i)
    extraction = Extraction(
        diagnoses=tuple(Diagnosis(text=decision.added[i].text) for i in mentions.get("diagnoses", [])),
        medications=tuple(
            Medication(name=decision.added[i].text, text=decision.added[i].text)
            for i in mentions.get("medications", [])
        ),
        allergies=tuple(Allergy(substance=decision.added[i].text) for i in mentions.get("allergies", [])),
        procedures=tuple(Procedure(text=decision.added[i].text) for i in mentions.get("procedures", [])),
    )
    coded = code_extraction(extraction, terminology, None, threshold)
    added = list(decision.added)
    for family, indices in mentions.items():
        for i, fact in zip(indices, getattr(coded, family), strict=True):
            added[i] = msgspec.structs.replace(added[i], codings=fact.codings)
    return msgspec.structs.replace(decision, added=tuple(added))


async def release(
    services: Services, caller: Caller, document_id: str, expected_version: int, decision: Decision
) -> int:
    """Apply the decision and store the reviewed Bundle as a new version; returns that version."""
    view = await document_view(services, caller, document_id)
    settings = services.settings
    require_reviewer(caller, "u")
    for edit in decision.edits:
        caller.require(edit.reference.split("/", 1)[0], "u", contexts=REVIEWER_CONTEXTS)
    for reference in decision.rejected:
        caller.require(reference.split("/", 1)[0], "u", contexts=REVIEWER_CONTEXTS)
    for finding in decision.added:
        caller.require(added_type(finding, settings.medication_resource), "c", contexts=REVIEWER_CONTEXTS)
    caller.require("Provenance", "c", contexts=REVIEWER_CONTEXTS)
    stored = await anyio.to_thread.run_sync(services.store.read_resource, "Bundle", view.bundle_id)
    if stored is None:
        raise NotFound("the Bundle is no longer available")
    versions = {}
    for entry in stored.resource.get("entry", []):  # each one this release may store a new version of
        kind, resource_id = entry["resource"]["resourceType"], entry["resource"]["id"]
        if kind == "Provenance":
            continue
        current = await anyio.to_thread.run_sync(services.store.read_resource, kind, resource_id)
        if current is not None:
            versions[f"{kind}/{resource_id}"] = current.version_id
    decision = await anyio.to_thread.run_sync(
        code_additions, decision, services.terminology, settings.code_accept_similarity
    )
    plan = apply_decision(
        stored.resource,
        decision,
        Reviewer(username=caller.subject, fhir_user=caller.fhir_user),
        versions,
        now_instant(),
        settings.fhir_base_url,
        settings.medication_resource,
    )
    return await anyio.to_thread.run_sync(
        services.store.release_review, document_id, view.bundle_id, expected_version, plan.resources, caller.subject
    )


async def return_document(
    services: Services, caller: Caller, document_id: str, expected_version: int, comment: str
) -> None:
    view = await document_view(services, caller, document_id)
    require_reviewer(caller, "u")
    if not comment.strip():
        raise InvalidRequest("say why the document is returned", expression="comment")
    await anyio.to_thread.run_sync(
        services.store.return_review, document_id, view.bundle_id, expected_version, caller.subject, comment.strip()
    )
