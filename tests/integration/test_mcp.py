"""MCP tools driven by the SDK's own client, over real streamable HTTP on loopback and over stdio,
with real tokens from our authorization server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from PIL import Image

from mcp_tools import TOOL_ACCESS
from server.pipeline.ocr.rapid import RapidOcrEngine
from tests.conftest import rendered
from tests.fixtures.generate import PatientTruth
from tests.live import LiveServer, live_server

DEID = "system/*.rs?_security=PSEUDED"
PHI_READER = "system/DocumentReference.cs system/Bundle.r system/Patient.rs system/Condition.r system/CodeSystem.r"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(tmp_path_factory.mktemp("mcp")) as server:
        yield server


async def _session(live: LiveServer, token: str, work: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        streamable_http_client(f"{live.base}/mcp", http_client=http) as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await work(session)


def run(live: LiveServer, token: str, work: Any) -> Any:
    return asyncio.run(_session(live, token, work))


def _upload_with_tool(
    live: LiveServer, token: str, content: bytes, content_type: str
) -> tuple[dict[str, Any], list[str]]:
    progress: list[str] = []

    async def work(session: ClientSession) -> Any:
        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(message or "")

        result = await session.call_tool(
            "extract_document",
            {"content_base64": base64.b64encode(content).decode(), "content_type": content_type, "wait_seconds": 120},
            progress_callback=on_progress,
        )
        assert not result.is_error, result.content
        return result.structured_content

    return run(live, token, work), progress


def test_the_endpoint_is_an_oauth_resource_server(live: LiveServer) -> None:
    response = httpx.post(f"{live.base}/mcp/", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    metadata_url = f"{live.base}/.well-known/oauth-protected-resource/mcp"
    assert f'resource_metadata="{metadata_url}"' in challenge
    metadata = httpx.get(metadata_url).json()
    assert metadata["resource"] == f"{live.base}/mcp" and metadata["authorization_servers"] == [live.base]
    smart = httpx.get(metadata["authorization_servers"][0] + "/.well-known/oauth-authorization-server").json()
    assert smart["token_endpoint"] == f"{live.base}/auth/token"
    # a token for the FHIR API is not a token for the MCP endpoint (RFC 8707 audience)
    fhir_token = live.token(PHI_READER)
    refused = httpx.post(f"{live.base}/mcp/", json={}, headers={"Authorization": f"Bearer {fhir_token}"})
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["www-authenticate"]


def test_tools_list_shows_only_what_the_token_may_call(live: LiveServer) -> None:
    async def names(session: ClientSession) -> list[str]:
        return sorted(t.name for t in (await session.list_tools()).tools)

    assert run(live, live.token("system/CodeSystem.r", audience="mcp"), names) == ["lookup_code"]
    # the de-identified scope: the de-identified summary, and terminology (which holds no PHI)
    assert run(live, live.token(DEID, audience="mcp"), names) == ["deidentified_summary", "lookup_code"]
    everything = live.token("system/*.cruds", audience="mcp")
    assert run(live, everything, names) == sorted(TOOL_ACCESS)

    async def forbidden_call(session: ClientSession) -> Any:
        with pytest.raises(MCPError) as error:
            await session.call_tool("get_bundle", {"bundle_id": "anything"})
        return error.value

    error = run(live, live.token("system/CodeSystem.r", audience="mcp"), forbidden_call)
    assert error.code == -32003 and "does not allow identified read on Bundle" in error.message


@pytest.mark.slow
def test_extract_a_multipage_fax_with_progress_then_read_the_bundle(live: LiveServer) -> None:
    pages = [Image.open(io.BytesIO(rendered(kind, seed=61).png_pages[0])) for kind in ("clinic_note", "lab_report")]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:], compression="tiff_deflate")
    token = live.token(PHI_READER, audience="mcp")
    status, progress = _upload_with_tool(live, token, buffer.getvalue(), "image/tiff")
    assert status["status"] == "succeeded" and status["bundle_id"]
    assert "ocr: page 1 of 2" in progress and progress[-1] == "done"
    assert status["resource_counts"]["Patient"] == 1 and status["resource_counts"]["Condition"] >= 1

    async def read(session: ClientSession) -> Any:
        bundle = await session.call_tool("get_bundle", {"bundle_id": status["bundle_id"]})
        again = await session.call_tool("get_extraction_status", {"job_id": status["job_id"]})
        resource = await session.read_resource(f"paperchart://bundle/{status['bundle_id']}")
        return bundle.structured_content, again.structured_content, resource

    bundle, again, resource = run(live, token, read)
    types = {e["resource"]["resourceType"] for e in bundle["bundle"]["entry"]}
    assert types == {"Patient", "Condition"}  # the token reads no Observation, MedicationStatement, Provenance
    assert again == status
    assert json.loads(resource.contents[0].text)["id"] == status["bundle_id"]


@pytest.fixture(scope="module")
def extracted(live: LiveServer) -> tuple[PatientTruth, dict[str, Any]]:
    document = rendered("clinic_note", seed=62)
    status, _ = _upload_with_tool(live, live.token(PHI_READER, audience="mcp"), document.pdf, "application/pdf")
    return document.truth.patient, status


def _phi(patient: PatientTruth) -> list[str]:
    return [patient.given, patient.family, patient.mrn, patient.nhs_number, patient.birth_date]


def test_deidentified_summary_needs_only_the_deid_scope_and_leaks_nothing(
    live: LiveServer, extracted: tuple[PatientTruth, dict[str, Any]]
) -> None:
    patient, status = extracted
    token = live.token(DEID, audience="mcp")

    async def work(session: ClientSession) -> Any:
        summary = await session.call_tool("deidentified_summary", {"document_id": status["document_id"]})
        with pytest.raises(MCPError):
            await session.call_tool("get_bundle", {"bundle_id": status["bundle_id"]})
        deid_resource = await session.read_resource(f"paperchart://bundle/{status['bundle_id']}/deidentified")
        prompt = await session.get_prompt("summarise_document", {"document_id": status["document_id"]})
        return summary, deid_resource, prompt

    summary, deid_resource, prompt = run(live, token, work)
    assert not summary.is_error and "Problems:" in summary.content[0].text
    output = json.dumps(summary.structured_content) + deid_resource.contents[0].text
    for secret in _phi(patient):
        assert secret.lower() not in output.lower()
    assert "deidentified_summary" in prompt.messages[0].content.text


def test_patient_search_and_documents_with_phi_scopes(
    live: LiveServer, extracted: tuple[PatientTruth, dict[str, Any]]
) -> None:
    patient, status = extracted

    async def work(session: ClientSession) -> Any:
        found = await session.call_tool(
            "search_patients", {"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{patient.nhs_number}"}
        )
        documents = await session.call_tool("list_documents", {})
        return found.structured_content, documents.structured_content

    found, documents = run(live, live.token(PHI_READER, audience="mcp"), work)
    assert [p["name"] for p in found["patients"]] == [patient.name]
    assert status["document_id"] in {d["id"] for d in documents["documents"]}


@pytest.mark.slow
def test_deidentified_page_image_blacks_out_the_identifiers(
    live: LiveServer, extracted: tuple[PatientTruth, dict[str, Any]], ocr_engine: RapidOcrEngine
) -> None:
    patient, status = extracted

    async def work(session: ClientSession) -> Any:
        uri = f"paperchart://document/{status['document_id']}/page/1/deidentified"
        return await session.read_resource(uri)

    resource = run(live, live.token(DEID, audience="mcp"), work)
    image = Image.open(io.BytesIO(base64.b64decode(resource.contents[0].blob)))
    text = ocr_engine.read(image.convert("RGB"), 1).text
    assert "Medications" in text or "Diagnoses" in text or "Assessment" in text  # the page is still readable
    for secret in _phi(patient):
        assert secret.lower() not in text.lower(), "identifier readable on the de-identified page"


def test_tool_calls_are_audited(live: LiveServer, extracted: tuple[PatientTruth, dict[str, Any]]) -> None:
    entries, _ = live.app.state.services.audit.search(count=500)
    tools = [(e.record.interaction, e.record.outcome) for e in entries if e.record.channel == "mcp"]
    assert ("tool:extract_document", 0) in tools
    assert any(name == "tool:get_bundle" and outcome != 0 for name, outcome in tools)  # the refused call


def test_stdio_transport_with_a_token_from_the_environment(
    live: LiveServer, extracted: tuple[PatientTruth, dict[str, Any]]
) -> None:
    patient, status = extracted
    env = {
        **os.environ,
        "PAPERCHART_DATA_DIR": str(live.settings.data_dir),
        "PAPERCHART_PUBLIC_BASE_URL": live.base,
        "PAPERCHART_SEMANTIC_SEARCH": "false",
        "PAPERCHART_LOG_LEVEL": "WARNING",
    }

    async def work() -> Any:
        parameters = StdioServerParameters(
            command=sys.executable,
            args=["-m", "server.cli", "mcp"],
            env={**env, "PAPERCHART_MCP_TOKEN": live.token(DEID, audience="mcp")},
            cwd=str(Path.cwd()),
        )
        async with stdio_client(parameters) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            names = [t.name for t in (await session.list_tools()).tools]
            summary = await session.call_tool("deidentified_summary", {"document_id": status["document_id"]})
            return names, summary

    names, summary = asyncio.run(work())
    assert names == ["deidentified_summary", "lookup_code"]
    assert not summary.is_error and patient.family not in summary.content[0].text

    import subprocess

    no_token = subprocess.run(
        [sys.executable, "-m", "server.cli", "mcp"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert no_token.returncode == 1 and "PAPERCHART_MCP_TOKEN" in no_token.stderr
