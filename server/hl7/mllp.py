"""MLLP listener (HL7 v2.5.1 Appendix C, release 1): ``<VT> message <FS><CR>`` over TCP, optional TLS.

Handles many concurrent connections, partial reads and several messages in one read; bytes
outside a frame are discarded; a frame over the size limit closes the connection (no partial
message is ever processed); idle connections are closed after a timeout. ``stop`` stops
accepting, lets every message being processed finish and be acknowledged, then closes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Generic, TypeVar

from server.hl7.er7 import MLLP_END, MLLP_START

logger = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[bytes | None]]
T = TypeVar("T")
_READ_SIZE = 256 * 1024  # bytes asked of the socket at a time


class Batches(Generic[T]):
    """Messages from many connections handed to worker threads in batches: ``await batches(message)``.

    ``work`` takes the messages that arrived together and returns one result each, in order; it
    runs in a worker thread, off the event loop. A message that arrives while ``in_flight``
    batches are being worked on waits, and goes with every other message that arrived meanwhile
    (at most ``max_batch``). Under load one thread hand-off, and one disk flush when ``work``
    commits, serve many messages; a lone message is handed off at once. One batch in flight is
    the default: measured with 8 connections, two in flight halved the batches (2 messages, not
    4) and the threads spent the difference waiting for the GIL (bench/mllp.py: 10-25 % fewer
    messages a second).
    """

    def __init__(self, work: Callable[[list[bytes]], Sequence[T]], *, max_batch: int = 64, in_flight: int = 1) -> None:
        self.work = work
        self.max_batch = max_batch
        self.in_flight = in_flight
        self._waiting: list[tuple[bytes, asyncio.Future[T]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def __call__(self, message: bytes) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.append((message, future))
        self._start()
        return await future

    def _start(self) -> None:
        while self._waiting and len(self._running) < self.in_flight:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._start()

    async def _run(self, batch: list[tuple[bytes, asyncio.Future[T]]]) -> None:
        try:
            # the loop's default executor: a plain thread pool, lighter per call than anyio's
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(None, self.work, [message for message, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)} messages")
        except BaseException as exc:  # handed to every waiting caller, raised there
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # the caller may have been cancelled meanwhile
                future.set_result(result)


def tls_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """Server TLS (1.2+); with ``client_ca``, clients must present a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _frame_end(buffer: bytearray, searched: int) -> int:
    """Where the end marker (FS CR) of the frame starting at 0 is, or -1. Bytes before
    ``searched`` were searched already; the last of them is looked at again (a marker may
    straddle two reads). FS alone is searched for: one byte is found by memchr, ten times faster."""
    position = max(1, searched - 1)
    while (position := buffer.find(MLLP_END[0], position)) != -1:
        if position + 1 >= len(buffer):
            return -1  # FS is the last byte so far: the CR has not arrived yet
        if buffer[position + 1] == MLLP_END[1]:
            return position
        position += 1
    return -1


class _Connection:
    def __init__(self) -> None:
        self.busy = False
        self.task: asyncio.Task[object] | None = None
        self.last_active = time.monotonic()  # when bytes last arrived or an ACK last left


class MllpServer:
    def __init__(
        self,
        handler: Handler,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        idle_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False
        self._reaper: asyncio.Task[None] | None = None

    @property
    def bound_port(self) -> int:
        if self._server is None:
            raise RuntimeError("MLLP server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self.ssl_context, limit=1024 * 1024
        )
        self._reaper = asyncio.create_task(self._close_idle())
        logger.info("MLLP listening on %s:%d%s", self.host, self.bound_port, " (TLS)" if self.ssl_context else "")

    async def _close_idle(self) -> None:
        """Close connections silent for ``idle_timeout`` (give or take a tenth of it). One task for
        all connections: a timer armed and cancelled around every read cost more than the read."""
        while True:
            await asyncio.sleep(self.idle_timeout / 10)
            silent_since = time.monotonic() - self.idle_timeout
            for connection in list(self._connections):
                if not connection.busy and connection.last_active < silent_since and connection.task is not None:
                    logger.info("MLLP connection idle for %.0f s; closing", self.idle_timeout)
                    connection.task.cancel()

    async def stop(self, grace_seconds: float = 30.0) -> None:
        self._stopping = True
        if self._reaper is not None:
            self._reaper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            if not connection.busy and connection.task is not None:
                connection.task.cancel()  # idle: nothing in flight, close now
        pending = [c.task for c in self._connections if c.task is not None]
        if pending:
            await asyncio.wait(pending, timeout=grace_seconds)
        if self._server is not None:
            with suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection()
        connection.task = asyncio.current_task()
        self._connections.add(connection)
        buffer = bytearray()
        searched = 1  # the frame in ``buffer`` has no end marker before this offset
        try:
            while not self._stopping:
                chunk = await reader.read(_READ_SIZE)
                if not chunk:
                    return
                connection.last_active = time.monotonic()
                buffer += chunk
                while True:
                    start = buffer.find(MLLP_START)
                    if start == -1:
                        buffer.clear()  # bytes outside any frame: discard
                        searched = 1
                        break
                    if start:
                        del buffer[:start]
                        searched = 1
                    end = _frame_end(buffer, searched)
                    if end == -1:
                        if len(buffer) > self.max_message_bytes:
                            logger.warning("MLLP frame over %d bytes; closing the connection", self.max_message_bytes)
                            return
                        searched = len(buffer)
                        break
                    with memoryview(buffer) as view:
                        payload = bytes(view[1:end])
                    del buffer[: end + len(MLLP_END)]
                    searched = 1
                    if len(payload) > self.max_message_bytes:
                        logger.warning("MLLP message over %d bytes; closing the connection", self.max_message_bytes)
                        return
                    connection.busy = True
                    try:
                        ack = await self.handler(payload)
                        if ack is not None:
                            writer.write(MLLP_START + ack + MLLP_END)
                            await writer.drain()
                    finally:
                        connection.busy = False
                        connection.last_active = time.monotonic()
                    if self._stopping:
                        return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        except asyncio.CancelledError:
            return
        finally:
            self._connections.discard(connection)
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()
