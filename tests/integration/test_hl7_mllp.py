"""HL7 v2 over real TCP (MLLP) and HTTP: ACKs byte by byte, then the results through the FHIR API."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from server.app import create_app
from server.config import Settings
from tests.conftest import rendered
from tests.fixtures.hl7_messages import NOTE_LINES, adt, mdm, oru_with_pdf
from tests.live import free_port
from tests.smart import authorized_client, bearer, fetch_token, register_with_cli

VT, FS_CR = b"\x0b", b"\x1c\r"


@pytest.fixture
def app_client(settings: Settings) -> Iterator[tuple[TestClient[Any], int]]:
    fields = {f: getattr(settings, f) for f in settings.__struct_fields__}
    live = type(settings)(**{**fields, "mllp_enabled": True, "mllp_port": 0, "mllp_idle_timeout_seconds": 5.0})
    with authorized_client(create_app(live)) as client:
        yield client, client.app.state.mllp.bound_port


def send_raw(port: int, payload: bytes, *, expect: int = 1, timeout: float = 60) -> list[bytes]:
    """Send bytes as-is; read ``expect`` MLLP frames back (the independent client is a plain socket)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        buffer = b""
        frames: list[bytes] = []
        while len(frames) < expect:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            while FS_CR in buffer:
                frame, buffer = buffer.split(FS_CR, 1)
                frames.append(frame.lstrip(VT))
        return frames


def send_with_hl7_client(port: int, message: str) -> str:
    """The `hl7` package's asyncio MLLP client, as an interface engine would use it."""
    import hl7
    from hl7.mllp import open_hl7_connection

    async def exchange() -> str:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        writer.writemessage(hl7.parse(message))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readmessage(), timeout=60)
        writer.close()
        await writer.wait_closed()
        return str(ack)

    return asyncio.run(exchange())


def msa(ack: bytes | str) -> list[str]:
    text = ack.decode() if isinstance(ack, bytes) else ack
    return next(s for s in text.split("\r") if s.startswith("MSA")).split("|")


def err(ack: bytes) -> str:
    return next(s for s in ack.decode().split("\r") if s.startswith("ERR"))


def frame(message: str) -> bytes:
    return VT + message.encode() + FS_CR


