"""Reading source files line by line with errors that name the line (and never print its content)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from terminology.model import TerminologyImportError


def read_lines(path: Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(line number, text without line end) for each line; a bad encoding names the line."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                raise TerminologyImportError(str(path), number, f"not valid {encoding} text") from None
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield number, text.rstrip("\r\n")
