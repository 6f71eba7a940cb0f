"""Page orientation: sideways and upside-down scans are turned upright before OCR."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from server.pipeline.preprocess import detect_orientation
from server.pipeline.scan import read_scanned_page, upright_scan
from tests.conftest import rendered
from tests.fixtures.generate import ScanEffects

PAGES = [
    ("clinic_note", 11, None),
    ("lab_report", 3, ScanEffects(noise=0.01, blur=0.6, rotation=1.5)),
    ("medication_list", 4, ScanEffects(noise=0.004, blur=0.5, rotation=-2.5)),
    ("discharge_summary", 5, ScanEffects(noise=0.01, blur=0.6, rotation=1.5)),
    # a sparse table and a short list: their line profile is weak unless measured at the skew angle
    ("lab_report", 918, ScanEffects(dpi=200)),
    ("medication_list", 919, ScanEffects(dpi=200, noise=0.006, blur=0.6, rotation=1.5)),
]


@pytest.mark.parametrize(("kind", "seed", "effects"), PAGES)
@pytest.mark.parametrize("turned", [0, 90, 180, 270])
def test_every_orientation_is_put_right(kind: str, seed: int, effects: ScanEffects | None, turned: int) -> None:
    page = Image.open(io.BytesIO(rendered(kind, seed=seed, effects=effects).png_pages[0])).convert("RGB")
    scanned = page.rotate(turned, expand=True, fillcolor="white")
    assert detect_orientation(scanned).angle == (360 - turned) % 360
    assert upright_scan(scanned)[0].size == page.size


def test_a_blank_page_is_left_alone() -> None:
    assert detect_orientation(Image.new("RGB", (800, 1100), "white")).angle == 0


@pytest.mark.slow
def test_a_sideways_fax_is_read_correctly(ocr_engine: object) -> None:
    document = rendered("clinic_note", seed=12, effects=ScanEffects(noise=0.004, blur=0.5, rotation=1.0))
    page = Image.open(io.BytesIO(document.png_pages[0])).convert("RGB").rotate(90, expand=True, fillcolor="white")
    text = read_scanned_page(ocr_engine, page, 1)[1].text  # type: ignore[arg-type]
    lines = text.splitlines()
    assert "Clinic Letter" in lines[:3]  # read top to bottom
    assert document.truth.patient.name.replace(" ", "") in text.replace(" ", "")  # OCR may split a word


@pytest.mark.parametrize("turned", [0, 90, 180])
def test_a_phone_photo_in_shadow_is_evened_out_then_turned_upright(turned: int) -> None:
    import numpy as np

    from server.pipeline.preprocess import UNEVEN_LIGHTING, flatten_lighting, illumination, uneven_lighting

    effects = ScanEffects(dpi=150, noise=0.002, blur=0.6, rotation=1.5, shadow=0.6)
    photo = Image.open(io.BytesIO(rendered("clinic_note", seed=21, effects=effects).png_pages[0])).convert("RGB")
    photo = photo.rotate(turned, expand=True, fillcolor="white")
    grey = np.asarray(photo.convert("L"))
    assert uneven_lighting(illumination(grey)) > UNEVEN_LIGHTING
    flat = flatten_lighting(photo)
    flat_grey = np.asarray(flat.convert("L"))
    assert uneven_lighting(illumination(flat_grey)) < 0.1  # the paper is evenly white again
    assert detect_orientation(flat).angle == (360 - turned) % 360


def test_an_evenly_lit_scan_is_not_flattened() -> None:
    from server.pipeline.preprocess import flatten_lighting

    scan = Image.open(io.BytesIO(rendered("lab_report", seed=3).png_pages[0])).convert("RGB")
    assert flatten_lighting(scan) is scan
