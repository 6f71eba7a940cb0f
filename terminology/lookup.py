"""Which code is this mention? Hybrid lookup over the terminology index.

Three ranked lists are fused by weighted reciprocal rank (Cormack et al., SIGIR 2009):
exact designation matches, lexical FTS5/BM25 matches, and semantic KNN matches (sqlite-vec,
cosine over all-MiniLM-L6-v2 embeddings). Clinical abbreviations are expanded first.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import numpy as np

from terminology.abbreviations import expand_abbreviations
from terminology.embed import Embedder
from terminology.index import open_index
from terminology.model import Candidate, CodeSystemInfo, ConceptDetail

# Weighted RRF. Tuned on 240 held-out ICD-10-CM queries (seed 11; bench/terminology.py reports on
# seed 7): BM25 ranks add little beyond the embeddings there (top-1 falls from 47% to 43% at equal
# weight), so they count for 0.3; a small k lets the top ranks dominate; exact matches win.
RRF_K: Final = 10
WEIGHTS: Final = {"exact": 2.0, "lexical": 0.3, "semantic": 1.0}
POOL: Final = 50  # candidates taken from each list before fusion
KNN_WIDE: Final = 250  # neighbours fetched before filtering by system and semantic type
LEXICAL_POOL: Final = 2000  # FTS hits ranked before filtering by system and semantic type
Mode = Literal["hybrid", "lexical", "semantic"]
_RESIDUAL_SUFFIXES: Final = (", unspecified", " NOS", ", unspecified organism", ", not elsewhere classified")
# Words too common in clinical titles to help ranking ("of", "with"); dropping them keeps the OR
# query from matching most of the index.
_STOPWORDS: Final = frozenset(
    {
        "of",
        "with",
        "and",
        "the",
        "in",
        "to",
        "or",
        "for",
        "by",
        "on",
        "at",
        "an",
        "as",
        "due",
        "without",
        "other",
        "unspecified",
        "nos",
        "not",
        "elsewhere",
        "classified",
    }
)
_TOKEN = re.compile(r"[\w]+", re.UNICODE)


class CodeSystemSummary(msgspec.Struct, frozen=True, kw_only=True):
    info: CodeSystemInfo
    concepts: int
    imported_at: str


class _Hit(msgspec.Struct):
    concept_id: int
    term: str
    similarity: float | None = None


class TerminologyService:
    """Read-only lookups on one index file. Thread-safe."""

    def __init__(self, path: Path, embedder: Embedder | None) -> None:
        self.path = path
        self.embedder = embedder
        self._lock = threading.Lock()
        self._db: Any = open_index(path, readonly=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return list(self._db.execute(sql, parameters).fetchall())

    # --- search ------------------------------------------------------------------------

    def lookup(
        self,
        text: str,
        *,
        systems: Sequence[str] = (),
        semantic_types: Sequence[str] = (),
        limit: int = 5,
        mode: Mode = "hybrid",
    ) -> list[Candidate]:
        query = expand_abbreviations(" ".join(text.split()))
        if not query:
            return []
        lists: list[tuple[float, list[_Hit]]] = []
        lexical: list[_Hit] = []
        semantic: list[_Hit] = []
        if mode in ("hybrid", "lexical"):
            lists.append((WEIGHTS["exact"], self._exact(query, systems, semantic_types)))
            lexical = self._lexical(query, systems, semantic_types)
            lists.append((WEIGHTS["lexical"], lexical))
        if mode in ("hybrid", "semantic") and self.embedder is not None:
            semantic = self._semantic(query, systems, semantic_types)
            lists.append((WEIGHTS["semantic"], semantic))
        scores: dict[int, float] = {}
        best_term: dict[int, tuple[int, str]] = {}
        for weight, hits in lists:
            seen: set[int] = set()
            for rank, hit in enumerate(hits, start=1):
                if hit.concept_id in seen:
                    continue
                seen.add(hit.concept_id)
                scores[hit.concept_id] = scores.get(hit.concept_id, 0.0) + weight / (RRF_K + rank)
                if hit.concept_id not in best_term or rank < best_term[hit.concept_id][0]:
                    best_term[hit.concept_id] = (rank, hit.term)
        top = sorted(scores, key=lambda c: -scores[c])[:limit]
        if not top:
            return []
        lexical_rank = _first_ranks(lexical)
        semantic_rank = _first_ranks(semantic)
        exact_ids = {hit.concept_id for hit in lists[0][1]} if mode != "semantic" else set()
        similarity: dict[int, float] = {}
        for hit in semantic:
            if hit.similarity is not None:
                similarity[hit.concept_id] = max(similarity.get(hit.concept_id, -1.0), hit.similarity)
        marks = ",".join("?" * len(top))
        details = {
            row[0]: row
            for row in self._rows(
                f"SELECT id, system, code, display, semantic_type FROM concept WHERE id IN ({marks})", top
            )
        }
        return [
            Candidate(
                system=details[c][1],
                code=details[c][2],
                display=details[c][3] or "",
                semantic_type=details[c][4],
                score=round(scores[c], 6),
                matched=best_term[c][1],
                lexical_rank=lexical_rank.get(c),
                semantic_rank=semantic_rank.get(c),
                exact=c in exact_ids,
                similarity=round(similarity[c], 4) if c in similarity else None,
            )
            for c in top
        ]

    @staticmethod
    def _filters(systems: Sequence[str], semantic_types: Sequence[str]) -> tuple[str, list[str]]:
        clauses: list[str] = []
        parameters: list[str] = []
        if systems:
            clauses.append(f"c.system IN ({','.join('?' * len(systems))})")
            parameters.extend(systems)
        if semantic_types:
            clauses.append(f"c.semantic_type IN ({','.join('?' * len(semantic_types))})")
            parameters.extend(semantic_types)
        return "".join(f" AND {c}" for c in clauses), parameters

    def _exact(self, query: str, systems: Sequence[str], semantic_types: Sequence[str]) -> list[_Hit]:
        where, parameters = self._filters(systems, semantic_types)
        # ICD-style titles add a residual qualifier to the plain name ("Heart failure, unspecified")
        variants = [query, *(query + suffix for suffix in _RESIDUAL_SUFFIXES)]
        rows = self._rows(
            "SELECT d.concept_id, d.term FROM designation d JOIN concept c ON c.id = d.concept_id"
            f" WHERE d.term COLLATE NOCASE IN ({','.join('?' * len(variants))}){where}"
            f" ORDER BY d.kind = 'preferred' DESC LIMIT {POOL}",
            [*variants, *parameters],
        )
        return [_Hit(concept_id=r[0], term=r[1]) for r in rows]

    def _lexical(self, query: str, systems: Sequence[str], semantic_types: Sequence[str]) -> list[_Hit]:
        tokens = [t for t in _TOKEN.findall(query.lower()) if (len(t) > 1 or t.isdigit()) and t not in _STOPWORDS]
        if not tokens:
            return []
        match = " OR ".join(f'"{t}"' for t in tokens)
        where, parameters = self._filters(systems, semantic_types)
        # Rank inside FTS5 first (a materialized, limited CTE), then filter: joined directly, SQLite's
        # planner can run one MATCH per concept row, which took a minute a query on ICD-10-CM.
        rows = self._rows(
            "WITH hits AS MATERIALIZED (SELECT rowid AS id, rank FROM designation_fts WHERE designation_fts MATCH ?"
            f" ORDER BY rank LIMIT {LEXICAL_POOL}) SELECT d.concept_id, d.term FROM hits h"
            f" JOIN designation d ON d.id = h.id JOIN concept c ON c.id = d.concept_id WHERE 1 = 1{where}"
            f" ORDER BY h.rank LIMIT {POOL}",
            [match, *parameters],
        )
        return [_Hit(concept_id=r[0], term=r[1]) for r in rows]

    def _semantic(self, query: str, systems: Sequence[str], semantic_types: Sequence[str]) -> list[_Hit]:
        if self.embedder is None:
            return []
        vector = self.embedder.embed([query])[0].astype(np.float32).tobytes()
        found: list[tuple[float, int]] = []
        targets: list[str | None] = list(systems) or [None]
        # Unfiltered KNN is ~2x faster than vec0's metadata filter; filter afterwards, and fall back to
        # the filtered search only when too few neighbours belong to the requested systems/types.
        rows = self._rows(
            f"SELECT rowid, distance FROM designation_vec WHERE embedding MATCH ? AND k = {KNN_WIDE}", [vector]
        )
        wanted = self._keep(([r[0] for r in rows]), systems, semantic_types)
        if len(wanted) >= POOL or not (systems or semantic_types):
            found = sorted((r[1], r[0]) for r in rows if r[0] in wanted)
            targets = []
        for system in targets:
            clause, filters = "", []
            if system is not None:
                clause, filters = " AND system = ?", [system]
            if len(semantic_types) == 1:
                clause += " AND semantic_type = ?"
                filters.append(semantic_types[0])
            rows = self._rows(
                f"SELECT rowid, distance FROM designation_vec WHERE embedding MATCH ? AND k = {POOL}{clause}",
                [vector, *filters],
            )
            found.extend((r[1], r[0]) for r in rows)
        found.sort()
        if not found:
            return []
        ids = [designation_id for _, designation_id in found[:POOL]]
        marks = ",".join("?" * len(ids))
        where, parameters = self._filters((), semantic_types)
        by_id = {
            r[0]: r
            for r in self._rows(
                f"SELECT d.id, d.concept_id, d.term FROM designation d JOIN concept c ON c.id = d.concept_id"
                f" WHERE d.id IN ({marks}){where}",
                [*ids, *parameters],
            )
        }
        return [_Hit(concept_id=by_id[i][1], term=by_id[i][2], similarity=1 - d) for d, i in found[:POOL] if i in by_id]

    def _keep(self, designation_ids: list[int], systems: Sequence[str], semantic_types: Sequence[str]) -> set[int]:
        if not designation_ids:
            return set()
        where, parameters = self._filters(systems, semantic_types)
        marks = ",".join("?" * len(designation_ids))
        return {
            r[0]
            for r in self._rows(
                f"SELECT d.id FROM designation d JOIN concept c ON c.id = d.concept_id WHERE d.id IN ({marks}){where}",
                [*designation_ids, *parameters],
            )
        }

    # --- FHIR terminology operations --------------------------------------------------

    def concept(self, system: str, code: str) -> ConceptDetail | None:
        rows = self._rows(
            "SELECT c.id, c.display, c.semantic_type, s.version FROM concept c"
            " JOIN code_system s ON s.system = c.system WHERE c.system = ? AND c.code = ?",
            (system, code),
        )
        if not rows:
            return None
        concept_id, display, semantic_type, version = rows[0]
        designations = tuple(
            (r[0], r[1])
            for r in self._rows("SELECT term, kind FROM designation WHERE concept_id = ? ORDER BY id", (concept_id,))
        )
        return ConceptDetail(
            system=system,
            code=code,
            display=display or "",
            semantic_type=semantic_type,
            version=version,
            designations=designations,
        )

    def expand(
        self, system: str | None, text: str | None, *, count: int = 20, offset: int = 0
    ) -> tuple[list[tuple[str, str, str]], int]:
        """(system, code, display) of concepts whose designations match ``text`` (prefix match per word)."""
        where, parameters = self._filters([system] if system else [], [])
        if text and _TOKEN.findall(text):
            match = " ".join(f'"{t}"*' for t in _TOKEN.findall(text.lower()))
            # bm25() cannot sit inside an aggregate: rank the FTS hits first, then group by concept
            hits = (
                "WITH h AS MATERIALIZED (SELECT rowid AS id, bm25(designation_fts) AS score"
                " FROM designation_fts WHERE designation_fts MATCH ?) "
            )
            base = f"FROM h JOIN designation d ON d.id = h.id JOIN concept c ON c.id = d.concept_id WHERE 1 = 1{where}"
            parameters = [match, *parameters]
            total = self._rows(f"{hits}SELECT COUNT(DISTINCT c.id) {base}", parameters)[0][0]
            rows = self._rows(
                f"{hits}SELECT c.system, c.code, c.display, MIN(h.score) AS best {base}"
                f" GROUP BY c.id ORDER BY best, length(c.display) LIMIT ? OFFSET ?",
                [*parameters, count, offset],
            )
        else:
            base = f"FROM concept c WHERE 1 = 1{where}"
            total = self._rows(f"SELECT COUNT(*) {base}", parameters)[0][0]
            rows = self._rows(
                f"SELECT c.system, c.code, c.display {base} ORDER BY c.code LIMIT ? OFFSET ?",
                [*parameters, count, offset],
            )
        return [(r[0], r[1], r[2] or "") for r in rows], int(total)

    def code_systems(self) -> list[CodeSystemSummary]:
        return [
            CodeSystemSummary(
                info=CodeSystemInfo(system=r[0], name=r[1], version=r[2], licence=r[3], source=r[4]),
                concepts=r[5],
                imported_at=r[6],
            )
            for r in self._rows(
                "SELECT system, name, version, licence, source, concepts, imported_at FROM code_system ORDER BY name"
            )
        ]


def _first_ranks(hits: list[_Hit]) -> dict[int, int]:
    ranks: dict[int, int] = {}
    for rank, hit in enumerate(hits, start=1):
        ranks.setdefault(hit.concept_id, rank)
    return ranks
