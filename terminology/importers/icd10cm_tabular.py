"""ICD-10-CM from CMS's official release: the tabular list XML, and its Alphabetic Index.

For users with a newer release than the built-in one. ``path`` is the tabular list
(``icd10cm_tabular_YYYY.xml``) or the unzipped release folder (``icd10cm-table-index-YYYY``),
whose Alphabetic Index (``icd10cm_index_YYYY.xml``) then adds the index's entries as synonyms of
the codes they lead to ("Abasia (-astasia) (hysterical)" → F44.4; "Diabetes, diabetic with
amyotrophy" → E11.44): the names coders look codes up by, eponyms included.

What is imported matches the built-in importer: billable codes (the leaves, with 7th characters
added where a ``sevenChrDef`` applies) with their titles as preferred designations, their
inclusion terms as synonyms, and names placed elsewhere (a category's inclusion terms and
Includes notes, Excludes notes' "name (code)", index entries) as ``Placements`` ranks them.
The files are read as streams, the tabular twice (first where names are placed, then the codes),
one three-character category at a time, so memory holds the placed names, not the 70 MB tree.
"""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import iterparse

from terminology.importers.icd10cm import Placements, cms_release_info, default_leaf, is_term, leaf_row
from terminology.model import ConceptRow, DesignationKind, TerminologyImportError

