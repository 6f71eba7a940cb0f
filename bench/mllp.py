"""HL7 v2 over MLLP: messages acknowledged per second with a durable commit, and ACK latency.

    .venv/bin/python bench/mllp.py [--messages 2000] [--connections 8] [--patients 400]

Starts paperchart's MLLP listener in this process (real SQLite with synchronous=FULL, the real
HL7 service; extraction workers off so only receipt is measured), sends MDM^T02 messages with a
small text note (about 400 patients in turn, each with its own visit) over N concurrent loopback
connections from a separate sender process, and reports AA/s, p50/p99 ACK latency and the
server's CPU time per message (this process's; on a machine whose speed varies from run to run,
CPU per message and the ratio to the peer compare better than rates), for small messages and for
1 MB embedded PDFs (``--large 0`` skips them). The peer, measured in the same run, is the `hl7` package's
own MLLP server answering each message with an ACK and storing nothing: the cost of framing and
parsing alone, so the ratio shows what durability costs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.config import load_settings
from server.hl7 import Hl7Service
from server.jobs import JobRunner
from server.services import build_mllp, build_pipeline, build_store
from server.store.audit import AuditLog
from tests.fixtures.generate import render_document
from tests.fixtures.hl7_messages import NOTE_LINES, mdm

VT, FS_CR = b"\x0b", b"\x1c\r"


async def client(port: int, messages: list[bytes], latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    accepted = 0
    for message in messages:
        started = time.perf_counter()
        writer.write(VT + message + FS_CR)
        await writer.drain()
        ack = await reader.readuntil(FS_CR)
        latencies.append(time.perf_counter() - started)
        accepted += b"MSA|AA" in ack or b"MSA|CA" in ack
    writer.close()
    return accepted


async def send_all(port: int, messages: list[bytes], connections: int) -> tuple[int, float, list[float]]:
    latencies: list[float] = []
    chunks = [messages[i::connections] for i in range(connections)]
    started = time.perf_counter()
    accepted = sum(await asyncio.gather(*(client(port, chunk, latencies) for chunk in chunks)))
    return accepted, time.perf_counter() - started, latencies


def sender(port: int, messages: list[bytes], connections: int) -> tuple[int, float, list[float]]:
    return asyncio.run(send_all(port, messages, connections))


Result = tuple[int, float, list[float], float]  # accepted, seconds, ACK latencies, server CPU seconds


async def drive(port: int, messages: list[bytes], connections: int) -> Result:
    """Send from another process, as an interface engine would: the sender does not share the
    server's interpreter (nor its GIL). The CPU time is this process's: the server's alone."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(pool, abs, 0)  # the sender process is started before the clock
        cpu = time.process_time()
        accepted, seconds, latencies = await loop.run_in_executor(pool, sender, port, messages, connections)
        return accepted, seconds, latencies, time.process_time() - cpu


async def paperchart_run(messages: list[bytes], connections: int) -> Result:
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings({}, data_dir=Path(folder), mllp_port=0)
        store = build_store(settings)
        pipeline = build_pipeline(settings)
        audit = AuditLog(store)
        jobs = JobRunner(settings, store, pipeline)  # not started: extraction is not what is measured
        # the real receipt path: parse, store, commit, audit record, then the ACK
        server = build_mllp(settings, Hl7Service(settings, store, pipeline), jobs, audit)
        await server.start()
        try:
            return await drive(server.bound_port, messages, connections)
        finally:
            await server.stop()
            store.close()


async def peer_run(messages: list[bytes], connections: int) -> Result:
    from hl7.mllp import start_hl7_server

    async def answer(reader, writer) -> None:  # type: ignore[no-untyped-def]
        try:
            while True:
                message = await reader.readmessage()
                writer.writemessage(message.create_ack("AA"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await start_hl7_server(answer, "127.0.0.1", 0, limit=64 << 20)
    port = server.sockets[0].getsockname()[1]
    try:
        return await drive(port, messages, connections)
    finally:
        server.close()


def with_patient(message: str, number: int) -> str:
    """The message about patient ``number``: own MRN, name and visit, as a stream from a clinic would be."""
    return (
        message.replace("MRN7001^^^RIVERSIDE^MR~9434765919^^^NHS^NH", f"MRN{70000 + number}^^^RIVERSIDE^MR")
        .replace("Okafor^Grace^A", f"Okafor{number}^Grace^A")
        .replace("|V998877", f"|V{900000 + number}")
    )


def row(name: str, result: Result) -> tuple[str, float, float, float, float]:
    accepted, seconds, latencies, cpu = result
    ordered = sorted(latencies)
    return (
        name,
        accepted / seconds,
        statistics.median(ordered) * 1000,
        ordered[int(len(ordered) * 0.99) - 1] * 1000,
        cpu / len(latencies) * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--large", type=int, default=40, help="number of 1 MB PDF messages")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument(
        "--patients", type=int, default=400, help="patients the small messages are about, in turn (each its own visit)"
    )
    args = parser.parse_args()

    small = [
        with_patient(
            mdm("T02", control_id=f"S{i}", document_number=f"D{i}", text_lines=NOTE_LINES), i % args.patients
        ).encode()
        for i in range(args.messages)
    ]
    pdf = render_document("clinic_note", 1).pdf
    padded = pdf + b"\n%" + b"0" * (1024 * 1024) + b"\n"
    large = [
        mdm("T02", control_id=f"L{i}", document_number=f"DL{i}", content=padded).encode() for i in range(args.large)
    ]

    runs = [("small MDM", small)] + ([("1 MB PDF MDM", large)] if large else [])
    rows = []
    for kind, messages in runs:
        rows.append(
            row(
                f"paperchart, {kind} (AA after commit), {args.connections} conn",
                asyncio.run(paperchart_run(messages, args.connections)),
            )
        )
        rows.append(
            row(f"hl7 package server, {kind} (no storage, peer)", asyncio.run(peer_run(messages, args.connections)))
        )
    print(f"{'run':<62} {'msgs/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/msg':>10}")
    for name, rate, p50, p99, cpu in rows:
        print(f"{name:<62} {rate:>8.0f} {p50:>8.1f} {p99:>8.1f} {cpu:>10.2f}")
    ratios = ", ".join(f"{kind} {rows[2 * i][1] / rows[2 * i + 1][1]:.2f}" for i, (kind, _) in enumerate(runs))
    print(f"\nthroughput ratio paperchart / peer: {ratios} (server CPU is this process's; the sender runs apart)")


if __name__ == "__main__":
    main()
