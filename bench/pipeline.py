"""End-to-end pipeline throughput on a generated corpus, with Tesseract measured in the same run.

    .venv/bin/python bench/pipeline.py [--documents 20]

Prints pages/minute for scanned documents (rasterize + OCR + extract + map) and for
born-digital PDFs (text layer, no OCR), the share of time per stage, peak RSS, and, as the
peer, Tesseract 5 OCR alone (``tesseract page.png stdout``) on the same scanned pages.
Every document comes from tests/fixtures/generate.py, so the numbers are reproducible.
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_profiles import BundleContext
from server.config import load_settings
from server.pipeline import software_name
from server.services import build_pipeline
from tests.fixtures.generate import KINDS, RenderedDocument, ScanEffects, render_document

SCAN = ScanEffects(dpi=200, noise=0.004, blur=0.5, rotation=1.0)


def context() -> BundleContext:
    return BundleContext(
        bundle_id=str(uuid.uuid4()),
        id_seed=str(uuid.uuid4()),
        document_reference_id="bench",
        fhir_base_url="http://127.0.0.1:8080/fhir",
        recorded="2026-11-23T00:00:00Z",
        software=software_name(),
    )


def run_corpus(documents: list[RenderedDocument], scanned: bool) -> tuple[int, float, dict[str, float]]:
    pipeline = build_pipeline(load_settings())
    pipeline.ocr_engine.ready()  # load models outside the timing, as a running server has them
    stages: dict[str, float] = {}
    pages = 0
    started = time.perf_counter()
    for document in documents:
        content = document.scanned_pdf if scanned else document.pdf
        result = pipeline.run(content, "application/pdf", context())
        pages += len(result.pages)
        for stage, seconds in result.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    return pages, time.perf_counter() - started, stages


def run_tesseract(documents: list[RenderedDocument]) -> tuple[int, float] | None:
    if shutil.which("tesseract") is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index, document in enumerate(documents):
            for number, png in enumerate(document.png_pages):
                path = Path(folder) / f"{index}-{number}.png"
                path.write_bytes(png)
                paths.append(path)
        started = time.perf_counter()
        for path in paths:
            subprocess.run(["tesseract", str(path), "stdout"], capture_output=True, check=True)
        return len(paths), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20, help="documents per corpus (4 kinds, ~1.1 pages each)")
    args = parser.parse_args()

    documents = [render_document(KINDS[i % len(KINDS)], 100 + i, SCAN) for i in range(args.documents)]
    scanned_pages, scanned_seconds, stages = run_corpus(documents, scanned=True)
    digital_pages, digital_seconds, _ = run_corpus(documents, scanned=False)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tesseract = run_tesseract(documents)

    ours = scanned_pages / scanned_seconds * 60
    rows = [
        ("scanned PDF, full pipeline (paperchart)", scanned_pages, ours),
        ("born-digital PDF, full pipeline (paperchart)", digital_pages, digital_pages / digital_seconds * 60),
    ]
    out = io.StringIO()
    out.write(f"{'corpus':<48} {'pages':>6} {'pages/min':>10}\n")
    for name, pages, rate in rows:
        out.write(f"{name:<48} {pages:>6} {rate:>10.1f}\n")
    if tesseract:
        peer = tesseract[0] / tesseract[1] * 60
        out.write(f"{'scanned pages, Tesseract 5 OCR only (peer)':<48} {tesseract[0]:>6} {peer:>10.1f}\n")
        out.write(f"{'ratio paperchart full pipeline / Tesseract OCR':<48} {'':>6} {ours / peer:>10.2f}\n")
    else:
        out.write("Tesseract not installed (scripts/bootstrap-debian.sh): no peer figure\n")
    total = sum(stages.values()) or 1.0
    out.write("\ntime share per stage, scanned corpus: ")
    out.write(", ".join(f"{stage} {seconds / total:.0%}" for stage, seconds in stages.items()))
    out.write(f"\npeak RSS: {peak_rss_mb:.0f} MB\n")
    print(out.getvalue())


if __name__ == "__main__":
    main()
