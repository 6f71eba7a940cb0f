"""Image clean-up before OCR, applied only where a measurement of the page says it helps.

- Impulse (salt-and-pepper) noise, as on faxes and dusty scans, makes the PP-OCR detector miss
  short words such as lab values. A 3x3 median filter removes it, but softens clean pages, so
  it runs only when more than ``IMPULSE_NOISE_THRESHOLD`` of the pixels are isolated specks
  (on the generated noisy lab reports it restored every missed value; see bench/pipeline.py).
"""

from __future__ import annotations

from typing import Final

import numpy as np
from PIL import Image, ImageFilter

IMPULSE_NOISE_THRESHOLD: Final = 0.0005  # fraction of pixels that are isolated dark specks
_DARK: Final = 128


def impulse_noise_fraction(grey: Image.Image) -> float:
    """Fraction of pixels that are dark with no dark neighbour (text strokes never are)."""
    dark = np.asarray(grey) < _DARK
    padded = np.pad(dark, 1)
    height, width = dark.shape
    neighbours = sum(
        padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width].astype(np.uint8)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if dy or dx
    )
    return float((dark & (neighbours == 0)).mean())


def prepare_for_ocr(image: Image.Image) -> Image.Image:
    grey = image.convert("L")
    if impulse_noise_fraction(grey) > IMPULSE_NOISE_THRESHOLD:
        return grey.filter(ImageFilter.MedianFilter(3)).convert("RGB")
    return image
