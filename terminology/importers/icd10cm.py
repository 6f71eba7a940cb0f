"""ICD-10-CM: built in from ``simple-icd-10-cm``, or from CMS's official order file.

Only billable codes (leaves of the tabular list) are imported: those are the codes a claim or
a Condition may carry. Titles are preferred designations; tabular inclusion terms are
synonyms of the code they sit under. Inclusion terms and "Includes" notes of a category or
subcategory (not billable itself) go to the code a coder would give a mention that says nothing
more: its "unspecified" child, or for injury-style codes the "initial encounter" one. The
tabular's Excludes notes name conditions and say where they are coded instead ("wheezing NOS
(R06.2)" under J45): each such name is a synonym of the code it points to.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, Final

from terminology.importers.lines import read_lines
from terminology.model import ICD10CM, CodeSystemInfo, ConceptRow, DesignationKind, TerminologyImportError

ICD10CM_LICENCE = "Public domain (US government work: CDC NCHS / CMS)"


class Icd10cmBuiltinImporter:
    """All billable ICD-10-CM codes with titles and inclusion terms from ``simple-icd-10-cm``.

    ``prefixes`` limits the import to codes starting with any of them (tests build small indexes
    this way); ``with_inclusion_terms=False`` leaves out every designation but the titles, and
    ``held_out`` leaves out the given (code, term) pairs, so the benchmark can query with text the
    index never saw: a held-out term is left out of that code wherever the tabular names it, in
    its inclusion terms, a parent's or an Excludes note elsewhere (compared as ``note_key``).
    """

    def __init__(
        self,
        *,
        prefixes: tuple[str, ...] = (),
        with_inclusion_terms: bool = True,
        held_out: Collection[tuple[str, str]] = (),
    ) -> None:
        from importlib.metadata import version

        self.prefixes = prefixes
        self.with_inclusion_terms = with_inclusion_terms
        self.held_out = frozenset((code, note_key(term)) for code, term in held_out)
        self.info = CodeSystemInfo(
            system=ICD10CM,
            name="ICD-10-CM",
            version=f"simple-icd-10-cm {version('simple-icd-10-cm')}",
            licence=ICD10CM_LICENCE,
            source="PyPI package simple-icd-10-cm",
        )

    def rows(self) -> Iterator[ConceptRow]:
        import simple_icd_10_cm as icd

        noted = _noted_terms(icd) if self.with_inclusion_terms else {}
        for code in icd.get_all_codes(with_dots=True):
            if not icd.is_leaf(code) or (self.prefixes and not code.startswith(self.prefixes)):
                continue
            terms: list[tuple[str, DesignationKind]] = []
            if self.with_inclusion_terms:
                named = [*icd.get_inclusion_term(code), *icd.get_includes(code)]
                terms = [*((t, "inclusion") for t in named if is_term(t)), *noted.get(code, [])]
                terms = [(t, kind) for t, kind in terms if (code, note_key(t)) not in self.held_out]
            yield leaf_row(code, icd.get_description(code), terms)


def leaf_row(code: str, title: str, terms: Iterable[tuple[str, DesignationKind]]) -> ConceptRow:
    """A billable code's row: its title, then each other name once (case aside)."""
    designations: list[tuple[str, DesignationKind]] = [(title, "preferred")]
    seen = {title.lower()}
    for term, kind in terms:
        if term.lower() not in seen:
            seen.add(term.lower())
            designations.append((term, kind))
    return ConceptRow(code=code, display=title, semantic_type="disorder", designations=tuple(designations))


def _noted_terms(icd: Any) -> dict[str, list[tuple[str, DesignationKind]]]:
    """Names the tabular gives a billable code outside its own inclusion terms (see ``Placements``)."""
    placements = Placements()

    def resolve(code: str) -> str | None:
        return default_leaf(icd, code) if icd.is_valid_item(code) else None

    for code in icd.get_all_codes(with_dots=True):
        if icd.is_leaf(code):
            for term in [*icd.get_inclusion_term(code), *icd.get_includes(code)]:
                placements.own(code, term)
            placements.title(code, icd.get_description(code), code)
        elif icd.is_category_or_subcategory(code):
            leaf = default_leaf(icd, code)
            for term in [*icd.get_inclusion_term(code), *icd.get_includes(code)]:
                placements.place(2, leaf, term, "inclusion", scope=code)
            placements.title(code, icd.get_description(code), leaf)
        for note in [*icd.get_excludes1(code), *icd.get_excludes2(code)]:
            placements.note(note, resolve)
    return placements.noted()


