"""Checkboxes: found in the pixels, ticked or not, labelled by the words to their right."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from server.pipeline.checkboxes import find_checkboxes, with_checkboxes
from server.pipeline.extract.rules import RulesExtractor
from server.pipeline.page import OcrPage, Word, compose_page
from server.pipeline.scan import read_scanned_page
from server.pipeline.validate import with_review
from tests.conftest import rendered
from tests.fixtures.generate import ScanEffects

SIDE = 30  # pixels: an 11 pt box at 200 dpi
WORD_HEIGHT = 30


def drawn(
    marks: list[tuple[str, str]], question: tuple[str, ...] = ("Do", "you", "have", "any", "conditions?")
) -> tuple[Image.Image, OcrPage]:
    """A page with a question, then one box per row marked as asked, and the words OCR would give."""
    image = Image.new("L", (1000, 120 + 60 * len(marks)), 255)
    draw = ImageDraw.Draw(image)
    words = [Word(text=t, bbox=(40 + 120 * i, 40, 140 + 120 * i, 40 + WORD_HEIGHT)) for i, t in enumerate(question)]
    for row, (mark, label) in enumerate(marks):
        x, y = 60, 100 + 60 * row
        draw.rectangle((x, y, x + SIDE, y + SIDE), outline=0, width=3)
        if mark == "cross":
            draw.line((x + 4, y + 4, x + SIDE - 4, y + SIDE - 4), fill=0, width=5)
            draw.line((x + 4, y + SIDE - 4, x + SIDE - 4, y + 4), fill=0, width=5)
        elif mark == "tick":  # its long stroke runs out past the top right corner
            draw.line([(x + 5, y + 15), (x + 12, y + SIDE - 4), (x + SIDE + 8, y - 8)], fill=0, width=5)
        elif mark == "fill":
            draw.rectangle((x + 3, y + 3, x + SIDE - 3, y + SIDE - 3), fill=0)
        elif mark == "speck":
            draw.rectangle((x + 13, y + 13, x + 19, y + 18), fill=0)
        words.append(Word(text=label, bbox=(x + SIDE + 20, y, x + SIDE + 20 + 14 * len(label), y + WORD_HEIGHT)))
    return image, compose_page(1, float(image.width), float(image.height), "ocr", words)


def test_marks_of_every_kind_and_an_empty_box() -> None:
    image, page = drawn([("none", "Asthma"), ("cross", "Epilepsy"), ("tick", "Stroke"), ("fill", "Cancer")])
    boxes = find_checkboxes(image, page)
    assert [(b.label, b.checked) for b in boxes] == [
        ("Asthma", False),
        ("Epilepsy", True),
        ("Stroke", True),
        ("Cancer", True),
    ]
    stroke = next(b for b in boxes if b.label == "Stroke")
    assert stroke.bbox[2] - stroke.bbox[0] == pytest.approx(SIDE + 3, abs=3)  # the box, not the tick's reach
    assert all(b.start is not None and page.text[b.start : b.end] == b.label for b in boxes)


def test_letters_and_rules_are_not_boxes() -> None:
    image, page = drawn([])
    draw = ImageDraw.Draw(image)
    draw.line((40, 80, 900, 80), fill=0, width=3)  # an answer line
    draw.ellipse((500, 20, 530, 50), outline=0, width=3)  # an "O"
    draw.line((600, 20, 600, 50), fill=0, width=3)  # an "H"
    draw.line((625, 20, 625, 50), fill=0, width=3)
    draw.line((600, 35, 625, 35), fill=0, width=3)
    assert find_checkboxes(image, page) == ()


def test_a_ruled_cell_with_text_in_it_is_not_a_box() -> None:
    image, page = drawn([("none", "Asthma")])
    ImageDraw.Draw(image).rectangle((600, 95, 640, 135), outline=0, width=3)  # a table cell holding "12"
    words = [*page.words, Word(text="12", bbox=(606, 102, 634, 128))]
    page = compose_page(1, float(image.width), float(image.height), "ocr", words)
    assert [b.label for b in find_checkboxes(image, page)] == ["Asthma"]


def test_a_speck_in_a_box_is_unsure_and_goes_to_review() -> None:
    image, page = drawn([("speck", "Diabetes"), ("cross", "Asthma")])
    page = with_checkboxes(image, page)
    speck = next(b for b in page.checkboxes if b.label == "Diabetes")
    assert speck.confidence < 0.75  # too little ink to be sure either way
    extraction = with_review(RulesExtractor().extract([page]), confidence_threshold=0.75)
    assert "Asthma" in [d.text for d in extraction.diagnoses]
    assert "low-ocr-confidence" in [r.code for r in extraction.review_reasons]


def test_ticked_conditions_on_a_form_become_diagnoses_with_the_box_as_evidence() -> None:
    image, page = drawn([("none", "Asthma"), ("cross", "Epilepsy"), ("fill", "Cancer")])
    extraction = RulesExtractor().extract([with_checkboxes(image, page)])
    assert [(d.text, d.assertion) for d in extraction.diagnoses] == [("Epilepsy", "present"), ("Cancer", "present")]
    evidence = extraction.diagnoses[0].evidence
    assert evidence is not None and len(evidence.boxes) == 2  # the box and the label
    # an empty box says nothing: "Asthma" is neither present nor negated


def test_boxes_under_another_question_are_not_conditions() -> None:
    image, page = drawn([("cross", "Penicillin")], question=("Do", "you", "have", "any", "drug", "allergies?"))
    assert RulesExtractor().extract([with_checkboxes(image, page)]).diagnoses == ()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seed", "effects", "turned"),
    [
        (1, ScanEffects(dpi=200), 0),
        (7, ScanEffects(dpi=200, noise=0.006, blur=0.6, rotation=1.5), 0),  # block capitals: a close call
        (9, ScanEffects(dpi=200, noise=0.01, blur=0.5, rotation=-1.0), 90),  # faxed sideways
        (2, ScanEffects(dpi=200), 180),
    ],
)
def test_a_filled_in_form_read_from_a_scan(ocr_engine: object, seed: int, effects: ScanEffects, turned: int) -> None:
    document = rendered("intake_form", seed=seed, effects=effects)
    image = Image.open(io.BytesIO(document.png_pages[0])).convert("RGB").rotate(turned, expand=True, fillcolor="white")
    _, page = read_scanned_page(ocr_engine, image, 1)  # type: ignore[arg-type]
    assert page.text.startswith(document.truth.facility)  # upright
    found = {"".join((b.label or "").split()).lower(): b.checked for b in page.checkboxes}
    assert found == {"".join(c.label.split()).lower(): c.checked for c in document.truth.checkboxes}
    diagnoses = {d.text.replace(" ", "").lower() for d in RulesExtractor().extract([page]).diagnoses}
    assert diagnoses == {d.text.replace(" ", "").lower() for d in document.truth.diagnoses}


@pytest.mark.slow
def test_a_form_is_shown_the_way_up_it_was_read(ocr_engine: object, settings: object) -> None:
    from server.pipeline import Pipeline

    effects = ScanEffects(dpi=200, noise=0.006, blur=0.6, rotation=1.5)  # block capitals: the ink is unsure
    document = rendered("intake_form", seed=7, effects=effects)
    turned = Image.open(io.BytesIO(document.png_pages[0])).convert("RGB").rotate(180)
    png = io.BytesIO()
    turned.save(png, format="PNG")
    pipeline = Pipeline(settings, ocr_engine, RulesExtractor())  # type: ignore[arg-type]
    shown = pipeline.render_page(png.getvalue(), "image/png", 1)
    read, page = pipeline.page_with_words(png.getvalue(), "image/png", 1)
    assert page.text.startswith(document.truth.facility)
    assert shown.size == read.size
    top = ocr_engine.read(shown.crop((0, 0, shown.width, shown.height // 6)), 1).text  # type: ignore[attr-defined]
    assert document.truth.facility in top  # upright, as the words were read
