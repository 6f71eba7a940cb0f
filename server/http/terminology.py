"""FHIR terminology operations for SMART apps: ``CodeSystem/$lookup``, ``$validate-code``, ``ValueSet/$expand``.

Value sets: every code system in the index is addressable by its implicit value set
``{system}?fhir_vs`` (FHIR R4 §4.8.7, "implicit value sets"), by the system URI itself, or by
a short name (``icd10cm``, ``snomed``, ``loinc``, ``rxnorm``, ``ucum``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

import anyio.to_thread
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from fhir_profiles import validate_resource
from server.auth import Caller, needs
from server.errors import InvalidRequest, NotFound, ServiceUnavailable
from server.http.fhir import fhir_response
from server.services import Services
from terminology import TerminologyService, resolve_system


def _terminology(services: Services) -> TerminologyService:
    if services.terminology is None:
        raise ServiceUnavailable("the terminology index has not been built (run: paperchart terminology build)")
    return services.terminology


def _system_from_valueset(url: str | None) -> str | None:
    if not url:
        return None
    return resolve_system(url.removesuffix("?fhir_vs"))


class TerminologyController(Controller):
    path = "/fhir"

    @get("/CodeSystem/$lookup", opt=needs("CodeSystem", "r"))
    async def lookup(
        self,
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
        system: Annotated[str, QueryParameter(name="system")],
        code: Annotated[str, QueryParameter(name="code")],
    ) -> Response[bytes]:
        terminology = _terminology(services)
        concept = await anyio.to_thread.run_sync(terminology.concept, resolve_system(system), code)
        if concept is None:
            raise NotFound(f"code {code} is not in code system {system}")
        summaries = {s.info.system: s for s in await anyio.to_thread.run_sync(terminology.code_systems)}
        parameter: list[dict[str, Any]] = [
            {"name": "name", "valueString": summaries[concept.system].info.name},
            {"name": "version", "valueString": concept.version},
            {"name": "display", "valueString": concept.display},
        ]
        for term, kind in concept.designations:
            parameter.append(
                {
                    "name": "designation",
                    "part": [
                        {
                            "name": "use",
                            "valueCoding": {
                                "system": "http://paperchart.org/fhir/CodeSystem/designation-kind",
                                "code": kind,
                            },
                        },
                        {"name": "value", "valueString": term},
                    ],
                }
            )
        if concept.semantic_type:
            parameter.append(
                {
                    "name": "property",
                    "part": [
                        {"name": "code", "valueCode": "semantic-type"},
                        {"name": "value", "valueString": concept.semantic_type},
                    ],
                }
            )
        result = {"resourceType": "Parameters", "parameter": parameter}
        validate_resource(result)
        return fhir_response(result)

    @get("/CodeSystem/$validate-code", opt=needs("CodeSystem", "r"))
    async def validate_code(
        self,
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
        code: Annotated[str, QueryParameter(name="code")],
        url: Annotated[str | None, QueryParameter(name="url")] = None,
        system: Annotated[str | None, QueryParameter(name="system")] = None,
        display: Annotated[str | None, QueryParameter(name="display")] = None,
    ) -> Response[bytes]:
        code_system = url or system
        if not code_system:
            raise InvalidRequest("$validate-code needs the code system in 'url' (or 'system')")
        concept = await anyio.to_thread.run_sync(_terminology(services).concept, resolve_system(code_system), code)
        parameter: list[dict[str, Any]] = []
        if concept is None:
            parameter = [
                {"name": "result", "valueBoolean": False},
                {"name": "message", "valueString": f"code {code} is not in {code_system}"},
            ]
        else:
            names = {concept.display.lower(), *(term.lower() for term, _ in concept.designations)}
            valid = display is None or display.lower() in names
            parameter = [{"name": "result", "valueBoolean": valid}, {"name": "display", "valueString": concept.display}]
            if not valid:
                parameter.append({"name": "message", "valueString": "the display is not a designation of this code"})
        result = {"resourceType": "Parameters", "parameter": parameter}
        validate_resource(result)
        return fhir_response(result)

    @get("/ValueSet/$expand", opt=needs("ValueSet", "r"))
    async def expand(
        self,
        services: NamedDependency[Services],
        caller: NamedDependency[Caller],
        url: Annotated[str | None, QueryParameter(name="url")] = None,
        filter_: Annotated[str | None, QueryParameter(name="filter")] = None,
        count: Annotated[int, QueryParameter(name="count", ge=0, le=1000)] = 20,
        offset: Annotated[int, QueryParameter(name="offset", ge=0)] = 0,
    ) -> Response[bytes]:
        terminology = _terminology(services)
        system = _system_from_valueset(url)
        if system is not None:
            known = {s.info.system for s in await anyio.to_thread.run_sync(terminology.code_systems)}
            if system not in known:
                raise NotFound(f"value set {url} is not known to this server")
        contains, total = await anyio.to_thread.run_sync(
            lambda: terminology.expand(system, filter_, count=count, offset=offset)
        )
        valueset: dict[str, Any] = {
            "resourceType": "ValueSet",
            "status": "active",
            "expansion": {
                "identifier": f"urn:uuid:{uuid.uuid4()}",
                "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "total": total,
                "offset": offset,
                "parameter": [{"name": "count", "valueInteger": count}]
                + ([{"name": "filter", "valueString": filter_}] if filter_ else []),
                "contains": [{"system": s, "code": c, "display": d} for s, c, d in contains],
            },
        }
        if url:
            valueset["url"] = url
        if not valueset["expansion"]["contains"]:
            del valueset["expansion"]["contains"]
        validate_resource(valueset)
        return fhir_response(valueset)
