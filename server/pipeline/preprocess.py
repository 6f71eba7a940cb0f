"""Image clean-up before OCR, applied only where a measurement of the page says it helps.

- Orientation: a fax fed sideways or a page scanned upside down is turned upright first.
  Text lines make the ink profile across lines spiky and along them smooth, which tells sideways
  from upright; Latin text has more ink above its x-height band (capitals, ascenders) than
  below it (descenders), which tells upright from upside down. The line profile is taken at
  the best of a few small angles and the ascender balance in narrow vertical strips, so a few
  degrees of skew do not blur the line bands. Below a clear margin nothing is turned. On 74
  generated pages (clean and skewed scans, all four orientations: 296 cases) every page came
  out upright (tests/unit/test_orientation.py checks a sample).
- Impulse (salt-and-pepper) noise, as on faxes and dusty scans, makes the PP-OCR detector miss
  short words such as lab values. A 3x3 median filter removes it, but softens clean pages, so
  it runs only when more than ``IMPULSE_NOISE_THRESHOLD`` of the pixels are isolated specks
  (on the generated noisy lab reports it restored every missed value; see bench/pipeline.py).
"""

from __future__ import annotations

from typing import Final, NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageFilter

IMPULSE_NOISE_THRESHOLD: Final = 0.0005  # fraction of pixels that are isolated dark specks
UNEVEN_LIGHTING: Final = 0.2  # paper brightness varying more than this over the page: flatten it
_BACKGROUND_SIDE: Final = 400  # pixels: the reduced page the paper's brightness is estimated on
_TEXT_GAP: Final = 9  # pixels on that reduced page: wider than a text stroke there
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


_ORIENTATION_SIDE: Final = 1600  # pixels: enough for line bands, cheap to measure
_ORIENTATION_STRIPS: Final = 12
_ORIENTATION_MARGIN: Final = 0.03  # |asymmetry| below this: do not turn the page
_SIDEWAYS_RATIO: Final = 1.05  # upright pages of the generated corpus score at least 1.19x sideways
_SKEW_ANGLES: Final = (-3.0, -1.5, 0.0, 1.5, 3.0)
# |asymmetry| below this: upright or upside down is checked by reading (server/pipeline/scan.py). Typed
# pages score well above it; a filled-in form (answer lines, block capitals, boxes) may not.
_SURE_MARGIN: Final = 0.25


def _line_spikiness(ink: np.ndarray) -> float:
    """How spiky the ink profile down the page is: text lines running across make it spiky.

    Taken at the best of a few small angles (projection-profile skew search): on a page scanned
    a degree or two askew, the profile at 0° smears the lines of a full page into each other.
    """
    image = Image.fromarray(ink.astype(np.uint8) * 255)
    best = 0.0
    for angle in _SKEW_ANGLES:
        rows = (np.asarray(image.rotate(angle)) > 127).sum(axis=1).astype(float)
        best = max(best, float(rows.std() / (rows.mean() + 1e-9)))
    return best


def _ascender_asymmetry(ink: np.ndarray) -> float:
    """(ink above the x-height bands - ink below) / both, over text lines in vertical strips."""
    above = below = 0.0
    width = ink.shape[1]
    for strip in range(_ORIENTATION_STRIPS):
        rows = ink[:, strip * width // _ORIENTATION_STRIPS : (strip + 1) * width // _ORIENTATION_STRIPS]
        profile = rows.sum(axis=1).astype(float)
        if profile.max() == 0:
            continue
        inked = profile > profile.max() * 0.08
        start = None
        for index, on in enumerate([*inked, False]):
            if on and start is None:
                start = index
            elif not on and start is not None:
                band = profile[start:index]
                if index - start >= 5:
                    core = np.flatnonzero(band > band.max() * 0.5)
                    above += band[: core[0]].sum()
                    below += band[core[-1] + 1 :].sum()
                start = None
    return (above - below) / (above + below + 1e-9)


class Orientation(NamedTuple):
    angle: int  # degrees counter-clockwise (0/90/180/270) to turn the page by to make its text upright
    sure: bool  # False: the ascender balance was close, and upright versus upside down is a guess


def detect_orientation(image: Image.Image) -> Orientation:
    grey = image.convert("L")
    grey.thumbnail((_ORIENTATION_SIDE, _ORIENTATION_SIDE))
    ink = np.asarray(grey) < _DARK
    if not ink.any():
        return Orientation(0, True)
    if _line_spikiness(np.rot90(ink, 1)) > _line_spikiness(ink) * _SIDEWAYS_RATIO:  # lines run top to bottom
        asymmetry = _ascender_asymmetry(np.rot90(ink, 1))
        return Orientation(90 if asymmetry >= 0 else 270, abs(asymmetry) >= _SURE_MARGIN)
    asymmetry = _ascender_asymmetry(ink)
    return Orientation(180 if asymmetry < -_ORIENTATION_MARGIN else 0, abs(asymmetry) >= _SURE_MARGIN)


def illumination(grey: np.ndarray) -> np.ndarray:
    """The paper's brightness under the page: text taken out by a max filter on a reduced page, then
    smoothed, and brought back to full size."""
    height, width = grey.shape
    scale = _BACKGROUND_SIDE / max(height, width)
    small = cv2.resize(
        grey, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    paper = cv2.dilate(small, np.ones((_TEXT_GAP, _TEXT_GAP), np.uint8))  # the brightest nearby: paper, not ink
    paper = cv2.GaussianBlur(paper, (0, 0), _TEXT_GAP)
    return cv2.resize(paper, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def uneven_lighting(paper: np.ndarray) -> float:
    """How much the paper's brightness varies over the page: (bright - dark) / bright, 5th/95th percentile."""
    bright = float(np.percentile(paper, 95))
    return (bright - float(np.percentile(paper, 5))) / max(bright, 1.0)


def flatten_lighting(image: Image.Image) -> Image.Image:
    """A phone photo's shading and shadows divided out, leaving white paper; only on a page whose
    paper is unevenly lit (more than ``UNEVEN_LIGHTING``), since it slightly softens a clean scan."""
    grey = np.asarray(image.convert("L"))
    paper = illumination(grey)
    if uneven_lighting(paper) <= UNEVEN_LIGHTING:
        return image
    flat = np.clip(grey.astype(np.float32) / np.maximum(paper, 1.0) * 255.0, 0, 255).astype(np.uint8)
    return Image.fromarray(flat).convert("RGB")


def denoise(image: Image.Image) -> Image.Image:
    """A median filter, only on a page with impulse noise."""
    grey = image.convert("L")
    if impulse_noise_fraction(grey) > IMPULSE_NOISE_THRESHOLD:
        return grey.filter(ImageFilter.MedianFilter(3)).convert("RGB")
    return image
