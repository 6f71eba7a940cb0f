"""The MLLP listener as a transport: TLS (mutual), idle timeout, concurrency, truncation, graceful stop."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.hl7 import Batches, MllpServer, tls_context

VT, FS_CR = b"\x0b", b"\x1c\r"


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey, issuer: str, *, ca: bool
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pki(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate for localhost and a client certificate, all signed by the CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("paperchart test CA", ca_key, ca_key, "paperchart test CA", ca=True)
    paths: dict[str, Path] = {}

    def save(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
        paths[f"{name}_cert"] = folder / f"{name}.crt"
        paths[f"{name}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            paths[f"{name}_key"] = folder / f"{name}.key"
            paths[f"{name}_key"].write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )

    save("ca", ca, None)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        save(
            name,
            _certificate(
                "localhost" if name == "server" else "interface-engine", key, ca_key, "paperchart test CA", ca=False
            ),
            key,
        )
    return paths


class Running:
    """An MllpServer on its own event loop thread, with an echo-ACK handler."""

    def __init__(self, handler: Callable[[bytes], Awaitable[bytes | None]], **options: object) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = MllpServer(
            handler,
            host="127.0.0.1",
            port=int(options.pop("port", 0)),  # type: ignore[call-overload]
            max_message_bytes=1 << 20,
            idle_timeout=float(options.pop("idle_timeout", 30.0)),
            **options,
        )  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.bound_port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(grace_seconds=10), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def echo(payload: bytes) -> bytes:
    return b"MSA|AA|" + payload.split(b"|", 10)[9]


def message(control_id: str) -> bytes:
    return VT + f"MSH|^~\\&|A|B|C|D|2026||MDM^T02|{control_id}|P|2.5.1\rPID|1||X".encode() + FS_CR


def exchange(port: int, payload: bytes, *, context: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        sock = context.wrap_socket(raw, server_hostname="localhost") if context else raw
        sock.sendall(payload)
        reply = b""
        while not reply.endswith(FS_CR):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


def refused(port: int, payload: bytes, context: ssl.SSLContext | None) -> bool:
    """No ACK: the handshake failed, or (TLS 1.3 rejects client certificates after it) the server hung up."""
    try:
        return exchange(port, payload, context=context) == b""
    except (ssl.SSLError, ConnectionError, OSError):
        return True


def test_mutual_tls(tmp_path: Path) -> None:
    pki = write_pki(tmp_path)
    running = Running(echo, ssl_context=tls_context(pki["server_cert"], pki["server_key"], pki["ca_cert"]))
    try:
        client = ssl.create_default_context(cafile=pki["ca_cert"])
        client.load_cert_chain(pki["client_cert"], pki["client_key"])
        assert exchange(running.port, message("TLS-1"), context=client) == VT + b"MSA|AA|TLS-1" + FS_CR
        anonymous = ssl.create_default_context(cafile=pki["ca_cert"])  # no client certificate
        assert refused(running.port, message("TLS-2"), anonymous)
        assert refused(running.port, message("TLS-3"), None)  # plain TCP to the TLS port
    finally:
        running.stop()


def test_idle_connections_are_closed(tmp_path: Path) -> None:
    running = Running(echo, idle_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            assert sock.recv(10) == b""  # the server hung up on a silent client
    finally:
        running.stop()


def test_a_connection_in_use_is_not_closed_as_idle() -> None:
    running = Running(echo, idle_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            for number in range(6):  # 1.8 s in all, never 0.5 s silent
                sock.sendall(message(f"K-{number}"))
                reply = b""
                while not reply.endswith(FS_CR):
                    reply += sock.recv(4096)
                assert reply == VT + f"MSA|AA|K-{number}".encode() + FS_CR
                time.sleep(0.3)
            time.sleep(1.0)
            assert sock.recv(10) == b""  # and once silent, it is
    finally:
        running.stop()


def test_many_concurrent_connections() -> None:
    running = Running(echo)
    try:
        replies: dict[int, bytes] = {}

        def client(number: int) -> None:
            replies[number] = exchange(running.port, message(f"C-{number}"))

        threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert replies == {n: VT + f"MSA|AA|C-{n}".encode() + FS_CR for n in range(20)}
    finally:
        running.stop()


def test_a_truncated_frame_is_never_processed() -> None:
    seen: list[bytes] = []

    async def record(payload: bytes) -> bytes:
        seen.append(payload)
        return b"MSA|AA|x"

    running = Running(record)
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(message("T-1")[:-5])  # the sender dies mid-message
        assert exchange(running.port, message("T-2")) == VT + b"MSA|AA|x" + FS_CR
        assert len(seen) == 1 and b"T-2" in seen[0]
    finally:
        running.stop()


def test_stop_finishes_the_message_in_flight() -> None:
    started = threading.Event()

    async def slow(payload: bytes) -> bytes:
        started.set()
        await asyncio.sleep(1.0)  # a commit that takes a while
        return b"MSA|AA|slow"

    running = Running(slow)
    result: dict[str, bytes] = {}
    sender = threading.Thread(target=lambda: result.setdefault("reply", exchange(running.port, message("S-1"))))
    sender.start()
    assert started.wait(10)
    running.stop()  # shutdown while the message is being processed
    sender.join(10)
    assert result["reply"] == VT + b"MSA|AA|slow" + FS_CR
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", running.port), timeout=2)


def test_frames_cut_anywhere_across_reads_even_between_fs_and_cr() -> None:
    seen: list[bytes] = []

    async def record(payload: bytes) -> bytes:
        seen.append(payload)
        return b"MSA|AA|" + str(len(seen)).encode()

    big = VT + b"MSH|^~\\&|A|B|C|D|2026||MDM^T02|BIG|P|2.5.1\rOBX|1|ED|x||" + b"QUJD" * 200_000 + FS_CR
    stray_fs = VT + b"MSH|^~\\&|A|B|C|D|2026||MDM^T02|FS|P|2.5.1\rNTE|1||a\x1cb" + FS_CR  # FS not followed by CR
    stream = b"noise" + message("C-1") + big + stray_fs
    cuts = [len(b"noise") + len(message("C-1")) - 1, len(stream) - len(stray_fs) - 1, len(stream) - 1]
    running = Running(record)
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            start = 0
            for cut in [*cuts, len(stream)]:  # each cut falls between an FS and its CR
                sock.sendall(stream[start:cut])
                start = cut
                threading.Event().wait(0.05)  # let the listener read what was sent so far
            replies = b""
            while replies.count(FS_CR) < 3:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                replies += chunk
        assert replies == b"".join(VT + b"MSA|AA|" + str(n).encode() + FS_CR for n in (1, 2, 3))
        assert seen == [message("C-1")[1:-2], big[1:-2], stray_fs[1:-2]]
    finally:
        running.stop()


def test_messages_from_many_connections_are_worked_on_in_batches_each_answered_its_own() -> None:
    gate = threading.Event()
    batches: list[list[bytes]] = []

    def work(payloads: list[bytes]) -> list[bytes]:
        batches.append(payloads)
        gate.wait(10)  # the first batch is slow: the messages arriving meanwhile go together
        return [b"MSA|AA|" + p.split(b"|", 10)[9] for p in payloads]

    handler = Batches(work)
    running = Running(handler)
    try:
        replies: dict[int, bytes] = {}

        def client(number: int) -> None:
            replies[number] = exchange(running.port, message(f"B-{number}"))

        def wait_until(condition: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 10
            while not condition() and time.monotonic() < deadline:
                time.sleep(0.01)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(12)]
        threads[0].start()
        wait_until(lambda: bool(batches))
        for thread in threads[1:]:
            thread.start()
        wait_until(lambda: len(handler._waiting) == 11)  # the other eleven wait behind the first batch
        gate.set()
        for thread in threads:
            thread.join(30)
        assert replies == {n: VT + f"MSA|AA|B-{n}".encode() + FS_CR for n in range(12)}
        assert [len(b) for b in batches] == [1, 11]  # a lone message at once, then the rest together
    finally:
        running.stop()


def test_a_failed_batch_fails_only_its_own_messages() -> None:
    calls = 0

    def work(payloads: list[bytes]) -> list[bytes]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("the disk is full")
        return [b"MSA|AA|ok" for _ in payloads]

    async def run() -> tuple[BaseException | bytes, bytes]:
        batches = Batches(work)
        first = await asyncio.gather(batches(b"one"), return_exceptions=True)
        return first[0], await batches(b"two")

    failed, answered = asyncio.run(run())
    assert isinstance(failed, OSError) and answered == b"MSA|AA|ok"
