"""LOINC from ``LoincTableCore.csv`` (the user's own download; free under the LOINC licence).

Active and trial codes only; the long common name is preferred, the short name and the
component are synonyms. CLASSTYPE 1 (laboratory) becomes semantic type ``lab-test``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from terminology.model import LOINC, CodeSystemInfo, ConceptRow, DesignationKind, TerminologyImportError

_REQUIRED: Final = ("LOINC_NUM", "COMPONENT", "LONG_COMMON_NAME", "CLASSTYPE", "STATUS")


class LoincCsvImporter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.info = CodeSystemInfo(
            system=LOINC,
            name="LOINC",
            version=path.parent.name or path.name,
            licence="LOINC licence (https://loinc.org/license)",
            source=f"CSV {path.name}",
        )

    def rows(self) -> Iterator[ConceptRow]:
        with self.path.open("rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
            reader = csv.DictReader(text)
            try:
                header = reader.fieldnames or []
            except UnicodeDecodeError:
                raise TerminologyImportError(str(self.path), 1, "not valid UTF-8 text") from None
            missing = [c for c in _REQUIRED if c not in header]
            if missing:
                raise TerminologyImportError(str(self.path), 1, f"missing LOINC column(s): {', '.join(missing)}")
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except (UnicodeDecodeError, csv.Error):
                    raise TerminologyImportError(str(self.path), reader.line_num + 1, "unreadable CSV row") from None
                if None in row or any(row[c] is None for c in _REQUIRED):
                    raise TerminologyImportError(str(self.path), reader.line_num, "row has the wrong number of columns")
                if row["STATUS"] not in ("ACTIVE", "TRIAL"):
                    continue
                code, name = row["LOINC_NUM"].strip(), row["LONG_COMMON_NAME"].strip()
                if not code or not name:
                    raise TerminologyImportError(
                        str(self.path), reader.line_num, "LOINC_NUM and LONG_COMMON_NAME are required"
                    )
                designations: list[tuple[str, DesignationKind]] = [(name, "preferred")]
                for column, kind in (
                    ("SHORTNAME", "abbreviation"),
                    ("COMPONENT", "synonym"),
                    ("CONSUMER_NAME", "synonym"),
                ):
                    value = (row.get(column) or "").strip()
                    if value and value != name:
                        designations.append((value, kind))  # type: ignore[arg-type]
                yield ConceptRow(
                    code=code,
                    display=name,
                    semantic_type="lab-test" if row["CLASSTYPE"] == "1" else "observable",
                    designations=tuple(designations),
                )
