"""The rules extractor on page text: demographics, SIGs, vitals, labs and assertions."""

from __future__ import annotations

import datetime as dt

import pytest

from fhir_profiles.extraction import Vital
from server.pipeline.extract.rules import (
    RulesExtractor,
    assertion_of,
    nhs_number_is_valid,
    parse_date,
    parse_medication,
    parse_timing,
    read_vital,
)
from server.pipeline.page import OcrPage, Word, compose_page
from server.pipeline.validate import review_reasons


def page_from_text(text: str, number: int = 1, confidence: float = 0.99) -> OcrPage:
    """Lay text out as words on a grid, as an OCR engine would report it."""
    words = []
    for row, line in enumerate(text.strip("\n").split("\n")):
        x = 10.0
        for token in line.split():
            width = 8.0 * len(token)
            words.append(Word(text=token, bbox=(x, 20.0 * row + 5, x + width, 20.0 * row + 17), confidence=confidence))
            x += width + 8.0
    return compose_page(number, 1000.0, 1400.0, "ocr", words)


NOTE = """
Riverside Medical Centre
Discharge Summary
Patient Name: Mrs Jane Smith
DOB: 14 Mar 1956 Sex: F
MRN: MRN1234567 NHS No: 943 476 5919
History of Presenting Complaint
Admitted with cough. Denies chest pain. Pulmonary embolism ruled out.
Observations
BP 142/88 mmHg HR 96 bpm RR 18 /min Temp 38.1 C SpO2 94% Weight 71.5 kg
Discharge Diagnoses
- Community acquired pneumonia
- Possible heart failure
- History of asthma
Discharge Medications
- Amoxicillin 500 mg PO TDS
- Salbutamol 100 mcg INH PRN
- Atorvastatin 40 mg by mouth at night
- Enoxaparin 40 mg SC daily
"""


def test_demographics_are_read_with_their_evidence() -> None:
    extraction = RulesExtractor().extract([page_from_text(NOTE)])
    patient = extraction.patient
    assert patient.name is not None and patient.name.value == "Mrs Jane Smith"
    assert patient.given == ("Jane",) and patient.family == "Smith"
    assert patient.birth_date is not None and patient.birth_date.value == "1956-03-14"
    assert patient.sex is not None and patient.sex.value == "female"
    identifiers = {i.kind: i for i in patient.identifiers}
    assert identifiers["mrn"].value == "MRN1234567"
    assert identifiers["nhs"].value == "9434765919" and identifiers["nhs"].valid
    evidence = identifiers["nhs"].evidence
    assert evidence is not None and evidence.text == "943 476 5919" and len(evidence.boxes) == 3
    assert extraction.document_type == "discharge-summary"


def test_medications_with_dose_route_and_frequency() -> None:
    medications = {m.name: m for m in RulesExtractor().extract([page_from_text(NOTE)]).medications}
    assert set(medications) == {"Amoxicillin", "Salbutamol", "Atorvastatin", "Enoxaparin"}
    amoxicillin = medications["Amoxicillin"]
    assert (amoxicillin.dose_value, amoxicillin.dose_unit, amoxicillin.route) == (500, "mg", "oral")
    assert amoxicillin.timing is not None and amoxicillin.timing.frequency == 3
    salbutamol = medications["Salbutamol"]
    assert salbutamol.dose_unit == "ug" and salbutamol.route == "inhaled"
    assert salbutamol.timing is not None and salbutamol.timing.as_needed
    atorvastatin = medications["Atorvastatin"]
    assert atorvastatin.timing is not None and atorvastatin.timing.when == ("HS",)
    assert medications["Enoxaparin"].route == "subcutaneous"


def test_vitals_with_ucum_units() -> None:
    vitals = {v.kind: v for v in RulesExtractor().extract([page_from_text(NOTE)]).vitals}
    assert (vitals["blood_pressure"].value, vitals["blood_pressure"].diastolic) == (142, 88)
    assert vitals["blood_pressure"].unit == "mm[Hg]"
    assert (vitals["heart_rate"].value, vitals["heart_rate"].unit) == (96, "/min")
    assert (vitals["body_temperature"].value, vitals["body_temperature"].unit) == (38.1, "Cel")
    assert (vitals["oxygen_saturation"].value, vitals["oxygen_saturation"].unit) == (94, "%")
    assert (vitals["body_weight"].value, vitals["body_weight"].unit) == (71.5, "kg")


