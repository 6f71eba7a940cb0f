"""FHIR REST routes under ``/fhir``: DocumentReference upload, ``$extract``, jobs, reads, searches.

Asynchronous ``$extract`` follows the FHIR asynchronous request pattern
(http://hl7.org/fhir/R4/async.html): ``202 Accepted`` with ``Content-Location`` of a status URL
that answers ``202`` while running and the result (or an OperationOutcome) when done.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final
from urllib.parse import urlencode

import anyio.to_thread
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from fhir_profiles import FhirValidationError, operation_outcome, patient_of, validate_resource
from fhir_profiles.transaction import to_transaction
from fhir_profiles.us_core import PROFILES as US_CORE_PROFILES
from fhir_profiles.us_core import us_core_problems
from server import documents
from server.auth import QUIET_PUBLIC, Caller, needs
from server.errors import (
    InvalidFhirOutput,
    InvalidRequest,
    NotFound,
    PaperchartError,
)
from server.http.capability import SEARCHABLE_TYPES, capability_statement
from server.services import Services
from server.store import JobRecord, StoredResource

FHIR_JSON: Final = "application/fhir+json"
REIDENTIFY_SCOPE: Final = "paperchart.reidentify"


def fhir_response(
    resource: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None
) -> Response[bytes]:
    return Response(
        content=json.dumps(resource).encode(), status_code=status_code, media_type=FHIR_JSON, headers=headers or {}
    )


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object (a FHIR resource)")
    return data


def _prefers_sync(request: Request[Any, Any, Any]) -> bool:
    # RFC 7240 Prefer; FHIR R4 §3.1.0.8 uses respond-async, we also honour respond-sync
    prefer = request.headers.get("prefer", "")
    tokens = {token.strip().lower() for token in prefer.split(",")}
    return "respond-sync" in tokens


def _job_location(services: Services, job: JobRecord) -> str:
    return f"{services.settings.fhir_base_url}/_jobs/{job.id}"


class FhirController(Controller):
    path = "/fhir"

    @get("/metadata", sync_to_thread=False, opt=QUIET_PUBLIC)
    def metadata(self, services: NamedDependency[Services]) -> Response[bytes]:
        return fhir_response(capability_statement(services.settings))

    @post("/DocumentReference", status_code=201, opt=needs("DocumentReference", "c"))
    async def create_document_reference(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        record = await documents.create_document(services, caller, _parse_json(await request.body()))
        document = _with_binary_url(record.resource)
        location = f"{services.settings.fhir_base_url}/DocumentReference/{record.id}/_history/1"
        return fhir_response(document, 201, {"Location": location, "ETag": 'W/"1"', "Last-Modified": record.created_at})

    @get("/DocumentReference/{document_id:str}", opt=needs("DocumentReference", "r"))
    async def read_document_reference(
        self, document_id: FromPath[str], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        record = await anyio.to_thread.run_sync(services.store.get_document, document_id)
        if record is None:
            raise NotFound(f"DocumentReference/{document_id} is not known")
        caller.require_resource(record.resource)
        return fhir_response(_with_binary_url(record.resource), headers={"ETag": f'W/"{record.version_id}"'})

    @delete("/DocumentReference/{document_id:str}", opt=needs("DocumentReference", "d"), status_code=204)
    async def delete_document_reference(
        self, document_id: FromPath[str], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> None:
        """Delete a document, its bytes and everything extracted from it, and destroy its data key.

        Irreversible by design (crypto-shredding): no copy in the live database stays readable.
        """
        record = await anyio.to_thread.run_sync(services.store.get_document, document_id)
        if record is None:
            raise NotFound(f"DocumentReference/{document_id} is not known")
        caller.require_resource(record.resource, "d")
        await anyio.to_thread.run_sync(services.store.shred_document, document_id)

    @get("/Binary/{document_id:str}", opt=needs("Binary", "r"))
    async def read_binary(
        self, document_id: FromPath[str], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        record = await anyio.to_thread.run_sync(services.store.get_document, document_id)
        content = await anyio.to_thread.run_sync(services.store.get_document_content, document_id)
        if record is None or content is None:
            raise NotFound(f"Binary/{document_id} is not known")
        caller.require_compartment("Binary", patient_of(record.resource))
        return Response(content=content, media_type=record.content_type)

    @post("/DocumentReference/{document_id:str}/$extract", opt=needs("DocumentReference", "c"))
    async def extract(
        self,
        request: Request[Any, Any, Any],
        document_id: FromPath[str],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
    ) -> Response[bytes]:
        job = await documents.start_extraction(services, caller, document_id)
        if _prefers_sync(request):
            finished = await services.jobs.wait(job.id, services.settings.sync_wait_seconds)
            if finished is not None and finished.status in ("succeeded", "failed"):
                return await self._job_result(services, caller, finished)
        return fhir_response(
            operation_outcome(
                "informational",
                "extraction accepted; poll the Content-Location URL for the result",
                severity="information",
            ),
            202,
            {"Content-Location": _job_location(services, job)},
        )

    @get("/_jobs/{job_id:str}", opt=needs("DocumentReference", "c"))
    async def job_status(
        self, job_id: FromPath[str], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        job = await documents.get_job(services, caller, job_id)
        if job.status in ("queued", "running"):
            return fhir_response(
                operation_outcome(
                    "informational", f"extraction in progress ({documents.job_progress(job)})", severity="information"
                ),
                202,
                {"X-Progress": documents.job_progress(job), "Retry-After": "1"},
            )
        return await self._job_result(services, caller, job)

    async def _job_result(self, services: Services, caller: Caller, job: JobRecord) -> Response[bytes]:
        if job.status == "failed" or job.bundle_id is None:
            error = job.error
            status, code, message = (
                (error.http_status, error.issue_code, error.message)
                if error
                else (500, "exception", "extraction failed")
            )
            return fhir_response(operation_outcome(code, message), status)
        bundle = await documents.read_bundle(services, caller, job.bundle_id, job_result=True)
        return fhir_response(
            bundle,
            headers={"Content-Location": f"{services.settings.fhir_base_url}/Bundle/{job.bundle_id}"},
        )

    @get("/{resource_type:str}/{resource_id:str}", opt=needs(None, "r"))
    async def read(
        self,
        resource_type: FromPath[str],
        resource_id: FromPath[str],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
    ) -> Response[bytes]:
        if resource_type not in SEARCHABLE_TYPES:
            raise NotFound(f"resource type {resource_type} is not supported")
        return await _read(services, caller, resource_type, resource_id)

    # Bundle has routes of its own: the static segment of /Bundle/{id}/$transaction would otherwise
    # hide it from the generic /{resource_type} routes in Litestar's router.
    @get("/Bundle/{bundle_id:str}", opt=needs("Bundle", "r"))
    async def read_bundle(
        self, bundle_id: FromPath[str], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        return await _read(services, caller, "Bundle", bundle_id)

    @get("/Bundle", opt=needs("Bundle", "s"))
    async def search_bundles(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
        count: Annotated[int, QueryParameter(name="_count", ge=0, le=500)] = 50,
        offset: Annotated[int, QueryParameter(name="_offset", ge=0)] = 0,
    ) -> Response[bytes]:
        return await _search(request, caller, "Bundle", services, count, offset)

    @get("/Bundle/{bundle_id:str}/$document", opt=needs("Bundle", "r"))
    async def bundle_as_document(
        self, bundle_id: FromPath[str], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        """A stored Bundle as a FHIR ``document`` Bundle (Composition first), for EHRs that file documents."""
        from fhir_profiles.document import to_document
        from server.pipeline.runner import software_name

        bundle = await documents.read_bundle(services, caller, bundle_id)
        try:
            document = to_document(
                bundle,
                document_type=None,
                title="Findings extracted from a received document",
                fhir_base_url=services.settings.fhir_base_url,
                software=software_name(),
            )
        except FhirValidationError as exc:
            raise InvalidFhirOutput(
                "the Bundle could not be turned into a valid document", diagnostics="; ".join(exc.problems)
            ) from None
        return fhir_response(document)

    @get("/Bundle/{bundle_id:str}/$deidentify", opt=needs("Bundle", "r"))
    async def deidentify_bundle(
        self, bundle_id: FromPath[str], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        """The Bundle de-identified (Safe Harbor, stable pseudonyms and date shifts), labelled PSEUDED."""
        return fhir_response(await documents.deidentified_bundle(services, caller, bundle_id))

    @get("/DocumentReference/{document_id:str}/$deidentified-summary", opt=needs("Bundle", "r"))
    async def document_summary(
        self, document_id: FromPath[str], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        summary, bundles = await documents.deidentified_view(services, caller, document_id=document_id)
        return fhir_response(_summary_parameters(summary, bundles))

    # Generic, not /Patient/{id}/$...: a static "Patient" segment would hide Patient from the
    # generic /{resource_type} read, search and $validate routes in Litestar's router.
    @get("/{resource_type:str}/{resource_id:str}/{operation:str}", opt=needs("Bundle", "r"))
    async def patient_summary(
        self,
        resource_type: FromPath[str],
        resource_id: FromPath[str],
        operation: FromPath[str],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
    ) -> Response[bytes]:
        """``Patient/{id}/$deidentified-summary``: every extracted document of the patient, de-identified."""
        if resource_type != "Patient" or operation != "$deidentified-summary":
            raise NotFound(f"operation {operation} is not supported on {resource_type}")
        summary, bundles = await documents.deidentified_view(services, caller, patient_id=resource_id)
        return fhir_response(_summary_parameters(summary, bundles))

    @post(
        "/$reidentify",
        status_code=200,
        opt=needs("Patient", "r", contexts=("user", "system"), scope=REIDENTIFY_SCOPE),
    )
    async def reidentify(
        self, request: Request[Any, Any, Any], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        """Reverse a de-identification pseudonym (Parameters ``pseudonym``) to what it stands for.

        Needs identified Patient read and the dedicated ``paperchart.reidentify`` scope; every call is
        in the audit trail (the pseudonym is not PHI; the answer is not recorded).
        """
        body = _parse_json(await request.body())
        values = [
            p.get("valueString")
            for p in body.get("parameter", [])
            if body.get("resourceType") == "Parameters" and p.get("name") == "pseudonym"
        ]
        if len(values) != 1 or not isinstance(values[0], str) or not values[0]:
            raise InvalidRequest("send Parameters with one 'pseudonym' valueString")
        caller.require("Patient", "r", identified=True)
        original = await anyio.to_thread.run_sync(documents.reidentify, services, values[0])
        return fhir_response(
            {"resourceType": "Parameters", "parameter": [{"name": "original", "valueString": original}]}
        )

    @get("/Bundle/{bundle_id:str}/$transaction", opt=needs("Bundle", "r"))
    async def bundle_as_transaction(
        self, bundle_id: FromPath[str], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        """A stored Bundle as a transaction another FHIR server can load (conditional create on Patient)."""
        bundle = await documents.read_bundle(services, caller, bundle_id)
        document = None
        for entry in bundle.get("entry", []):
            for entity in entry["resource"].get("entity", []):
                reference = entity.get("what", {}).get("reference", "")
                if reference.startswith("DocumentReference/"):
                    document = await anyio.to_thread.run_sync(
                        services.store.get_document, reference.removeprefix("DocumentReference/")
                    )
                    break
            if document is not None:
                break
        binary = f"{services.settings.fhir_base_url}/Binary/{document.id}" if document else None
        try:
            transaction = to_transaction(bundle, document.resource if document else None, binary)
        except FhirValidationError as exc:
            raise InvalidFhirOutput(
                "the Bundle could not be turned into a valid transaction", diagnostics="; ".join(exc.problems)
            ) from None
        return fhir_response(transaction)

    @post("/{resource_type:str}/$validate", status_code=200, opt=needs(None, "c", "u"))
    async def validate(
        self,
        request: Request[Any, Any, Any],
        resource_type: FromPath[str],
        caller: NamedDependency[Caller],
        profile: Annotated[str | None, QueryParameter(name="profile")] = None,
    ) -> Response[bytes]:
        """FHIR $validate (R4 §6.1.0.4): the resource in the body, the verdict as an OperationOutcome (200).

        With ``profile`` (a query parameter or a Parameters ``profile``) naming a US Core profile,
        its cardinality and must-support rules are checked too (``fhir_profiles.us_core``).
        """
        body = _parse_json(await request.body())
        if body.get("resourceType") == "Parameters":  # the resource may come wrapped in Parameters.resource
            parameters = body.get("parameter", [])
            wrapped = [p.get("resource") for p in parameters if p.get("name") == "resource"]
            named = [p.get("valueUri") or p.get("valueCanonical") for p in parameters if p.get("name") == "profile"]
            profile = profile or (str(named[0]) if named and named[0] else None)
            body = wrapped[0] if wrapped and isinstance(wrapped[0], dict) else body
        if body.get("resourceType") != resource_type:
            raise InvalidRequest(f"the body is not a {resource_type} resource", expression="resourceType")
        if profile is not None and profile.split("|")[0] not in US_CORE_PROFILES:
            raise InvalidRequest(
                "profile not supported: give a US Core profile URL or leave it out to validate against R4",
                expression="profile",
            )
        problems: list[str] = []
        try:
            await anyio.to_thread.run_sync(validate_resource, body)
        except FhirValidationError as exc:
            problems.extend(exc.problems)
        if profile is not None:
            problems.extend(us_core_problems(body, profile))
        if problems:
            issues = [
                {
                    "severity": "error",
                    "code": "invalid",
                    "details": {"text": problem},
                    "expression": [f"{resource_type}.{problem.split(':', 1)[0]}"],
                }
                for problem in problems
            ]
            return fhir_response({"resourceType": "OperationOutcome", "issue": issues})
        against = f"FHIR R4 and {profile.rsplit('/', 1)[-1]}" if profile else "FHIR R4"
        return fhir_response(
            operation_outcome("informational", f"{resource_type} is valid {against}", severity="information")
        )

    @get("/DocumentReference", opt=needs("DocumentReference", "s"))
    async def search_document_references(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
        count: Annotated[int, QueryParameter(name="_count", ge=0, le=500)] = 50,
        offset: Annotated[int, QueryParameter(name="_offset", ge=0)] = 0,
    ) -> Response[bytes]:
        # its own route: POST /fhir/DocumentReference is static, so the generic search would not match
        return await _search(request, caller, "DocumentReference", services, count, offset)

    @get("/{resource_type:str}", opt=needs(None, "s"))
    async def search(
        self,
        request: Request[Any, Any, Any],
        resource_type: FromPath[str],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
        count: Annotated[int, QueryParameter(name="_count", ge=0, le=500)] = 50,
        offset: Annotated[int, QueryParameter(name="_offset", ge=0)] = 0,
    ) -> Response[bytes]:
        if resource_type not in SEARCHABLE_TYPES:
            raise NotFound(f"resource type {resource_type} is not supported")
        return await _search(request, caller, resource_type, services, count, offset)


async def _read(services: Services, caller: Caller, resource_type: str, resource_id: str) -> Response[bytes]:
    stored = await anyio.to_thread.run_sync(services.store.read_resource, resource_type, resource_id)
    if stored is None:
        raise NotFound(f"{resource_type}/{resource_id} is not known")
    caller.require_resource(stored.resource)
    resource = caller.visible(stored.resource) if resource_type == "Bundle" else stored.resource
    return fhir_response(resource, headers={"ETag": f'W/"{stored.version_id}"', "Last-Modified": stored.last_updated})


_SEARCH_PARAMETERS: Final = frozenset({"patient", "subject", "_id", "identifier", "_count", "_offset", "_format"})


async def _search(
    request: Request[Any, Any, Any], caller: Caller, resource_type: str, services: Services, count: int, offset: int
) -> Response[bytes]:
    """Search by patient (or subject), _id and identifier, with _count/_offset paging.

    A token whose only search permission is ``patient/`` searches within its launch patient; each
    match is then checked against the token (query-constrained scopes), and entries it may not see
    are left out (``total`` is then omitted, as it would count them).
    """
    query = request.query_params
    unknown = sorted(set(query) - _SEARCH_PARAMETERS)
    if unknown:
        # FHIR R4 §3.1.1.4.3: a server that cannot honour a parameter must not silently drop it
        raise InvalidRequest(f"search parameter(s) not supported: {', '.join(unknown)}")
    reference = query.get("patient") or query.get("subject")
    patient_id = documents.search_patient(
        caller, resource_type, reference.removeprefix("Patient/") if reference else None
    )
    id_ = query.get("_id")
    if resource_type == "Patient" and patient_id is not None:
        id_ = patient_id
        patient_id = None
    ids = [i for i in (id_ or "").split(",") if i]
    identifier = query.get("identifier")
    if identifier is not None:
        matched = await documents.ids_with_identifier(services, resource_type, identifier)
        ids = [i for i in matched if not ids or i in ids] or ["-no-match-"]
    if resource_type == "DocumentReference":
        records, total = await anyio.to_thread.run_sync(
            lambda: services.store.search_documents(patient=patient_id, ids=ids, count=count, offset=offset)
        )
        found = [
            StoredResource(
                resource_type="DocumentReference",
                id=d.id,
                version_id=d.version_id,
                last_updated=d.resource["meta"]["lastUpdated"],
                resource=_with_binary_url(d.resource),
            )
            for d in records
        ]
    else:
        found, total = await anyio.to_thread.run_sync(
            lambda: services.store.search_resources(
                resource_type, patient=patient_id, ids=ids, count=count, offset=offset
            )
        )
    visible = [
        StoredResource(
            resource_type=s.resource_type,
            id=s.id,
            version_id=s.version_id,
            last_updated=s.last_updated,
            resource=caller.visible(s.resource) if s.resource_type == "Bundle" else s.resource,
        )
        for s in found
        if caller.permits(s.resource, "s")
    ]
    resources = [s.resource for s in visible]
    bundle = searchset(services, resource_type, request, resources, total, count, offset, len(visible) == len(found))
    return fhir_response(bundle)


def _summary_parameters(summary: str, bundles: list[dict[str, Any]]) -> dict[str, Any]:
    parameters: dict[str, Any] = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "summary", "valueString": summary},
            *({"name": "bundle", "resource": bundle} for bundle in bundles),
        ],
    }
    return parameters


def _with_binary_url(document: dict[str, Any]) -> dict[str, Any]:
    """The stored DocumentReference with its attachment pointing at our Binary endpoint."""
    content = [dict(c) for c in document.get("content", [])]
    if content:
        content[0] = {**content[0], "attachment": {**content[0]["attachment"], "url": f"Binary/{document['id']}"}}
    return {**document, "content": content}


def searchset(
    services: Services,
    resource_type: str,
    request: Request[Any, Any, Any],
    found: list[dict[str, Any]],
    total: int,
    count: int,
    offset: int,
    show_total: bool = True,
) -> dict[str, Any]:
    base = f"{services.settings.fhir_base_url}/{resource_type}"
    params = {k: v for k, v in request.query_params.items() if k not in ("_offset",)}

    def link(relation: str, at: int) -> dict[str, str]:
        return {"relation": relation, "url": f"{base}?{urlencode({**params, '_offset': at})}"}

    links = [link("self", offset)]
    if offset + count < total:
        links.append(link("next", offset + count))
    if offset > 0:
        links.append(link("previous", max(offset - count, 0)))
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        **({"total": total} if show_total else {}),
        "link": links,
        "entry": [
            {
                "fullUrl": f"{services.settings.fhir_base_url}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in found
        ],
    }
    try:
        validate_resource(bundle, deep=False)
    except FhirValidationError as exc:  # pragma: no cover - a bug in this function
        raise PaperchartError("search result is not valid FHIR", diagnostics="; ".join(exc.problems)) from None
    return bundle
