"""``create_app(settings)``: the Litestar application; its lifespan builds the services once."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

from mcp_tools.http import mcp_routes
from server.auth import authorize, resolve_caller
from server.config import Settings, load_settings
from server.errors import PaperchartError
from server.hl7 import ResultSender
from server.http.audit import AuditEventController, audit_middleware
from server.http.auth import AUTH_HANDLERS
from server.http.errors import (
    http_error_handler,
    paperchart_error_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from server.http.fhir import FhirController
from server.http.health import health
from server.http.hl7 import receive_hl7
from server.http.review import STATIC_ROUTER, TEMPLATES, ReviewController
from server.http.terminology import TerminologyController
from server.services import Services, build_mllp, build_services, build_terminology, close_services

logger = logging.getLogger(__name__)


def _services(state: State) -> Services:
    services: Services = state.services
    return services


async def _attach_terminology_when_built(app: Litestar, every_seconds: float = 5.0) -> None:
    """Start coding as soon as a terminology index appears (e.g. built in the background on first start).

    The index is swapped in with an atomic rename, so once the file exists it is complete.
    """
    services: Services = app.state.services
    path = services.settings.terminology_index_path
    while not path.exists():  # noqa: ASYNC110 - another process creates the file; there is no event to await
        await asyncio.sleep(every_seconds)
    terminology = build_terminology(services.settings)
    if terminology is None:
        return
    services.pipeline.terminology = terminology
    app.state.services = dataclasses.replace(services, terminology=terminology)
    logger.info("terminology index attached: extracted mentions are now coded")


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = build_services(settings)
        hl7, jobs, audit, terminology = services.hl7, services.jobs, services.audit, services.terminology
        app.state.services = services
        jobs.start()
        mllp = build_mllp(settings, hl7, jobs, audit) if settings.mllp_enabled else None
        if mllp is not None:
            await mllp.start()
            app.state.mllp = mllp
        results = ResultSender(settings, services.store) if settings.hl7_outbound_host else None
        if results is not None:
            results.start()
        watcher = asyncio.create_task(_attach_terminology_when_built(app)) if terminology is None else None
        logger.info("paperchart ready: FHIR base %s, data in %s", settings.fhir_base_url, settings.data_dir)
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            if mllp is not None:
                await mllp.stop()  # finish and acknowledge messages in flight first
            await jobs.stop()
            if results is not None:
                await results.stop()
            close_services(app.state.services)  # it may hold a terminology index attached since

    # base64 inflates by 4/3; allow the JSON around it too
    max_body = settings.max_upload_bytes * 4 // 3 + 1024 * 1024
    handlers: dict[Any, Any] = {
        PaperchartError: paperchart_error_handler,
        ValidationException: validation_error_handler,
        HTTPException: http_error_handler,
        Exception: unexpected_error_handler,
    }
    # the MCP endpoint reads the services the lifespan builds; the app object exists only below
    built: list[Litestar] = []
    mcp_handlers, mcp_lifespan = mcp_routes(lambda: _services(built[0].state), settings.mcp_url)
    app = Litestar(
        route_handlers=[
            *mcp_handlers,
            TerminologyController,
            FhirController,
            AuditEventController,
            receive_hl7,
            health,
            ReviewController,
            STATIC_ROUTER,
            *AUTH_HANDLERS,
        ],
        template_config=TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine),
        middleware=[audit_middleware],
        guards=[authorize],  # every route declares an Access rule; routes without one are refused
        lifespan=[lifespan, mcp_lifespan],  # MCP sessions start after the services and stop before them
        dependencies={"services": Provide(_services, sync_to_thread=False), "caller": Provide(resolve_caller)},
        exception_handlers=handlers,
        request_max_body_size=max_body,
        openapi_config=None,
        debug=False,
    )
    built.append(app)
    return app
