"""OCR accuracy and speed on generated pages with exact ground truth, Tesseract 5 in the same run.

    .venv/bin/python bench/ocr.py [--documents 24]

Each generated document (tests/fixtures/generate.py) is a born-digital PDF, whose text layer is
the ground truth of every page, and scanned copies of it at 200 dpi in three conditions:
``clean``; ``scan`` (speckle noise, blur, 1.5° skew); ``fax sideways`` (the scan fed turned 90°,
with more noise); ``phone photo`` (light falling off from a corner and a hand's soft shadow,
blur, 2° skew). On the phone photos the pages are also read without the lighting flattening, to
show what that step is worth. Our engine (PP-OCR on ONNX Runtime, after our orientation and noise
pre-processing, as the pipeline runs it) and Tesseract 5 (``tesseract page.png stdout``, its
own defaults, which include page-orientation handling only with ``--psm 0/1``; we give it the
default ``--psm 3``) read the same PNG pages. Tesseract's error rates are on its own reading
order (its TSV lines); for tables its words go through the same line composition and table
finder as ours. Reported per document class and overall: character and word error rate (jiwer,
whitespace-normalized), table-cell accuracy on the lab reports (the cells our table finder gets
from each engine's words, against the cells it gets from the PDF's text layer), pages/minute and
peak RSS (ours: this whole process; Tesseract: its largest run).

Every fifth document is an intake form filled in by hand (handwriting fonts from Debian, answers
a little askew, boxes ticked with crosses, ticks and scribbled fills). For those: checkbox
accuracy (a box found, its label read, its state right; Tesseract has no checkbox detection, so
its figure is our detector on the same image with Tesseract's words for the labels), the share of
handwritten answers read exactly (case and spacing aside), and of the answers misread, the share
with a word under the 0.75 confidence threshold, i.e. flagged for review rather than passed on.
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
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
from PIL import Image

from server.config import load_settings
from server.pipeline.checkboxes import find_checkboxes
from server.pipeline.inspect import Limits
from server.pipeline.ocr import create_ocr_engine
from server.pipeline.page import OcrPage, Word, compose_page
from server.pipeline.rasterize import iter_pages
from server.pipeline.scan import read_scanned_page
from server.pipeline.tables import find_tables
from tests.fixtures.generate import FORM_KINDS, KINDS, CheckboxTruth, ScanEffects, render_document

CORPUS_KINDS = (*KINDS, *FORM_KINDS)
THRESHOLD = 0.75  # the default PAPERCHART_OCR_CONFIDENCE_THRESHOLD

CONDITIONS = {
    "clean": (ScanEffects(dpi=200), 0),
    "scan": (ScanEffects(dpi=200, noise=0.006, blur=0.6, rotation=1.5), 0),
    "fax sideways": (ScanEffects(dpi=200, noise=0.01, blur=0.5, rotation=-1.0), 90),
    "phone photo": (ScanEffects(dpi=200, noise=0.002, blur=0.8, rotation=2.0, shadow=0.6), 0),
}


def normalized(text: str) -> str:
    return " ".join(text.split())


def reference_pages(pdf: bytes) -> list[OcrPage]:
    limits = Limits(max_bytes=1 << 30, max_pages=100, max_page_pixels=60_000_000, dpi=200)
    return [p for p in iter_pages(pdf, "application/pdf", limits) if isinstance(p, OcrPage)]


def tesseract(path: Path, width: float, height: float) -> tuple[str, OcrPage, float]:
    """Tesseract's text in its own reading order, its words composed into a page by our code
    (for the table finder), and its peak RSS in MB.

    The peak is read from /proc (VmHWM) while it runs: a forked child's rusage would count the
    pages it shared with this process before exec.
    """
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(["tesseract", str(path), "stdout", "tsv"], stdout=out, stderr=subprocess.DEVNULL)
        peak = 0.0
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
                if fields.get("Name", "").strip() == "tesseract":  # exec'd: not this process's fork any more
                    peak = max(peak, int(fields.get("VmHWM", "0 kB").split()[0]) / 1024)
            except (OSError, ValueError):
                pass
            time.sleep(0.005)
        if process.returncode != 0:
            raise RuntimeError(f"tesseract exited with {process.returncode}")
        out.seek(0)
        words = []
        lines: dict[tuple[str, str, str], list[str]] = {}
        for row in out.read().decode("utf-8", "replace").splitlines()[1:]:
            fields = row.split("\t")
            if len(fields) == 12 and fields[0] == "5" and fields[11].strip():
                lines.setdefault((fields[2], fields[3], fields[4]), []).append(fields[11])
                left, top, w, h = (float(v) for v in fields[6:10])
                words.append(
                    Word(text=fields[11], bbox=(left, top, left + w, top + h), confidence=float(fields[10]) / 100)
                )
        native = normalized(" ".join(" ".join(line) for line in lines.values()))
        return native, compose_page(1, width, height, "ocr", words), peak


def table_cells(page: OcrPage) -> list[list[str]]:
    """The cells of the page's tables, header first, as text ("" for an empty cell)."""
    rows: list[list[str]] = []
    for table in find_tables(page):
        rows.append(list(table.header))
        rows.extend([normalized(c.text) if c else "" for c in row] for row in table.rows)
    return rows