def test_a_fever_in_fahrenheit_and_one_line_vitals() -> None:
    note = "Vitals: Temp 101.3 F  Pulse 112  BP 98/60\n"
    vitals = {v.kind: v for v in RulesExtractor().extract([page_from_text(note)]).vitals}
    assert (vitals["body_temperature"].value, vitals["body_temperature"].unit) == (101.3, "[degF]")
    assert read_vital("Temperature 38.25 C") == Vital(kind="body_temperature", value=38.25, unit="Cel")
    assert read_vital("T 99.1°F") == Vital(kind="body_temperature", value=99.1, unit="[degF]")
    assert read_vital("BP 120/80 mmHg") == Vital(kind="blood_pressure", value=120, unit="mm[Hg]", diastolic=80)
    assert read_vital("Weight 154 lb") == Vital(kind="body_weight", value=154, unit="[lb_av]")
    assert read_vital("Ht 67 in") == Vital(kind="body_height", value=67, unit="[in_i]")
    assert read_vital("Wt 238 Ib") == Vital(kind="body_weight", value=238, unit="[lb_av]")  # OCR's "lb"
    assert read_vital("Mood 5") is None


def test_us_panels_in_meq_and_mg_per_dl_are_coded() -> None:
    report = (
        "Results\n"
        "Sodium 138 mEq/L 135-145\n"
        "Potassium 5.6 mEq/L 3.5-5.1 H\n"
        "Chloride 101 mEq/L 98-107\n"
        "Bicarbonate 24 mEq/L 22-29\n"
        "HDL 38 mg/dL 40-60 L\n"
        "LDL 160 mg/dL <100\n"
        "Triglycerides 2.1 mmol/L <1.7\n"
        "INR 1.1 0.8-1.2\n"
    )
    extraction = RulesExtractor().extract([page_from_text(report)])
    coded = {lab.test: ([c.code for c in lab.codings], lab.unit) for lab in extraction.labs}
    assert coded == {
        "Sodium": (["2951-2"], "meq/L"),
        "Potassium": (["2823-3"], "meq/L"),
        "Chloride": (["2075-0"], "meq/L"),
        "Bicarbonate": (["1963-8"], "meq/L"),
        "HDL": (["2085-9"], "mg/dL"),
        "LDL": (["13457-7"], "mg/dL"),
        "Triglycerides": (["14927-8"], "mmol/L"),  # the unit picks the molar code
        "INR": (["6301-6"], "{INR}"),  # a ratio, printed without a unit
    }
    reasons = review_reasons(extraction, confidence_threshold=0.5)
    assert [r.code for r in reasons if r.code.startswith("lab")] == []  # every unit is its test's


def test_a_result_whose_test_is_not_known_is_kept_for_review_not_lost() -> None:
    report = (
        "Page 1 of 2\n"
        "Results\n"
        "Adjusted calcium 2.45 mmol/L 2.20-2.60\n"
        "Vitamin D (25-OH) 42 nmol/L 50-175 L\n"
        "eGFR >90 mL/min/1.73m2\n"
        "Ward 7\n"
        "Reported by Dr Ann Lee on 12 Nov 2026\n"
    )
    extraction = RulesExtractor().extract([page_from_text(report)])
    kept = {lab.test: lab for lab in extraction.labs}
    assert set(kept) == {"Adjusted calcium", "Vitamin D (25-OH)", "eGFR"}
    assert all(lab.codings == () for lab in kept.values())
    assert (kept["Vitamin D (25-OH)"].value, kept["Vitamin D (25-OH)"].flag) == (42, "L")
    assert (kept["eGFR"].comparator, kept["eGFR"].value, kept["eGFR"].unit) == (">", 90, "mL/min/{1.73_m2}")
    reasons = {r.code: r.message for r in review_reasons(extraction, confidence_threshold=0.5)}
    assert reasons["lab-test-unknown"].startswith("3 lab result(s)")
    # outside a results section, a line like these is no result
    assert RulesExtractor().extract([page_from_text("Adjusted calcium 2.45 mmol/L 2.20-2.60\n")]).labs == ()


