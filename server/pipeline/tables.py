"""Tables on a page: rows of cells found from how words line up, for any OCR engine or text layer.

A line is cut into cells at wide gaps (more than ``GAP_CHARS`` character widths). A table is a
run of at least ``MIN_ROWS`` consecutive lines of at least ``MIN_COLUMNS`` cells whose cells
fall into the columns of its first line (its header): each column runs from its header cell's
left edge to the next header cell's. A row may leave a column empty (a lab table's Flag), but a
line whose cells do not fit the columns ends the table. Each cell keeps its character span in
the page text, so a value read from a cell has evidence like any other.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from server.pipeline.page import OcrPage

GAP_CHARS: Final = 2.5  # a gap wider than this many characters separates cells
MIN_ROWS: Final = 3  # header included
MIN_COLUMNS: Final = 3


class Cell(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    start: int  # character span in the page text
    end: int
    x0: float
    x1: float


class Table(msgspec.Struct, frozen=True, kw_only=True):
    header: tuple[str, ...]
    rows: tuple[tuple[Cell | None, ...], ...]  # body rows, one entry per header column
    lines: tuple[int, ...]  # page line numbers of the body rows


def _cells(page: OcrPage, line: tuple[int, ...]) -> list[Cell]:
    cells: list[Cell] = []
    group: list[int] = []

    def close() -> None:
        first, last = page.words[group[0]], page.words[group[-1]]
        start, end = page.spans[group[0]][0], page.spans[group[-1]][1]
        cells.append(Cell(text=page.text[start:end], start=start, end=end, x0=first.bbox[0], x1=last.bbox[2]))

    for index in line:
        if group:
            previous = page.words[group[-1]]
            char_width = (previous.bbox[2] - previous.bbox[0]) / max(len(previous.text), 1)
            if page.words[index].bbox[0] - previous.bbox[2] > GAP_CHARS * char_width:
                close()
                group = []
        group.append(index)
    if group:
        close()
    return cells


def _fit(cells: list[Cell], edges: list[float]) -> tuple[Cell | None, ...] | None:
    """The cells placed in the header's columns, or None when they do not fit them."""
    row: list[Cell | None] = [None] * len(edges)
    for cell in cells:
        # the column whose left edge is the last one at or before the cell (with some slack)
        slack = (edges[1] - edges[0]) * 0.25 if len(edges) > 1 else 0.0
        column = max((i for i, edge in enumerate(edges) if edge - slack <= cell.x0), default=None)
        if column is None or row[column] is not None:
            return None
        row[column] = cell
    return tuple(row)


def find_tables(page: OcrPage) -> list[Table]:
    cells_by_line = [_cells(page, line) for line in page.lines]
    tables: list[Table] = []
    number = 0
    while number < len(cells_by_line):
        header = cells_by_line[number]
        if len(header) < MIN_COLUMNS:
            number += 1
            continue
        edges = [cell.x0 for cell in header]
        rows: list[tuple[Cell | None, ...]] = []
        lines: list[int] = []
        following = number + 1
        while following < len(cells_by_line):
            cells = cells_by_line[following]
            row = _fit(cells, edges) if len(cells) >= 2 else None
            if row is None:
                break
            rows.append(row)
            lines.append(following)
            following += 1
        if len(rows) + 1 >= MIN_ROWS:
            tables.append(Table(header=tuple(c.text for c in header), rows=tuple(rows), lines=tuple(lines)))
            number = following
        else:
            number += 1
    return tables


# --- form fields ----------------------------------------------------------------------------

# up to four words, the first capitalised, then a colon and a space: "NHS No: ", "Date of birth: "
_LABEL = re.compile(r"(?:(?<=\s)|^)(?P<label>[A-Z][A-Za-z.]*(?: [A-Za-z.'/()#-]+){0,3}) ?:(?: +|$)")
_BLANK = re.compile(r"^[_.\s]*$")


class FormField(msgspec.Struct, frozen=True, kw_only=True):
    """A "Label: value" pair of a form; ``value`` is None when the form left it blank ("Name: ____")."""

    label: str
    value: str | None
    start: int  # character span of the value in the page text (of the label when blank)
    end: int


def find_fields(page: OcrPage) -> list[FormField]:
    """Every "Label: value" on the page, a line holding several ("DOB: 14/03/1956  Sex: F")."""
    fields: list[FormField] = []
    offset = 0
    for line in page.text.split("\n"):
        labels = list(_LABEL.finditer(line))
        for index, match in enumerate(labels):
            value_end = labels[index + 1].start() if index + 1 < len(labels) else len(line)
            raw = line[match.end() : value_end]
            value = raw.strip()
            start = offset + match.end() + (len(raw) - len(raw.lstrip()))
            if _BLANK.match(value):
                fields.append(
                    FormField(label=match.group("label").strip(), value=None, start=offset + match.start(), end=start)
                )
            else:
                fields.append(
                    FormField(label=match.group("label").strip(), value=value, start=start, end=start + len(value))
                )
        offset += len(line) + 1
    return fields
