"""Adapt the embedding model to a terminology index: fine-tune it on the index's own synonyms.

    .venv/bin/python bench/terminology_adapt.py --out DIR [--index bench/.cache/icd10cm-held-out-7-400.db]
        [--epochs 1] [--lr 3e-5] [--cache bench/.cache]
    .venv/bin/python bench/terminology.py --model DIR          # then measure it

Every concept's other designations (inclusion terms, synonyms) are paired with its preferred term,
and all-MiniLM-L6-v2 is trained to put each pair closer than any other pair of the batch
(in-batch negatives, symmetric cross-entropy over scaled cosines; titles that occur twice in a
batch are masked, not counted as negatives). The default index is the benchmark's seed-7 held-out
index, so the model never sees the queries it is measured on. The result is a sentence-transformers
folder that ``PAPERCHART_EMBEDDING_MODEL`` and ``--model`` accept. ~4 min an epoch on 2 cores for
ICD-10-CM's ~11k pairs. What it gained is in README.md ("Terminology").
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before bench/, whose terminology.py would shadow

from terminology.embed import unpack_model

SCALE = 20.0  # cosine → logit: sharp enough that the right pair must win clearly
BATCH = 64


def synonym_pairs(index: Path) -> list[tuple[str, str]]:
    """(designation, preferred term) for every non-preferred designation in the index."""
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    preferred: dict[int, str] = {}
    others: list[tuple[int, str]] = []
    for concept_id, term, kind in db.execute("SELECT concept_id, term, kind FROM designation ORDER BY id"):
        if kind == "preferred":
            preferred.setdefault(concept_id, term)
        else:
            others.append((concept_id, term))
    db.close()
    return [(term, preferred[c]) for c, term in others if c in preferred and term != preferred[c]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cache = Path(__file__).parent / ".cache"
    parser.add_argument("--index", type=Path, default=cache / "icd10cm-held-out-7-400.db")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=cache)
    args = parser.parse_args()
    if not args.index.exists():
        parser.error(f"no index at {args.index}: run bench/terminology.py first (it builds it)")

    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    pairs = synonym_pairs(args.index)
    model = SentenceTransformer(str(unpack_model(args.cache / "models")), device="cpu")
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    steps = max(1, int(len(pairs) / BATCH * args.epochs))
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps)
    )
    print(f"{len(pairs)} synonym pairs from {args.index.name}; {steps} steps of {BATCH}", file=sys.stderr)
    step, started = 0, time.perf_counter()
    while step < steps:
        rng.shuffle(pairs)
        for start in range(0, len(pairs) - BATCH + 1, BATCH):
            if step >= steps:
                break
            synonyms, titles = zip(*pairs[start : start + BATCH], strict=True)
            a = torch.nn.functional.normalize(model(model.preprocess(list(synonyms)))["sentence_embedding"], dim=-1)
            b = torch.nn.functional.normalize(model(model.preprocess(list(titles)))["sentence_embedding"], dim=-1)
            logits = a @ b.T * SCALE
            same = torch.tensor([[x == y for y in titles] for x in titles]) & ~torch.eye(len(titles), dtype=torch.bool)
            logits = logits.masked_fill(same, -1e4)
            labels = torch.arange(len(titles))
            loss = (
                torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)
            ) / 2
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 20 == 0 or step == steps:
                elapsed = time.perf_counter() - started
                print(f"  step {step}/{steps}, loss {loss.item():.3f}, {elapsed:.0f} s", file=sys.stderr)
    model.eval()
    model.save(str(args.out))
    print(f"saved {args.out} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
