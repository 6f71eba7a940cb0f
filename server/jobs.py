"""The in-process worker pool that runs extraction jobs from the durable queue.

Workers claim jobs from the Store with a lease and heartbeat while the pipeline runs in a
thread. If the process dies, leases expire and the next process (or another worker) takes the
job again; because resource ids come from the job id and completion is fenced on the lease,
a job run twice still yields exactly one Bundle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from contextlib import suppress
from typing import Any, Final

import anyio
import anyio.to_thread

from fhir_profiles import BundleContext, resource_id
from server.config import Settings
from server.errors import PaperchartError, ProcessingFailed, ServiceUnavailable
from server.pipeline import Pipeline, software_name
from server.pipeline.runner import ProgressCallback
from server.store import JobError, JobRecord, Store
from server.store.sqlite import now_instant

logger = logging.getLogger(__name__)

# Errors that will not go away by trying again: the document itself is the problem.
_PERMANENT_STATUSES: Final = frozenset({400, 404, 413, 415, 422})


def document_date(document: dict[str, Any]) -> str | None:
    """When a document's findings hold, as its sender said: DocumentReference.context.period, else .date."""
    period = document.get("context", {}).get("period", {})
    when = period.get("start") or period.get("end") or document.get("date")
    return str(when) if when else None


def bundle_id_for(job_id: str) -> str:
    return resource_id(job_id, "Bundle", 0)


class JobRunner:
    """Runs ``settings.workers`` workers; ``submit`` wakes them, ``wait`` awaits one job."""

    def __init__(self, settings: Settings, store: Store, pipeline: Pipeline) -> None:
        self.settings = settings
        self.store = store
        self.pipeline = pipeline
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wakeup = asyncio.Event()
        self._finished: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(n), name=f"paperchart-worker-{n}") for n in range(self.settings.workers)
        ]

    async def stop(self) -> None:
        """Stop taking jobs; jobs in flight are abandoned and re-run after their lease expires."""
        self._stopping = True
        self._wakeup.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task

    def submit(self) -> None:
        self._wakeup.set()

    async def wait(self, job_id: str, seconds: float) -> JobRecord | None:
        """The job once it has finished (succeeded or failed), or its current state at timeout."""
        event = self._finished.setdefault(job_id, asyncio.Event())
        with anyio.move_on_after(seconds):
            while True:
                job = await anyio.to_thread.run_sync(self.store.get_job, job_id)
                if job is None or job.status in ("succeeded", "failed"):
                    self._finished.pop(job_id, None)
                    return job
                # wake on our own completion signal, or poll (another process may finish it)
                with anyio.move_on_after(self.settings.job_poll_seconds * 4):
                    await event.wait()
        self._finished.pop(job_id, None)
        return await anyio.to_thread.run_sync(self.store.get_job, job_id)

    async def _work(self, number: int) -> None:
        while not self._stopping:
            try:
                job = await anyio.to_thread.run_sync(
                    self.store.claim_job, self.owner, self.settings.job_lease_seconds, self.settings.job_max_attempts
                )
            except Exception:
                logger.exception("worker %d could not claim a job", number)
                job = None
            if job is None:
                self._wakeup.clear()
                with anyio.move_on_after(self.settings.job_poll_seconds):
                    await self._wakeup.wait()
                continue
            self._wakeup.set()  # there may be more: let an idle worker look too
            await self._run(job)
            event = self._finished.get(job.id)
            if event is not None:
                event.set()

    async def _run(self, job: JobRecord) -> None:
        progress: dict[str, Any] = {"stage": "rasterize", "done": 0, "total": 0}

        def on_progress(stage: str, done: int, total: int) -> None:
            progress.update(stage=stage, done=done, total=total)
            # record each page at once (pages take seconds; pollers should not miss one)
            self.store.heartbeat(job.id, self.owner, self.settings.job_lease_seconds, stage, done, total)

        async def heartbeat() -> None:
            while True:
                # renew well before expiry; at least every second so pollers see page progress
                await anyio.sleep(max(min(self.settings.job_lease_seconds / 3, 1.0), 0.05))
                alive = await anyio.to_thread.run_sync(
                    self.store.heartbeat,
                    job.id,
                    self.owner,
                    self.settings.job_lease_seconds,
                    str(progress["stage"]),
                    int(progress["done"]),
                    int(progress["total"]),
                )
                if not alive:
                    logger.warning("job %s: lease lost to another worker", job.id)
                    return

        beat = asyncio.create_task(heartbeat())
        try:
            bundle = await anyio.to_thread.run_sync(self._process, job, on_progress)
            if not await anyio.to_thread.run_sync(self.store.complete_job, job.id, self.owner, bundle):
                logger.warning("job %s finished after its lease was lost; result discarded", job.id)
            else:
                logger.info("job %s succeeded (attempt %d)", job.id, job.attempts)
        except PaperchartError as exc:
            retry = exc.http_status not in _PERMANENT_STATUSES
            logger.warning("job %s failed: %s (%s)", job.id, type(exc).__name__, exc.message)
            await self._fail(job, exc, retry=retry)
        except Exception as exc:
            # unexpected: log the type only, library messages may quote document content
            logger.error("job %s failed with an unexpected %s", job.id, type(exc).__name__)
            await self._fail(job, ProcessingFailed("extraction failed unexpectedly"), retry=True)
        finally:
            beat.cancel()
            with suppress(asyncio.CancelledError):
                await beat

    async def _fail(self, job: JobRecord, exc: PaperchartError, *, retry: bool) -> None:
        error = JobError(http_status=exc.http_status, issue_code=exc.fhir_issue_code, message=exc.message)
        await anyio.to_thread.run_sync(
            lambda: self.store.fail_job(
                job.id, self.owner, error, retry=retry, max_attempts=self.settings.job_max_attempts
            )
        )

    def _process(self, job: JobRecord, on_progress: ProgressCallback) -> dict[str, Any]:
        document = self.store.get_document(job.document_id)
        content = self.store.get_document_content(job.document_id)
        if document is None or content is None:
            raise ServiceUnavailable("the job's document is missing from the store")
        subject = document.resource.get("subject", {}).get("reference", "")
        known_patient = None
        if subject.startswith("Patient/"):
            stored = self.store.read_resource("Patient", subject.removeprefix("Patient/"))
            known_patient = stored.resource if stored is not None else None
        context = BundleContext(
            patient=known_patient,
            bundle_id=bundle_id_for(job.id),
            id_seed=job.id,
            document_reference_id=document.id,
            fhir_base_url=self.settings.fhir_base_url,
            recorded=now_instant(),
            software=software_name(),
            medication_resource=self.settings.medication_resource,
            effective=document_date(document.resource),
            mrn_system=self.settings.mrn_system,
        )
        result = self.pipeline.run(content, document.content_type, context, on_progress)
        return result.bundle
