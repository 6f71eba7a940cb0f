"""Every HTTP interaction leaves an audit record; holders of an audit scope read them as AuditEvent.

The middleware runs around each route (after routing, so it knows the route and its path
parameters, and sees the ``Caller`` the guard established). It records what was touched by
reference only: no query values, no bodies, no document text.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Final

import anyio.to_thread
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from server.auth import Caller, needs
from server.errors import NotFound, PaperchartError
from server.http.fhir import fhir_response
from server.services import Services
from server.store.audit import Action, AuditRecord, audit_event, now_instant, outcome_of

logger = logging.getLogger(__name__)
AUDIT_OPT: Final = "audit"  # opt={"audit": False} on routes that reveal nothing (health, discovery)
_ENTITY_PARAMETERS: Final = {"document_id": "DocumentReference", "bundle_id": "Bundle"}


def _describe(scope: Scope, method: str, status: int, location: str | None) -> tuple[str, Action, list[str]]:
    """(interaction, action, entity references) of one request."""
    handler = scope.get("route_handler")
    template = next(iter(handler.paths), "") if handler is not None else ""
    parameters: dict[str, Any] = scope.get("path_params") or {}
    entities: list[str] = []
    if "resource_type" in parameters and "resource_id" in parameters:
        entities.append(f"{parameters['resource_type']}/{parameters['resource_id']}")
    for name, resource_type in _ENTITY_PARAMETERS.items():
        if name in parameters:
            kind = "Binary" if template.startswith("/Binary") or "/Binary/" in template else resource_type
            entities.append(f"{kind}/{parameters[name]}")
    if location and status == 201:
        parts = location.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) >= 2:
            entities.append(f"{parts[-2]}/{parts[-1]}")
    last = template.rstrip("/").rsplit("/", 1)[-1]
    if template.startswith("/auth/"):
        return last, "E", entities
    if last.startswith("$"):
        return f"operation:{last}", "E", entities
    if "_jobs" in template:
        return "operation:status", "E", entities
    if method == "POST":
        return "create", "C", entities
    return ("read" if entities else "search-type"), "R", entities


def audit_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        if str(scope["type"]) != "http" or handler is None or handler.opt.get(AUDIT_OPT) is False:
            await app(scope, receive, send)
            return
        seen: dict[str, Any] = {"status": 500, "location": None}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"location":
                        seen["location"] = value.decode("latin-1")
            await send(message)

        try:
            await app(scope, receive, capture)
        except PaperchartError as error:
            seen["status"] = error.http_status
            raise
        except Exception:
            seen["status"] = 500
            raise
        finally:
            await _record(scope, seen["status"], seen["location"])

    return middleware


async def _record(scope: Scope, status: int, location: str | None) -> None:
    services: Services = scope["litestar_app"].state.services
    state: dict[str, Any] = scope.get("state") or {}
    caller: Caller | None = state.get("caller")
    method = str(scope.get("method", "GET"))
    interaction, action, entities = _describe(scope, method, status, location)
    patient = caller.patient if caller is not None else None
    if patient is None:
        patient = _query_value(scope, "patient")
    client = scope.get("client")
    record = AuditRecord(
        recorded=now_instant(),
        channel="auth" if interaction in ("token", "authorize", "revoke", "introspect") else "rest",
        action=action,
        interaction=interaction,
        outcome=outcome_of(status),
        status=status,
        subject=caller.subject if caller else state.get("audit_subject"),
        client_id=caller.client_id if caller else state.get("audit_client"),
        scopes=caller.scopes if caller else (),
        purpose=caller.purpose if caller else None,
        address=client[0] if client else None,
        entities=tuple(entities),
        patient=patient,
    )
    try:
        await anyio.to_thread.run_sync(services.audit.append, record)
    except Exception:  # an audit failure must be loud, and must not hide the response already sent
        logger.exception("could not write the audit record for a %s request", method)


def _query_value(scope: Scope, name: str) -> str | None:
    from urllib.parse import parse_qs

    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(name)
    return values[0].removeprefix("Patient/") if values else None


class AuditEventController(Controller):
    """``AuditEvent`` read and search (``patient``, ``_count``, ``_offset``) for audit-scope holders."""

    path = "/fhir/AuditEvent"

    @get("/", opt=needs("AuditEvent", "s", contexts=("user", "system")))
    async def search(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
        patient: Annotated[str | None, QueryParameter(name="patient")] = None,
        count: Annotated[int, QueryParameter(name="_count", ge=0, le=500)] = 50,
        offset: Annotated[int, QueryParameter(name="_offset", ge=0)] = 0,
    ) -> Response[bytes]:
        from server.http.fhir import searchset

        entries, total = await anyio.to_thread.run_sync(
            lambda: services.audit.search(
                patient=patient.removeprefix("Patient/") if patient else None, count=count, offset=offset
            )
        )
        events = [audit_event(e, services.settings.fhir_base_url) for e in entries]
        return fhir_response(searchset(services, "AuditEvent", request, events, total, count, offset))

    @get("/{event_id:int}", opt=needs("AuditEvent", "r", contexts=("user", "system")))
    async def read(
        self, event_id: FromPath[int], services: NamedDependency[Services], caller: NamedDependency[Caller]
    ) -> Response[bytes]:
        entry = await anyio.to_thread.run_sync(services.audit.read, event_id)
        if entry is None:
            raise NotFound(f"AuditEvent/{event_id} is not known")
        return fhir_response(audit_event(entry, services.settings.fhir_base_url))