US_NOTE = """Progress Note
Date of service: 11/20/2026
Assessment and Plan:
1. Type 2 diabetes mellitus without complications - continue metformin, recheck A1c in 3 months
2. Essential hypertension: well controlled
3. Possible obstructive sleep apnea; refer for sleep study
4. Return in 3 months
Patient denies chest pain.
Medications:
- Albuterol 90 mcg 2 puffs q4h prn wheezing
Allergies: Penicillin (hives), sulfa drugs (rash)
"""


def test_a_us_note_assessment_and_plan_date_of_service_and_allergy_list() -> None:
    extraction = RulesExtractor(date_order="MDY").extract([page_from_text(US_NOTE)])
    assert extraction.document_date is not None and extraction.document_date.value == "2026-11-20"
    diagnoses = {d.text: d.assertion for d in extraction.diagnoses}
    assert diagnoses == {
        "Type 2 diabetes mellitus without complications": "present",
        "Essential hypertension": "present",
        "obstructive sleep apnea": "uncertain",
        "chest pain": "negated",  # the plan's prose is read for denials as before
    }
    assert [f.text for f in extraction.follow_ups] == ["Return in 3 months"]  # a plan, not a problem
    albuterol = extraction.medications[0]
    assert (albuterol.route, albuterol.timing is not None and albuterol.timing.as_needed) == ("inhaled", True)
    allergies = {a.substance: a.reaction for a in extraction.allergies}
    assert allergies == {"Penicillin": "hives", "sulfa drugs": "rash"}


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("penicillin, latex, peanuts", {"penicillin": None, "latex": None, "peanuts": None}),
        ("Codeine: vomiting, mild", {"Codeine": "vomiting"}),
        ("Penicillin - rash, swelling", {"Penicillin": "rash, swelling"}),
        ("Penicillin (rash), mild", {"Penicillin": "rash"}),
    ],
)
def test_a_comma_parts_allergies_only_where_it_cannot_belong_to_one(written: str, expected: dict[str, str]) -> None:
    extraction = RulesExtractor().extract([page_from_text(f"Allergies: {written}\n")])
    assert {a.substance: a.reaction for a in extraction.allergies} == expected


DISCHARGE = """Discharge Summary
Name: Mrs Margaret Ellis  DOB: 03/09/1948
Diagnoses:
1. Community-acquired pneumonia
2. Acute kidney injury stage 2, resolved
3. Atrial fibrillation, new onset
Past medical history: Type 2 diabetes; COPD; osteoarthritis of both knees
Medications on discharge:
Apixaban 5mg BD (new)
Salbutamol 100mcg inhaler 2 puffs QDS PRN
Furosemide 40mg OM - stopped
Social care needs:
Lives alone, carers twice daily
Investigations:
Hb 112 g/L (115-165) L
CRP 156 mg/L (<5) H
INR 1.1 (0.8-1.2)
"""


def test_a_discharge_summary_whose_sections_have_other_names() -> None:
    """Headings paperchart did not know let the diagnoses list run on: every later line (the
    medications, the bloods) became a condition, and the bloods were lost as results."""
    extraction = RulesExtractor().extract([page_from_text(DISCHARGE)])
    assert extraction.patient.name is not None and extraction.patient.name.value == "Mrs Margaret Ellis"
    assert [d.text for d in extraction.diagnoses] == [
        "Community-acquired pneumonia",
        "Acute kidney injury stage 2",  # "..., resolved": historical, so clinical status resolved
        "Atrial fibrillation, new onset",
        "Type 2 diabetes",  # the inline list, item by item
        "COPD",
        "osteoarthritis of both knees",
    ]
    assert {d.text: d.assertion for d in extraction.diagnoses}["Acute kidney injury stage 2"] == "historical"
    medications = {m.name: m for m in extraction.medications}
    assert set(medications) == {"Apixaban", "Salbutamol", "Furosemide"}
    assert (medications["Salbutamol"].dose_value, medications["Salbutamol"].route) == (200, "inhaled")
    furosemide = medications["Furosemide"]
    assert furosemide.status == "stopped" and furosemide.timing is not None and furosemide.timing.when == ("MORN",)
    labs = {lab.test: lab for lab in extraction.labs}
    assert (labs["Hb"].value, labs["Hb"].low, labs["Hb"].high, labs["Hb"].flag) == (112, 115, 165, "L")
    assert (labs["CRP"].high, labs["CRP"].flag) == (5, "H")
    assert (labs["INR"].unit, labs["INR"].low, labs["INR"].high) == ("{INR}", 0.8, 1.2)


