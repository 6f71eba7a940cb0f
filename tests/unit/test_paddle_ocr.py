"""The GPU engine (PaddleOCR 3): its results become the same page model as the CPU engine's.

PaddleOCR and a CUDA GPU are not on the CI machines: the conversion is tested on results shaped
as PaddleOCR 3 returns them, and the ``gpu``-marked test reads a generated page for real where
``pip install '.[gpu]'`` was run on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import io

import pytest
from PIL import Image

from server.config import load_settings
from server.pipeline.ocr import create_ocr_engine
from server.pipeline.ocr.paddle import PaddleOcrEngine, words_from_result
from server.pipeline.page import compose_page


def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def test_word_boxes_from_character_tokens_and_from_word_tokens() -> None:
    result = {
        "rec_texts": ["BP 120/80", "Metformin 500 mg"],
        "rec_scores": [0.98, 0.91],
        "rec_polys": [_square(10, 10, 100, 30), _square(10, 40, 200, 60)],
        # line 1: characters and a space; line 2: words as lists of characters
        "text_word": [["B", "P", " ", "1", "2", "0", "/", "8", "0"], [list("Metformin"), list("500"), list("mg")]],
        "text_word_region": [
            [_square(10 + 10 * i, 10, 18 + 10 * i, 30) for i in range(9)],
            [_square(10, 40, 110, 60), _square(120, 40, 150, 60), _square(160, 40, 200, 60)],
        ],
    }
    words = list(words_from_result(result))
    assert [(w.text, w.confidence) for w in words] == [
        ("BP", 0.98),
        ("120/80", 0.98),
        ("Metformin", 0.91),
        ("500", 0.91),
        ("mg", 0.91),
    ]
    assert words[1].bbox == (40.0, 10.0, 98.0, 30.0)
    assert compose_page(1, 300, 100, "ocr", words).text == "BP 120/80\nMetformin 500 mg"


def test_without_word_boxes_a_line_box_is_shared_by_character_count() -> None:
    result = {"rec_texts": ["Na 140"], "rec_scores": [0.9], "dt_polys": [_square(0, 0, 60, 20)]}
    assert [(w.text, w.bbox) for w in words_from_result(result)] == [
        ("Na", (0.0, 0.0, 20.0, 20.0)),
        ("140", (30.0, 0.0, 60.0, 20.0)),
    ]


def test_the_engine_is_chosen_by_setting_and_says_what_it_needs() -> None:
    engine = create_ocr_engine(load_settings({"PAPERCHART_OCR_ENGINE": "paddleocr"}))
    assert isinstance(engine, PaddleOcrEngine) and engine.name == "paddleocr-ppocr"
    if importlib.util.find_spec("paddleocr") is None:
        assert engine.ready() is False  # logged: pip install '.[gpu]' on a CUDA machine


def _cuda_available() -> bool:
    if importlib.util.find_spec("paddleocr") is None or importlib.util.find_spec("paddle") is None:
        return False
    import paddle  # type: ignore[import-not-found]

    return bool(paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0)


@pytest.mark.gpu
@pytest.mark.slow
def test_a_generated_page_read_on_the_gpu() -> None:
    if not _cuda_available():
        pytest.skip("needs PaddleOCR with a CUDA GPU (pip install '.[gpu]')")
    import jiwer

    from server.pipeline.scan import read_scanned_page
    from tests.conftest import rendered
    from tests.fixtures.generate import ScanEffects
    from tests.integration.test_llm_extractor import pages_of

    document = rendered("lab_report", seed=3, effects=ScanEffects(dpi=200, noise=0.004, blur=0.5, rotation=1.0))
    engine = PaddleOcrEngine()
    image = Image.open(io.BytesIO(document.png_pages[0])).convert("RGB")
    _, page = read_scanned_page(engine, image, 1)
    reference = " ".join(pages_of(document.pdf)[0].text.split())
    assert jiwer.cer(reference, " ".join(page.text.split())) < 0.05
