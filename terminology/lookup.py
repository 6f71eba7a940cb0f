"""Which code is this mention? Hybrid lookup over the terminology index.

Three ranked lists are fused by weighted reciprocal rank (Cormack et al., SIGIR 2009):
exact designation matches, lexical FTS5/BM25 matches, and semantic KNN matches (sqlite-vec,
cosine over all-MiniLM-L6-v2 embeddings stored in the index's vec0 table, searched in memory).
The mention is first put in the classification's words (``prepare_query``: clinical abbreviations
expanded, a DSM-5 substance use disorder's severity given as abuse or dependence, diabetes of no
named type as type 2), and a word the index has never seen is read as its commonest neighbour one
edit away among the searched code systems' words (``TerminologyService.prepare``: "intial" →
"initial").

The fused top candidates are then re-ranked by a weighted sum of features (``FEATURES``): how
close the mention is to each candidate's closest designation in meaning (cosine) and in spelling
(character trigrams), how many of its words the designation has and the reverse, qualifiers that
clash with the code's preferred name ("left knee" vs "right knee", "stage 2" vs "stage 1",
"mild" vs "unspecified severity") or a setting that one of them states and the other does not (a
newborn, a pregnancy, a family or personal history), for a mention "NOS" whether the candidate is its category's
default ("unspecified", "without ...") and the closeness to the mean of all the candidate's
designations, and, when the mention names a detail none of the candidate's names has, whether the
candidate is the "Other ..." code such details go to or the "unspecified" one they do not
(guideline I.A.9: "Reactive thrombocytosis" is D75.838 "Other thrombocytosis"), and whether the
mention names only one side of a title's "X with Y" ("Alzheimer's disease" is not "... with early
onset", "Rectal bleeding" not "Ulcerative rectosigmoiditis with rectal bleeding"). Fusion finds the
right concept; the re-rank puts it first among near-identical siblings and forgives misspellings
that defeat word-level FTS.

Classifications name their codes by pattern: each site, side and stage of a pressure ulcer has the
same synonyms with one word changed. So a mention that matches another code's designation but for
a few words is also read by analogy (``TerminologyService._analogies``): that code's title, with the
same words changed, names the code meant ("Pressure pre-ulcer skin changes ..., right elbow" is to
"..., left elbow" as "Pressure ulcer of right elbow, stage 1" is to "Pressure ulcer of left elbow,
stage 1"). The codes so named join the re-rank with a feature of their own, and are worded at
least as well as the designation read: that designation, with the words changed, is the mention.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import numpy as np

from terminology.abbreviations import expand_abbreviations
from terminology.embed import Embedder, EmbeddingModelError
from terminology.index import BUILTIN_CONTENT, BUILTIN_CONTENT_KEY, builtin_sources, open_index
from terminology.model import ICD10CM, Candidate, CodeSystemInfo, ConceptDetail

# Weighted RRF. Tuned on 240 held-out ICD-10-CM queries (seed 11; bench/terminology.py reports on
# seed 7): BM25 ranks add little beyond the embeddings there (top-1 falls from 47% to 43% at equal
# weight), so they count for 0.3; a small k lets the top ranks dominate; exact matches win.
RRF_K: Final = 10
WEIGHTS: Final = {"exact": 2.0, "lexical": 0.3, "semantic": 1.0}
POOL: Final = 50  # candidates taken from each list before fusion
LEXICAL_POOL: Final = 2000  # FTS hits ranked before filtering by system and semantic type
RERANK_POOL: Final = 30  # fused candidates the re-rank orders (the right one is among them for 88%)
TRIGRAM_WEIGHT: Final = 0.5  # for choosing the designation shown as matched
# The re-rank score is RERANK_WEIGHTS · features, in FEATURES order. Fitted by
# bench/terminology_tune.py on held-out queries of seed 11 (bench/terminology.py reports seed 7);
# the analogy's weight was then chosen on seed 11 with the others kept: refitting them all gained
# 0.3 points there but cut the weight of coverage, and common mentions that name every word of
# their code went elsewhere ("fracture of left wrist" to "crushing injury of left wrist"). The
# residual's weight was chosen on seeds 7 and 11 the same way: 0.25 already takes "acute kidney
# injury" to N17.8 "Other acute kidney failure". The two sides of a "with" were weighed on seeds 7
# and 11 and on plain mentions: they change no held-out query there and code three plain mentions
# right ("Alzheimer's disease", "Benign prostatic hyperplasia", "Rectal bleeding").
FEATURES: Final = (
    "cosine",  # best cosine of mention and designation embeddings
    "trigram",  # best character-trigram Dice (forgives misspellings)
    "coverage",  # share of the mention's words, by rarity, in the designation
    "excess",  # minus the share of the designation's words the mention lacks
    "conflict",  # minus the qualifier groups that clash ("left" vs "right", "stage 2" vs "stage 1"), and a
    # congenital code for a mention that an acquired one names and that does not say "congenital"
    "default",  # a mention "NOS": the designation is a default ("unspecified", "without ...")
    "centroid",  # cosine of the mention and the mean of the embeddings of the code's closest designations
    "analogy",  # the code's title is another code's title with the words the mention changes changed
    "residual",  # the mention has a detail none of the code's names has: +1 "Other ..." (if no candidate
    # names all the details), -1 "unspecified"
    "restated",  # minus: the code is "Other X", the mention says X and no more, and "X, unspecified" is a candidate
    "complication",  # minus: the code's title is "X with Y" and the mention names X alone
    "manifestation",  # minus: the code's title is "X with Y" and the mention names Y alone
)
_CONFLICT: Final = FEATURES.index("conflict")
_WORDING: Final = slice(0, _CONFLICT)  # the features of how a designation reads against the mention
RERANK_WEIGHTS: Final = np.array([1.0, 1.0, 2.0, 0.1, 1.5, 0.25, 3.0, 5.0, 0.1, 0.5, 0.5, 1.0])
CENTROID_NAMES: Final = 3  # the centroid feature's mean is of a code's this many closest names
ANALOGY_SOURCES: Final = 30  # of each of the lexical and semantic lists, the hits read by analogy
ANALOGY_SPAN: Final = 5  # at most this many words in which the mention and a hit's designation differ
EXACT_BONUS: Final = 1000.0  # above any re-rank score: a designation equal to the mention wins
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


class _Vocabulary(msgspec.Struct, frozen=True):
    weights: dict[str, float]  # word stem → inverse document frequency over all designations
    words: dict[str, dict[str, int]]  # code system → lowercase word → designations that have it
    known: frozenset[str]  # every system's words
    compounds: dict[str, str]  # a hyphenated word without its hyphens → the word: "preeclampsia" → "pre-eclampsia"


class _Hit(msgspec.Struct):
    concept_id: int
    term: str
    similarity: float | None = None


class _Analogy(msgspec.Struct, frozen=True):
    strength: float  # 1 / the number of words changed
    source: int  # the concept whose designation was read


class _Retrieved(msgspec.Struct):
    exact: list[_Hit] = msgspec.field(default_factory=list)
    lexical: list[_Hit] = msgspec.field(default_factory=list)
    semantic: list[_Hit] = msgspec.field(default_factory=list)
    vector: np.ndarray | None = None
    fused: dict[int, float] = msgspec.field(default_factory=dict)  # concept id → RRF score
    matched: dict[int, tuple[int, str]] = msgspec.field(default_factory=dict)  # best rank, designation
    similarity: dict[int, float] = msgspec.field(default_factory=dict)  # best cosine
    analogies: dict[int, _Analogy] = msgspec.field(default_factory=dict)  # concept id → how it was named

    def pool(self) -> list[int]:
        """The concepts that the re-rank orders: the fused top ones and those named by analogy."""
        top = sorted(self.fused, key=lambda c: -self.fused[c])[:RERANK_POOL]
        chosen = set(top)
        return top + [c for c in self.analogies if c not in chosen]


class TerminologyService:
    """Read-only lookups on one index file. Thread-safe."""

    def __init__(self, path: Path, embedder: Embedder | None) -> None:
        self.path = path
        self.embedder = embedder
        self._lock = threading.Lock()
        self._db: Any = open_index(path, readonly=True)
        stored = self._db.execute("SELECT value FROM index_meta WHERE key = 'embedder'").fetchone()
        if embedder is not None and stored is not None and stored[0] != embedder.name:
            self._db.close()  # vectors of another model: their cosines with this one's mean nothing
            raise EmbeddingModelError(f"the terminology index {path} was embedded by {stored[0]}, not {embedder.name}")
        self.embedded_by: str | None = stored[0] if stored else None  # the embedding model's name
        self._matrix: _Vectors | None = None
        self._vocabulary: _Vocabulary | None = None
        self._titles: dict[str, list[int]] | None = None  # a title's key (``_key``) → concept ids

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return list(self._db.execute(sql, parameters).fetchall())

    def _congenital(self, concept_ids: Sequence[int]) -> set[int]:
        """Those of ``concept_ids`` that are congenital: "congenital" in the title, or ICD-10-CM's
        chapter of congenital malformations (Q00-Q99, whose titles often leave the word out:
        Q39.1 "Atresia of esophagus with tracheo-esophageal fistula")."""
        rows = self._rows(
            f"SELECT id, system, code, display FROM concept WHERE id IN ({','.join('?' * len(concept_ids))})",
            concept_ids,
        )
        return {
            concept_id
            for concept_id, system, code, display in rows
            if (system == ICD10CM and code.startswith("Q")) or _CONGENITAL_KEY in _words(display or "")
        }

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
        query = self.prepare(text, systems)
        if not query:
            return []
        found = self.retrieve(query, systems, semantic_types, mode, written=" ".join(text.split()))
        scores, matched, similarity = found.fused, found.matched, found.similarity
        if mode == "hybrid":
            scores, best_terms, similarity = self._rerank(query, found)
            matched = {c: (0, term) for c, term in best_terms.items()}
            for concept_id in {hit.concept_id for hit in found.exact}:  # equal to the mention: above any near miss
                if concept_id in scores:
                    scores[concept_id] += EXACT_BONUS  # once, though two of its names equal the mention ("DVT NOS")
        lexical, semantic, exact = found.lexical, found.semantic, found.exact
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

    def retrieve(
        self, query: str, systems: Sequence[str], semantic_types: Sequence[str], mode: Mode, written: str = ""
    ) -> _Retrieved:
        """The exact, lexical and semantic hit lists for a prepared query, fused by weighted RRF. A
        designation equal to the mention as ``written`` is an exact hit too: "Opioid-induced
        delirium" is one, though its query reads "... (use, unspecified)"."""
        found = _Retrieved()
        lists: list[tuple[float, list[_Hit]]] = []
        if mode in ("hybrid", "lexical"):
            found.exact = self._exact(query, systems, semantic_types, written)
            lists.append((WEIGHTS["exact"], found.exact))
            found.lexical = self._lexical(query, systems, semantic_types)
            lists.append((WEIGHTS["lexical"], found.lexical))
        if mode in ("hybrid", "semantic") and self.embedder is not None:
            found.vector = self.embedder.embed([query])[0].astype(np.float32)
            found.semantic = self._semantic(found.vector, systems, semantic_types)
            lists.append((WEIGHTS["semantic"], found.semantic))
        for weight, hits in lists:
            seen: set[int] = set()
            for rank, hit in enumerate(hits, start=1):
                if hit.concept_id in seen:
                    continue
                seen.add(hit.concept_id)
                found.fused[hit.concept_id] = found.fused.get(hit.concept_id, 0.0) + weight / (RRF_K + rank)
                if hit.concept_id not in found.matched or rank < found.matched[hit.concept_id][0]:
                    found.matched[hit.concept_id] = (rank, hit.term)
        for hit in found.semantic:
            if hit.similarity is not None:
                found.similarity[hit.concept_id] = max(found.similarity.get(hit.concept_id, -1.0), hit.similarity)
        if mode == "hybrid" and not found.exact:  # a designation equal to the mention needs no analogy
            sources = found.lexical[:ANALOGY_SOURCES] + found.semantic[:ANALOGY_SOURCES]
            found.analogies = self._analogies(query, sources, systems, semantic_types)
        return found

    def _analogies(
        self, query: str, hits: Sequence[_Hit], systems: Sequence[str], semantic_types: Sequence[str]
    ) -> dict[int, _Analogy]:
        """The concepts the mention names by analogy with the hits' designations, each with
        1 / the number of words changed (the fewer, the surer) and the hit it was read from.

        A hit's designation and the mention differ in a few words: those the mention lacks and
        those it adds. The hit's title with the same words taken out and put in is the title of the
        code meant, when one code has it: "Parkinson's disease with dyskinesia, with OFF episodes"
        lacks only "without" of G20.A2's synonym "... without dyskinesia, with OFF episodes", and
        G20.A2's title "Parkinson's disease without dyskinesia, with fluctuations" without it is
        G20.B2's. Words are compared as sets, stemmed, without fillers ("of", "the"). A changed title
        that two codes share (the crude stem makes "Other thrombocytosis" and "Other thrombophilia"
        one) names neither.
        """
        mention = _key_words(query)
        sources: dict[int, list[str]] = {}
        for hit in hits:
            sources.setdefault(hit.concept_id, []).append(hit.term)
        if not sources or len(mention) < 2:
            return {}
        marks = ",".join("?" * len(sources))
        titles = dict(
            self._rows(
                f"SELECT concept_id, term FROM designation WHERE kind = 'preferred' AND concept_id IN ({marks})",
                list(sources),
            )
        )
        by_title = self._title_keys()
        found: dict[int, _Analogy] = {}
        for concept_id, terms in sources.items():
            title = _key_words(titles.get(concept_id, ""))
            for term in terms:
                words = _key_words(term)
                added, taken = mention - words, words - mention
                changed = len(added) + len(taken)
                if not changed or changed > ANALOGY_SPAN or len(mention & words) < 2 or not taken <= title:
                    continue
                targets = by_title.get(_key((title - taken) | added), ())
                if len(targets) != 1 and taken and _NOS_KEY in added:
                    # "NOS" is "unspecified": "Mental subnormality NOS" lacks "mild" of F70's "Mild
                    # mental subnormality", and F70's title without "mild", with "unspecified", is F79's
                    targets = by_title.get(_key((title - taken) | (added - {_NOS_KEY}) | {_UNSPECIFIED_KEY}), ())
                if len(targets) != 1 or targets[0] == concept_id:
                    continue
                if targets[0] not in found or 1.0 / changed > found[targets[0]].strength:
                    found[targets[0]] = _Analogy(strength=1.0 / changed, source=concept_id)
        if not found:
            return {}
        # the analogy keeps to the lookup's filters: another system may have a title of those words
        where, parameters = self._filters(systems, semantic_types)
        marks = ",".join("?" * len(found))
        kept = {
            r[0]
            for r in self._rows(f"SELECT c.id FROM concept c WHERE c.id IN ({marks}){where}", [*found, *parameters])
        }
        return {c: analogy for c, analogy in found.items() if c in kept}

    def _title_keys(self) -> dict[str, list[int]]:
        """Each preferred designation's key (``_key``) → the concepts titled so (read once; ~20 MB
        for ICD-10-CM and SNOMED CT's Global Patient Set)."""
        with self._lock:
            if self._titles is None:
                titles: dict[str, list[int]] = {}
                for concept_id, term in self._db.execute(
                    "SELECT concept_id, term FROM designation WHERE kind = 'preferred'"
                ):
                    titles.setdefault(_key(_key_words(term)), []).append(concept_id)
                self._titles = titles
            return self._titles

    def _rerank(self, query: str, found: _Retrieved) -> tuple[dict[int, float], dict[int, str], dict[int, float]]:
        """Score each pooled concept by its features: (scores, best designation, cosine)."""
        features, best_terms = self.rerank_features(query, found)
        scores = {c: float(RERANK_WEIGHTS @ f) for c, f in features.items()}
        return scores, best_terms, {c: float(f[0]) for c, f in features.items() if f[0] > -1.0}

    def rerank_features(self, query: str, found: _Retrieved) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """The re-rank features of each pooled concept (see ``FEATURES``) and its closest designation.

        Each feature is taken at the concept's best designation for it: a concept whose title is
        closest in meaning and whose synonym is closest in spelling has earned both.
        """
        pool, vector = found.pool(), found.vector
        if not pool:
            return {}, {}
        marks = ",".join("?" * len(pool))
        designations = self._rows(
            f"SELECT id, concept_id, term, kind FROM designation WHERE concept_id IN ({marks})", pool
        )
        congenital = self._congenital(pool)
        cosines: dict[int, float] = {}
        centroid: dict[int, float] = {}
        if vector is not None:
            vectors = self._vectors()
            rows = [(d[0], d[1], vectors.row_of[d[0]]) for d in designations if d[0] in vectors.row_of]
            if rows:
                products = vectors.matrix[[row for *_, row in rows]] @ vector
                cosines = {designation_id: float(p) for (designation_id, *_), p in zip(rows, products, strict=True)}
                # the mean of the code's closest names, not of all: a code rich in names ("Cholelithiasis",
                # "Colic of gallbladder", "Gallstone of cystic duct") is no further from a mention
                # than one with a single name
                closest: dict[int, list[tuple[float, int]]] = {}
                for designation_id, concept_id, row in rows:
                    closest.setdefault(concept_id, []).append((cosines[designation_id], row))
                for concept_id, named_rows in closest.items():
                    chosen = [row for _, row in sorted(named_rows, key=lambda named: -named[0])[:CENTROID_NAMES]]
                    mean = vectors.matrix[chosen].sum(axis=0)
                    centroid[concept_id] = float(mean @ vector / (np.linalg.norm(mean) or 1.0))
        weights = self._word_weights()
        query_grams = _trigrams(query)
        query_words = _words(query)
        query_qualifiers = _qualifiers(query)
        asks_default = _asks_default(query)
        features: dict[int, np.ndarray] = {}
        best_term: dict[int, tuple[float, str]] = {}
        # qualifiers clash with what the code is, as its preferred name says: a synonym that leaves
        # the stage out does not make "stage 2" fit a "stage 3" mention
        title_conflict: dict[int, float] = {}
        named: dict[int, set[str]] = {}
        residual_kind: dict[int, float] = {}
        restated: dict[int, frozenset[str]] = {}  # "Other low back pain" for "Acute low back pain": its words
        unspecified: set[frozenset[str]] = set()  # the words of each "X, unspecified" title
        unnamed: dict[int, tuple[float, float]] = {}  # ("X with Y": X alone named, Y alone), from the title
        names: list[frozenset[str]] = []  # each designation's words
        acquired: list[tuple[int, frozenset[str]]] = []  # each designation of a code not congenital: its words
        for designation_id, concept_id, term, kind in designations:
            words = _words(term)
            names.append(words)
            if concept_id not in congenital:
                acquired.append((concept_id, words))
            named.setdefault(concept_id, set()).update(words)
            if kind == "preferred":
                unnamed[concept_id] = _unnamed(term, query)
                residual_kind[concept_id] = _residual_kind(term)
                if residual_kind[concept_id] > 0 and words <= query_words:
                    restated[concept_id] = words
                elif residual_kind[concept_id] < 0:
                    unspecified.add(words)
            cosine = cosines.get(designation_id, -1.0)
            wording = _wording(term, query_grams, query_words, weights)
            # words in parentheses are nonessential modifiers: "Hypertension (arterial) (benign)
            # (essential) ..." names plain "Hypertension" too (though their qualifiers still clash:
            # "Cor pulmonale (chronic)" is not "acute cor pulmonale")
            if (essential := _essential(term)) != term and essential:
                wording = np.maximum(wording, _wording(essential, query_grams, query_words, weights))
            # "unspecified control" says the axis is open: a mention that names no control reads
            # "Gestational diabetes mellitus in pregnancy, unspecified control" without it
            if (opened := _without_open_axes(term)) != term and opened:
                wording = np.maximum(wording, _wording(opened, query_grams, query_words, weights))
            if either := _EITHER.fullmatch(essential or term):
                for side in either.groups():
                    wording = np.maximum(wording, _wording(side, query_grams, query_words, weights))
            values = np.array(
                [
                    cosine,
                    *wording,
                    -_conflicts(query_qualifiers, _qualifiers(term)),
                    float(asks_default and _is_default(term, query)),
                ]
            )
            trigram = values[1]
            features[concept_id] = np.maximum(features[concept_id], values) if concept_id in features else values
            if kind == "preferred":
                title_conflict[concept_id] = values[_CONFLICT]
            combined = max(cosine, 0.0) + TRIGRAM_WEIGHT * trigram
            if concept_id not in best_term or combined > best_term[concept_id][0]:
                best_term[concept_id] = (combined, term)
        for concept_id, conflict in title_conflict.items():
            features[concept_id][_CONFLICT] = conflict
        # a code named by analogy has, in effect, the designation read with the words changed: the
        # mention itself; it reads at least as well as that designation ("..., head" is worded as
        # L89.894's "..., other site" is, not as L89.814's own shorter names)
        for target, analogy in found.analogies.items():
            if target in features and analogy.source in features:
                features[target][_WORDING] = np.maximum(features[target][_WORDING], features[analogy.source][_WORDING])
        details = _details(query_words, names)
        # the Alphabetic Index: a condition is acquired unless the record says congenital ("Diverticulitis"
        # is K57.92, not Q43.8 "Other specified congenital malformations of intestine" through its
        # "Congenital diverticulitis, colon"), where a code that is not congenital names all it details,
        # without clashing with it (a personal history) and without saying "acquired" (which makes
        # the plain name the congenital one: "Buried penis" is Q55.64, "Acquired buried penis" N48.83)
        if (
            congenital
            and not (query_words & _SAYS_CONGENITAL)
            and any(
                details <= words and _ACQUIRED_KEY not in words and not title_conflict.get(concept_id, 0.0)
                for concept_id, words in acquired
            )
        ):
            for concept_id in congenital & features.keys():
                features[concept_id][_CONFLICT] -= 1.0
        # and the converse, by half: a mention that says congenital is not an acquired code ("Congenital
        # hourglass stomach" is Q40.2, not K31.89). Half, because the classification keeps some
        # congenital conditions outside chapter Q under titles that do not say so (D51.0 has
        # "Congenital intrinsic factor deficiency")
        elif congenital and query_words & _SAYS_CONGENITAL:
            for concept_id in features.keys() - congenital:
                features[concept_id][_CONFLICT] -= 0.5
        # "Other X" restates a mention of X only where "X, unspecified" is there to take it: "Other
        # chronic pain" (G89.29) is the code of chronic pain, which has no "unspecified" one
        restates = {c for c, words in restated.items() if words in unspecified}
        # guideline I.A.9 sends a detail to "Other X" where no code names it; where a candidate names
        # every detail, "Other X" is no place for them ("Pulmonary tuberculosis" is A15.0 "Tuberculosis
        # of lung", not A15.8 "Other respiratory tuberculosis")
        if any(details <= words for words in named.values()):
            residual_kind = {c: min(value, 0.0) for c, value in residual_kind.items()}
        result = {
            c: np.append(
                f,
                (
                    centroid.get(c, 0.0),
                    found.analogies[c].strength if c in found.analogies else 0.0,
                    residual_kind.get(c, 0.0) if (missing := details - named.get(c, set())) else 0.0,
                    -float(c in restates and not missing),
                    *(-x for x in unnamed.get(c, (0.0, 0.0))),
                ),
            )
            for c, f in features.items()
        }
        return result, {c: term for c, (_, term) in best_term.items()}

    def _word_weights(self) -> dict[str, float]:
        """Inverse document frequency of each word stem over all designations (read once)."""
        return self._read_words().weights

    def _read_words(self) -> _Vocabulary:
        with self._lock:
            if self._vocabulary is None:
                stems: dict[str, int] = {}
                words: dict[str, dict[str, int]] = {}
                total = 0
                compounds: dict[str, dict[str, int]] = {}  # joined → hyphenated spellings → count
                for term, system in self._db.execute(
                    "SELECT d.term, c.system FROM designation d JOIN concept c ON c.id = d.concept_id"
                ):
                    total += 1
                    for stem in _words(term):
                        stems[stem] = stems.get(stem, 0) + 1
                    counts = words.setdefault(system, {})
                    for word in set(_LETTERS.findall(term.lower())):
                        counts[word] = counts.get(word, 0) + 1
                    for compound in _COMPOUND.findall(term.lower()):
                        spellings = compounds.setdefault(compound.replace("-", ""), {})
                        spellings[compound] = spellings.get(compound, 0) + 1
                self._vocabulary = _Vocabulary(
                    weights={w: math.log(1 + total / n) for w, n in stems.items()},
                    words=words,
                    known=frozenset(itertools.chain.from_iterable(words.values())),
                    compounds={
                        joined: max(spellings, key=lambda s: (spellings[s], s))  # the commonest; ties by spelling
                        for joined, spellings in compounds.items()
                    },
                )
            return self._vocabulary

    def prepare(self, text: str, systems: Sequence[str] = ()) -> str:
        """The mention as lookups read it: ``prepare_query``, then each word the index has never
        seen written as the index writes it: an everyday word as the Alphabetic Index sends it on
        ("Hives" → "Urticaria"), with the hyphens of a compound the index has
        ("Preeclampsia" → "Pre-eclampsia"), or else replaced by the commonest word a single edit
        away that the searched code systems have (all when none is named): "intial" → "initial",
        "secnd" → "second". OCR and typing drop, add, swap or change a letter. A word that any
        system has is left alone, and so are short words and words with no such neighbour. Drawing
        only on the searched systems' words keeps a drug name the index lacks from becoming a
        disease's word in a drug lookup. Everyday phrases the Alphabetic Index sends on though the
        index has their words are read first ("Heart attack" → "Myocardial infarction")."""
        query = _LAY_PHRASE.sub(_lay_phrase, prepare_query(text, systems))
        vocabulary = self._read_words()
        searched = [vocabulary.words[s] for s in systems if s in vocabulary.words] if systems else []
        counts = searched or list(vocabulary.words.values())

        def count(word: str) -> int:
            return sum(c.get(word, 0) for c in counts)

        def corrected(match: re.Match[str]) -> str:
            word = match.group(0)
            lower = word.lower()
            if lower in vocabulary.known:
                return word
            if lay := _LAY_WORDS.get(lower):
                return lay.capitalize() if word[0].isupper() else lay
            if len(lower) < _SPELL_MIN:
                return word
            if compound := vocabulary.compounds.get(lower):
                return compound.capitalize() if word[0].isupper() else compound
            # the commonest neighbour; ties by spelling, so every process corrects alike
            neighbours = [(n, w) for w in _one_edit(lower) if (n := count(w))]
            best = max(neighbours, default=(0, ""))[1]
            if not best:
                return word
            return best.upper() if word.isupper() else best.capitalize() if word[0].isupper() else best

        return _LETTERS.sub(corrected, query)

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

    def _exact(
        self, query: str, systems: Sequence[str], semantic_types: Sequence[str], written: str = ""
    ) -> list[_Hit]:
        where, parameters = self._filters(systems, semantic_types)
        # ICD-style titles add a residual qualifier to the plain name ("Heart failure, unspecified")
        variants = [
            base + suffix for base in dict.fromkeys((query, written or query)) for suffix in ("", *_RESIDUAL_SUFFIXES)
        ]
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
        # planner can run one MATCH per concept row, which took a minute a query on ICD-10-CM. CROSS
        # JOIN keeps the hits in front: joined plainly, SQLite walks every concept of the system
        # first (24 ms a query on ICD-10-CM instead of 3).
        rows = self._rows(
            "WITH hits AS MATERIALIZED (SELECT rowid AS id, rank FROM designation_fts WHERE designation_fts MATCH ?"
            f" ORDER BY rank LIMIT {LEXICAL_POOL}) SELECT d.concept_id, d.term FROM hits h"
            f" CROSS JOIN designation d ON d.id = h.id CROSS JOIN concept c ON c.id = d.concept_id WHERE 1 = 1{where}"
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
                matrix = np.empty((len(rows), dimensions), dtype=np.float32)  # writable: torch reads it
                for n, row in enumerate(rows):
                    matrix[n] = np.frombuffer(row[1], dtype=np.float32)
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
        similarities = _similarities(vectors.matrix, query_vector)
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
            # CROSS JOIN: the hits first, not every concept of the system (see _lexical)
            base = (
                "FROM h CROSS JOIN designation d ON d.id = h.id CROSS JOIN concept c ON c.id = d.concept_id"
                f" WHERE 1 = 1{where}"
            )
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

    def builtins_outdated(self) -> bool:
        """Whether the index holds built-in code systems built by an older paperchart, which
        ``paperchart terminology build`` would bring up to date (``BUILTIN_CONTENT``)."""
        stored = self._rows("SELECT value FROM index_meta WHERE key = ?", (BUILTIN_CONTENT_KEY,))
        if stored and stored[0][0].isdigit() and int(stored[0][0]) >= BUILTIN_CONTENT:
            return False
        return not builtin_sources().isdisjoint(s.info.source for s in self.code_systems())

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


# Guideline I.A.14: "and" in a title means "and/or". A title of two short names joined by it
# ("Syncope and collapse", "Dizziness and giddiness") names each alone.
_EITHER: Final = re.compile(r"((?:[\w'-]+ ){0,2}[\w'-]+) and ((?:[\w'-]+ ){0,2}[\w'-]+)", re.I)


def _wording(
    term: str, query_grams: frozenset[str], query_words: frozenset[str], weights: dict[str, float]
) -> np.ndarray:
    """How ``term`` reads against the mention: the trigram, coverage and excess features."""
    return np.array(
        [
            _dice(query_grams, _trigrams(_without_residual(term))),
            _coverage(query_words, _with_organs(_words(_without_residual(term))), weights),
            # what the term denies ("without cataplexy", "not having achieved remission") is the
            # default a mention that names neither gets: not an excess
            _coverage(_words(_without_denials(_without_residual(term))), query_words, weights) - 1.0,
        ]
    )


# An axis a title leaves open: "unspecified site", "unspecified control". Only words that name an
# axis, not a part: "unspecified knee" is still a knee.
_OPEN_AXIS: Final = re.compile(
    r",?\s*\bunspecified\s+(?:site|sites|part|parts|side|type|stage|degree|trimester|organism|region|level"
    r"|location|laterality|severity|control|cause|kind|grade|episode|duration)\b",
    re.I,
)


def _without_open_axes(term: str) -> str:
    """``term`` without the axes it leaves open ("..., unspecified trimester" → "...")."""
    return " ".join(_OPEN_AXIS.sub(" ", term).split()).strip(" ,")


def _similarities(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector``, on torch's threads when torch is loaded (it is, with any embedder).

    numpy's OpenBLAS keeps its own thread pool, whose threads spin after a product this size; on
    two cores they starved the next query's embedding in torch (63 ms a query instead of 11).
    """
    try:
        import torch
    except ImportError:
        return np.asarray(matrix @ vector)
    with torch.inference_mode():
        product: np.ndarray = torch.from_numpy(matrix).mv(torch.from_numpy(vector)).numpy()
    return product


def _without_residual(term: str) -> str:
    """A residual title without its qualifier: a plain mention ("hyperlipidaemia") is what coders
    code to "Hyperlipidemia, unspecified", not to a sibling such as "Other hyperlipidemia"."""
    for suffix in _RESIDUAL_SUFFIXES:
        if term.endswith(suffix):
            return term.removesuffix(suffix)
    return term.removeprefix("Unspecified ")


_LETTERS: Final = re.compile(r"[^\W\d_]+")
_COMPOUND: Final = re.compile(r"\b[^\W\d_]+(?:-[^\W\d_]+)+\b")  # "pre-eclampsia", "non-st-elevation"
_SPELL_MIN: Final = 5  # shorter unknown words are more often abbreviations than misspellings
# Everyday words no name in the index uses, as the Alphabetic Index sends them on ("Hives - see
# Urticaria", "Stomachache - see Pain, abdominal"). Read before the spelling correction, which
# would make "hives" "lives".
_LAY_WORDS: Final = {
    "bedsore": "pressure ulcer",
    "bedsores": "pressure ulcers",
    "bellyache": "abdominal pain",
    "earache": "otalgia",
    "hives": "urticaria",
    "itching": "pruritus",
    "lice": "pediculosis",
    "lockjaw": "tetanus",
    "pinkeye": "conjunctivitis",
    "stomachache": "abdominal pain",
}
# Everyday phrases whose words the index has elsewhere ("Fear of heart attack", "'intestinal flu'"),
# as the Alphabetic Index sends them on: "Attack, heart - see Infarct, myocardium", "Flu - see
# also Influenza; intestinal NEC A08.4", "Gallstone - see Calculus, gallbladder", "Measles, German
# - see Rubella". A phrase that starts earlier in the mention wins ("intestinal flu", not "flu").
_LAY_PHRASES: Final = {
    "heart attack": "myocardial infarction",
    "intestinal flu": "viral gastroenteritis",
    "stomach flu": "viral gastroenteritis",
    "flu": "influenza",
    "gallstone": "calculus of gallbladder",
    "gallstones": "calculus of gallbladder",
    "german measles": "rubella",
    "hiatal hernia": "hiatus hernia",
    "high cholesterol": "hypercholesterolemia",
}
_LAY_PHRASE: Final = re.compile(r"\b(?:" + "|".join(map(re.escape, _LAY_PHRASES)) + r")\b", re.I)


def _lay_phrase(match: re.Match[str]) -> str:
    said = match.group(0)
    phrase = _LAY_PHRASES[said.lower()]
    return phrase.capitalize() if said[0].isupper() else phrase


_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz"


def _one_edit(word: str) -> set[str]:
    """Every string one deletion, insertion, substitution or transposition away from ``word``."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    return {
        *(a + b[1:] for a, b in splits if b),
        *(a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1),
        *(a + c + b[1:] for a, b in splits if b for c in _ALPHABET),
        *(a + c + b for a, b in splits for c in _ALPHABET),
    }


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


def _stem(word: str) -> str:
    """A crude stem that joins inflections ("bronchus", "bronchi"; "ulcers", "ulcer"). A word in
    "-itis" is kept whole: an inflammation is not its organ's other conditions ("diverticulitis"
    is not "diverticulosis" or "diverticular", "esophagitis" not "esophageal")."""
    if word.endswith("itis"):
        return word
    return word[:6] if len(word) > 6 else word.removesuffix("s")


_NOS_KEY: Final = _stem("nos")
_CONGENITAL_KEY: Final = _stem("congenital")
# Words that say "congenital" without the word: the Alphabetic Index's main terms with "(congenital)"
# as their nonessential modifier ("Accessory (congenital)", "Imperforate (congenital)", "Atresia,
# atretic (congenital)", "Malformation (congenital)"): "Imperforate pharynx" is Q38.8, not T17.200A,
# a foreign body in the pharynx; "Arteriovenous malformation of brain" Q28.2, not I60.8, its rupture
_SAYS_CONGENITAL: Final = frozenset(
    _stem(word)
    for word in (
        "congenital",
        "accessory",
        "agenesis",
        "aplasia",
        "atresia",
        "imperforate",
        "supernumerary",
        "hypoplasia",
        "duplication",
        "duplex",
        "malformation",
        "anomaly",
        "anomalous",
    )
)
_ACQUIRED_KEY: Final = _stem("acquired")
_UNSPECIFIED_KEY: Final = _stem("unspecified")


# An organ's adjective is its noun: the classification says "Malignant neoplasm of unspecified
# ovary" where notes say "ovarian cancer", "Kidney failure" and "renal failure" alike. Only
# adjectives that name one organ ("cervical" is the neck's and the cervix's).
_ORGAN_ADJECTIVES: Final = {
    "abdominal": "abdomen",
    "aortic": "aorta",
    "appendiceal": "appendix",
    "bronchial": "bronchus",
    "cardiac": "heart",
    "cecal": "cecum",
    "cerebral": "brain",
    "coccygeal": "coccyx",
    "colonic": "colon",
    "conjunctival": "conjunctiva",
    "corneal": "cornea",
    "cutaneous": "skin",
    "duodenal": "duodenum",
    "esophageal": "esophagus",
    "gastric": "stomach",
    "hepatic": "liver",
    "hypopharyngeal": "hypopharynx",
    "ileal": "ileum",
    "intestinal": "intestine",
    "jejunal": "jejunum",
    "laryngeal": "larynx",
    "lingual": "tongue",
    "mammary": "breast",
    "mandibular": "mandible",
    "maxillary": "maxilla",
    "nasal": "nose",
    "nasopharyngeal": "nasopharynx",
    "ocular": "eye",
    "oropharyngeal": "oropharynx",
    "osseous": "bone",
    "ovarian": "ovary",
    "ovaries": "ovary",
    "pancreatic": "pancreas",
    "pelvic": "pelvis",
    "penile": "penis",
    "pharyngeal": "pharynx",
    "prostatic": "prostate",
    "pulmonary": "lung",
    "rectal": "rectum",
    "renal": "kidney",
    "retinal": "retina",
    "sacral": "sacrum",
    "scrotal": "scrotum",
    "splenic": "spleen",
    "sternal": "sternum",
    "testes": "testis",
    "testicular": "testis",
    "tonsillar": "tonsil",
    "tracheal": "trachea",
    "umbilical": "umbilicus",
    "ureteral": "ureter",
    "ureteric": "ureter",
    "urethral": "urethra",
    "uterine": "uterus",
    "vaginal": "vagina",
    "vesical": "bladder",
    "vulvar": "vulva",
}


# The organs a title's organ system covers: "Family history of malignant neoplasm of digestive
# organs" (Z80.0) is the code of a family history of colon cancer. They count for the mention's
# words the title has (coverage), not for the title's words the mention lacks (excess).
_ORGAN_SYSTEMS: Final = {
    "digestive": (
        "anal anus appendix bowel cecum colon duodenum esophagus gallbladder ileum intestine jejunum liver"
        " pancreas rectum sigmoid stomach"
    ),
    "respiratory": "bronchi bronchus larynx lung lungs pleura trachea",
    "urinary": "bladder kidney kidneys ureter urethra",
    "genital": "cervix endometrial endometrium ovary penis prostate scrotum testis uterus vagina vulva",
}


@functools.cache
def _organ_stems() -> dict[str, frozenset[str]]:
    """Each organ system's stem → its organs' stems."""
    return {_stem(system): _words(organs) for system, organs in _ORGAN_SYSTEMS.items()}


def _with_organs(words: frozenset[str]) -> frozenset[str]:
    """``words`` and the organs of each organ system they name."""
    organs = [members for system, members in _organ_stems().items() if system in words]
    return words.union(*organs) if organs else words


# Words the Alphabetic Index sends to another word ("Bleeding - see Hemorrhage", "Stone(s) - see
# Calculus", "Seizure(s) - see also Convulsions"): the classification's titles use both, so the
# wording features count them as one ("Personal history of kidney stones" is Z87.442 "... urinary
# calculi", not Z85.528 "... malignant neoplasm of kidney").
_SEE_ALSO: Final = {
    "bleed": "hemorrhage",
    "bleeding": "hemorrhage",
    "stone": "calculus",
    "stones": "calculus",
    "seizure": "convulsion",
    "seizures": "convulsion",
}
_SAME_WORD: Final = {**_ORGAN_ADJECTIVES, **_SEE_ALSO}


def _words(text: str) -> frozenset[str]:
    """The stems that the wording features compare, an organ's adjective as its noun and a word the
    Index sends elsewhere as that word."""
    return frozenset(
        _stem(_SAME_WORD.get(t, t)) for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS and len(t) > 1
    )


_FILLERS: Final = frozenset({"of", "the", "a", "an", "and", "or", "to", "in", "on", "at", "by", "for", "as"})


def _key_words(text: str) -> frozenset[str]:
    """The stemmed words that tell one title from another: all but fillers ("of", "the"), so that,
    unlike ``_words``, "with" and "without", "other" and "unspecified" count."""
    return frozenset(_stem(t) for t in _TOKEN.findall(text.lower()) if t not in _FILLERS)


def _key(words: frozenset[str]) -> str:
    """Key words as one string (a fifth of a frozenset's memory)."""
    return " ".join(sorted(words))


def _coverage(words: frozenset[str], other: frozenset[str], weights: dict[str, float]) -> float:
    """The share of ``words``, weighted by rarity, that ``other`` also has."""
    total = sum(weights.get(w, _UNSEEN_WEIGHT) for w in words)
    return sum(weights.get(w, _UNSEEN_WEIGHT) for w in words & other) / total if total else 0.0


_UNSEEN_WEIGHT: Final = 12.0  # a word no designation has: rarer than any that one has
# Qualifiers of which a mention and a code cannot hold different ones: "left" against "right",
# "stage 2" against "stage 1". Each group is compared as a set ("acute on chronic" is {acute,
# chronic}, not "acute"). A code that says a group's value is unknown ("unspecified severity")
# holds a value of its own, which clashes with a mention that names one ("mild").
_QUALIFIER_GROUPS: Final = (
    frozenset({"left", "right", "bilateral"}),
    frozenset({"upper", "lower"}),
    frozenset({"acute", "subacute", "chronic"}),
    frozenset({"initial", "subsequent", "sequela"}),
    frozenset({"complete", "incomplete", "partial"}),
    frozenset({"primary", "secondary"}),
    frozenset({"benign", "malignant", "situ"}),  # "carcinoma in situ" is neither
    frozenset({"unilateral", "bilateral"}),
    frozenset({"anterior", "posterior"}),
    frozenset({"mild", "moderate", "severe", "unspecified severity"}),
    frozenset({"single", "recurrent"}),
    frozenset({"abuse", "dependence", "use unspecified"}),  # F1x.1, F1x.2, F1x.9
    frozenset({"remission", "relapse", "uncomplicated"}),
    frozenset({"resistant", "susceptible"}),  # MRSA against MSSA
    frozenset({"congenital", "acquired"}),
    frozenset({"first", "second", "third", "fourth", "unspecified degree", "unspecified trimester"}),
)
_SIDES: Final = frozenset({"left", "right", "bilateral"})
_SIDE_GROUP: Final = _QUALIFIER_GROUPS.index(_SIDES)
_UNSTATED_SIDE: Final = 0.5  # a side the code names and the mention does not: half a clash
_ROMAN: Final = {"i": "1", "ii": "2", "iii": "3", "iv": "4", "v": "5", "vi": "6"}
_NUMBER_WITH_UNIT: Final = re.compile(r"^(\d+(?:\.\d+)?)[a-z]{2,}$")
_NUMBERED: Final = frozenset({"type", "stage", "grade", "class", "degree", "phase", "level"})


# Settings a code's title makes part of what it is: a newborn, a pregnancy, a history, a family
# member's, a sequela, an underdosing, long-term use. A code that needs one the mention does not
# state clashes ("Pulmonary hemorrhage" is not P26.9 "... originating in the perinatal period"),
# and so does a mention that states one the code lacks ("Neonatal petechiae" is P54.5, not R23.3).
_SETTINGS: Final = (
    r"newborn|neonat\w*|perinatal|fetus|fetal|liveborn|stillbirth|infant",
    r"pregnan\w*|puerper\w*|postpartum|antepartum|intrapartum|childbirth|deliver\w*|labou?r|maternal"
    r"|obstetric\w*|gestation\w*|trimester|abortion|miscarriage|ectopic|molar|gravid\w*|placenta\w*"
    r"|eclampsia|pre-?eclampsia|hyperemesis|amniotic|chorioamnionitis|hydatidiform|cesarean|caesarean",
    r"history",
    r"family",  # "History of stroke" is the patient's own, not "Family history of stroke"
    r"sequela\w*|late effects?",
    r"underdos\w*",
    r"long[- ]term",
)
# Causes a title names and a mention must state too, though one that states a cause may be coded
# to a code that names none: (what a title needs it by, what a mention states it by).
_AFTER: Final = r"following|after|post-?(?:procedural|operative|surgical|stroke|traumatic|infectious|infective|viral)"
_CAUSES: Final = (
    (_AFTER, _AFTER + r"|due to"),  # "Retarded development following malnutrition": "... due to malnutrition"
    # a manifestation, coded with its cause: "Myocarditis in diseases classified elsewhere"
    (r"classified elsewhere", r"classified elsewhere|due to"),
    # a neoplasm is primary unless the record says otherwise: "Lung cancer" is not C78.0-
    (r"secondary (?:malignant|carcinoid|neuroendocrine)", r"secondary|metasta\w*"),
    # a single episode is the default: "Mild depression" is F32.0, not F33.0 "..., recurrent, mild"
    (r"recurren\w*", r"recurren\w*"),
    # the Alphabetic Index: "Infection, staphylococcal, aureus (methicillin susceptible)": methicillin
    # resistance is coded only where the record says so ("Staph aureus sepsis" is A41.01, not A41.02)
    (r"methicillin resistant", r"resistant"),
    # the Alphabetic Index: "Embolism, vein, ... chronic" is a subterm; a plain thrombosis is acute
    (r"chronic embolism", r"chronic"),
    # a remission is coded only where the record documents one: "Tobacco use disorder, moderate" is
    # F17.200 "..., uncomplicated", not F17.201 "..., in remission"
    (r"in (?:\w+ )?remission", r"remission"),
    # the Alphabetic Index codes a neoplasm of a site to the organ, and to its skin only where the
    # record says skin ("Neoplasm, breast" is C50.-, "..., skin of breast" C44.5-) or names a
    # tumour of the skin or a site whose neoplasms the Index files as skin (eyelid, scalp, anal margin)
    (
        r"skin of",
        r"skin|cutaneous|derm\w*|melanoma|basal cell|naev(?:us|i)|nev(?:us|i)|keratos\w*|merkel"
        r"|eyelid|canthus|scalp|auricle|auricular|anal margin|perianal",
    ),
)
# What a mention claims and a code's name must claim too, though a name may claim it unasked:
# (what a name claims it by, what a mention claims it by). DSM-5's "Other specified paraphilic
# disorder" is ICD-10-CM's "Other paraphilias" (F65.89), not "Paraphilia, unspecified" (F65.9).
_CLAIMS: Final = ((r"^other|other specified|not elsewhere classified", r"^other specified"),)
_CONTEXTS: Final = tuple(
    tuple(re.compile(rf"\b(?:{words})\b", re.I) for words in pair)
    for pair in [*((words, words) for words in _SETTINGS), *_CAUSES, *_CLAIMS]
)
_NEWBORN, _PREGNANCY = 0, 1  # in _CONTEXTS
_BOTH_WAYS: Final = frozenset(range(len(_SETTINGS)))
_MENTION_WAY: Final = frozenset(range(len(_CONTEXTS) - len(_CLAIMS), len(_CONTEXTS)))
_PARENTHESES: Final = re.compile(r"\([^()]*\)")


def _essential(text: str) -> str:
    """``text`` without its nonessential modifiers, the words in parentheses ("Peritoneal adhesions
    (postprocedural)" → "Peritoneal adhesions")."""
    return " ".join(_PARENTHESES.sub(" ", text).split())


class _Qualifiers(msgspec.Struct, frozen=True):
    """What a text says about each qualifier group, its numbers, which of its parts have a side,
    and what it denies."""

    groups: tuple[frozenset[str], ...]  # per _QUALIFIER_GROUPS, the members the text names
    numbers: frozenset[str]  # "stage II" → "2"; "unspecified stage" → "unspecified"
    sided: frozenset[str]  # the word after a side: "hip" in "right hip"
    unsided: frozenset[str]  # the word after "unspecified", in a text that names no side: "hip"
    denied: frozenset[str] = frozenset()  # words it says are absent: "esophagitis" in "... without esophagitis"
    affirmed: frozenset[str] = frozenset()  # its other words
    needs: frozenset[int] = frozenset()  # the _CONTEXTS the text, as a code's name, needs
    states: frozenset[int] = frozenset()  # the _CONTEXTS the text, as a mention, states


@functools.lru_cache(maxsize=16_384)  # the same designations recur across lookups; ~1 KB each
def _qualifiers(text: str) -> _Qualifiers:
    tokens = _TOKEN.findall(text.lower())
    pairs = list(itertools.pairwise(tokens))
    # "500mg" is the number 500; "3a", "c5" and "11q23" are names
    numbers = {m.group(1) if (m := _NUMBER_WITH_UNIT.match(t)) else t for t in tokens if any(c.isdigit() for c in t)}
    numbers |= {_ROMAN[t] for before, t in pairs if before in _NUMBERED and t in _ROMAN}
    # "unspecified stage" and "grade unspecified" both say the number is not known
    numbers |= {"unspecified" for before, t in pairs if before == "unspecified" and t in _NUMBERED}
    numbers |= {"unspecified" for before, t in pairs if before in _NUMBERED and t == "unspecified"}
    present = _qualifier_words(tokens)
    has_side = not _SIDES.isdisjoint(present)
    essential = _essential(text)  # a parenthesized setting is nonessential: "adhesions (postprocedural)"
    # so is a parenthesized qualifier, where the essential words fill its group: "Chronic
    # obstructive pulmonary disease with (acute) exacerbation" is chronic, its exacerbation acute;
    # but "Cor pulmonale (chronic)" is chronic, and no acute cor pulmonale
    stated = _qualifier_words(_TOKEN.findall(essential.lower()))
    return _Qualifiers(
        groups=tuple(group & stated or group & present for group in _QUALIFIER_GROUPS),
        numbers=frozenset(numbers),
        sided=frozenset(t for before, t in pairs if before in _SIDES),
        unsided=frozenset() if has_side else frozenset(t for before, t in pairs if before == "unspecified"),
        denied=_plain_words(" ".join(m.group(0) for m in _DENIAL.finditer(text))),
        affirmed=_plain_words(_without_denials(text)),
        needs=frozenset(i for i, (needs, _) in enumerate(_CONTEXTS) if needs.search(essential)),
        states=frozenset(i for i, (_, states) in enumerate(_CONTEXTS) if states.search(essential)),
    )


def _qualifier_words(tokens: Sequence[str]) -> frozenset[str]:
    """The tokens, and the pairs that say a value is not known: "unspecified severity"; "both"
    ("both knees", not "both cervix and uterus") is bilateral."""
    pairs = list(itertools.pairwise(tokens))
    present = frozenset(tokens) | {f"{before} {t}" for before, t in pairs if before == "unspecified"}
    if any(t == "both" and "and" not in tokens[i + 1 :] for i, t in enumerate(tokens)):
        present |= {"bilateral"}
    return present | ({"use unspecified"} if ("use", "unspecified") in pairs else set())  # "Alcohol use, unspecified"


def _conflicts(mention: _Qualifiers, term: _Qualifiers) -> float:
    """How many qualifier groups the mention and the term both fill, differently ("right hip"
    against "unspecified hip" counts too), how many settings and causes (``_CONTEXTS``) the term
    needs that the mention does not state, how many settings the mention states and the term
    lacks, and whether one denies what the other has ("with esophagitis" against "without
    esophagitis"). A side that the term names and the mention does not is half a clash: laterality
    the record does not give is coded as unspecified ("Ovarian cancer" is C56.9, not C56.3
    "... of bilateral ovaries")."""
    count: float = sum(1 for a, b in zip(mention.groups, term.groups, strict=True) if a and b and a != b)
    if term.groups[_SIDE_GROUP] and not mention.groups[_SIDE_GROUP]:
        count += _UNSTATED_SIDE
    numbers, other = mention.numbers, term.numbers
    count += 1 if numbers - other and other - numbers else 0
    count += 1 if mention.sided & term.unsided or term.sided & mention.unsided else 0
    missing = term.needs - mention.states - _MENTION_WAY
    unmet = (mention.states - term.needs) & (_BOTH_WAYS | _MENTION_WAY)
    if _NEWBORN in mention.states & term.needs:
        missing -= {_PREGNANCY}  # "Newborn affected by (maternal) chorioamnionitis": the mother's
        unmet -= {_PREGNANCY}
    count += len(missing) + len(unmet)
    if mention.affirmed & (term.denied - term.affirmed) or term.affirmed & (mention.denied - mention.affirmed):
        count += 1
    return float(count)


# words of a denial that name nothing denied: "without mention of fluctuations", "not having achieved remission"
_DENIAL_FILLERS: Final = frozenset({"mention", "having", "achieved"})


def _plain_words(text: str) -> frozenset[str]:
    """Whole words, not stems, for what a text denies: under the crude stem "esophagitis" is
    "esophageal" ("Gastro-esophageal reflux disease without esophagitis")."""
    return frozenset(
        t.removesuffix("s")
        for t in _TOKEN.findall(text.lower())
        if len(t) > 2 and t not in _STOPWORDS and t not in _FILLERS and t not in _DENIAL_FILLERS
    )


_DENIAL: Final = re.compile(r"\b(?:without|not|no)\b[^,;()]*?(?=,|;|\(|\bwith\b|$)", re.I)


def _without_denials(term: str) -> str:
    return _DENIAL.sub("", term)


# DSM-5 names substance use disorders by severity; ICD-10-CM files a mild one under abuse
# (F1x.1-), a moderate or severe one under dependence (F1x.2-), and a substance-induced disorder
# "without use disorder" under use (F1x.9-).
_USE_DISORDER: Final = re.compile(r"\buse disorder,?\s+(mild|moderate|severe)\b", re.I)
_WITHOUT_USE_DISORDER: Final = re.compile(r"\bwithout use disorder\b", re.I)
# A substance-induced mental disorder that names no use of the substance is, by the Alphabetic
# Index, the "use, unspecified" code (F1x.9-): "Opioid-induced delirium" is F11.921.
_SUBSTANCE_INDUCED: Final = re.compile(
    r"\b(?:alcohol|opioid|cannabis|sedative|hypnotic|anxiolytic|cocaine|amphetamine|stimulant|hallucinogen"
    r"|phencyclidine|inhalant|caffeine|nicotine|tobacco|substance)[- ]induced\b(?:[\s,-]+[\w-]+){0,5}?"
    r"[\s,-]+(?:delirium|disorder|psychosis|dementia|dysfunction)\b",
    re.I,
)
_USE_NAMED: Final = re.compile(r"\b(?:use|abuse|dependence|addiction)\b", re.I)
# The tabular's inclusion terms say "with failed remission" where the code's title says "not having
# achieved remission" (leukemias, lymphomas, myeloma): the same state in the title's words.
_FAILED_REMISSION: Final = re.compile(r"\b(?:with )?failed remission\b", re.I)


# ICD-10-CM's guideline I.C.4.a.2: diabetes whose type the record does not give is type 2 (E11);
# "Other specified diabetes" (E13), E08 and E09 are for the types they name.
_DIABETES: Final = re.compile(r"\bdiabet(?:es|ic)\b", re.I)
_DIABETES_KIND: Final = re.compile(
    r"\b(?:type|insipidus|gestational|pregnan\w*|childbirth|puerperium|maternal|newborn|neonatal|due to|induced"
    r"|secondary|specified|latent|bronzed|prediabet\w*|pre-diabet\w*|juvenile|insulin[- ]dependent|MODY)\b",
    re.I,
)


# The Alphabetic Index: "Cancer - see Neoplasm, malignant, by site". The classification names no
# code "cancer", so "Colon cancer" found a benign neoplasm of the colon and "Breast cancer" a
# receptor status.
_CANCER: Final = re.compile(r"\bcancers?\b", re.I)
_MALIGNANT: Final = re.compile(r"\bmalignan", re.I)
# The Alphabetic Index: "Fracture, traumatic, hip - see Fracture, femur, neck". The classification
# has no "hip fracture", so "Right hip fracture" found "Pain in right hip". A stress or
# pathological fracture of the hip has codes of its own ("Stress fracture, hip").
_HIP_FRACTURE: Final = re.compile(
    r"\b(?:(?P<side>right|left)\s+)?hip\s+fracture\b"  # "right hip fracture"
    r"|\bfractured?\s+(?:of\s+)?(?:the\s+)?(?:(?P<side2>right|left)\s+)?hip\b",  # "fracture of the left hip"
    re.I,
)
_NOT_TRAUMATIC: Final = re.compile(
    r"\b(?:stress|fatigue|patholog\w*|osteoporo\w*|insufficiency|fragility|(?:peri)?prosthetic)\W*$", re.I
)


def _femoral_neck(match: re.Match[str]) -> str:
    if _NOT_TRAUMATIC.search(match.string[: match.start()]):
        return match.group(0)
    side = (match["side"] or match["side2"] or "").lower()
    return f"fracture of neck of {side} femur" if side else "fracture of neck of femur"


def prepare_query(text: str, systems: Sequence[str] = ()) -> str:
    """The mention as the classification words it: spaces collapsed, clinical abbreviations
    expanded, a DSM-5 substance use disorder's severity given as ICD-10-CM's abuse or dependence,
    "failed remission" as "not having achieved remission", and, when the lookup searches ICD-10-CM
    (``systems`` names it, or is empty: all), diabetes of no named type as type 2 and a hip fracture
    as the femoral neck's. SNOMED CT has concepts of no type ("Diabetic nephropathy") and names hip
    fractures, so its lookups keep the mention's words."""
    query = _FAILED_REMISSION.sub("not having achieved remission", expand_abbreviations(" ".join(text.split())))
    if not _MALIGNANT.search(query):
        query = _CANCER.sub("malignant neoplasm", query)
    searches_icd = not systems or ICD10CM in systems
    if searches_icd:
        query = _HIP_FRACTURE.sub(_femoral_neck, query)
    if _WITHOUT_USE_DISORDER.search(query) or (_SUBSTANCE_INDUCED.search(query) and not _USE_NAMED.search(query)):
        return f"{query} (use, unspecified)"
    if match := _USE_DISORDER.search(query):
        return f"{query} ({'abuse' if match.group(1).lower() == 'mild' else 'dependence'})"
    if searches_icd and _DIABETES.search(query) and not _DIABETES_KIND.search(query):
        return f"{query} (type 2 diabetes mellitus)"
    return query


# ICD-10-CM's convention: "NOS" (not otherwise specified) means unspecified, and the code for it is
# the default of its category: "unspecified", "not having achieved remission", "unilateral" (hernia)
# and, for a mention that names no complication ("with ..."), "uncomplicated" or "without ...":
# "Hb-SS disease with crisis NOS" is "with crisis, unspecified", but "asthma with exacerbation NOS"
# is not "uncomplicated".
_NOS: Final = re.compile(r"\bNOS\b")
# The classification writes a complication as "X with Y" and, for some categories, "X complicated
# by Y" (B05.1 "Measles complicated by meningitis"); the two read alike.
_WITH: Final = re.compile(r"\bwith\b|\bcomplicated by\b", re.I)
_DEFAULT: Final = re.compile(r"\b(?:unspecified|unilateral)\b", re.I)
_UNCOMPLICATED: Final = re.compile(r"\b(?:uncomplicated|without)\b", re.I)


# ICD-10-CM guideline I.A.9: a condition the record details but no code names goes to the
# category's "Other ..." or "other specified" code, not to "unspecified". Words that describe the
# course or the setting rather than the condition are no such detail: "acute low back pain" is
# low back pain, "community acquired pneumonia" pneumonia. So a mention with no detail that says
# all an "Other X" title says but "Other" is X not otherwise specified: "Acute low back pain" is
# M54.50 "Low back pain, unspecified", not M54.59 "Other low back pain", where an "X, unspecified"
# code is there to take it. The course is a detail where the classification tells it apart
# (``_details``): "Chronic appendicitis" is K36 "Other appendicitis".
_OTHER_TITLE: Final = re.compile(r"^other\b|\bother specified\b", re.I)
_UNSPECIFIED_TITLE: Final = re.compile(r"\bunspecified\b", re.I)
_NOT_A_DETAIL: Final = frozenset(
    _stem(w) for w in ("acute", "chronic", "worsening", "new", "recent", "community", "acquired", "history")
)


_COURSE: Final = frozenset(_stem(w) for w in ("acute", "subacute", "chronic"))


def _details(mention: frozenset[str], names: Sequence[frozenset[str]]) -> frozenset[str]:
    """The words of the mention that name a detail of its condition: all but those of course and
    setting, unless one of ``names`` (the candidates' names' words) tells the condition's course apart.
    "Chronic appendicitis" names a detail, as "Unspecified acute appendicitis" has "acute" where it
    has "chronic" (the Index: "Appendicitis, chronic K36", "Other appendicitis"); "chronic low back
    pain" does not, as no code of low back pain names a course."""
    details = mention - _NOT_A_DETAIL
    course = mention & _COURSE
    if course and any(details <= words and words & _COURSE not in (frozenset(), course) for words in names):
        return details | course
    return details


def _residual_kind(title: str) -> float:
    """+1 for a residual "Other ..." title, -1 for an "unspecified" one, else 0."""
    if _OTHER_TITLE.search(title):
        return 1.0
    return -1.0 if _UNSPECIFIED_TITLE.search(title) else 0.0


def _asks_default(mention: str) -> bool:
    return bool(_NOS.search(mention))


_WITH_CLAUSE: Final = re.compile(r"\b(?:with|complicated by)\b([^,;()]*)", re.I)


def _names_a_complication(term: str, mention: str) -> bool:
    """Whether ``term`` has a "with ..." the mention does not name ("with crisis" against "Sickle-cell
    disorder NOS"; not "with status migrainosus" against "Status migrainosus NOS")."""
    named = _words(mention)
    return any(not _words(clause) <= named for clause in _WITH_CLAUSE.findall(term))


def _unnamed(title: str, mention: str) -> tuple[float, float]:
    """For a mention with no "with" of its own, which side of a title's "X with Y" it names alone:
    (1 if only X, 1 if only Y).

    A code "X with Y" is for a record that names both. A mention of the condition alone is the
    code that leaves the complication out: "Alzheimer's disease" is G30.9 "..., unspecified", not
    G30.0 "... with early onset", and "Type 2 diabetes" is not "... with hyperglycemia". A mention
    of the complication alone is not the condition it complicates: "Rectal bleeding" is K62.5
    "Hemorrhage of anus and rectum", not K51.311 "Ulcerative (chronic) rectosigmoiditis with
    rectal bleeding".
    """
    parts = _WITH.split(title, maxsplit=1)
    named = _words(mention)
    if len(parts) != 2 or not named or _WITH.search(mention):
        return 0.0, 0.0
    condition, complication = _words(parts[0]), _words(parts[1])
    only_condition = named <= condition and not complication <= named
    only_complication = named <= complication and not named & condition
    return float(only_condition), float(only_complication)


def _is_default(term: str, mention: str = "") -> bool:
    """Whether ``term`` is its category's default for a mention "NOS" (see above)."""
    # "Other sickle-cell disorders with crisis, unspecified" is no default of "Sickle-cell disorder NOS"
    if not _WITH.search(mention) and _names_a_complication(term, mention):
        return False
    if _DEFAULT.search(term):
        return True
    if _WITH.search(mention):
        rest = _UNCOMPLICATED.sub("", term)
        return _without_denials(rest) != rest
    return bool(_UNCOMPLICATED.search(term)) or _without_denials(term) != term