def wait_for_bundle(client: TestClient[Any], document_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = client.get("/fhir/Provenance").json()
        for entry in found.get("entry", []):
            if entry["resource"]["entity"][0]["what"]["reference"] == f"DocumentReference/{document_id}":
                bundles = client.get("/fhir/Bundle").json()["entry"]
                for bundle in bundles:
                    if any(e["resource"]["id"] == entry["resource"]["id"] for e in bundle["resource"]["entry"]):
                        return dict(bundle["resource"])
        time.sleep(0.2)
    raise AssertionError("no Bundle for the document")


def document_by_number(client: TestClient[Any], number: str) -> dict[str, Any]:
    search = client.get("/fhir/DocumentReference", params={"identifier": number}).json()
    assert search["total"] == 1, search
    return dict(search["entry"][0]["resource"])


def test_mdm_t02_with_pdf_is_acked_stored_and_extracted(app_client: tuple[TestClient[Any], int]) -> None:
    client, port = app_client
    document = rendered("medication_list", seed=31)
    ack = send_with_hl7_client(port, mdm("T02", control_id="MSG-1", document_number="DOC-100", content=document.pdf))
    assert msa(ack)[1:3] == ["AA", "MSG-1"]

    stored = document_by_number(client, "DOC-100")
    assert stored["status"] == "current" and stored["docStatus"] == "final"
    assert stored["content"][0]["attachment"]["contentType"] == "application/pdf"
    assert client.get(f"/fhir/Binary/{stored['id']}").content == document.pdf
    patient_id = stored["subject"]["reference"].removeprefix("Patient/")
    patients = client.get("/fhir/Patient", params={"identifier": "https://fhir.nhs.uk/Id/nhs-number|9434765919"}).json()
    assert patients["total"] == 1 and patients["entry"][0]["resource"]["id"] == patient_id

    bundle = wait_for_bundle(client, stored["id"])
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    assert patient["id"] == patient_id and patient["name"][0]["family"] == "Okafor"  # the PID, not the page
    names = {r["medicationCodeableConcept"]["text"] for r in resources if r["resourceType"] == "MedicationStatement"}
    assert names == {m.name for m in document.truth.medications}
    assert all(
        r["subject"]["reference"] == f"Patient/{patient_id}"
        for r in resources
        if r["resourceType"] == "MedicationStatement"
    )


def test_resend_of_the_same_control_id_gets_the_same_ack_and_creates_nothing(
    app_client: tuple[TestClient[Any], int],
) -> None:
    client, port = app_client
    message = frame(mdm("T02", control_id="MSG-R", document_number="DOC-R", text_lines=NOTE_LINES))
    first = send_raw(port, message)[0]
    second = send_raw(port, message)[0]
    assert first == second and msa(first)[1] == "AA"
    assert client.get("/fhir/DocumentReference", params={"identifier": "DOC-R"}).json()["total"] == 1


def test_several_messages_in_one_write_and_one_message_in_many_writes(app_client: tuple[TestClient[Any], int]) -> None:
    _, port = app_client
    batch = b"noise before the frame" + b"".join(
        frame(mdm("T02", control_id=f"B-{i}", document_number=f"DOC-B{i}", text_lines=NOTE_LINES)) for i in range(3)
    )
    acks = send_raw(port, batch, expect=3)
    assert [msa(a)[1:3] for a in acks] == [["AA", "B-0"], ["AA", "B-1"], ["AA", "B-2"]]
    # partial reads: the same connection, a frame dribbled a few bytes at a time
    payload = frame(mdm("T02", control_id="P-1", document_number="DOC-P", text_lines=NOTE_LINES))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        for start in range(0, len(payload), 7):
            sock.sendall(payload[start : start + 7])
        reply = sock.recv(65536)
    assert msa(reply.strip(VT + FS_CR))[1:3] == ["AA", "P-1"]


def test_addendum_replacement_status_and_cancel(app_client: tuple[TestClient[Any], int]) -> None:
    client, port = app_client
    original = rendered("clinic_note", seed=32).pdf
    assert (
        msa(send_raw(port, frame(mdm("T02", control_id="L-1", document_number="DOC-L", content=original)))[0])[1]
        == "AA"
    )
    first = document_by_number(client, "DOC-L")
    wait_for_bundle(client, first["id"])

    # T04: status change of the same document
    ack = send_raw(
        port, frame(mdm("T04", control_id="L-2", document_number="DOC-L", completion="LA", text_lines=["status only"]))
    )[0]
    assert msa(ack)[1] == "AA"

    # T06 addendum: a new document that appends to the original
    ack = send_raw(
        port,
        frame(
            mdm(
                "T06",
                control_id="L-3",
                document_number="DOC-L-ADD",
                parent_number="DOC-L",
                text_lines=["Addendum: also taking Omeprazole 20 mg PO daily"],
            )
        ),
    )[0]
    assert msa(ack)[1] == "AA"
    addendum = document_by_number(client, "DOC-L-ADD")
    assert addendum["relatesTo"] == [{"code": "appends", "target": {"reference": f"DocumentReference/{first['id']}"}}]
    assert addendum["content"][0]["attachment"]["contentType"] == "text/plain"

    # T10 replacement: the original is superseded
    replacement = rendered("clinic_note", seed=33).pdf
    ack = send_raw(
        port, frame(mdm("T10", control_id="L-4", document_number="DOC-L2", parent_number="DOC-L", content=replacement))
    )[0]
    assert msa(ack)[1] == "AA"
    new = document_by_number(client, "DOC-L2")
    assert new["relatesTo"][0]["code"] == "replaces"
    superseded = client.get(f"/fhir/DocumentReference/{first['id']}").json()
    assert superseded["status"] == "superseded" and superseded["docStatus"] == "final"
    assert superseded["meta"]["versionId"] == "3"  # 1 created, 2 status change (T04), 3 superseded

    # T11 cancel: entered-in-error, and what was extracted from it is retracted
    bundle = wait_for_bundle(client, new["id"])
    ack = send_raw(port, frame(mdm("T11", control_id="L-5", document_number="DOC-L2")))[0]
    assert msa(ack)[1] == "AA"
    assert client.get(f"/fhir/DocumentReference/{new['id']}").json()["status"] == "entered-in-error"
    observation = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    assert client.get(f"/fhir/Observation/{observation['id']}").json()["status"] == "entered-in-error"


def test_notification_without_content_and_edit(app_client: tuple[TestClient[Any], int]) -> None:
    client, port = app_client
    ack = send_raw(port, frame(mdm("T01", control_id="N-1", document_number="DOC-N")))[0]
    assert msa(ack)[1] == "AA"  # T01 announces a document without content: nothing to extract yet
    assert client.get("/fhir/DocumentReference", params={"identifier": "DOC-N"}).json()["total"] == 0
    send_raw(port, frame(mdm("T02", control_id="N-2", document_number="DOC-N", text_lines=NOTE_LINES)))
    original = document_by_number(client, "DOC-N")
    ack = send_raw(
        port,
        frame(
            mdm(
                "T08",
                control_id="N-3",
                document_number="DOC-N",
                text_lines=[*NOTE_LINES, "Edited: Metformin 1000 mg PO BID"],
            )
        ),
    )[0]
    assert msa(ack)[1] == "AA"
    documents = client.get("/fhir/DocumentReference", params={"identifier": "DOC-N"}).json()["entry"]
    by_status = {d["resource"]["status"]: d["resource"] for d in documents}
    assert by_status["superseded"]["id"] == original["id"]
    assert by_status["current"]["relatesTo"] == [
        {"code": "replaces", "target": {"reference": f"DocumentReference/{original['id']}"}}
    ]


def test_oru_r01_with_embedded_pdf(app_client: tuple[TestClient[Any], int]) -> None:
    client, port = app_client
    report = rendered("lab_report", seed=34)
    ack = send_raw(port, frame(oru_with_pdf("ORU-1", report.pdf)))[0]
    assert msa(ack)[1:3] == ["AA", "ORU-1"]
    stored = document_by_number(client, "FILL-778")
    bundle = wait_for_bundle(client, stored["id"])
    labs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert len(labs) == len(report.truth.labs)


BAD_MESSAGES = [
    ("no PID", mdm("T02", control_id="BAD-1", pid="PID|1", text_lines=["x"]), "AE", "101"),
    (
        "undecodable OBX-5",
        mdm("T02", control_id="BAD-2", content=b"%PDF-1.4").replace("Base64^JVBER", "Base64^%%%"),
        "AE",
        "102",
    ),
    ("PDF that is not a PDF", mdm("T02", control_id="BAD-3", content=b"%PDF-1.4 nothing else here"), "AE", "102"),
    ("unsupported type", adt("BAD-4"), "AR", "200"),
    ("unsupported version", mdm("T02", control_id="BAD-5", version="2.2", text_lines=["x"]), "AR", "203"),
    ("cancel of unknown document", mdm("T11", control_id="BAD-6", document_number="NOPE"), "AE", "204"),
    ("no MSH at all", "EVN|T02|20261123\rPID|1||X\r", "AR", "100"),
]


@pytest.mark.parametrize(("case", "message", "code", "error"), BAD_MESSAGES, ids=[b[0] for b in BAD_MESSAGES])
def test_bad_messages_get_ae_or_ar_with_err(
    app_client: tuple[TestClient[Any], int], case: str, message: str, code: str, error: str
) -> None:
    client, port = app_client
    ack = send_raw(port, frame(message))[0]
    assert msa(ack)[1] == code
    assert err(ack).split("|")[3].split("^")[0] == error
    assert client.get("/fhir/DocumentReference").json()["total"] == 0


def test_oversized_and_unterminated_frames_close_the_connection(settings: Settings) -> None:
    fields = {f: getattr(settings, f) for f in settings.__struct_fields__}
    small = type(settings)(**{**fields, "mllp_enabled": True, "mllp_port": 0, "mllp_max_message_bytes": 4096})
    with authorized_client(create_app(small)) as client:
        port = client.app.state.mllp.bound_port
        big = frame(mdm("T02", control_id="BIG", text_lines=["x" * 10_000]))
        assert send_raw(port, big, timeout=10) == []  # closed, nothing processed
        assert client.get("/fhir/DocumentReference").json()["total"] == 0


@pytest.mark.slow
def test_ten_megabyte_pdf(app_client: tuple[TestClient[Any], int]) -> None:
    client, port = app_client
    pdf = rendered("clinic_note", seed=35).pdf
    padded = pdf + b"\n%" + b"0" * (10 * 1024 * 1024) + b"\n"  # PDF comments after %%EOF: still a valid PDF
    ack = send_raw(port, frame(mdm("T02", control_id="BIG-1", document_number="DOC-BIG", content=padded)))[0]
    assert msa(ack)[1] == "AA"
    stored = document_by_number(client, "DOC-BIG")
    assert stored["content"][0]["attachment"]["size"] == len(padded)


def test_http_endpoint_returns_the_ack(app_client: tuple[TestClient[Any], int]) -> None:
    client, _ = app_client
    response = client.post(
        "/hl7/v2",
        content=mdm("T02", control_id="H-1", document_number="DOC-H", text_lines=NOTE_LINES, separator="\n"),
        headers={"Content-Type": "x-application/hl7-v2+er7"},
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("x-application/hl7-v2+er7")
    assert msa(response.content)[1:3] == ["AA", "H-1"]
    assert client.post("/hl7/v2", content=b"{}", headers={"Content-Type": "application/json"}).status_code == 415
    no_ack = client.post(
        "/hl7/v2",
        content=mdm("T02", control_id="H-2", document_number="DOC-H2", text_lines=NOTE_LINES, msh_extra="|||NE|NE"),
        headers={"Content-Type": "x-application/hl7-v2+er7"},
    )
    assert no_ack.status_code == 204


def wait_for_port(port: int, seconds: float = 60) -> None:
    """Until something listens on the loopback port (a server process starting)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("server did not start")


@pytest.mark.slow
def test_killed_before_ack_then_resent_is_processed_once(tmp_path: Path) -> None:
    http_port, mllp_port = free_port(), free_port()
    env = {
        **os.environ,
        "PAPERCHART_DATA_DIR": str(tmp_path / "data"),
        "PAPERCHART_PORT": str(http_port),
        "PAPERCHART_MLLP_PORT": str(mllp_port),
        "PAPERCHART_LOG_LEVEL": "WARNING",
    }

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--no-build-terminology"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(mllp_port)
        return process

    backend = register_with_cli(env, tmp_path / "client.jwk", f"http://127.0.0.1:{http_port}")
    message = frame(mdm("T02", control_id="KILL-1", document_number="DOC-K", text_lines=NOTE_LINES))
    process = start()
    with socket.create_connection(("127.0.0.1", mllp_port), timeout=10) as sock:
        sock.sendall(message[:-2])  # all but the frame end: received, not yet complete
        process.send_signal(signal.SIGSTOP)  # freeze it: it cannot finish, commit or ack
        sock.sendall(message[-2:])
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        sock.settimeout(5)
        try:
            reply = sock.recv(65536)
        except OSError:
            reply = b""
    assert b"MSA|AA" not in reply  # the sender never got an AA

    process = start()
    try:
        ack = send_raw(mllp_port, message)[0]
        again = send_raw(mllp_port, message)[0]
        http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=10)
        http.headers.update(bearer(fetch_token(http, backend, "system/DocumentReference.rs")))
        documents = http.get("/fhir/DocumentReference", params={"identifier": "DOC-K"}).json()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert msa(ack)[1] == "AA" and again == ack
    assert documents["total"] == 1


def test_mllp_receipts_are_audited_with_their_ack_code_whatever_the_separators(
    app_client: tuple[TestClient[Any], int],
) -> None:
    client, port = app_client
    good = mdm("T02", control_id="AUD-1", document_number="DOC-AUD", text_lines=NOTE_LINES)
    # the same kind of error with custom encoding characters: the ACK comes back in them too
    bad = mdm("T02", control_id="AUD-2", pid="PID|1", text_lines=["x"]).replace("|", "#")
    assert msa(send_raw(port, frame(good))[0])[1] == "AA"
    assert b"MSA#AE" in send_raw(port, frame(bad))[0]
    entries, _ = client.app.state.services.audit.search(count=500)
    outcomes = [e.record.outcome for e in entries if e.record.channel == "mllp"]
    assert outcomes == [0, 4]


def test_a_message_is_not_stored_without_its_audit_record(settings: Settings) -> None:
    """The audit record commits in the message's transaction: if it cannot be written, neither is
    the message, and the sender gets no AA (it resends, and then both are stored)."""
    from server.hl7 import Hl7Service
    from server.services import build_pipeline, build_store
    from server.store.audit import AuditLog, AuditRecord, now_instant

    store = build_store(settings)
    audit = AuditLog(store)
    service = Hl7Service(settings, store, build_pipeline(settings))
    message = mdm("T02", control_id="ATOMIC-1", document_number="DOC-ATOMIC", text_lines=NOTE_LINES).encode()
    codes: list[str] = []

    def record(code: str) -> None:
        codes.append(code)
        audit.append(AuditRecord(recorded=now_instant(), channel="mllp", action="C", interaction="x", outcome=0))

    def broken(code: str) -> None:
        if code == "AA":
            record(code)
            raise OSError("the audit write failed")

    try:
        refused = service.receive(message, audit=broken)
        assert refused.code == "AR" and "207" in (refused.ack or "")
        assert store.find_by_identifier("DocumentReference", None, "DOC-ATOMIC") == []
        assert audit.search()[1] == 0  # the record written before the failure went with the message
        codes.clear()
        assert service.receive(message, audit=record).code == "AA" and codes == ["AA"]
        assert len(store.find_by_identifier("DocumentReference", None, "DOC-ATOMIC")) == 1
        assert audit.search()[1] == 1
    finally:
        store.close()


def test_the_listener_refuses_an_audit_log_on_another_connection(settings: Settings) -> None:
    # appending on another connection inside the store's transaction would wait on its own lock
    from server.errors import ConfigurationError
    from server.hl7 import Hl7Service
    from server.jobs import JobRunner
    from server.services import build_mllp, build_pipeline, build_store
    from server.store.audit import AuditLog

    store = build_store(settings)
    pipeline = build_pipeline(settings)
    apart = AuditLog.open(settings.database_path)
    try:
        with pytest.raises(ConfigurationError, match="share the store's database"):
            build_mllp(settings, Hl7Service(settings, store, pipeline), JobRunner(settings, store, pipeline), apart)
    finally:
        apart.close()
        store.close()


def test_messages_received_together_are_stored_together_each_with_its_own_answer(settings: Settings) -> None:
    """One transaction for the batch, a savepoint per message: a bad message undoes only itself,
    and a resend inside the same batch gets the original's ACK and creates nothing."""
    from server.hl7 import Hl7Service
    from server.services import build_pipeline, build_store

    store = build_store(settings)
    service = Hl7Service(settings, store, build_pipeline(settings))
    good = mdm("T02", control_id="BATCH-1", document_number="DOC-B1", text_lines=NOTE_LINES)
    without_pid = "\r".join(
        s
        for s in mdm("T02", control_id="BATCH-2", document_number="DOC-B2", text_lines=NOTE_LINES).split("\r")
        if not s.startswith("PID")
    )
    other = mdm("T02", control_id="BATCH-3", document_number="DOC-B3", text_lines=NOTE_LINES)
    audited: list[str] = []
    try:
        receipts = service.receive_many(
            [b"not hl7", good.encode(), without_pid.encode(), good.encode(), other.encode()], audit=audited.append
        )
        assert [r.code for r in receipts] == ["AR", "AA", "AE", "AA", "AA"]
        assert receipts[3].ack == receipts[1].ack and not receipts[3].queued  # the resend
        assert receipts[1].queued and receipts[4].queued
        found = {n: len(store.find_by_identifier("DocumentReference", None, n)) for n in ("DOC-B1", "DOC-B2", "DOC-B3")}
        assert found == {"DOC-B1": 1, "DOC-B2": 0, "DOC-B3": 1}
        assert sorted(audited) == ["AA", "AA", "AA", "AE", "AR"]
    finally:
        store.close()


def test_when_the_batch_cannot_be_committed_none_of_it_is_stored_and_every_message_gets_ar(
    settings: Settings,
) -> None:
    from server.hl7 import Hl7Service
    from server.services import build_pipeline, build_store

    store = build_store(settings)
    service = Hl7Service(settings, store, build_pipeline(settings))
    batched, depth = store.batched, 0

    def failing(work: Any) -> Any:
        # the batch's own transaction fails after its messages were written (as a full disk would)
        nonlocal depth
        depth += 1
        try:
            if depth > 1:
                return batched(work)  # a message's savepoint inside the batch

            def written_then_failed() -> None:
                work()
                raise OSError("disk I/O error")

            return batched(written_then_failed)
        finally:
            depth -= 1

    store.batched = failing  # type: ignore[method-assign]
    messages = [
        mdm("T02", control_id=f"FAIL-{n}", document_number=f"DOC-F{n}", text_lines=NOTE_LINES).encode()
        for n in range(3)
    ]
    audited: list[str] = []
    try:
        receipts = service.receive_many(messages, audit=audited.append)
        assert [r.code for r in receipts] == ["AR"] * 3
        assert all("207" in (r.ack or "") for r in receipts)
        assert all(store.find_by_identifier("DocumentReference", None, f"DOC-F{n}") == [] for n in range(3))
        assert audited == ["AA", "AA", "AA", "AR", "AR", "AR"]  # the AAs were rolled back with the batch
        store.batched = batched  # type: ignore[method-assign]
        assert [r.code for r in service.receive_many(messages)] == ["AA"] * 3  # the resend is stored
    finally:
        store.close()