REFERRAL = """Dear Dr Patel,
Re: Mr David Brown, DOB 22/07/1959, NHS No 401 023 2137
Thank you for seeing this man. He denies palpitations.
On examination his BP was 158/92 mmHg, pulse of 84 regular.
He is allergic to penicillin, which causes a rash, and is not allergic to latex.
Known allergy to peanuts and sesame.
Recent bloods: HbA1c 62 mmol/mol, total cholesterol 5.8 mmol/L.
"""


def test_a_referral_letter_told_in_prose() -> None:
    extraction = RulesExtractor().extract([page_from_text(REFERRAL)])
    assert extraction.patient.name is not None and extraction.patient.name.value == "Mr David Brown"
    vitals = {v.kind: (v.value, v.diastolic) for v in extraction.vitals}
    assert vitals == {"blood_pressure": (158, 92), "heart_rate": (84, None)}
    assert {a.substance: a.reaction for a in extraction.allergies} == {
        "penicillin": "rash",
        "peanuts": None,
        "sesame": None,
    }  # not latex: the letter says he is not allergic to it
    assert {lab.test: (lab.value, lab.unit) for lab in extraction.labs} == {
        "HbA1c": (62, "mmol/mol"),
        "total cholesterol": (5.8, "mmol/L"),
    }
    assert [d.text for d in extraction.diagnoses] == ["palpitations"]  # denied, so refuted
    # a subject line with no date of birth or identifier after it names nobody
    assert RulesExtractor().extract([page_from_text("Re: referral for chest pain\n")]).patient.name is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_generated_us_progress_note_is_read_as_its_truth(seed: int) -> None:
    from server.pipeline.inspect import Limits
    from server.pipeline.rasterize import iter_pages
    from tests.fixtures.generate import render_document

    document = render_document("us_progress_note", seed)
    limits = Limits(max_bytes=1 << 30, max_pages=10, max_page_pixels=60_000_000, dpi=150)
    pages = [p for p in iter_pages(document.pdf, "application/pdf", limits) if isinstance(p, OcrPage)]
    extraction, truth = RulesExtractor().extract(pages), document.truth
    assert [d.text for d in extraction.diagnoses] == [d.text for d in truth.diagnoses]
    assert {(v.kind, v.value, v.unit) for v in extraction.vitals} == {
        (v.kind, v.value, {"mmHg": "mm[Hg]"}.get(v.unit, v.unit)) for v in truth.vitals
    }
    assert {(lab.test, lab.value) for lab in extraction.labs} == {(lab.test, lab.value) for lab in truth.labs}
    assert all(lab.codings for lab in extraction.labs)  # every test of the panel is in the LOINC table
    assert {(a.substance, a.reaction) for a in extraction.allergies} == {
        (a.substance, a.reaction) for a in truth.allergies
    }
    assert [f.text for f in extraction.follow_ups] == truth.follow_ups


def test_diagnoses_carry_assertions() -> None:
    diagnoses = {d.text.lower(): d.assertion for d in RulesExtractor().extract([page_from_text(NOTE)]).diagnoses}
    assert diagnoses["community acquired pneumonia"] == "present"
    assert diagnoses["heart failure"] == "uncertain"
    assert diagnoses["asthma"] == "historical"
    assert diagnoses["chest pain"] == "negated"
    assert diagnoses["pulmonary embolism"] == "negated"


def test_lab_table_rows_become_coded_results() -> None:
    report = """
Laboratory Report
Patient Name: John Doe
Test  Result  Units  Reference Range  Flag
Haemoglobin  112  g/L  130-180  L
White cell count  14.2  x10^9/L  4.0-11.0  H
Sodium  139  mmol/L  135-145
HbA1c  47  mmol/mol  20-42  H
"""
    labs = {lab.test: lab for lab in RulesExtractor().extract([page_from_text(report)]).labs}
    haemoglobin = labs["Haemoglobin"]
    assert (haemoglobin.value, haemoglobin.unit, haemoglobin.low, haemoglobin.high) == (112, "g/L", 130, 180)
    assert haemoglobin.flag == "L"
    assert haemoglobin.codings[0].code == "718-7"
    assert labs["White cell count"].unit == "10*9/L" and labs["White cell count"].flag == "H"
    assert labs["Sodium"].flag == "N"
    assert labs["HbA1c"].codings[0].code == "59261-8"  # the IFCC (mmol/mol) code, chosen by unit