class Placements:
    """Where the classification places names outside a billable code's own inclusion terms.

    An Excludes note's "name (code)" and an Alphabetic Index entry name the code they point to;
    a pointer to a category (or a category's own inclusion terms and "Includes" notes) names its
    default leaf (``default_leaf``). Notes that point at a range or at several codes ("(O10-O11,
    O13-O16)") name no one code. Where one name is placed in several ways, the most specific wins:
    a billable code's own inclusion term (rank 0), then a pointer at a billable code (1), then a
    default leaf (2). Notes that point one name at different codes are read in the context of the
    code each sits under ("herpes zoster (B02.8)" under otitis externa, "herpes zoster (B02.29)"
    under the auditory nerve's disorders; "tuberculosis" at nine manifestations; "rheumatoid
    arthritis (M05.31)" under endocarditis, "(M05.32)" under myopathy): the name then names none of
    them, and goes to the default leaf a category pointer gives it, if that category holds them all
    ("herpes zoster (B02.-)"); "syphilis (A52.1-)" under the nervous system's disorders is
    neurosyphilis there, not the "syphilis" that "(A52.03)" and "(A52.75)" place elsewhere in A52.
    A note of one word that qualifies names nothing: an adjective or a disease's site or organism
    ("chlamydial (A56.01)" under urethral disorders is chlamydial urethritis, "larynx (C32.3)"
    under connective tissue the larynx's cartilage), unless it is a code's name by itself.
    """

    def __init__(self) -> None:
        # name key → rank → the codes it is placed at, with the name as written, its kind and the
        # code it was given for (a category, for a default leaf)
        self._placed: dict[str, dict[int, list[tuple[str, str, DesignationKind, str]]]] = {}
        self._categories: set[str] = set()  # three-character categories' titles, brackets aside
        self._bracketed: list[tuple[str, str, str, str]] = []  # (category, default leaf, synonym, title)
        self._heads: set[str] = set()  # codes' titles up to a comma, lower case: "schizophrenia" (F20.9)
        self._lone: list[tuple[str, str, Callable[[str], str | None]]] = []  # one-word notes, for ``_heads``
        self._sites: set[str] = set()  # words after "of" or "due to" in diseases' titles: "larynx", "salmonella"

    def own(self, code: str, term: str) -> None:
        """A billable code's own inclusion term: its importer keeps it; here it only outranks."""
        self.place(0, code, term, "inclusion")

    def place(self, rank: int, code: str | None, term: str, kind: DesignationKind, scope: str = "") -> None:
        """``term`` names billable ``code``, given for ``scope`` (the category whose default leaf it is)."""
        if code is None or not is_term(term):
            return
        self._placed.setdefault(note_key(term), {}).setdefault(rank, []).append((code, term, kind, scope or code))

    def pointer(self, name: str, code: str, resolve: Callable[[str], str | None]) -> None:
        """``name`` is coded at ``code`` ("S36.1-": somewhere under S36.1); ``resolve`` gives the
        billable code for a code (itself, a category's default leaf, or None if unknown)."""
        code = code.rstrip(".-")
        leaf = resolve(code)
        self.place(1 if leaf == code else 2, leaf, name, "synonym", scope=code)

    def note(self, note: str, resolve: Callable[[str], str | None]) -> None:
        """An Excludes note: "wheezing NOS (R06.2)"."""
        match = _POINTER.match(note)
        if match is None or match["name"].lower().startswith(_FRAGMENT):
            return
        if len(_WORD.findall(match["name"])) == 1:
            self._lone.append((match["name"], match["code"], resolve))
        else:
            self.pointer(match["name"], match["code"], resolve)

    def title(self, code: str, title: str, leaf: str | None) -> None:
        """A code's title; its synonym in brackets names the code's default ``leaf`` ("Varicella
        [chickenpox]", "Acute nasopharyngitis [common cold]"), unless that synonym holds another
        category's title: "Rubella [German measles]" would take plain "Measles" from B05."""
        plain = _plain(title)
        self._heads.add(_plain(title.split(",")[0]).removeprefix("unspecified ").removeprefix("other "))
        if _is_disease(code):  # a disease's site or cause, not an injury's, a drug's or a place's
            self._sites.update(_SITE.findall(title.lower()))
        if len(code) == 3:
            self._categories.add(plain)
        if leaf is not None and (synonym := _bracketed_synonym(title)) is not None:
            self._bracketed.append((code, leaf, synonym, plain))

    def _elliptic(self, word: str, code: str) -> bool:
        """Whether a note of one word is a qualifier of the condition it sits under: an adjective
        ("chlamydial", "coronary") or a disease's site or organism ("larynx", "salmonella")."""
        return bool(_ADJECTIVE.search(word)) or (_is_disease(code) and word in self._sites)

    def noted(self) -> dict[str, list[tuple[str, DesignationKind]]]:
        """Billable code → the names placed there (its own inclusion terms left to its importer)."""
        for code, leaf, synonym, plain in self._bracketed:
            words = f" {_plain(synonym)} "
            if not any(other != plain and f" {other} " in words for other in self._categories):
                self.place(1 if leaf == code else 2, leaf, synonym, "synonym", scope=code)
        self._bracketed.clear()
        for name, code, resolve in self._lone:
            word = name.lower()
            if word in self._heads or word.removesuffix("s") in self._heads or not self._elliptic(word, code):
                self.pointer(name, code, resolve)
        self._lone.clear()
        noted: dict[str, list[tuple[str, DesignationKind]]] = {}
        for ranks in self._placed.values():
            if 0 in ranks:
                continue
            pointed = ranks.get(1, [])
            codes = {code for code, *_ in pointed}
            entries = pointed
            if len(codes) != 1:  # a name read in context (several codes): only a category that holds them all
                entries = [entry for entry in ranks.get(2, []) if all(c.startswith(entry[3]) for c in codes)]
                # and so for notes that point it at different categories
                notes = {scope: code for code, _, kind, scope in entries if kind == "synonym"}
                if len(set(notes.values())) > 1:
                    entries = [
                        (code, term, kind, scope)
                        for code, term, kind, scope in entries
                        if kind != "synonym" or all(other.startswith(scope) for other in notes)
                    ]
            for code, term, kind, _ in entries:
                noted.setdefault(code, []).append((term, kind))
        return noted


