"""The paperchart MCP server: tools, resources and a prompt over the same services as the REST API.

Authorization (MCP authorization spec, OAuth 2.1 resource server): every request carries a
bearer token whose audience is this MCP endpoint (RFC 8707 ``resource``); over stdio the token
comes from ``PAPERCHART_MCP_TOKEN``. Each tool needs a SMART scope (``TOOL_ACCESS``); ``tools/list``
shows only the tools the token may call, and a call without the scope fails with an MCP error.
Every tool call is audited like an API call.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final

import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from server import documents
from server.auth import Caller, caller_from_token
from server.errors import InvalidRequest, PaperchartError
from server.services import Services
from server.store.audit import AuditRecord, now_instant
from terminology import resolve_system

# tool -> (resource type, interactions one of which is needed, whether it returns identified data)
TOOL_ACCESS: Final[Mapping[str, tuple[str, tuple[str, ...], bool]]] = {
    "extract_document": ("DocumentReference", ("c",), False),
    "get_extraction_status": ("DocumentReference", ("c",), False),
    "get_bundle": ("Bundle", ("r",), True),
    "deidentified_summary": ("Bundle", ("r",), False),
    "lookup_code": ("CodeSystem", ("r",), False),
    "search_patients": ("Patient", ("s",), True),
    "list_documents": ("DocumentReference", ("s",), True),
}
INSTRUCTIONS: Final = (
    "paperchart turns clinical documents (PDF, scans, images) into coded FHIR R4. Use extract_document "
    "to submit a document, get_extraction_status to follow it, deidentified_summary for a summary safe to "
    "reason over, get_bundle only when identified data is needed and allowed, lookup_code for codes."
)


class CallerSource:
    """Who is calling: the HTTP request's bearer token, or over stdio the configured token."""

    def __init__(self, services: Callable[[], Services], stdio_token: str | None = None) -> None:
        self.services = services
        self._stdio_token = stdio_token

    def caller(self, headers: Mapping[str, str] | None) -> Caller:
        services = self.services()
        authorization = headers.get("authorization") if headers else None
        if authorization is None and self._stdio_token:
            authorization = f"Bearer {self._stdio_token}"
        return caller_from_token(services.auth.tokens, authorization, services.settings.mcp_url)


def _mcp_error(error: PaperchartError) -> MCPError:
    return MCPError(error.mcp_error_code, error.message)


def _result(model: BaseModel, text: str) -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=model.model_dump(mode="json")
    )


class ExtractionStatus(BaseModel):
    job_id: str
    document_id: str
    status: str = Field(description="queued, running, succeeded or failed")
    progress: str
    bundle_id: str | None = None
    resource_counts: dict[str, int] = Field(default_factory=dict, description="resources extracted, by type")
    error: str | None = None


class BundleResult(BaseModel):
    bundle_id: str
    resource_counts: dict[str, int]
    bundle: dict[str, Any] = Field(description="the FHIR R4 Bundle (only the entries the token may read)")


class DeidentifiedSummary(BaseModel):
    summary: str = Field(description="clinical summary with identifiers removed")
    bundles: list[dict[str, Any]] = Field(description="de-identified FHIR Bundles, labelled PSEUDED")


class CodeMatch(BaseModel):
    system: str
    code: str
    display: str
    score: float
    matched: str


class CodeLookup(BaseModel):
    matches: list[CodeMatch]


class PatientSummary(BaseModel):
    id: str
    name: str | None
    birth_date: str | None
    gender: str | None
    identifiers: list[str]


class PatientList(BaseModel):
    patients: list[PatientSummary]


class DocumentSummary(BaseModel):
    id: str
    status: str | None
    content_type: str | None
    created: str | None
    patient: str | None


class DocumentList(BaseModel):
    documents: list[DocumentSummary]


def _counts(bundle: Mapping[str, Any]) -> dict[str, int]:
    return dict(Counter(e["resource"]["resourceType"] for e in bundle.get("entry", [])))


