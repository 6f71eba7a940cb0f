"""Results back over HL7: a released Bundle travels as ORU^R01 to a real MLLP receiver, retried
until it is acknowledged, and given up on when the receiver says the message is wrong."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from server.app import create_app
from server.config import Settings
from server.hl7.ack import build_ack
from server.hl7.er7 import Er7Message, parse_er7
from tests.fixtures.hl7_messages import NOTE_LINES, mdm
from tests.integration.test_hl7_mllp import document_by_number, frame, free_port, msa, send_raw, wait_for_port
from tests.integration.test_mllp_transport import Running
from tests.smart import authorized_client


class Ehr:
    """The system that sent the document: a real MLLP listener that answers with the codes given."""

    def __init__(self, port: int, answers: list[str]) -> None:
        self.port = port
        self.answers = answers
        self.received: list[Er7Message] = []
        self.running: Running | None = None

    async def answer(self, payload: bytes) -> bytes:
        message = parse_er7(payload.decode())
        self.received.append(message)
        code = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        error = "103" if code == "AE" else ("207" if code == "AR" else None)
        return build_ack(message, code, error_code=error).encode()

    def start(self) -> None:
        self.running = Running(self.answer, port=self.port)

    def stop(self) -> None:
        if self.running is not None:
            self.running.stop()

    def wait_for(self, count: int, seconds: float = 180) -> list[Er7Message]:
        deadline = time.monotonic() + seconds
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.received


@pytest.fixture
def ehr() -> Iterator[Ehr]:
    receiver = Ehr(free_port(), ["AA"])
    yield receiver
    receiver.stop()


def paperchart(settings: Settings, ehr: Ehr) -> Any:
    live = msgspec.structs.replace(
        settings,
        mllp_enabled=True,
        mllp_port=0,
        hl7_outbound_host="127.0.0.1",
        hl7_outbound_port=ehr.port,
        hl7_outbound_retry_seconds=0.3,
        hl7_outbound_ack_timeout_seconds=5.0,
    )
    return authorized_client(create_app(live))


def owed(client: TestClient[Any], number: str) -> list[Any]:
    document = document_by_number(client, number)
    return client.app.state.services.store.hl7_results(document["id"])  # type: ignore[no-any-return]


def test_results_reach_the_sender_after_it_comes_back_and_stops_rejecting(settings: Settings, ehr: Ehr) -> None:
    ehr.answers[:] = ["AR", "AA"]  # down at first; then one reject; then accepted
    with paperchart(settings, ehr) as client:
        port = client.app.state.mllp.bound_port
        message = mdm("T02", control_id="OUT-1", document_number="DOC-OUT-1", text_lines=NOTE_LINES)
        assert msa(send_raw(port, frame(message))[0])[1] == "AA"
        deadline = time.monotonic() + 180
        while not any(s.attempts for s in owed(client, "DOC-OUT-1")) and time.monotonic() < deadline:
            time.sleep(0.1)  # released and tried while nobody listens
        ehr.start()
        received = ehr.wait_for(2)
        assert len(received) == 2
        first, second = received
        assert first.control_id == second.control_id  # the same message, resent
        assert second.message_type == ("ORU", "R01")
        pid, obr = second.first("PID"), second.first("OBR")
        assert pid is not None and obr is not None
        assert "MRN7001^^^RIVERSIDE^MR" in pid.repetitions(3)
        assert obr.components(3)[0] == "DOC-OUT-1" and obr.value(25) == "F"
        medications = [o.components(5)[1].lower() for o in second.all("OBX") if o.components(3)[0] == "10160-0"]
        assert any("metformin" in m for m in medications) and any("amlodipine" in m for m in medications)
        deadline = time.monotonic() + 10
        while owed(client, "DOC-OUT-1")[0].status != "sent" and time.monotonic() < deadline:
            time.sleep(0.05)
        state = owed(client, "DOC-OUT-1")[0]
        assert (state.status, state.ack_code, state.attempts) == ("sent", "AA", 3)


def test_results_the_sender_finds_wrong_are_not_sent_again(settings: Settings, ehr: Ehr) -> None:
    ehr.answers[:] = ["AE"]
    ehr.start()
    with paperchart(settings, ehr) as client:
        port = client.app.state.mllp.bound_port
        message = mdm("T02", control_id="OUT-2", document_number="DOC-OUT-2", text_lines=NOTE_LINES)
        assert msa(send_raw(port, frame(message))[0])[1] == "AA"
        assert len(ehr.wait_for(1)) == 1
        time.sleep(1.5)  # five retry intervals
        assert len(ehr.received) == 1
        state = owed(client, "DOC-OUT-2")[0]
        assert (state.status, state.ack_code, state.error) == ("failed", "AE", "refused: AE 103")


def test_results_that_cannot_be_built_fail_once_without_stopping_the_sender(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from server.crypto import KeyUnavailable
    from server.hl7 import ResultSender
    from server.services import build_store

    live = msgspec.structs.replace(settings, hl7_outbound_host="127.0.0.1")
    store = build_store(live)
    try:
        document_id = store.create_document(
            {"resourceType": "DocumentReference", "status": "current"}, b"x", "text/plain", 1
        ).id
        store.record_hl7("EPIC|RIVERSIDE", "M1", "MSH|...", document_id)
        store.enqueue_job(document_id)
        job = store.claim_job("w", 5, 3)
        assert job is not None
        store.complete_job(job.id, "w", {"resourceType": "Bundle", "id": "b1", "type": "collection", "entry": []})
        (owed,) = store.claim_hl7_results(lease_seconds=60)

        def destroyed(*_: object) -> None:
            raise KeyUnavailable("the data key of this record was destroyed")

        monkeypatch.setattr(store, "read_resource", destroyed)
        asyncio.run(ResultSender(live, store).deliver(owed))
        (state,) = store.hl7_results(document_id)
        assert (state.status, state.error) == ("failed", "could not be built: KeyUnavailable")
    finally:
        store.close()


@pytest.mark.slow
def test_paperchart_mllp_alone_receives_and_sends_results_back(tmp_path: Path, ehr: Ehr) -> None:
    """The standalone listener (`paperchart mllp`) wires the same audit and results paths."""
    ehr.start()
    port = free_port()
    env = {
        **os.environ,
        "PAPERCHART_DATA_DIR": str(tmp_path / "data"),
        "PAPERCHART_LOG_LEVEL": "WARNING",
        "PAPERCHART_HL7_OUTBOUND_HOST": "127.0.0.1",
        "PAPERCHART_HL7_OUTBOUND_PORT": str(ehr.port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "mllp", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        message = mdm("T02", control_id="CLI-1", document_number="DOC-CLI-1", text_lines=NOTE_LINES)
        assert msa(send_raw(port, frame(message))[0])[1] == "AA"
        (oru,) = ehr.wait_for(1)
        assert oru.message_type == ("ORU", "R01") and oru.first("OBR").components(3)[0] == "DOC-CLI-1"  # type: ignore[union-attr]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0  # a clean stop
