"""Embedding throughput on a GPU, with the CPU measured in the same run as the peer, and whether the
two give the same vectors (an index embedded on one must serve lookups on the other).

    .venv/bin/python bench/embedding.py [--device cuda] [--texts 20000] [--batch-size 256] [--model DIR]

The texts are what an index build embeds: ICD-10-CM titles and inclusion terms, in code order. Each
device embeds them once to warm up (model load, CUDA start) on the first batch, then all of them,
timed. Reported per device: texts/second, the seconds the built-in index's ~88,600 ICD-10-CM
designations would take at that rate, the ratio to the CPU, and the lowest and mean cosine between
its vectors and the CPU's. ``--model`` embeds with a local sentence-transformers folder instead of
the built-in all-MiniLM-L6-v2 (as ``PAPERCHART_EMBEDDING_MODEL`` does).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from terminology.embed import MiniLmEmbedder, SentenceTransformerEmbedder
from terminology.importers.icd10cm import is_term

BUILTIN_DESIGNATIONS = 88_647  # ICD-10-CM designations of the built-in index (bench/terminology.py)


def index_texts(count: int) -> list[str]:
    """The first ``count`` ICD-10-CM titles and inclusion terms, in code order."""
    import simple_icd_10_cm as icd

    texts: list[str] = []
    for code in icd.get_all_codes(with_dots=True):
        if icd.is_leaf(code):
            texts.append(icd.get_description(code))
            texts.extend(t for t in icd.get_inclusion_term(code) if is_term(t))
        if len(texts) >= count:
            break
    return texts[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device to measure against the CPU (cuda, cuda:N)")
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", type=Path, help="a sentence-transformers model folder (default: built-in MiniLM)")
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    args = parser.parse_args()

    import torch

    texts = index_texts(args.texts)
    devices = ["cpu"] if args.device == "cpu" else ["cpu", args.device]
    vectors: dict[str, np.ndarray] = {}
    rates: dict[str, float] = {}
    for device in devices:
        if args.model is None:
            embedder: MiniLmEmbedder | SentenceTransformerEmbedder = MiniLmEmbedder(
                args.cache / "models", batch_size=args.batch_size, device=device
            )
        else:
            embedder = SentenceTransformerEmbedder(args.model, batch_size=args.batch_size, device=device)
        embedder.embed(texts[: args.batch_size])  # warm up: load the model, start CUDA
        started = time.perf_counter()
        vectors[device] = embedder.embed(texts)
        rates[device] = len(texts) / (time.perf_counter() - started)

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    print(
        f"{len(texts)} ICD-10-CM designations, batch {args.batch_size}; "
        f"CPU: {torch.get_num_threads()} torch threads; GPU: {name}"
    )
    print(f"{'device':<10} {'texts/s':>9} {'s per index':>12} {'vs CPU':>7} {'min cosine':>11} {'mean cosine':>12}")
    for device in devices:
        cosines = np.sum(vectors[device] * vectors["cpu"], axis=1)
        print(
            f"{device:<10} {rates[device]:>9.0f} {BUILTIN_DESIGNATIONS / rates[device]:>12.1f} "
            f"{rates[device] / rates['cpu']:>6.1f}x {cosines.min():>11.6f} {cosines.mean():>12.6f}"
        )


if __name__ == "__main__":
    main()