def build_mcp_server(source: CallerSource) -> MCPServer:
    server = MCPServer(name="paperchart", instructions=INSTRUCTIONS, middleware=[_ScopeMiddleware(source)])

    def authorized(ctx: Context, tool: str) -> tuple[Services, Caller]:
        try:
            caller = source.caller(ctx.headers)
            resource_type, interactions, identified = TOOL_ACCESS[tool]
            caller.require(resource_type, *interactions, identified=identified)
        except PaperchartError as error:
            raise _mcp_error(error) from None
        return source.services(), caller

    async def status_of(services: Services, caller: Caller, job_id: str) -> ExtractionStatus:
        job = await documents.get_job(services, caller, job_id)
        counts: dict[str, int] = {}
        if job.status == "succeeded" and job.bundle_id:
            counts = _counts(await documents.read_bundle(services, caller, job.bundle_id, job_result=True))
        return ExtractionStatus(
            job_id=job.id,
            document_id=job.document_id,
            status=job.status,
            progress=documents.job_progress(job),
            bundle_id=job.bundle_id,
            resource_counts=counts,
            error=job.error.message if job.error else None,
        )

    def status_text(status: ExtractionStatus) -> str:
        text = f"Extraction {status.job_id} of DocumentReference/{status.document_id}: "
        text += f"{status.status} ({status.progress})."
        if status.bundle_id:
            found = ", ".join(f"{n} {kind}" for kind, n in sorted(status.resource_counts.items())) or "nothing readable"
            text += f" Bundle/{status.bundle_id}: {found}."
        if status.error:
            text += f" Error: {status.error}"
        return text

    @server.tool(
        description=(
            "Submit a clinical document (base64 PDF, PNG, JPEG or TIFF with its content type) or an existing "
            "DocumentReference id for extraction into coded FHIR. Waits up to wait_seconds (default 20) with "
            "progress notifications; returns the job id and, when finished, the Bundle id and what it holds. "
            "Needs DocumentReference create (system/, user/ or patient/DocumentReference.c)."
        )
    )
    async def extract_document(
        ctx: Context,
        content_base64: str | None = None,
        content_type: str | None = None,
        document_id: str | None = None,
        wait_seconds: float = 20.0,
    ) -> Annotated[CallToolResult, ExtractionStatus]:
        services, caller = authorized(ctx, "extract_document")
        try:
            if document_id is None:
                if not content_base64 or not content_type:
                    raise InvalidRequest("give content_base64 with content_type, or a document_id")
                resource = {
                    "resourceType": "DocumentReference",
                    "status": "current",
                    "content": [{"attachment": {"contentType": content_type, "data": content_base64}}],
                }
                document_id = (await documents.create_document(services, caller, resource)).id
            job = await documents.start_extraction(services, caller, document_id)
            deadline = asyncio.get_running_loop().time() + max(0.0, min(wait_seconds, 300.0))
            reported = ""
            while True:
                job = await documents.get_job(services, caller, job.id)
                progress = documents.job_progress(job)
                if progress != reported:
                    reported = progress
                    finished = job.status in ("succeeded", "failed")
                    done, total = (1, 1) if finished else (job.done, job.total or None)
                    await ctx.report_progress(done, total, progress)
                if job.status in ("succeeded", "failed") or asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(0.25)
            status = await status_of(services, caller, job.id)
        except PaperchartError as error:
            raise _mcp_error(error) from None
        return _result(status, status_text(status))

    @server.tool(description="The state of an extraction job (from extract_document). Needs DocumentReference.c.")
    async def get_extraction_status(ctx: Context, job_id: str) -> Annotated[CallToolResult, ExtractionStatus]:
        services, caller = authorized(ctx, "get_extraction_status")
        try:
            status = await status_of(services, caller, job_id)
        except PaperchartError as error:
            raise _mcp_error(error) from None
        return _result(status, status_text(status))

    @server.tool(
        description=(
            "The full FHIR Bundle of an extraction, with identifiers (PHI). Needs read on Bundle and on each "
            "resource type to be returned; entries the token may not read are left out."
        )
    )
    async def get_bundle(ctx: Context, bundle_id: str) -> Annotated[CallToolResult, BundleResult]:
        services, caller = authorized(ctx, "get_bundle")
        try:
            bundle = await documents.read_bundle(services, caller, bundle_id)
        except PaperchartError as error:
            raise _mcp_error(error) from None
        result = BundleResult(bundle_id=bundle_id, resource_counts=_counts(bundle), bundle=bundle)
        found = ", ".join(f"{n} {kind}" for kind, n in sorted(result.resource_counts.items()))
        return _result(result, f"Bundle/{bundle_id}: {found or 'nothing this token may read'}.")

    @server.tool(
        description=(
            "A de-identified clinical summary and de-identified FHIR Bundles for one document (document_id) or "
            "one patient (patient_id). Identifiers are removed or pseudonymized and dates shifted (HIPAA Safe "
            "Harbor). Needs only the de-identified scope system/*.rs?_security=PSEUDED (or user/, patient/)."
        )
    )
    async def deidentified_summary(
        ctx: Context, document_id: str | None = None, patient_id: str | None = None
    ) -> Annotated[CallToolResult, DeidentifiedSummary]:
        services, caller = authorized(ctx, "deidentified_summary")
        try:
            summary, bundles = await documents.deidentified_view(
                services, caller, document_id=document_id, patient_id=patient_id
            )
        except PaperchartError as error:
            raise _mcp_error(error) from None
        return _result(DeidentifiedSummary(summary=summary, bundles=bundles), summary)

    @server.tool(
        description=(
            "Search the terminology index (ICD-10-CM, SNOMED CT, LOINC, RxNorm, UCUM) for codes matching a "
            "phrase; system is a short name (icd10cm, snomed, loinc, rxnorm, ucum) or a URI. Needs CodeSystem.r."
        )
    )
    async def lookup_code(
        ctx: Context, text: str, system: str | None = None, limit: int = 5
    ) -> Annotated[CallToolResult, CodeLookup]:
        services, _ = authorized(ctx, "lookup_code")
        if services.terminology is None:
            raise MCPError(-32603, "the terminology index has not been built yet")
        terminology = services.terminology
        systems = [resolve_system(system)] if system else []
        candidates = await anyio.to_thread.run_sync(
            lambda: terminology.lookup(text, systems=systems, limit=max(1, min(limit, 50)))
        )
        matches = [
            CodeMatch(system=c.system, code=c.code, display=c.display, score=round(c.score, 4), matched=c.matched)
            for c in candidates
        ]
        lines = [f"{m.code}  {m.display}  ({m.system})" for m in matches]
        return _result(CodeLookup(matches=matches), "\n".join(lines) or "no matching codes")

    @server.tool(
        description=(
            "Find patients by identifier (system|value or value), or list them. Returns names and identifiers "
            "(PHI). Needs Patient.s; patient/ tokens see only their own patient."
        )
    )
    async def search_patients(
        ctx: Context, identifier: str | None = None, count: int = 20
    ) -> Annotated[CallToolResult, PatientList]:
        services, caller = authorized(ctx, "search_patients")
        ids: list[str] = []
        if identifier:
            ids = await documents.ids_with_identifier(services, "Patient", identifier)
            if not ids:
                return _result(PatientList(patients=[]), "no patient has that identifier")
        patient = documents.search_patient(caller, "Patient", None)
        if patient is not None:
            ids = [i for i in ids if i == patient] if ids else [patient]
        found, _ = await anyio.to_thread.run_sync(
            lambda: services.store.search_resources("Patient", ids=ids, count=max(1, min(count, 200)))
        )
        patients = [_patient_summary(s.resource) for s in found if caller.permits(s.resource, "s")]
        lines = [f"Patient/{p.id}: {p.name or 'unnamed'}, born {p.birth_date or '?'}" for p in patients]
        return _result(PatientList(patients=patients), "\n".join(lines) or "no patients")

    @server.tool(description="Documents received, optionally for one patient. Needs DocumentReference.s.")
    async def list_documents(
        ctx: Context, patient_id: str | None = None, count: int = 20
    ) -> Annotated[CallToolResult, DocumentList]:
        services, caller = authorized(ctx, "list_documents")
        try:
            patient_id = documents.search_patient(caller, "DocumentReference", patient_id)
        except PaperchartError as error:
            raise _mcp_error(error) from None
        records, _ = await anyio.to_thread.run_sync(
            lambda: services.store.search_documents(patient=patient_id, count=max(1, min(count, 200)))
        )
        listed = [
            DocumentSummary(
                id=r.id,
                status=r.resource.get("status"),
                content_type=r.content_type,
                created=r.created_at,
                patient=(r.resource.get("subject") or {}).get("reference"),
            )
            for r in records
            if caller.permits(r.resource, "s")
        ]
        lines = [f"DocumentReference/{d.id}: {d.content_type}, {d.status}, received {d.created}" for d in listed]
        return _result(DocumentList(documents=listed), "\n".join(lines) or "no documents")

    @server.resource(
        "paperchart://bundle/{bundle_id}",
        name="bundle",
        description="An extraction Bundle (PHI; needs Bundle read)",
        mime_type="application/fhir+json",
    )
    async def bundle_resource(bundle_id: str, ctx: Context) -> str:
        services, caller = authorized(ctx, "get_bundle")
        try:
            return json.dumps(await documents.read_bundle(services, caller, bundle_id))
        except PaperchartError as error:
            raise _mcp_error(error) from None

    @server.resource(
        "paperchart://bundle/{bundle_id}/deidentified",
        name="deidentified-bundle",
        description="An extraction Bundle, de-identified (needs the de-identified scope)",
        mime_type="application/fhir+json",
    )
    async def deidentified_bundle_resource(bundle_id: str, ctx: Context) -> str:
        services, caller = authorized(ctx, "deidentified_summary")
        try:
            return json.dumps(await documents.deidentified_bundle(services, caller, bundle_id))
        except PaperchartError as error:
            raise _mcp_error(error) from None

    async def page_png(ctx: Context, document_id: str, page: str, *, deidentified: bool) -> bytes:
        services, caller = authorized(ctx, "deidentified_summary" if deidentified else "get_bundle")
        try:
            number = int(page)
        except ValueError:
            raise MCPError(-32602, "page must be a number") from None
        try:
            return await documents.page_image(services, caller, document_id, number, deidentified=deidentified)
        except PaperchartError as error:
            raise _mcp_error(error) from None

    @server.resource(
        "paperchart://document/{document_id}/page/{page}",
        name="page-image",
        description="One page of a document as PNG (PHI; needs Binary read)",
        mime_type="image/png",
    )
    async def page_image(document_id: str, page: str, ctx: Context) -> bytes:
        return await page_png(ctx, document_id, page, deidentified=False)

    @server.resource(
        "paperchart://document/{document_id}/page/{page}/deidentified",
        name="deidentified-page-image",
        description="One page as PNG with every identifier blacked out (needs the de-identified scope)",
        mime_type="image/png",
    )
    async def deidentified_page_image(document_id: str, page: str, ctx: Context) -> bytes:
        return await page_png(ctx, document_id, page, deidentified=True)

    @server.prompt(
        name="summarise_document",
        description="Summarise an extracted document for a clinician, from its de-identified summary.",
    )
    def summarise_document(document_id: str) -> str:
        return (
            f"Call the deidentified_summary tool with document_id={document_id}. From its summary and Bundles, "
            "write a short clinical summary for a clinician: active problems, what was ruled out, current "
            "medications with doses, abnormal results and vital signs, and anything flagged for review. "
            "Do not guess at identifiers or facts that are not in the tool's output."
        )

    return server