def _plain(text: str) -> str:
    """``text``'s words in lower case, brackets aside, one space apart: how titles, their heads and
    bracketed synonyms are compared."""
    return " ".join(_WORD.findall(_BRACKETS.sub(" ", text).lower()))


def _is_disease(code: str) -> bool:
    """Chapters 1-18 (A00-R99): diseases and findings, not injuries (S, T), external causes (V-Y) or
    encounters (Z)."""
    return code < "S"


_ADJECTIVE: Final = re.compile(r"(?:al|ic|ary|oid|ous)$")
_SITE: Final = re.compile(r"\b(?:of|due to) (\w+)")
# "wheezing NOS (R06.2)", "deafness NOS (H91.9-)", "obstetric embolism (O88.-)"
_POINTER = re.compile(r"^(?P<name>.+?)\s*\((?P<code>[A-Z]\d[0-9A-Z](?:\.[0-9A-Z]{0,4})?-?)\)$")
# Notes that only make sense under the code they sit in: "that complicating pregnancy (O99.4)"
_FRAGMENT = ("that ", "those ", "when ", "in ", "with ", "due to ", "of ", "by ")


# "Varicella [chickenpox]", "Leprosy [Hansen's disease]": a category's title with a synonym in
# brackets. Not an eponym alone ("Synovial cyst of popliteal space [Baker]": a Baker cyst) nor an
# abbreviation ("[HES]"), which name nothing by themselves.
_BRACKETED = re.compile(r"^[^\[\]]+ \[(?P<synonym>[^\[\]]+)\]$")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
# Brackets that qualify the title rather than name the code: "Burn of ... ear [any part, except ear
# drum]", "Acquired absence of lung [part of]", "... in the field [EMT or ambulance]", "[E. coli]"
_QUALIFIER = re.compile(r"\b(?:any|except|part of|or)\b|^from\b|\.")


def _bracketed_synonym(title: str) -> str | None:
    """The synonym a category's title gives in brackets, where it names the category by itself."""
    match = _BRACKETED.match(title.strip())
    if match is None:
        return None
    synonym = match["synonym"].strip()
    if synonym.isupper() or (" " not in synonym and synonym[:1].isupper()) or _QUALIFIER.search(synonym):
        return None
    return synonym


def note_key(term: str) -> str:
    """A term as the hold-out compares it: case, brackets, commas and "NOS" aside."""
    words = re.sub(r"[(),\[\]]", " ", term.lower()).split()
    return " ".join(w for w in words if w != "nos")


# A term that points at other codes ("Conditions classifiable to D07", "Any condition in I00 with
# pericarditis", "... not classifiable to C16.1-C16.4") is an instruction to the coder: no mention reads
# so. "Vitamin B12 deficiency" and "LGMD R12" name no code.
_CODE_REFERENCE: Final = re.compile(
    r"\b(?:to|in|under|categor(?:y|ies))\s+"  # "classifiable to", "condition in", "categories"
    r"[A-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?-?(?=[\s,.;)-]|$)"  # a code or category: "C16.4", "B85.-"
)


def is_term(text: str) -> bool:
    """Tabular "inclusion terms" also carry coding instructions ("Use two codes if…", "Conditions
    classifiable to D07"); keep names."""
    return (
        len(text) <= 150
        and not text.endswith(".")
        and not text.lower().startswith(("use ", "code ", "for "))
        and not _CODE_REFERENCE.search(text)
    )