@pytest.mark.parametrize(
    ("written", "dose", "unit"),
    [
        ("Albuterol 90 mcg 2 puffs q4h prn", 180, "ug"),  # the strength of one puff, two at a time
        ("Metformin 500 mg 2 tablets BID", 1000, "mg"),
        ("Paracetamol 500 mg, 2 tabs QDS", 1000, "mg"),
        ("Metformin 500 mg 2 times per day", 500, "mg"),  # a frequency, not a count
        ("Metformin 500 mg po BID", 500, "mg"),
    ],
)
def test_a_dose_of_several_units_is_their_total(written: str, dose: float, unit: str) -> None:
    medication = parse_medication(written)
    assert medication is not None and (medication.dose_value, medication.dose_unit) == (dose, unit)


@pytest.mark.parametrize(
    ("written", "frequency", "period_unit", "when", "as_needed"),
    [
        ("BID", 2, "d", (), False),
        ("bd", 2, "d", (), False),
        ("20mg OD", 1, "d", (), False),
        ("1 and 1/2 tabs po qhs", 1, "d", ("HS",), False),
        ("q6h PRN", 1, "h", (), True),
        ("four times daily", 4, "d", (), False),
        ("3 times a day", 3, "d", (), False),
        ("2x per day", 2, "d", (), False),
        ("weekly", 1, "wk", (), False),
    ],
)
def test_sig_frequency(written: str, frequency: int, period_unit: str, when: tuple[str, ...], as_needed: bool) -> None:
    timing = parse_timing(written)
    assert timing is not None
    assert (timing.frequency, timing.period_unit, timing.when, timing.as_needed) == (
        frequency,
        period_unit,
        when,
        as_needed,
    )


def test_prn_alone_and_no_frequency() -> None:
    prn = parse_timing("as required")
    assert prn is not None and prn.as_needed and prn.frequency is None
    assert parse_timing("with food") is None


@pytest.mark.parametrize(
    ("phrase", "context", "expected"),
    [
        ("chest pain", "No chest pain.", "negated"),
        ("shortness of breath", "Patient denies shortness of breath.", "negated"),
        ("PE", "PE was ruled out on CTPA.", "negated"),
        ("fever", "Return if fever develops.", "hypothetical"),
        ("pneumonia", "Possible pneumonia.", "uncertain"),
        ("breast cancer", "Mother had breast cancer.", "family"),
        ("MI", "History of MI in 2010.", "historical"),
        ("cough", "No fever but cough for 3 days.", "present"),
        ("headache", "Headache.", "present"),
    ],
)
def test_assertion(phrase: str, context: str, expected: str) -> None:
    assert assertion_of(phrase, context) == expected


def test_nhs_number_check_digit() -> None:
    assert nhs_number_is_valid("9434765919")
    assert not nhs_number_is_valid("9434765918")
    assert not nhs_number_is_valid("943476591")


@pytest.mark.parametrize(
    ("written", "order", "expected"),
    [
        ("1956-03-14", "DMY", dt.date(1956, 3, 14)),
        ("14/03/1956", "DMY", dt.date(1956, 3, 14)),
        ("03/14/1956", "MDY", dt.date(1956, 3, 14)),
        ("03/04/1956", "DMY", dt.date(1956, 4, 3)),
        ("03/04/1956", "MDY", dt.date(1956, 3, 4)),
        ("14 Mar 1956", "DMY", dt.date(1956, 3, 14)),
        ("26 J ul 2025", "DMY", dt.date(2025, 7, 26)),  # OCR split the month name
        ("14 MAR 1956", "DMY", dt.date(1956, 3, 14)),
        ("March 14, 1956", "DMY", dt.date(1956, 3, 14)),
        ("31/02/1956", "DMY", None),
    ],
)
def test_parse_date(written: str, order: str, expected: dt.date | None) -> None:
    assert parse_date(written, order) == expected  # type: ignore[arg-type]


