"""Fit the terminology re-rank weights on held-out ICD-10-CM queries of another seed.

    .venv/bin/python bench/terminology_tune.py [--seed 11] [--queries 400] [--model DIR] [--cache bench/.cache]

The queries are made as ``bench/terminology.py`` makes them, from a different seed (the benchmark
reports seed 7), against an index built without them. For each query the hybrid lookup's fused
pool and its re-rank features are computed once; then coordinate ascent over a grid of weights
maximizes top-1 (ties: top-3) without losing any of the common mentions the current weights code
right (``COMMON_MENTIONS`` in bench/terminology.py: every held-out query is a specific inclusion
term, and a fit to them alone drifts plain mentions toward "Other ..." codes). Prints the weights
to paste into ``terminology/lookup.py`` (``RERANK_WEIGHTS``) and the top-1/top-3 of the current
and the fitted weights on these queries.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terminology.importers.icd10cm import Icd10cmBuiltinImporter
from terminology.index import build_index
from terminology.lookup import EXACT_BONUS, FEATURES, RERANK_WEIGHTS, TerminologyService
from terminology.model import ICD10CM

_spec = importlib.util.spec_from_file_location("bench_terminology", Path(__file__).parent / "terminology.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

GRID = (-2.0, -1.0, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0)


class Case:
    """One query's pool: a feature row per candidate, which one is right, which are exact matches."""

    def __init__(self, features: np.ndarray, expected: int, exact: np.ndarray) -> None:
        self.features = features
        self.expected = expected
        self.exact = exact


def collect(service: TerminologyService, queries: list[tuple[str, str, str]]) -> list[Case]:
    ids = {code: concept_id for concept_id, code in service._rows("SELECT id, code FROM concept")}
    cases: list[Case] = []
    for number, (_, text, expected) in enumerate(queries, start=1):
        query = service.prepare(text, [ICD10CM])
        found = service.retrieve(query, [ICD10CM], (), "hybrid")
        features, _ = service.rerank_features(query, found)
        order = list(features)
        exact = {hit.concept_id for hit in found.exact}
        cases.append(
            Case(
                np.array([features[c] for c in order]),
                order.index(ids[expected]) if ids.get(expected) in features else -1,
                np.array([c in exact for c in order]),
            )
        )
        if number % 100 == 0:
            print(f"  features of {number}/{len(queries)} queries", file=sys.stderr)
    return cases


def score(cases: list[Case], weights: np.ndarray) -> tuple[int, int]:
    top1 = top3 = 0
    for case in cases:
        if case.expected < 0:
            continue
        scores = case.features @ weights + EXACT_BONUS * case.exact
        better = int(np.sum(scores > scores[case.expected]))
        top1 += better == 0
        top3 += better < 3
    return top1, top3


def fit(cases: list[Case], start: np.ndarray, guard: list[Case] | None = None, rounds: int = 4) -> np.ndarray:
    """Coordinate ascent: each weight in turn set to its best grid value, the cosine's kept at 1;
    weights that code fewer of the ``guard`` cases right than ``start`` does are not taken."""
    floor = score(guard, start)[0] if guard else 0

    def objective(weights: np.ndarray) -> tuple[int, int]:
        if guard and score(guard, weights)[0] < floor:
            return (-1, -1)
        return score(cases, weights)

    weights = start.copy()
    best = objective(weights)
    for _ in range(rounds):
        improved = False
        for i in range(1, len(weights)):  # the cosine's weight fixes the scale
            for value in GRID:
                trial = weights.copy()
                trial[i] = value
                result = objective(trial)
                if result > best:
                    best, weights, improved = result, trial, True
        if not improved:
            break
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--model", type=Path, help="a sentence-transformers model folder (default: built-in MiniLM)")
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    args = parser.parse_args()

    embedder, suffix = bench.embedder_for(args.model, args.cache)
    queries = bench.held_out_queries(random.Random(args.seed), args.queries)
    index = args.cache / f"icd10cm-held-out-{args.seed}-{args.queries}{suffix}.db"
    if not index.exists():
        held_out = {(code, query) for kind, query, code in queries if kind == "inclusion term"}
        build_index(index, embedder, [Icd10cmBuiltinImporter(held_out=held_out)], fresh=True)
    service = TerminologyService(index, embedder)
    cases = collect(service, queries)
    common = collect(service, [("common", text, code) for text, code in bench.COMMON_MENTIONS])
    fitted = fit(cases, RERANK_WEIGHTS.astype(float), guard=common)
    for name, weights in (("current", RERANK_WEIGHTS), ("fitted", fitted)):
        top1, top3 = score(cases, weights)
        kept = score(common, weights)[0]
        print(
            f"{name:<8} top-1 {top1 / len(cases):.1%}  top-3 {top3 / len(cases):.1%}  "
            f"common mentions {kept}/{len(common)}  weights {weights.tolist()}"
        )
    print("features:", ", ".join(FEATURES))


if __name__ == "__main__":
    main()
