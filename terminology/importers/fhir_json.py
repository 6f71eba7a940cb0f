"""Any FHIR R4 ``CodeSystem`` (concepts, nested) or ``ValueSet`` (compose or expansion) as JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from terminology.model import CodeSystemInfo, ConceptRow, DesignationKind, TerminologyImportError


class FhirJsonImporter:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.resource: dict[str, Any] = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError):
            raise TerminologyImportError(str(path), None, "not a JSON file") from None
        kind = self.resource.get("resourceType") if isinstance(self.resource, dict) else None
        if kind not in ("CodeSystem", "ValueSet"):
            raise TerminologyImportError(str(path), None, "JSON is not a FHIR CodeSystem or ValueSet")
        system = self.resource.get("url") if kind == "CodeSystem" else self._valueset_system()
        if not system:
            raise TerminologyImportError(str(path), None, f"{kind} has no code system url")
        self.info = CodeSystemInfo(
            system=system,
            name=str(self.resource.get("title") or self.resource.get("name") or system),
            version=str(self.resource.get("version", "")),
            licence=str(self.resource.get("copyright", "see source")),
            source=f"FHIR {kind} {self.resource.get('url', path.name)}",
        )

    def _valueset_system(self) -> str | None:
        systems = {i.get("system") for i in self.resource.get("compose", {}).get("include", []) if i.get("system")}
        systems |= {c.get("system") for c in self.resource.get("expansion", {}).get("contains", []) if c.get("system")}
        if len(systems) > 1:
            raise TerminologyImportError(
                str(self.path), None, "ValueSet spans several code systems; import one per file"
            )
        return systems.pop() if systems else None

    @staticmethod
    def _row(concept: dict[str, Any]) -> ConceptRow:
        display = concept.get("display") or concept.get("code")
        designations: list[tuple[str, DesignationKind]] = [(str(display), "preferred")]
        designations.extend((str(d["value"]), "synonym") for d in concept.get("designation", []) if d.get("value"))
        return ConceptRow(code=str(concept["code"]), display=str(display), designations=tuple(designations))

    def _walk(self, concepts: list[dict[str, Any]]) -> Iterator[ConceptRow]:
        for concept in concepts:
            if "code" not in concept:
                raise TerminologyImportError(str(self.path), None, "a concept has no code")
            yield self._row(concept)
            yield from self._walk(concept.get("concept", []))

    def rows(self) -> Iterator[ConceptRow]:
        if self.resource["resourceType"] == "CodeSystem":
            yield from self._walk(self.resource.get("concept", []))
            return
        for include in self.resource.get("compose", {}).get("include", []):
            yield from self._walk(include.get("concept", []))
        yield from self._walk(self.resource.get("expansion", {}).get("contains", []))
