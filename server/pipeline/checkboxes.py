"""Checkboxes on a scanned page: where they are, whether they are ticked, and what they are labelled.

Forms are answered with pen marks — crosses, ticks, scribbled fills — that OCR cannot read: it
sees no word in an empty box, and at best an "X" in a ticked one. So boxes are found in the
pixels, as closed square frames:

1. The page is binarized, and only straight strokes at least ``STROKE_FRACTION`` of a text line
   high survive a horizontal and a vertical morphological opening: frames and rules stay; a tick
   or a cross (diagonal), and most letters, go.
2. Each connected shape of those strokes that draws a square 0.5 to 2.5 text-line heights across,
   each of its four sides drawn over at least ``SIDE_COVERAGE`` of its length, is a box (an "H" or
   an underline is not closed; a round "O" does not cover its bounding sides). The square's sides
   are taken where each edge's strokes are, so a tick running past a corner, or a filled box, still
   gives the box itself.
3. A box is ticked when ink covers more than ``CHECKED_INK`` of its inside (an inset square, so
   the frame itself does not count). Between ``UNSURE_LOW`` and ``UNSURE_HIGH`` the mark is faint
   or a speck: the box gets a low confidence, and extraction flags it for review.
4. Its label is the run of words to its right on the same text line, up to a wide gap or the next
   box, with its character span in the page text, so a ticked condition has evidence like any
   other fact.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Final

import cv2
import msgspec
import numpy as np
from PIL import Image

from server.pipeline.page import Checkbox, OcrPage

STROKE_FRACTION: Final = 0.5  # of the median word height: shorter straight strokes are not frames
SIDE_COVERAGE: Final = 0.75
CHECKED_INK: Final = 0.08
UNSURE_LOW: Final = 0.03
UNSURE_HIGH: Final = 0.14
_INSET: Final = 0.2  # of the side: the inside measured for ink stays clear of the frame
_Box = tuple[float, float, float, float]


def _median_word_height(page: OcrPage) -> float | None:
    heights = [w.bbox[3] - w.bbox[1] for w in page.words if len(w.text) > 1]
    return statistics.median(heights) if heights else None


def _frame(frame: np.ndarray, x: int, y: int, w: int, h: int) -> tuple[int, int, int, int, float] | None:
    """The square a shape of straight strokes draws — its tight (x0, y0, x1, y1), and the least, over
    its four sides, of the fraction of the side drawn — or None. A pen stroke running past a corner
    widens the shape's bounding box, not the square: each side is taken where that edge's strokes are."""
    region = frame[y : y + h, x : x + w] > 0
    if w < 4 or h < 4:
        return None
    columns, rows = region.mean(axis=0), region.mean(axis=1)
    zone_w, zone_h = max(1, round(w * 0.35)), max(1, round(h * 0.35))
    # the outermost line in each edge zone drawn nearly as fully as that zone's fullest (a filled box
    # has full lines inside too; a pen stroke past the corner is not nearly full)
    left = int(np.flatnonzero(columns[:zone_w] >= 0.9 * columns[:zone_w].max())[0])
    right = w - zone_w + int(np.flatnonzero(columns[w - zone_w :] >= 0.9 * columns[w - zone_w :].max())[-1])
    top = int(np.flatnonzero(rows[:zone_h] >= 0.9 * rows[:zone_h].max())[0])
    bottom = h - zone_h + int(np.flatnonzero(rows[h - zone_h :] >= 0.9 * rows[h - zone_h :].max())[-1])
    if right - left < 4 or bottom - top < 4:
        return None
    band = max(1, round(min(right - left, bottom - top) * 0.08))
    square = region[top : bottom + 1, left : right + 1]
    sides = (
        square[: band + 1, :].any(axis=0),
        square[-band - 1 :, :].any(axis=0),
        square[:, : band + 1].any(axis=1),
        square[:, -band - 1 :].any(axis=1),
    )
    return x + left, y + top, x + right + 1, y + bottom + 1, min(float(side.mean()) for side in sides)


def _holds_a_word(page: OcrPage, box: _Box) -> bool:
    """Whether a word of two or more characters lies mostly inside the square (one letter may be the
    pen mark, read as "X" or "V")."""
    x0, y0, x1, y1 = box
    for word in page.words:
        if len(word.text) < 2:
            continue
        wx0, wy0, wx1, wy1 = word.bbox
        overlap = max(0.0, min(x1, wx1) - max(x0, wx0)) * max(0.0, min(y1, wy1) - max(y0, wy0))
        if overlap > 0.6 * (wx1 - wx0) * (wy1 - wy0):
            return True
    return False


def _label(page: OcrPage, box: _Box, boxes: Sequence[_Box]) -> tuple[int, int]:
    """The character span of the label to the right of ``box`` on its text line ((0, 0): none)."""
    x0, y0, x1, y1 = box
    side = x1 - x0
    centre = (y0 + y1) / 2
    next_box = min((b[0] for b in boxes if b[0] > x1 and abs((b[1] + b[3]) / 2 - centre) < side), default=None)
    candidates = [
        i
        for i, w in enumerate(page.words)
        if w.bbox[1] < centre < w.bbox[3]
        and w.bbox[0] >= x1 - side * 0.2
        and (next_box is None or w.bbox[2] <= next_box)
    ]
    candidates.sort(key=lambda i: page.words[i].bbox[0])
    chosen: list[int] = []
    right = x1
    for index in candidates:
        word = page.words[index]
        if word.bbox[0] < x1 + side * 0.1:  # the pen mark read as a letter ("X", "V") inside the box
            continue
        if word.bbox[0] - right > 1.5 * side:
            break
        chosen.append(index)
        right = word.bbox[2]
    if not chosen:
        return 0, 0
    spans = [page.spans[i] for i in chosen]
    return min(s for s, _ in spans), max(e for _, e in spans)


def find_checkboxes(image: Image.Image, page: OcrPage) -> tuple[Checkbox, ...]:
    """The checkboxes on a page image, in reading order; ``page`` is the OCR of that same image."""
    word_height = _median_word_height(page)
    if word_height is None:
        return ()
    grey = np.asarray(image.convert("L"))
    ink = (grey < 160).astype(np.uint8)
    stroke = max(5, round(word_height * STROKE_FRACTION))
    horizontal = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((1, stroke), np.uint8))
    vertical = cv2.morphologyEx(ink, cv2.MORPH_OPEN, np.ones((stroke, 1), np.uint8))
    frame = cv2.bitwise_or(horizontal, vertical)
    count, _, stats, _ = cv2.connectedComponentsWithStats(frame, connectivity=8)
    found: list[tuple[_Box, float]] = []  # each box and the ink inside it
    for label in range(1, count):
        x, y, w, h, _ = (int(v) for v in stats[label])
        if min(w, h) < 0.4 * word_height or max(w, h) > 3 * word_height:
            continue
        square = _frame(frame, x, y, w, h)
        if square is None:
            continue
        x0, y0, x1, y1, coverage = square
        side_w, side_h = x1 - x0, y1 - y0
        if coverage < SIDE_COVERAGE or not 0.75 <= side_w / side_h <= 1.33:
            continue
        if not 0.5 * word_height <= min(side_w, side_h) <= 2.5 * word_height:
            continue
        if _holds_a_word(page, (x0, y0, x1, y1)):
            continue  # a ruled table's cell with text in it, not a box to tick
        inset = round(min(side_w, side_h) * _INSET)
        inside = ink[y0 + inset : y1 - inset, x0 + inset : x1 - inset]
        found.append(((float(x0), float(y0), float(x1), float(y1)), float(inside.mean()) if inside.size else 0.0))
    boxes = [box for box, _ in found]
    checkboxes = []
    for box, ink_fraction in found:
        start, end = _label(page, box, boxes)
        unsure = UNSURE_LOW <= ink_fraction <= UNSURE_HIGH
        checkboxes.append(
            Checkbox(
                bbox=box,
                checked=ink_fraction > CHECKED_INK,
                ink=round(ink_fraction, 4),
                label=page.text[start:end] if end > start else None,
                start=start if end > start else None,
                end=end if end > start else None,
                confidence=0.5 if unsure else 0.95,
            )
        )
    # reading order: as their labels come in the page text (a box without a label by its position)
    checkboxes.sort(key=lambda c: (c.start if c.start is not None else len(page.text), c.bbox[1], c.bbox[0]))
    return tuple(checkboxes)


def with_checkboxes(image: Image.Image, page: OcrPage) -> OcrPage:
    return msgspec.structs.replace(page, checkboxes=find_checkboxes(image, page))