def cells_right(reference: list[list[str]], read: list[list[str]]) -> tuple[int, int]:
    """(cells read exactly right, cells in the reference), row by row and column by column."""
    right = sum(
        1
        for index, row in enumerate(reference)
        for column, cell in enumerate(row)
        if index < len(read) and column < len(read[index]) and read[index][column] == cell
    )
    return right, sum(len(row) for row in reference)


@contextmanager
def _lighting_left_alone() -> Iterator[None]:
    from server.pipeline import scan

    flatten = scan.flatten_lighting
    scan.flatten_lighting = lambda image: image
    try:
        yield
    finally:
        scan.flatten_lighting = flatten


def boxes_right(truth: list[CheckboxTruth], page: OcrPage) -> int:
    """Boxes found with their label read (spacing and case aside) and their state right."""
    found = {"".join((b.label or "").split()).lower(): b.checked for b in page.checkboxes}
    return sum(1 for box in truth if found.get("".join(box.label.split()).lower()) == box.checked)


def answers_read(written: list[str], page: OcrPage) -> tuple[int, int, int]:
    """(answers read exactly, answers misread, misread ones with a word under the threshold).

    Each answer is matched to the page line (or the part of it after its label) nearest to it."""
    import jiwer

    exact = misread = flagged = 0
    lines = [(page.text.split("\n")[i], line) for i, line in enumerate(page.lines)]
    for answer in written:
        want = normalized(answer).lower()
        best, best_cer, best_words = "", 2.0, ()
        for text, words in lines:
            for candidate in (text, text.split(":", 1)[-1]):
                got = normalized(candidate).lower()
                error = jiwer.cer(want, got) if got else 1.0
                if error < best_cer:
                    best, best_cer, best_words = got, error, words
        if best == want:
            exact += 1
        else:
            misread += 1
            flagged += any(page.words[i].confidence < THRESHOLD for i in best_words)
    return exact, misread, flagged


