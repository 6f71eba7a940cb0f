"""Results back to the EHR: the store's HL7 outbox delivered as ORU^R01 over MLLP.

A released Bundle of a document that came in over HL7 is owed to its sender from the moment of
release, in the same transaction (``SqliteStore(hl7_results=True)``), so nothing released is
forgotten by a crash. ``ResultSender`` delivers what is owed, oldest first, one message at a time
per destination, and waits for the acknowledgement:

- AA or CA: delivered;
- AE or CE (the receiver found an error in the message): failed, not sent again; logged with
  the receiver's HL7 error code (never its text, which may quote PHI);
- AR or CR, no answer within the timeout, a refused or broken connection: tried again after
  ``hl7_outbound_retry_seconds``, doubling up to 10 minutes, at most ``MAX_ATTEMPTS`` times.

A message keeps its control id (MSH-10) across attempts, so a receiver that got one whose ACK
was lost sees the same message again, as HL7 expects of a resend.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from contextlib import suppress
from typing import Final

import anyio.to_thread

from server.config import Settings
from server.hl7.er7 import MLLP_END, MLLP_START, Er7Error, parse_er7
from server.hl7.oru import build_oru
from server.store import OwedResult, Store

logger = logging.getLogger(__name__)

MAX_ATTEMPTS: Final = 12
MAX_WAIT_SECONDS: Final = 600.0
POLL_SECONDS: Final = 1.0  # a released result leaves within about this


class _Retry(Exception):
    """The delivery did not happen; try again later."""


class ResultSender:
    """Delivers the results owed over HL7 to ``settings.hl7_outbound_host``."""

    def __init__(self, settings: Settings, store: Store) -> None:
        if settings.hl7_outbound_host is None:
            raise ValueError("no HL7 destination is configured")
        self.settings = settings
        self.store = store
        self.host = settings.hl7_outbound_host
        self.port = settings.hl7_outbound_port
        self._ssl = (
            ssl.create_default_context(cafile=str(settings.hl7_outbound_tls_ca))
            if settings.hl7_outbound_tls_ca is not None
            else None
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="paperchart-hl7-results")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                # one at a time, leased for as long as its delivery may take: if this process dies
                # mid-delivery, the result is due again within seconds
                lease = self.settings.hl7_outbound_ack_timeout_seconds + 5
                owed = await anyio.to_thread.run_sync(self.store.claim_hl7_results, lease, 1)
                for item in owed:
                    await self.deliver(item)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store is unavailable: keep the loop alive, try at the next poll
                logger.exception("could not read the HL7 results outbox")
                owed = []
            if not owed:
                await asyncio.sleep(POLL_SECONDS)

    async def deliver(self, item: OwedResult) -> None:
        """One attempt at one owed result, and its outcome recorded."""
        control_id = f"PCR{item.id}"
        try:
            message = await anyio.to_thread.run_sync(self._message, item, control_id)
        except Exception as exc:  # e.g. the document's key was destroyed: trying again cannot help
            logger.error("HL7 results %s could not be built: %s", control_id, type(exc).__name__)
            await self._record(item, ack_code=None, error=f"could not be built: {type(exc).__name__}")
            return
        if message is None:
            await self._record(item, ack_code=None, error="nothing to send: the document or its results are gone")
            return
        try:
            ack = await self._exchange(message.encode("utf-8"))
            code, error_code = _ack_code(ack, control_id)
        except (_Retry, OSError, TimeoutError, ssl.SSLError) as exc:
            await self._retry(item, None, f"not delivered: {type(exc).__name__}")
            return
        if code in ("AA", "CA"):
            await self._record(item, ack_code=code, error=None)
        elif code in ("AE", "CE"):
            logger.warning("HL7 results %s refused by %s with %s (error %s)", control_id, self.host, code, error_code)
            await self._record(item, ack_code=code, error=f"refused: {code} {error_code}".strip())
        else:
            await self._retry(item, code, f"rejected: {code} {error_code}".strip())

    def _message(self, item: OwedResult, control_id: str) -> str | None:
        bundle = self.store.read_resource("Bundle", item.bundle_id)
        document = self.store.get_document(item.document_id)
        if bundle is None or document is None:
            return None
        subject = document.resource.get("subject", {}).get("reference", "")
        patient = self.store.read_resource("Patient", subject.removeprefix("Patient/")) if subject else None
        application, _, facility = item.receiver.partition("|")
        return build_oru(
            control_id=control_id,
            receiver=(application, facility),
            patient=patient.resource if patient is not None else {},
            document=document.resource,
            bundle=bundle.resource,
            correction=item.correction,
        )

    async def _exchange(self, message: bytes) -> bytes:
        timeout = self.settings.hl7_outbound_ack_timeout_seconds
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
            )
            try:
                writer.write(MLLP_START + message + MLLP_END)
                await writer.drain()
                reply = await reader.readuntil(MLLP_END)
            except asyncio.IncompleteReadError:
                raise _Retry("the connection closed before an ACK") from None
            finally:
                writer.close()
                with suppress(Exception):
                    await writer.wait_closed()
        return reply[reply.find(MLLP_START) + 1 : -len(MLLP_END)]

    async def _retry(self, item: OwedResult, code: str | None, error: str) -> None:
        attempts = item.attempts + 1
        if attempts >= MAX_ATTEMPTS:
            logger.error("HL7 results PCR%d to %s given up after %d attempts (%s)", item.id, self.host, attempts, error)
            await self._record(item, ack_code=code, error=f"{error}; given up after {attempts} attempts")
            return
        wait = min(self.settings.hl7_outbound_retry_seconds * 2 ** (attempts - 1), MAX_WAIT_SECONDS)
        logger.info("HL7 results PCR%d to %s: %s; next try in %.0f s", item.id, self.host, error, wait)
        await self._record(item, ack_code=code, error=error, retry_at=time.time() + wait)

    async def _record(
        self, item: OwedResult, *, ack_code: str | None, error: str | None, retry_at: float | None = None
    ) -> None:
        await anyio.to_thread.run_sync(
            lambda: self.store.hl7_result_done(item.id, ack_code=ack_code, error=error, retry_at=retry_at)
        )


def _ack_code(ack: bytes, control_id: str) -> tuple[str, str]:
    """(MSA-1, ERR-3 code) of an ACK to the message ``control_id``; ``_Retry`` if it is not one."""
    try:
        message = parse_er7(ack.decode("utf-8", errors="replace"))
    except Er7Error:
        raise _Retry("the answer is not an HL7 message") from None
    msa = message.first("MSA")
    if msa is None or msa.value(2) != control_id:
        raise _Retry("the answer does not acknowledge this message")
    error = message.first("ERR")
    return msa.value(1).upper(), error.value(3) if error is not None else ""
