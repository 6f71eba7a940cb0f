"""Tables from how words line up: cells, columns from the header, and lab rows read by column."""

from __future__ import annotations

from server.pipeline.extract.rules import RulesExtractor
from server.pipeline.page import OcrPage, Word, compose_page
from server.pipeline.tables import find_tables

CHAR = 7.0  # width of a character in these pages' units


def page_of(rows: list[list[tuple[float, str]]]) -> OcrPage:
    """Words placed at given x positions, one list of (x, cell text) per line."""
    words = []
    for number, row in enumerate(rows):
        y = 40.0 + 20 * number
        for x, text in row:
            for token in text.split():
                words.append(Word(text=token, bbox=(x, y, x + CHAR * len(token), y + 12)))
                x += CHAR * (len(token) + 1)
    return compose_page(1, 600.0, 800.0, "ocr", words)


COLUMNS = (50.0, 200.0, 290.0, 380.0, 470.0)


def lab_page(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> OcrPage:
    lines = [[(50.0, "Laboratory Report")], [(50.0, "Patient Name: Jane Smith")]]
    lines.append(list(zip(COLUMNS, header, strict=True)))
    lines.extend([(x, cell) for x, cell in zip(COLUMNS, row, strict=True) if cell] for row in rows)
    lines.append([(50.0, "Comment: haemolysed sample repeated")])
    return page_of(lines)


def test_a_table_has_its_header_rows_and_empty_cells() -> None:
    page = lab_page(
        ("Test", "Result", "Units", "Ref. Range", "Flag"),
        [("Sodium", "131", "mmol/L", "135-145", "L"), ("Potassium", "4.1", "mmol/L", "3.5-5.3", "")],
    )
    (table,) = find_tables(page)
    assert table.header == ("Test", "Result", "Units", "Ref. Range", "Flag")
    assert [[c.text if c else None for c in row] for row in table.rows] == [
        ["Sodium", "131", "mmol/L", "135-145", "L"],
        ["Potassium", "4.1", "mmol/L", "3.5-5.3", None],
    ]
    cell = table.rows[0][1]
    assert cell is not None and page.text[cell.start : cell.end] == "131"


def test_prose_and_key_value_lines_are_not_tables() -> None:
    page = page_of(
        [
            [(50.0, "Seen today for review of her diabetes and blood pressure.")],
            [(50.0, "DOB: 14 Mar 1956"), (300.0, "Sex: F")],
            [(50.0, "BP 142/88 mmHg"), (200.0, "HR 96 bpm"), (320.0, "RR 18 /min")],
            [(50.0, "Plan: review in six weeks.")],
        ]
    )
    assert find_tables(page) == []


def test_lab_columns_in_any_order_are_read_by_their_header() -> None:
    page = lab_page(
        ("Test", "Ref. Range", "Result", "Units", "Flag"),
        [("Sodium", "135-145", "131", "mmol/L", "L"), ("Haemoglobin", "130-180", "142", "g/L", "")],
    )
    labs = {lab.test: lab for lab in RulesExtractor().extract([page]).labs}
    assert (labs["Sodium"].value, labs["Sodium"].low, labs["Sodium"].high, labs["Sodium"].flag) == (131, 135, 145, "L")
    assert (labs["Haemoglobin"].value, labs["Haemoglobin"].unit, labs["Haemoglobin"].flag) == (142, "g/L", "N")
    evidence = labs["Sodium"].evidence
    assert evidence is not None and page.text[evidence.start : evidence.end].split() == [
        "Sodium",
        "135-145",
        "131",
        "mmol/L",
        "L",
    ]
    # read as a line, the range would have been taken for the result
    line_only = {lab.test: lab for lab in RulesExtractor(read_tables=False).extract([page]).labs}
    assert line_only.get("Sodium") is None or line_only["Sodium"].value != 131


def test_form_fields_filled_and_blank() -> None:
    from server.pipeline.tables import find_fields
    from tests.unit.test_rules import page_from_text

    page = page_from_text(
        "Patient Name: Jane Smith\n"
        "DOB: 14/03/1956 Sex: F\n"
        "Address: 115 Park Avenue, Elmford ZZ8 5AP Tel: 0113 496 0724\n"
        "Next of kin: ____________\n"
        "Seen at 10:30 for review of her asthma.\n"
    )
    fields = [(f.label, f.value) for f in find_fields(page)]
    assert fields == [
        ("Patient Name", "Jane Smith"),
        ("DOB", "14/03/1956"),
        ("Sex", "F"),
        ("Address", "115 Park Avenue, Elmford ZZ8 5AP"),
        ("Tel", "0113 496 0724"),
        ("Next of kin", None),  # a blank on the form, not a value
    ]
    address = find_fields(page)[3]
    assert page.text[address.start : address.end] == "115 Park Avenue, Elmford ZZ8 5AP"


def test_a_table_row_whose_test_is_not_known_is_kept_uncoded() -> None:
    page = lab_page(
        ("Test", "Result", "Units", "Ref. Range", "Flag"),
        [
            ("Chloride", "101", "mEq/L", "98-107", ""),
            ("Albumin/creat", "4.1", "mg/mmol", "<3.0", "H"),
            ("Bilirubin, direct", "3", "umol/L", "0-5", ""),
        ],
    )
    labs = {lab.test: lab for lab in RulesExtractor().extract([page]).labs}
    assert [c.code for c in labs["Chloride"].codings] == ["2075-0"] and labs["Chloride"].unit == "meq/L"
    ratio = labs["Albumin/creat"]  # the urine ratio, not albumin (1751-7): kept as read, for a person to code
    assert ratio.codings == () and (ratio.value, ratio.unit, ratio.high, ratio.flag) == (4.1, "mg/mmol", 3.0, "H")
    assert labs["Bilirubin, direct"].codings == ()  # not total bilirubin