def test_low_confidence_words_reach_the_evidence() -> None:
    page = page_from_text("Patient Name: John Doe\nMedications\nMetformin 500 mg PO BID", confidence=0.5)
    extraction = RulesExtractor().extract([page])
    assert extraction.medications[0].evidence is not None
    assert extraction.medications[0].evidence.ocr_confidence == 0.5


@pytest.mark.parametrize(
    ("sentence", "relative"),
    [
        ("Mother had breast cancer", "mother"),
        ("Family history of ischaemic heart disease", "family"),
        ("FH: diabetes in brother", "brother"),
    ],
)
def test_family_history_names_the_relative(sentence: str, relative: str) -> None:
    from server.pipeline.extract.rules import relative_of

    assert relative_of(sentence) == relative


LETTER = """
Clinic Letter
Allergies: Penicillin - anaphylaxis (severe); latex
Past Surgical History
- Appendicectomy (2015)
- Laparoscopic cholecystectomy, 12 March 2019
- Colonoscopy
Allergies
- Codeine: vomiting, mild
- Peanut (moderate swelling of lips)
Plan
- Review in clinic in 6 weeks.
- Continue current medications.
- GP to check renal function in 2 weeks.
- Review in clinic in 6 weeks.
"""


def test_allergies_with_reaction_severity_and_category() -> None:
    page = page_from_text(LETTER)
    found = {a.substance: a for a in RulesExtractor().extract([page]).allergies}
    assert set(found) == {"Penicillin", "latex", "Codeine", "Peanut"}
    assert (found["Penicillin"].reaction, found["Penicillin"].severity) == ("anaphylaxis", "severe")
    assert (found["Codeine"].reaction, found["Codeine"].severity, found["Codeine"].category) == (
        "vomiting",
        "mild",
        "medication",
    )
    assert (found["Peanut"].category, found["Peanut"].reaction) == ("food", "swelling of lips")
    assert found["latex"].category == "environment" and found["latex"].reaction is None
    evidence = found["Codeine"].evidence
    assert evidence is not None and page.text[evidence.start : evidence.end] == "Codeine: vomiting, mild"


@pytest.mark.parametrize("written", ["NKDA", "No known drug allergies", "Nil known", "No known allergies."])
def test_no_known_allergies_is_recorded_not_skipped(written: str) -> None:
    allergies = RulesExtractor().extract([page_from_text(f"Allergies\n{written}\n")]).allergies
    assert [(a.none_known, a.substance) for a in allergies] == [(True, written.rstrip("."))]


def test_procedures_with_dates() -> None:
    procedures = RulesExtractor().extract([page_from_text(LETTER)]).procedures
    assert [(p.text, p.date) for p in procedures] == [
        ("Appendicectomy", "2015"),
        ("Laparoscopic cholecystectomy", "2019-03-12"),
        ("Colonoscopy", None),
    ]


def test_procedures_told_in_prose_or_listed_in_past_history() -> None:
    note = (
        "History of Presenting Complaint\n"
        "She underwent a laparoscopic cholecystectomy in 2019. Never had a colonoscopy. s/p CABG (2018).\n"
        "He has not had a hip replacement. Had a fall and hit his head. If she needs a hysterectomy, refer.\n"
        "Past Medical History\n"
        "- Type 2 diabetes mellitus\n"
        "- Appendicectomy 1998\n"
        "- Hypertension\n"
        "Plan\n"
        "- Arrange colonoscopy\n"
    )
    extraction = RulesExtractor().extract([page_from_text(note)])
    assert [(p.text, p.date, p.evidence.text if p.evidence else None) for p in extraction.procedures] == [
        ("laparoscopic cholecystectomy", "2019", "laparoscopic cholecystectomy in 2019"),
        ("CABG", "2018", "CABG (2018)"),
        ("Appendicectomy", "1998", "Appendicectomy 1998"),
    ]  # not the denied colonoscopy or hip replacement, the hypothetical hysterectomy, or the planned one
    assert [d.text for d in extraction.diagnoses] == ["Type 2 diabetes mellitus", "Hypertension"]


