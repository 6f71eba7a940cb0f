"""ICD-10-CM from CMS's official tabular list XML (``icd10cm_tabular_YYYY.xml``).

For users with a newer release than the built-in one. The file is read as a stream, one
three-character category at a time (a category is a few hundred elements at most), so memory
stays flat on the 70 MB file. What is imported matches the built-in importer: billable codes
(the leaves, with 7th characters added where a ``sevenChrDef`` applies) with their titles as
preferred designations, their inclusion terms as synonyms, and a category's own inclusion terms
on the code a non-specific mention would be coded to.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from terminology.importers.icd10cm import cms_release_info, default_leaf, is_term
from terminology.model import ConceptRow, DesignationKind, TerminologyImportError

_CODE = re.compile(r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")


class _Category:
    """One category's codes, enough for ``default_leaf`` (the same questions simple-icd-10-cm answers)."""

    def __init__(self) -> None:
        self.titles: dict[str, str] = {}
        self.children: dict[str, list[str]] = {}
        self.terms: dict[str, list[str]] = {}
        self.order: list[str] = []

    def add(self, code: str, parent: str | None, title: str, terms: list[str]) -> None:
        self.titles[code] = title
        self.terms[code] = terms
        self.children.setdefault(code, [])
        self.order.append(code)
        if parent is not None:
            self.children[parent].append(code)

    def is_leaf(self, code: str) -> bool:
        return not self.children[code]

    def get_children(self, code: str) -> list[str]:
        return self.children[code]

    def get_description(self, code: str) -> str:
        return self.titles[code]


def _with_seventh(code: str, char: str) -> str:
    """S02.0 + A → S02.0XXA: placeholder X up to six characters, then the 7th."""
    bare = code.replace(".", "").ljust(6, "X") + char
    return f"{bare[:3]}.{bare[3:]}"


class Icd10cmTabularImporter:
    """Billable codes, titles and inclusion terms from the CMS tabular list XML."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.info = cms_release_info(path, "tabular list")

    def rows(self) -> Iterator[ConceptRow]:
        count = 0
        try:
            for category in self._categories():
                yield from self._leaves(category)
                count += 1
        except ET.ParseError as error:
            line = error.position[0] if error.position else None
            problem = "not well-formed XML (truncated or damaged file?)"
            raise TerminologyImportError(str(self.path), line, problem) from None
        except DefusedXmlException:
            problem = "the file declares XML entities or external references, which the tabular list never uses"
            raise TerminologyImportError(str(self.path), None, problem) from None
        if count == 0:
            problem = "no ICD-10-CM <diag> codes found: not a tabular list XML"
            raise TerminologyImportError(str(self.path), None, problem)

    def _categories(self) -> Iterator[_Category]:
        """Each three-character category, complete, as soon as its closing tag is read."""
        depth = 0  # open <diag> elements
        seen_root = False
        for event, element in iterparse(self.path, events=("start", "end")):
            if not seen_root:
                seen_root = True
                if element.tag != "ICD10CM.tabular":
                    raise TerminologyImportError(
                        str(self.path), 1, f"root element is <{element.tag}>, not <ICD10CM.tabular>"
                    )
            if element.tag != "diag":
                continue
            depth += 1 if event == "start" else -1
            if event == "end" and depth == 0:
                category = _Category()
                self._walk(category, element, None, {})
                yield category
                element.clear()

    def _walk(self, category: _Category, diag: ET.Element, parent: str | None, seventh: dict[str, str]) -> None:
        code = (diag.findtext("name") or "").strip()
        if not _CODE.match(code):
            raise TerminologyImportError(str(self.path), None, f"<diag> with an invalid code {code[:10]!r}")
        title = _text(diag.find("desc"))
        terms = [term for note in diag.findall("inclusionTerm/note") if is_term(term := _text(note))]
        category.add(code, parent, title, terms)
        seventh = {**seventh, **{ext.get("char", ""): _text(ext) for ext in diag.findall("sevenChrDef/extension")}}
        children = diag.findall("diag")
        for child in children:
            self._walk(category, child, code, seventh)
        if not children:  # a tabular leaf that takes a 7th character is not billable without it
            for char, meaning in sorted(seventh.items()):
                category.add(_with_seventh(code, char), code, f"{title}, {meaning}", [])

    def _leaves(self, category: _Category) -> Iterator[ConceptRow]:
        inherited: dict[str, list[str]] = {}
        for code in category.order:
            if not category.is_leaf(code) and category.terms[code]:
                target = default_leaf(category, code)
                if target is not None:
                    inherited.setdefault(target, []).extend(category.terms[code])
        for code in category.order:
            if not category.is_leaf(code):
                continue
            title = category.titles[code]
            designations: list[tuple[str, DesignationKind]] = [(title, "preferred")]
            designations.extend((t, "inclusion") for t in category.terms[code] + inherited.get(code, []))
            yield ConceptRow(code=code, display=title, semantic_type="disorder", designations=tuple(designations))


def _text(element: ET.Element | None) -> str:
    return " ".join(("".join(element.itertext()) if element is not None else "").split())