_CODE = re.compile(r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")


class _Category:
    """One category's codes, enough for ``default_leaf`` (the same questions simple-icd-10-cm answers)."""

    def __init__(self) -> None:
        self.titles: dict[str, str] = {}
        self.children: dict[str, list[str]] = {}
        self.terms: dict[str, list[str]] = {}
        self.excludes: list[str] = []  # Excludes notes of any of its codes: "wheezing NOS (R06.2)"
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
    """Billable codes, titles and synonyms from the CMS tabular list XML (and Alphabetic Index)."""

    def __init__(self, path: Path) -> None:
        self.tabular, self.index = release_files(path)
        kind = "tabular list and index" if self.index else "tabular list"
        self.info = cms_release_info(self.tabular, kind)

    def rows(self) -> Iterator[ConceptRow]:
        placements = Placements()
        resolved: dict[str, str | None] = {}  # any tabular code → its billable code for a plain mention
        excludes: list[str] = []
        with _read(self.tabular, "the tabular list never uses them"):
            for category in self._categories():
                for code in category.order:
                    resolved[code] = default_leaf(category, code)
                    for term in category.terms[code]:
                        if category.is_leaf(code):
                            placements.own(code, term)
                        else:
                            placements.place(2, resolved[code], term, "inclusion", scope=code)
                    placements.title(code, category.get_description(code), resolved[code])
                excludes.extend(category.excludes)
        if not resolved:
            problem = "no ICD-10-CM <diag> codes found: not a tabular list XML"
            raise TerminologyImportError(str(self.tabular), None, problem)
        for note in excludes:
            placements.note(note, resolved.get)
        if self.index is not None:
            with _read(self.index, "the index never uses them"):
                for name, code in self._index_entries(self.index):
                    placements.pointer(name, code, resolved.get)
        noted = placements.noted()
        with _read(self.tabular, "the tabular list never uses them"):
            for category in self._categories():
                yield from self._leaves(category, noted)

    def _categories(self) -> Iterator[_Category]:
        """Each three-character category, complete, as soon as its closing tag is read."""
        depth = 0  # open <diag> elements
        for event, element in _elements(self.tabular, "ICD10CM.tabular"):
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
            raise TerminologyImportError(str(self.tabular), None, f"<diag> with an invalid code {code[:10]!r}")
        title = _text(diag.find("desc"))
        notes = [*diag.findall("inclusionTerm/note"), *diag.findall("includes/note")]
        terms = [term for note in notes if is_term(term := _text(note))]
        category.add(code, parent, title, terms)
        excludes = [*diag.findall("excludes1/note"), *diag.findall("excludes2/note")]
        category.excludes.extend(_text(note) for note in excludes)
        seventh = {**seventh, **{ext.get("char", ""): _text(ext) for ext in diag.findall("sevenChrDef/extension")}}
        children = diag.findall("diag")
        for child in children:
            self._walk(category, child, code, seventh)
        if not children:  # a tabular leaf that takes a 7th character is not billable without it
            for char, meaning in sorted(seventh.items()):
                category.add(_with_seventh(code, char), code, f"{title}, {meaning}", [])

    def _leaves(self, category: _Category, noted: dict[str, list[tuple[str, DesignationKind]]]) -> Iterator[ConceptRow]:
        for code in category.order:
            if category.is_leaf(code):
                terms = [*((t, "inclusion") for t in category.terms[code]), *noted.get(code, [])]
                yield leaf_row(code, category.titles[code], terms)

    def _index_entries(self, path: Path) -> Iterator[tuple[str, str]]:
        """(name, code) for each Alphabetic Index entry with a code: main term and subterms joined."""
        for event, element in _elements(path, "ICD10CM.index"):
            if event == "end" and element.tag == "mainTerm":
                yield from _entries(element, [])
                element.clear()


def _elements(path: Path, root: str) -> Iterator[tuple[str, ET.Element]]:
    """The file's (event, element) stream, once its first element is known to be ``root``."""
    for number, (event, element) in enumerate(iterparse(path, events=("start", "end"))):
        if number == 0 and element.tag != root:
            raise TerminologyImportError(str(path), 1, f"root element is <{element.tag}>, not <{root}>")
        yield event, element


def _entries(term: ET.Element, path: list[str]) -> Iterator[tuple[str, str]]:
    """A term's own entry (if it has a code) and its subterms', named by the path to them."""
    title = term.find("title")
    path = [*path, " ".join(part.strip() for part in (title.itertext() if title is not None else ()) if part.strip())]
    code = (term.findtext("code") or "").strip()
    if code and path[-1]:
        yield _joined(path), code
    for child in term.findall("term"):
        yield from _entries(child, path)


# Subterms that continue a phrase rather than qualify the main term: "Diabetes, diabetic" /
# "with" / "amyotrophy" reads "Diabetes, diabetic with amyotrophy".
_CONNECTIVES = frozenset({"with", "without", "due", "in", "of", "following", "complicating", "during", "from", "by"})


def _joined(path: list[str]) -> str:
    text = path[0]
    for before, part in itertools.pairwise(path):
        words = part.lower().split()
        joins = (words and words[0] in _CONNECTIVES) or before.lower() in _CONNECTIVES
        text += f" {part}" if joins else f", {part}"
    return text


def release_files(path: Path) -> tuple[Path, Path | None]:
    """The tabular list and, in a release folder, the Alphabetic Index of diseases and injuries."""
    if not path.is_dir():
        return path, None

    def find(*patterns: str) -> Path | None:
        found = sorted(f for pattern in patterns for f in path.iterdir() if re.fullmatch(pattern, f.name, re.I))
        return found[0] if found else None

    tabular = find(r"icd10cm[_-]tabular[_-]\d{4}\.xml", r"tabular\.xml")
    if tabular is None:
        problem = "no tabular list (icd10cm_tabular_YYYY.xml) in this folder: unzip CMS's icd10cm-table-index-YYYY.zip"
        raise TerminologyImportError(str(path), None, problem)
    return tabular, find(r"icd10cm[_-]index[_-]\d{4}\.xml", r"index\.xml")


@contextmanager
def _read(path: Path, entities: str) -> Iterator[None]:
    """Turn an XML file's damage into a TerminologyImportError naming the file and line."""
    try:
        yield
    except ET.ParseError as error:
        line = error.position[0] if error.position else None
        problem = "not well-formed XML (truncated or damaged file?)"
        raise TerminologyImportError(str(path), line, problem) from None
    except DefusedXmlException:
        problem = f"the file declares XML entities or external references, which {entities}"
        raise TerminologyImportError(str(path), None, problem) from None


def _text(element: ET.Element | None) -> str:
    return " ".join(("".join(element.itertext()) if element is not None else "").split())