def test_follow_up_actions_are_the_plans_actions_once_each() -> None:
    follow_ups = RulesExtractor().extract([page_from_text(LETTER)]).follow_ups
    # "Continue current medications" is about medicines, not an action to follow up
    assert [f.text for f in follow_ups] == ["Review in clinic in 6 weeks", "GP to check renal function in 2 weeks"]


def test_contact_details_and_the_documents_date_author_and_organisation() -> None:
    page = page_from_text(
        "Northgate Health Clinic\n"
        "Clinic Letter\n"
        "Date: 02 Nov 2026\n"
        "Patient Name: Jane Smith\n"
        "Address: 14 Mill Lane, Elmford ZZ3 4QX Tel: 0113 496 0123\n"
        "Email: jane.smith@example.org\n"
        "Clinician: Dr K. Mensah\n"
    )
    extraction = RulesExtractor().extract([page])
    patient = extraction.patient
    assert patient.address is not None and patient.address.value == "14 Mill Lane, Elmford ZZ3 4QX"
    assert patient.postal_code == "ZZ3 4QX"
    assert patient.phone is not None and patient.phone.value == "0113 496 0123"
    assert patient.email is not None and patient.email.value == "jane.smith@example.org"
    assert extraction.document_date is not None and extraction.document_date.value == "2026-11-02"
    assert extraction.author is not None and extraction.author.value == "Dr K. Mensah"
    assert extraction.facility is not None and extraction.facility.value == "Northgate Health Clinic"


def test_an_accent_misread_on_a_lab_name_still_finds_the_test() -> None:
    labs = RulesExtractor().extract([page_from_text("Results\nSodíum 139 mmol/L 135-145\n")]).labs
    assert [(lab.test, lab.value, lab.codings[0].code) for lab in labs] == [("Sodíum", 139, "2951-2")]


def test_the_admission_of_a_discharge_summary() -> None:
    page = page_from_text(
        "Discharge Summary\n"
        "Admitted: 01 Jul 2025 Discharged: 05 Jul 2025\n"
        "Ward: Ward 12 Respiratory\n"
        "Consultant: Dr L. Fischer\n"
    )
    encounter = RulesExtractor().extract([page]).encounter
    assert encounter is not None
    assert (encounter.kind, encounter.start, encounter.end) == ("inpatient", "2025-07-01", "2025-07-05")
    assert (encounter.department, encounter.practitioner) == ("Ward 12 Respiratory", "Dr L. Fischer")
    letter = RulesExtractor().extract([page_from_text("Clinic Letter\nClinic: Diabetes\n")]).encounter
    assert letter is not None and (letter.kind, letter.department, letter.start) == ("outpatient", "Diabetes", None)


def test_stopped_and_changed_medications() -> None:
    page = page_from_text(
        "Medications\n"
        "- Ramipril 5 mg OD increased to 10 mg\n"
        "- Amlodipine 5 mg OD\n"
        "- Aspirin 75 mg OD stopped (bleeding)\n"
        "Stopped medications\n"
        "- Naproxen 500 mg BD\n"
    )
    found = {m.name: m for m in RulesExtractor().extract([page]).medications}
    assert (found["Ramipril"].status, found["Ramipril"].changed) == ("active", True)
    assert (found["Amlodipine"].status, found["Amlodipine"].changed) == ("active", False)
    assert found["Aspirin"].status == "stopped" and found["Naproxen"].status == "stopped"


def test_a_reports_specimen_date_goes_on_each_result() -> None:
    page = page_from_text("Laboratory Report\nDate: 05 Nov 2026\nCollected: 03 Nov 2026\nSodium 139 mmol/L 135-145\n")
    extraction = RulesExtractor().extract([page])
    assert [lab.specimen_date for lab in extraction.labs] == ["2026-11-03"]
    assert extraction.document_date is not None and extraction.document_date.value == "2026-11-05"


def test_an_operation_with_an_unreadable_date_in_past_history_is_kept_as_a_procedure() -> None:
    note = "Past Medical History\n- Appendicectomy 31/02/2019\n- Asthma\n"
    extraction = RulesExtractor().extract([page_from_text(note)])
    assert [(p.text, p.date) for p in extraction.procedures] == [("Appendicectomy 31/02/2019", None)]
    assert [d.text for d in extraction.diagnoses] == ["Asthma"]  # neither lost nor a condition
