"""``GET /health``: the state of the store, the OCR engine and the extractor.

Response format: "Health Check Response Format for HTTP APIs" (draft-inadarei-api-health-check),
``application/health+json``; 200 when every check passes, 503 otherwise.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from litestar import Response, get
from litestar.di import NamedDependency

from server import __version__
from server.auth import QUIET_PUBLIC
from server.services import Services


@get("/health", opt=QUIET_PUBLIC)
async def health(services: NamedDependency[Services]) -> Response[dict[str, Any]]:
    store_ok = await anyio.to_thread.run_sync(services.store.health)
    ocr_ok = await anyio.to_thread.run_sync(services.pipeline.ocr_engine.ready)
    extractor = services.pipeline.extractor
    client = getattr(extractor, "client", None)
    # an LLM extractor falls back to the rules when its server is down: degraded ("warn"), not failed
    extractor_status = "pass"
    if client is not None and not await anyio.to_thread.run_sync(client.reachable):
        extractor_status = "warn"
    checks = {
        "store": [{"componentType": "datastore", "status": "pass" if store_ok else "fail"}],
        "ocr": [{"componentId": services.pipeline.ocr_engine.name, "status": "pass" if ocr_ok else "fail"}],
        "extractor": [{"componentId": extractor.name, "status": extractor_status}],
    }
    healthy = store_ok and ocr_ok
    return Response(
        content={"status": "pass" if healthy else "fail", "version": __version__, "checks": checks},
        status_code=200 if healthy else 503,
        media_type="application/health+json",
    )
