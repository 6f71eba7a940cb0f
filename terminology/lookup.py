"""Which code is this mention? Hybrid lookup over the terminology index.

Three ranked lists are fused by weighted reciprocal rank (Cormack et al., SIGIR 2009):
exact designation matches, lexical FTS5/BM25 matches, and semantic KNN matches (sqlite-vec,
cosine over all-MiniLM-L6-v2 embeddings stored in the index's vec0 table, searched in memory).
Clinical abbreviations are expanded first.

The fused top candidates are then re-ranked by how close the mention is to each candidate's
closest designation: cosine similarity of the embeddings plus character-trigram overlap. Fusion
finds the right concept; the re-rank puts it first among near-identical siblings ("…, left
knee" vs "…, right knee") and forgives misspellings that defeat word-level FTS.
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
LEXICAL_POOL: Final = 2000  # FTS hits ranked before filtering by system and semantic type
# Re-rank of the fused top RERANK_POOL: cosine + TRIGRAM_WEIGHT * trigram Dice. Tuned on seed 11
# (bench/terminology.py reports on seed 7): misspelled titles go from 82% to 99% top-1.
RERANK_POOL: Final = 30
TRIGRAM_WEIGHT: Final = 0.5
EXACT_BONUS: Final = 2.0  # above the largest possible re-rank score (1 + TRIGRAM_WEIGHT)
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


class _Vectors(msgspec.Struct, frozen=True):
    ids: np.ndarray  # designation ids, one per matrix row
    matrix: np.ndarray  # L2-normalized embeddings: a product is the cosine
    systems: np.ndarray
    types: np.ndarray
    row_of: dict[int, int]


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
        self._matrix: _Vectors | None = None

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
        exact: list[_Hit] = []
        vector: np.ndarray | None = None
        if mode in ("hybrid", "lexical"):
            exact = self._exact(query, systems, semantic_types)
            lists.append((WEIGHTS["exact"], exact))
            lexical = self._lexical(query, systems, semantic_types)
            lists.append((WEIGHTS["lexical"], lexical))
        if mode in ("hybrid", "semantic") and self.embedder is not None:
            vector = self.embedder.embed([query])[0].astype(np.float32)
            semantic = self._semantic(vector, systems, semantic_types)
            lists.append((WEIGHTS["semantic"], semantic))
        scores: dict[int, float] = {}
        matched: dict[int, tuple[int, str]] = {}
        for weight, hits in lists:
            seen: set[int] = set()
            for rank, hit in enumerate(hits, start=1):
                if hit.concept_id in seen:
                    continue
                seen.add(hit.concept_id)
                scores[hit.concept_id] = scores.get(hit.concept_id, 0.0) + weight / (RRF_K + rank)
                if hit.concept_id not in matched or rank < matched[hit.concept_id][0]:
                    matched[hit.concept_id] = (rank, hit.term)
        similarity: dict[int, float] = {}
        for hit in semantic:
            if hit.similarity is not None:
                similarity[hit.concept_id] = max(similarity.get(hit.concept_id, -1.0), hit.similarity)
        if mode == "hybrid":
            pool = sorted(scores, key=lambda c: -scores[c])[:RERANK_POOL]
            scores, best_terms, similarity = self._rerank(query, vector, pool)
            matched = {c: (0, term) for c, term in best_terms.items()}
            for hit in exact:  # a designation equal to the mention outranks any near miss
                if hit.concept_id in scores:
                    scores[hit.concept_id] += EXACT_BONUS
        top = sorted(scores, key=lambda c: -scores[c])[:limit]
        if not top:
            return []
        lexical_rank = _first_ranks(lexical)
        semantic_rank = _first_ranks(semantic)
        exact_ids = {hit.concept_id for hit in exact}
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
                matched=matched[c][1],
                lexical_rank=lexical_rank.get(c),
                semantic_rank=semantic_rank.get(c),
                exact=c in exact_ids,
                similarity=round(similarity[c], 4) if c in similarity else None,
            )
            for c in top
        ]

    def _rerank(
        self, query: str, vector: np.ndarray | None, pool: list[int]
    ) -> tuple[dict[int, float], dict[int, str], dict[int, float]]:
        """Score each pooled concept by its closest designation: (scores, best designation, cosine)."""
        if not pool:
            return {}, {}, {}
        marks = ",".join("?" * len(pool))
        designations = self._rows(f"SELECT id, concept_id, term FROM designation WHERE concept_id IN ({marks})", pool)
        cosines: dict[int, float] = {}
        if vector is not None:
            vectors = self._vectors()
            rows = [(d[0], vectors.row_of[d[0]]) for d in designations if d[0] in vectors.row_of]
            if rows:
                products = vectors.matrix[[row for _, row in rows]] @ vector
                cosines = {designation_id: float(p) for (designation_id, _), p in zip(rows, products, strict=True)}
        query_grams = _trigrams(query)
        best_cosine: dict[int, float] = {}
        best_trigram: dict[int, float] = {}
        best_term: dict[int, tuple[float, str]] = {}
        for designation_id, concept_id, term in designations:
            cosine = cosines.get(designation_id)
            trigram = _dice(query_grams, _trigrams(_without_residual(term)))
            if cosine is not None:
                best_cosine[concept_id] = max(best_cosine.get(concept_id, -1.0), cosine)
            best_trigram[concept_id] = max(best_trigram.get(concept_id, 0.0), trigram)
            combined = (cosine or 0.0) + TRIGRAM_WEIGHT * trigram
            if concept_id not in best_term or combined > best_term[concept_id][0]:
                best_term[concept_id] = (combined, term)
        # each feature at its best designation: a concept whose title is closest in meaning and
        # whose synonym is closest in spelling has earned both
        scores = {c: best_cosine.get(c, 0.0) + TRIGRAM_WEIGHT * best_trigram[c] for c in best_term}
        return scores, {c: term for c, (_, term) in best_term.items()}, best_cosine

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
            # CROSS JOIN keeps the term index in front: joined plainly, SQLite walks every concept of
            # the system first (30 ms on ICD-10-CM instead of 0.1 ms)
            "SELECT d.concept_id, d.term FROM designation d CROSS JOIN concept c ON c.id = d.concept_id"
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

    def _vectors(self) -> _Vectors:
        """Every designation's embedding, read once from the sqlite-vec table into memory.

        A brute-force product over this matrix is the KNN: ~10 ms for 100k designations on two
        cores, where vec0's own scan of the same vectors takes ~140 ms. The index file stays the
        one source of truth; this is a read cache (~1.5 KB a designation).
        """
        with self._lock:
            if self._matrix is None:
                rows = self._db.execute(
                    "SELECT v.rowid, v.embedding, c.system, COALESCE(c.semantic_type, 'other') FROM designation_vec v"
                    " JOIN designation d ON d.id = v.rowid JOIN concept c ON c.id = d.concept_id"
                ).fetchall()
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                dimensions = self.embedder.dimensions if self.embedder is not None else 0
                matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dimensions)
                systems = np.array([r[2] for r in rows], dtype=object)
                types = np.array([r[3] for r in rows], dtype=object)
                self._matrix = _Vectors(
                    ids=ids, matrix=matrix, systems=systems, types=types, row_of={int(i): n for n, i in enumerate(ids)}
                )
            return self._matrix

    def _semantic(self, query_vector: np.ndarray, systems: Sequence[str], semantic_types: Sequence[str]) -> list[_Hit]:
        vectors = self._vectors()
        if not len(vectors.ids):
            return []
        similarities = vectors.matrix @ query_vector
        if systems or semantic_types:
            keep = np.ones(len(vectors.ids), dtype=bool)
            if systems:
                keep &= np.isin(vectors.systems, list(systems))
            if semantic_types:
                keep &= np.isin(vectors.types, list(semantic_types))
            similarities = np.where(keep, similarities, -np.inf)
        count = min(POOL, len(similarities))
        nearest = np.argpartition(-similarities, count - 1)[:count]
        nearest = nearest[np.argsort(-similarities[nearest])]
        nearest = nearest[np.isfinite(similarities[nearest])]
        if not len(nearest):
            return []
        ids = [int(vectors.ids[n]) for n in nearest]
        terms = {
            r[0]: (r[1], r[2])
            for r in self._rows(
                f"SELECT id, concept_id, term FROM designation WHERE id IN ({','.join('?' * len(ids))})", ids
            )
        }
        return [
            _Hit(concept_id=terms[i][0], term=terms[i][1], similarity=float(similarities[n]))
            for i, n in zip(ids, nearest, strict=True)
            if i in terms
        ]

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


def _without_residual(term: str) -> str:
    """A residual title without its qualifier: a plain mention ("hyperlipidaemia") is what coders
    code to "Hyperlipidemia, unspecified", not to a sibling such as "Other hyperlipidemia"."""
    for suffix in _RESIDUAL_SUFFIXES:
        if term.endswith(suffix):
            return term.removesuffix(suffix)
    return term.removeprefix("Unspecified ")


def _trigrams(text: str) -> frozenset[str]:
    padded = f" {' '.join(_TOKEN.findall(text.lower()))} "
    return frozenset(padded[i : i + 3] for i in range(len(padded) - 2))


def _dice(a: frozenset[str], b: frozenset[str]) -> float:
    return 2 * len(a & b) / (len(a) + len(b)) if a and b else 0.0


def _first_ranks(hits: list[_Hit]) -> dict[int, int]:
    ranks: dict[int, int] = {}
    for rank, hit in enumerate(hits, start=1):
        ranks.setdefault(hit.concept_id, rank)
    return ranks
