"""Page composition: words grouped into lines on skewed scans, spans mapping text to boxes."""

from __future__ import annotations

import pytest

from server.pipeline.page import Word, compose_page


def test_words_on_a_skewed_page_stay_on_their_lines() -> None:
    # two table rows on a page rotated ~1.7 degrees: the right end of row 1 sits level with
    # the left end of row 2 in raw y, so sorting by y alone would interleave them
    slope = -0.03
    rows = [["Sodium", "139", "mmol/L"], ["Potassium", "4.5", "mmol/L"]]
    words = []
    for row_index, row in enumerate(rows):
        for column, text in enumerate(row):
            x0 = 100 + 400 * column
            y0 = 500 + 30 * row_index + slope * x0
            words.append(Word(text=text, bbox=(x0, y0, x0 + 80, y0 + 25), slope=slope))
    page = compose_page(1, 1200, 1600, "ocr", words)
    assert page.text.split("\n") == ["Sodium  139  mmol/L", "Potassium  4.5  mmol/L"]


def test_evidence_maps_a_text_span_to_normalized_boxes() -> None:
    words = [
        Word(text="BP", bbox=(100, 200, 140, 220), confidence=0.9),
        Word(text="120/80", bbox=(150, 200, 250, 220), confidence=0.6),
    ]
    page = compose_page(2, 1000, 2000, "ocr", words)
    start = page.text.index("120/80")
    evidence = page.evidence(start, start + 6)
    assert evidence.page == 2 and evidence.text == "120/80"
    assert len(evidence.boxes) == 1
    box = evidence.boxes[0]
    assert (box.x0, box.y0, box.x1, box.y1) == (0.15, 0.1, 0.25, 0.11)
    assert evidence.ocr_confidence == 0.6


def test_a_words_confidence_comes_from_its_own_characters() -> None:
    from server.pipeline.ocr.rapid import word_confidences

    line = "Omeprazole WOmy daily"
    chars = [0.99] * 10 + [1.0] + [0.4, 0.9, 0.5, 0.6] + [1.0] + [0.98] * 5
    assert word_confidences(line, ["Omeprazole", "WOmy", "daily"], chars) == pytest.approx([0.99, 0.6, 0.98])
    assert word_confidences(line, ["Omeprazole", "WOmy", "daily"], chars, "min")[1] == pytest.approx(0.4)


def test_a_few_stray_slopes_do_not_tilt_a_level_page() -> None:
    # a level lab table where OCR measured a slope on one short line only: with the level lines
    # left out of the estimate, "Urea" was put on the row of the next test's value
    rows = [("Creatinine", "98", "60-110"), ("Urea", "4.4", "2.5-7.8"), ("Haemoglobin", "149", "130-180")]
    words = []
    for index, (test, value, reference) in enumerate(rows):
        y = 664 + 45 * index
        words.append(Word(text=test, bbox=(158, y, 280, y + 40), slope=0.0324 if test == "Urea" else 0.0))
        words.append(Word(text=value, bbox=(803, y, 844, y + 40)))
        words.append(Word(text=reference, bbox=(1300, y, 1420, y + 40)))
    page = compose_page(1, 1654, 2339, "ocr", words)
    assert page.text.split("\n") == ["Creatinine  98  60-110", "Urea  4.4  2.5-7.8", "Haemoglobin  149  130-180"]