def main() -> None:
    import jiwer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=24, help="documents per condition (cycling the kinds)")
    args = parser.parse_args()
    have_tesseract = shutil.which("tesseract") is not None
    engine = create_ocr_engine(load_settings())
    engine.ready()

    # (engine, class) -> references, hypotheses; engine -> seconds, pages
    texts: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    seconds: dict[str, float] = defaultdict(float)
    pages_read: dict[str, int] = defaultdict(int)
    peer_rss = 0.0
    cells: dict[str, list[int]] = {"paperchart": [0, 0], "tesseract": [0, 0]}
    checkboxes: dict[str, list[int]] = {"paperchart": [0, 0], "tesseract": [0, 0]}
    handwriting: dict[str, list[int]] = {"paperchart": [0, 0, 0], "tesseract": [0, 0, 0]}
    with tempfile.TemporaryDirectory() as folder:
        for condition, (effects, turn) in CONDITIONS.items():
            for index in range(args.documents):
                kind = CORPUS_KINDS[index % len(CORPUS_KINDS)]
                document = render_document(kind, 500 + index, effects)
                references = reference_pages(document.pdf)
                for number, (png, truth_page) in enumerate(zip(document.png_pages, references, strict=True), 1):
                    reference = normalized(truth_page.text)
                    image = Image.open(io.BytesIO(png)).convert("RGB")
                    if turn:
                        image = image.rotate(turn, expand=True, fillcolor="white")
                    path = Path(folder) / f"{kind}-{index}-{number}.png"
                    image.save(path)
                    classes = (f"{kind.replace('_', ' ')}", condition, "all")
                    truth_cells = table_cells(truth_page) if kind == "lab_report" else []
                    started = time.perf_counter()
                    _, page = read_scanned_page(engine, image, number)
                    seconds["paperchart"] += time.perf_counter() - started
                    pages_read["paperchart"] += 1
                    truth = document.truth
                    checkboxes["paperchart"][0] += boxes_right(truth.checkboxes, page)
                    checkboxes["paperchart"][1] += len(truth.checkboxes)
                    for slot, count in enumerate(answers_read(truth.handwritten, page)):
                        handwriting["paperchart"][slot] += count
                    right, total = cells_right(truth_cells, table_cells(page))
                    cells["paperchart"][0] += right
                    cells["paperchart"][1] += total
                    for name in classes:
                        texts[("paperchart", name)][0].append(reference)
                        texts[("paperchart", name)][1].append(normalized(page.text))
                    if condition == "phone photo":  # the ablation: the same page, lighting left as it is
                        with _lighting_left_alone():
                            _, unflattened = read_scanned_page(engine, image, number)
                        texts[("paperchart", "unflattened")][0].append(reference)
                        texts[("paperchart", "unflattened")][1].append(normalized(unflattened.text))
                    if have_tesseract:
                        started = time.perf_counter()
                        native, theirs, rss = tesseract(path, float(image.width), float(image.height))
                        seconds["tesseract"] += time.perf_counter() - started
                        pages_read["tesseract"] += 1
                        peer_rss = max(peer_rss, rss)
                        right, total = cells_right(truth_cells, table_cells(theirs))
                        cells["tesseract"][0] += right
                        cells["tesseract"][1] += total
                        if truth.checkboxes:
                            theirs = msgspec.structs.replace(theirs, checkboxes=find_checkboxes(image, theirs))
                            checkboxes["tesseract"][0] += boxes_right(truth.checkboxes, theirs)
                            checkboxes["tesseract"][1] += len(truth.checkboxes)
                        for slot, count in enumerate(answers_read(truth.handwritten, theirs)):
                            handwriting["tesseract"][slot] += count
                        for name in classes:
                            texts[("tesseract", name)][0].append(reference)
                            texts[("tesseract", name)][1].append(native)

    ablation = texts.pop(("paperchart", "unflattened"), None)
    classes = sorted({name for _, name in texts}, key=lambda n: (n == "all", n in CONDITIONS, n))
    print(f"{pages_read['paperchart']} pages ({args.documents} documents x {len(CONDITIONS)} conditions)")
    print(f"{'class':<20} {'CER ours':>9} {'CER tess':>9} {'ratio':>6} {'WER ours':>9} {'WER tess':>9} {'ratio':>6}")
    for name in classes:
        reference, ours = texts[("paperchart", name)]
        cer, wer = jiwer.cer(reference, ours), jiwer.wer(reference, ours)
        if have_tesseract:
            reference, theirs = texts[("tesseract", name)]
            peer_cer, peer_wer = jiwer.cer(reference, theirs), jiwer.wer(reference, theirs)
            print(
                f"{name:<20} {cer:>9.2%} {peer_cer:>9.2%} {cer / peer_cer if peer_cer else 0:>6.2f}"
                f" {wer:>9.2%} {peer_wer:>9.2%} {wer / peer_wer if peer_wer else 0:>6.2f}"
            )
        else:
            print(f"{name:<20} {cer:>9.2%} {'-':>9} {'-':>6} {wer:>9.2%} {'-':>9} {'-':>6}")
    if ablation is not None:
        flattened = texts[("paperchart", "phone photo")]
        print(
            f"phone photos, CER with lighting flattened {jiwer.cer(*flattened):.2%}, "
            f"left as photographed {jiwer.cer(*ablation):.2%}"
        )
    ours_cells = cells["paperchart"][0] / max(cells["paperchart"][1], 1)
    line = f"\nlab table cells read right: paperchart {ours_cells:.1%} of {cells['paperchart'][1]}"
    if have_tesseract:
        line += f", Tesseract {cells['tesseract'][0] / max(cells['tesseract'][1], 1):.1%}"
    print(line)
    for engine_name in ("paperchart", "tesseract") if have_tesseract else ("paperchart",):
        right, total = checkboxes[engine_name]
        exact, misread, flagged = handwriting[engine_name]
        print(
            f"intake forms, {engine_name}: checkboxes right {right / max(total, 1):.1%} of {total}; handwritten "
            f"answers read exactly {exact / max(exact + misread, 1):.1%} of {exact + misread}; misread ones "
            f"flagged (a word under {THRESHOLD}) {flagged / max(misread, 1):.1%} of {misread}"
        )
    ours_rate = pages_read["paperchart"] / seconds["paperchart"] * 60
    line = f"pages/minute: paperchart {ours_rate:.1f}"
    if have_tesseract:
        peer_rate = pages_read["tesseract"] / seconds["tesseract"] * 60
        line += f", Tesseract {peer_rate:.1f} (ratio {ours_rate / peer_rate:.2f})"
    print(line)
    ours_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: paperchart {ours_rss:.0f} MB (whole process), Tesseract {peer_rss:.0f} MB")


if __name__ == "__main__":
    main()