def _patient_summary(patient: Mapping[str, Any]) -> PatientSummary:
    name = (patient.get("name") or [{}])[0]
    text = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip() or None
    identifiers = [f"{i.get('system', '')}|{i['value']}" for i in patient.get("identifier", []) if i.get("value")]
    return PatientSummary(
        id=str(patient["id"]),
        name=text,
        birth_date=patient.get("birthDate"),
        gender=patient.get("gender"),
        identifiers=identifiers,
    )


class _ScopeMiddleware:
    """Filters ``tools/list`` to the token's scopes and audits every ``tools/call``."""

    def __init__(self, source: CallerSource) -> None:
        self._source = source

    async def __call__(self, ctx: Any, call_next: Callable[[Any], Any]) -> Any:
        if ctx.method not in ("tools/list", "tools/call"):
            return await call_next(ctx)
        headers = getattr(ctx.request, "headers", None)
        try:
            caller: Caller | None = self._source.caller(headers)
        except PaperchartError:
            caller = None
        if ctx.method == "tools/list":
            result = await call_next(ctx)  # already in wire form (a dict)
            if isinstance(result, dict):
                tools = result.get("tools", [])
                return {**result, "tools": [t for t in tools if caller is not None and _may_call(caller, t["name"])]}
            return result
        name = str((ctx.params or {}).get("name", ""))
        outcome = 8
        try:
            result = await call_next(ctx)
            outcome = 4 if isinstance(result, dict) and result.get("isError") else 0
            return result
        except MCPError as error:
            outcome = 4 if error.code in (-32001, -32003, -32602) else 8
            raise
        finally:
            await self._audit(caller, name, outcome)

    async def _audit(self, caller: Caller | None, tool: str, outcome: int) -> None:
        record = AuditRecord(
            recorded=now_instant(),
            channel="mcp",
            action="E",
            interaction=f"tool:{tool}"[:80],
            outcome=outcome,
            subject=caller.subject if caller else None,
            client_id=caller.client_id if caller else None,
            scopes=caller.scopes if caller else (),
            purpose=caller.purpose if caller else None,
            patient=caller.patient if caller else None,
        )
        await anyio.to_thread.run_sync(self._source.services().audit.append, record)


def _may_call(caller: Caller, tool: str) -> bool:
    access = TOOL_ACCESS.get(tool)
    if access is None:
        return False
    resource_type, interactions, identified = access
    return any(caller.grant.may(resource_type, i, identified=identified) for i in interactions)


__all__ = ["TOOL_ACCESS", "CallerSource", "build_mcp_server"]
