"""The page model every OCR engine and text layer produces, and how page text is composed.

A page is words with boxes and confidences. ``compose_page`` groups words into visual lines
(robust to a slightly skewed scan), orders them, and builds the page text with a character
span per word, so any span of text found by extraction maps back to boxes on the page.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Literal

import msgspec

from fhir_profiles.extraction import Box, Evidence

PageSource = Literal["text-layer", "ocr"]


class Word(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    # x0, y0, x1, y1 in page units (pixels for images, points for PDF text layers), origin top-left
    bbox: tuple[float, float, float, float]
    confidence: float = 1.0
    # slope of the text line this word was read on (dy/dx), when the engine knows it
    slope: float = 0.0


class Checkbox(msgspec.Struct, frozen=True, kw_only=True):
    """A box on a form (see server/pipeline/checkboxes.py)."""

    bbox: tuple[float, float, float, float]  # page units, like word boxes
    checked: bool
    ink: float  # fraction of the box's inside covered by ink
    label: str | None = None  # the words to its right
    start: int | None = None  # the label's character span in the page text
    end: int | None = None
    confidence: float = 1.0  # low when the mark is faint or a speck


class OcrPage(msgspec.Struct, frozen=True, kw_only=True):
    number: int  # 1-based
    width: float
    height: float
    source: PageSource
    words: tuple[Word, ...]
    lines: tuple[tuple[int, ...], ...]  # word indices per line, in reading order
    text: str  # lines joined by "\n", words by " " (two spaces across a wide gap)
    spans: tuple[tuple[int, int], ...]  # character span of each word in ``text``
    checkboxes: tuple[Checkbox, ...] = ()  # found in the image of a scanned page
    unread: str | None = None  # why nothing was read from this page (OCR failed or timed out)

    @property
    def mean_confidence(self) -> float:
        return statistics.fmean(w.confidence for w in self.words) if self.words else 1.0

    def box(self, bbox: tuple[float, float, float, float]) -> Box:
        """A rectangle in page units, normalized to 0..1 of the page's width and height."""
        x0, y0, x1, y1 = bbox
        return Box(
            x0=round(x0 / self.width, 4),
            y0=round(y0 / self.height, 4),
            x1=round(x1 / self.width, 4),
            y1=round(y1 / self.height, 4),
        )

    def evidence(self, start: int, end: int) -> Evidence:
        """Evidence for ``text[start:end]``: the boxes (normalized) of the words it overlaps."""
        boxes = []
        confidence = 1.0
        for word, (word_start, word_end) in zip(self.words, self.spans, strict=True):
            if word_start < end and word_end > start:
                boxes.append(self.box(word.bbox))
                confidence = min(confidence, word.confidence)
        return Evidence(
            page=self.number,
            start=start,
            end=end,
            text=self.text[start:end],
            boxes=tuple(boxes),
            ocr_confidence=round(confidence, 4),
        )


def unread_page(number: int, width: float, height: float, reason: str) -> OcrPage:
    """A page OCR could not read: no words, and why."""
    return OcrPage(
        number=number,
        width=width,
        height=height,
        source="ocr",
        words=(),
        lines=(),
        text="",
        spans=(),
        unread=reason,
    )


def _skew(words: Sequence[Word]) -> float:
    """The page's text direction: the median slope of its words' lines. A level line's slope (0) is a
    measurement too: left out, a few stray slopes on a level page would tilt every line and pair one
    row's label with the next row's value."""
    return statistics.median(w.slope for w in words) if words else 0.0


def compose_page(number: int, width: float, height: float, source: PageSource, words: Sequence[Word]) -> OcrPage:
    """Group words into lines and build the page text with per-word character spans."""
    words = [w for w in words if w.text.strip()]
    slope = _skew(words)

    def baseline(word: Word) -> float:
        # vertical centre projected onto the page's dominant text direction
        x0, y0, x1, y1 = word.bbox
        return (y0 + y1) / 2 - slope * (x0 + x1) / 2

    order = sorted(range(len(words)), key=lambda i: (baseline(words[i]), words[i].bbox[0]))
    lines: list[list[int]] = []
    line_centres: list[float] = []
    for index in order:
        word = words[index]
        height_ = max(word.bbox[3] - word.bbox[1], 1.0)
        centre = baseline(word)
        if lines and abs(centre - line_centres[-1]) <= height_ * 0.5:
            lines[-1].append(index)
            members = lines[-1]
            line_centres[-1] = statistics.fmean(baseline(words[i]) for i in members)
        else:
            lines.append([index])
            line_centres.append(centre)

    text_parts: list[str] = []
    spans: list[tuple[int, int]] = [(0, 0)] * len(words)
    position = 0
    ordered_lines = []
    for line_number, line in enumerate(lines):
        line.sort(key=lambda i: words[i].bbox[0])
        ordered_lines.append(tuple(line))
        if line_number:
            text_parts.append("\n")
            position += 1
        previous: Word | None = None
        for index in line:
            word = words[index]
            if previous is not None:
                char_width = (previous.bbox[2] - previous.bbox[0]) / max(len(previous.text), 1)
                gap = word.bbox[0] - previous.bbox[2]
                separator = "  " if gap > 2.5 * char_width else " "
                text_parts.append(separator)
                position += len(separator)
            spans[index] = (position, position + len(word.text))
            text_parts.append(word.text)
            position += len(word.text)
            previous = word
    return OcrPage(
        number=number,
        width=width,
        height=height,
        source=source,
        words=tuple(words),
        lines=tuple(ordered_lines),
        text="".join(text_parts),
        spans=tuple(spans),
    )