_RESIDUAL = re.compile(r"^unspecified\b|, (site )?unspecified\b|\bNOS$", re.I)
_WITHOUT_COMPLICATIONS = re.compile(r"\bwithout complications?$|, uncomplicated$", re.I)
_WORD = re.compile(r"\w+")


def _unspecified_in(title: str, parent: str) -> bool:
    """Whether ``title`` is ``parent``'s with an axis left open: "... of unspecified deep veins of
    unspecified lower extremity" under "... of unspecified deep veins of lower extremity" (I82.40,
    whose "Deep vein thrombosis NOS" is I82.409's), "..., unspecified site" (the side, the site)."""
    added = Counter(_WORD.findall(title.lower())) - Counter(_WORD.findall(parent))
    return bool(added) and set(added) <= {"unspecified", "site"} and added["unspecified"] == 1


def _without_only(title: str, parent: str) -> bool:
    """Whether ``title`` is its ``parent``'s title with what it lacks and nothing it has: "K44.9
    Diaphragmatic hernia without obstruction or gangrene" (the Index: "Hernia, hiatal K44.9"), not
    "K44.0 Diaphragmatic hernia with obstruction, without gangrene"."""
    title = title.lower()
    added = title.removeprefix(parent)
    words = _WORD.findall(added)
    return added != title and "without" in words and "with" not in words


def _alone(codes: list[str]) -> list[str]:
    return codes if len(codes) == 1 else []


def default_leaf(icd: Any, code: str) -> str | None:
    """The billable code for a mention of ``code`` that says nothing more specific, if there is one."""
    while not icd.is_leaf(code):
        children = icd.get_children(code)
        parent = icd.get_description(code).lower()
        # the "unspecified" child, else the one that leaves an axis of the parent's title open
        # ("I82.40 ... of lower extremity" → "I82.409 ... of unspecified lower extremity"), else
        # the uncomplicated one: "B02 Zoster" (includes "shingles") → "B02.9 Zoster without
        # complications", as the Alphabetic Index has it ("Zoster (herpes) B02.9")
        unspecified = (
            [c for c in children if _RESIDUAL.search(icd.get_description(c))]
            or [c for c in children if _unspecified_in(icd.get_description(c), parent)]
            or [c for c in children if _WITHOUT_COMPLICATIONS.search(icd.get_description(c))]
            or _alone([c for c in children if _without_only(icd.get_description(c), parent)])
        )
        # "I50 Heart failure" → "I50.9 Heart failure, unspecified", not "I50.1 Left ventricular
        # failure, unspecified": the residual that keeps the parent's words, then the x9/x0 code
        unspecified.sort(key=lambda c: (not icd.get_description(c).lower().startswith(parent), c[-1] not in "90"))
        initial = [c for c in children if c.endswith("A") and len(c) == 8]  # 7th character A: initial encounter
        if unspecified:
            code = unspecified[0]
        elif len(initial) == 1:
            code = initial[0]
        else:
            return None
    return str(code)


_ORDER_LINE = re.compile(r"^(\d{5}) ([A-Z0-9]{3,7})\s* ([01]) (.{1,60}?)\s* (.+)$")


def _dotted(code: str) -> str:
    return code if len(code) <= 3 else f"{code[:3]}.{code[3:]}"


def cms_release_info(path: Path, kind: str) -> CodeSystemInfo:
    """ICD-10-CM from one of CMS's release files; the version is the year in its name."""
    year = re.search(r"(20\d\d)", path.name)
    return CodeSystemInfo(
        system=ICD10CM,
        name="ICD-10-CM",
        version=year.group(1) if year else path.name,
        licence=ICD10CM_LICENCE,
        source=f"CMS {kind} {path.name}",
    )


class Icd10cmOrderFileImporter:
    """CMS ``icd10cm_order_YYYY.txt``: fixed columns (order, code, billable flag, short and long title)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.info = cms_release_info(path, "order file")

    def rows(self) -> Iterator[ConceptRow]:
        seen = False
        for number, line in read_lines(self.path):
            if not line.strip():
                continue
            match = _ORDER_LINE.match(line)
            if match is None:
                raise TerminologyImportError(
                    str(self.path),
                    number,
                    "not an ICD-10-CM order file line (expected: order number, code, 0/1 flag, short and long title)",
                )
            seen = True
            _, code, billable, short, long = match.groups()
            if billable != "1":
                continue
            title = long.strip()
            designations: list[tuple[str, DesignationKind]] = [(title, "preferred")]
            if short.strip() and short.strip() != title:
                designations.append((short.strip(), "abbreviation"))
            yield ConceptRow(
                code=_dotted(code), display=title, semantic_type="disorder", designations=tuple(designations)
            )
        if not seen:
            raise TerminologyImportError(str(self.path), None, "file has no ICD-10-CM codes")
