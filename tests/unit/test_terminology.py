"""The terminology index: importers of every format, hybrid lookup, atomic rebuilds, clear errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from terminology import TerminologyImportError, TerminologyService
from terminology.abbreviations import expand_abbreviations
from terminology.embed import MiniLmEmbedder
from terminology.importers import create_importer
from terminology.importers.icd10cm import Icd10cmBuiltinImporter
from terminology.index import build_index
from terminology.lookup import FEATURES, _Retrieved
from terminology.model import ICD10CM, LOINC, RXNORM, SNOMED

pytestmark = pytest.mark.slow  # the session builds a real index with real embeddings once (~20 s)


@pytest.fixture(scope="module")
def service(terminology_index: Path, embedder: MiniLmEmbedder) -> TerminologyService:
    return TerminologyService(terminology_index, embedder)


def top_codes(service: TerminologyService, text: str, system: str, **kwargs: object) -> list[str]:
    return [c.code for c in service.lookup(text, systems=[system], **kwargs)]  # type: ignore[arg-type]


def test_builtin_systems_are_recorded_with_source_and_licence(service: TerminologyService) -> None:
    systems = {s.info.system: s for s in service.code_systems()}
    assert {ICD10CM, SNOMED, LOINC, "http://unitsofmeasure.org"} <= set(systems)
    assert "CC BY 4.0" in systems[SNOMED].info.licence
    assert systems[ICD10CM].concepts > 100 and "simple-icd-10-cm" in systems[ICD10CM].info.source


@pytest.mark.parametrize(
    ("mention", "expected"),
    [
        ("Essential hypertension", "I10"),
        ("HTN", "I10"),  # abbreviation expansion
        ("Hyperlipidaemia", "E78.5"),  # British spelling
        ("Gastro-oesophageal reflux disease", "K21.9"),
        ("Heart failure", "I50.9"),  # residual "unspecified" title
        ("Osteoarthritis of knee", "M17.9"),
        ("Esophageal reflux NOS", "K21.9"),  # an inclusion term
        # qualifiers that siblings differ by must agree: side, stage, acute vs acute-on-chronic
        ("Primary osteoarthritis of the left knee", "M17.12"),
        ("Chronic kidney disease stage II", "N18.2"),
        ("CKD stage 4", "N18.4"),
        ("Acute on chronic right ventricular failure", "I50.813"),
    ],
)
def test_icd10cm_lookup(service: TerminologyService, mention: str, expected: str) -> None:
    assert top_codes(service, mention, ICD10CM)[0] == expected


def test_a_word_the_index_never_saw_is_read_as_its_nearest_known_word(service: TerminologyService) -> None:
    # OCR and typing drop, add, swap or change a letter; the qualifier then clashes as spelled right
    assert service.prepare("Chronic kidney diseas, stage 4") == "Chronic kidney disease, stage 4"
    assert service.prepare("Persistnet atrial fibrillation") == "Persistent atrial fibrillation"
    assert service.prepare("Heart failrue") == "Heart failure"
    assert top_codes(service, "Chronic obstrctive pulmonary disease with acute exacerbaton", ICD10CM)[0] == "J44.1"
    # known words, short words (more often abbreviations), numbers and unknown words with no
    # near neighbour are left alone
    assert service.prepare("Type 2 diabetes mellitus") == "Type 2 diabetes mellitus"
    assert service.prepare("Asthma, qxz 20mg") == "Asthma, qxz 20mg"
    assert service.prepare("Furloughed") == "Furloughed"
    # a correction draws on the searched systems' words only: a drug name the index lacks does
    # not become a disease's word in a drug lookup (this slice's SNOMED CT says "Hypertensive")
    assert service.prepare("Hypertensiom", [ICD10CM]) == "Hypertension"
    assert service.prepare("Hypertensiom", [SNOMED]) == "Hypertensiom"


def test_semantic_search_finds_what_words_do_not(service: TerminologyService) -> None:
    # no designation contains "blood pressure", yet the meaning is hypertension
    assert "I10" in top_codes(service, "high blood pressure", ICD10CM, limit=3, mode="semantic")
    lexical_only = service.lookup("breathlessness", systems=[SNOMED], mode="lexical")
    semantic = service.lookup("breathlessness", systems=[SNOMED], mode="semantic", limit=3)
    assert not lexical_only and "267036007" in [c.code for c in semantic]  # Dyspnea


def test_filters_by_system_and_semantic_type(service: TerminologyService) -> None:
    disorders = service.lookup("asthma", systems=[SNOMED], semantic_types=["disorder"])
    assert disorders[0].code == "195967001" and all(c.semantic_type == "disorder" for c in disorders)
    findings = service.lookup("chest pain", systems=[SNOMED], semantic_types=["finding"])
    assert findings[0].code == "29857009"
    drug = service.lookup("Metformin", systems=[SNOMED], semantic_types=["drug"])[0]
    assert drug.code == "109081006" and drug.exact


def test_candidates_say_what_matched(service: TerminologyService) -> None:
    candidate = service.lookup("Esophageal reflux NOS", systems=[ICD10CM])[0]
    assert candidate.matched == "Esophageal reflux NOS" and candidate.exact
    assert candidate.display == "Gastro-esophageal reflux disease without esophagitis"
    assert candidate.lexical_rank is not None and candidate.semantic_rank is not None


def test_expand_and_concept_details(service: TerminologyService) -> None:
    contains, total = service.expand(ICD10CM, "hyperten", count=5)
    assert total >= 1 and ("http://hl7.org/fhir/sid/icd-10-cm", "I10", "Essential (primary) hypertension") in contains
    concept = service.concept(LOINC, "718-7")
    assert concept is not None and concept.display == "Hemoglobin [Mass/volume] in Blood"
    assert ("haemoglobin", "synonym") in concept.designations
    assert service.concept(LOINC, "0000-0") is None


def test_abbreviations() -> None:
    assert expand_abbreviations("T2DM and HTN, SOB on exertion") == (
        "type 2 diabetes mellitus and hypertension, shortness of breath on exertion"
    )
    assert expand_abbreviations("pe and dm in lower case stay") == "pe and dm in lower case stay"
    assert expand_abbreviations("Metformin 500 mg BID") == "Metformin 500 mg twice daily"
    assert expand_abbreviations("RSV bronchiolitis; HFrEF") == (
        "respiratory syncytial virus bronchiolitis; systolic heart failure"
    )
    assert expand_abbreviations("MS relapse") == "MS relapse"  # ambiguous: not expanded


# --- importers of the user's own release files --------------------------------------------


def rrf_row(rxcui: str, tty: str, text: str, *, sab: str = "RXNORM", suppress: str = "N") -> str:
    fields = [
        rxcui,
        "ENG",
        "",
        "",
        "",
        "",
        "",
        f"A{rxcui}{tty}",
        "",
        "",
        "",
        sab,
        tty,
        rxcui,
        text,
        "",
        suppress,
        "4096",
    ]
    return "|".join(fields) + "|"


RXNCONSO = (
    "\n".join(
        [
            rrf_row("6809", "IN", "metformin"),
            rrf_row("861007", "SCD", "metformin hydrochloride 500 MG Oral Tablet"),
            rrf_row("861007", "SY", "metformin 500 mg tablet"),
            rrf_row("161", "IN", "acetaminophen"),
            rrf_row("161", "SY", "paracetamol"),
            rrf_row("999", "IN", "withdrawn drug", suppress="O"),
            rrf_row("6809", "IN", "metformin from another source", sab="MMSL"),
        ]
    )
    + "\n"
)


@pytest.fixture
def scratch_index(tmp_path: Path, terminology_index: Path) -> Path:
    copy = tmp_path / "terminology.db"
    shutil.copyfile(terminology_index, copy)
    return copy


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_rxnorm_rrf_import(tmp_path: Path, scratch_index: Path, embedder: MiniLmEmbedder) -> None:
    source = tmp_path / "RXNCONSO.RRF"
    source.write_text(RXNCONSO)
    counts = build_index(scratch_index, embedder, [create_importer("rxnorm-rrf", source)])
    assert counts == {"RxNorm": 3}
    service = TerminologyService(scratch_index, embedder)
    assert top_codes(service, "paracetamol", RXNORM)[0] == "161"
    assert top_codes(service, "metformin 500mg tablet", RXNORM)[0] == "861007"
    assert service.concept(RXNORM, "999") is None  # suppressed rows are left out
    assert service.concept(RXNORM, "161").display == "acetaminophen"  # type: ignore[union-attr]
    # importing again replaces, never duplicates
    build_index(scratch_index, embedder, [create_importer("rxnorm-rrf", source)])
    assert [
        s.concepts for s in TerminologyService(scratch_index, embedder).code_systems() if s.info.system == RXNORM
    ] == [3]


@pytest.mark.parametrize(
    ("format_", "filename", "content", "problem"),
    [
        ("rxnorm-rrf", "RXNCONSO.RRF", RXNCONSO + "6809|ENG|truncated\n", "line 8: expected 18 pipe-terminated fields"),
        ("rxnorm-rrf", "RXNCONSO.RRF", "LOINC_NUM,COMPONENT\n", "line 1: expected 18"),
        ("rxnorm-rrf", "RXNCONSO.RRF", b"\xff\xfe\x00bad".decode("latin-1"), "line 1"),
        ("loinc-csv", "LoincTableCore.csv", "LOINC_NUM,COMPONENT\n1-8,x\n", "line 1: missing LOINC column"),
        ("icd10cm-order", "icd10cm_order_2026.txt", "this is not an order file\n", "line 1: not an ICD-10-CM"),
        ("icd10cm-tabular", "icd10cm_tabular_2026.xml", "<ICD10CM.tabular><chapter><diag>", "not well-formed XML"),
        ("icd10cm-tabular", "icd10cm_tabular_2026.xml", "<ClaML><Class/></ClaML>", "line 1: root element is <ClaML>"),
        (
            "icd10cm-tabular",
            "icd10cm_tabular_2026.xml",
            "<ICD10CM.tabular><version>2026</version></ICD10CM.tabular>",
            "no ICD-10-CM <diag> codes",
        ),
        (
            "icd10cm-tabular",
            "icd10cm_tabular_2026.xml",
            '<!DOCTYPE t [<!ENTITY a "aaaa">]><ICD10CM.tabular>&a;</ICD10CM.tabular>',
            "declares XML entities",
        ),
        ("fhir-json", "cs.json", '{"resourceType": "Patient"}', "not a FHIR CodeSystem"),
        ("snomed-rf2", "rf2", None, "no sct2_Concept_Snapshot"),
    ],
)
def test_bad_files_name_the_line_and_leave_the_index_intact(
    tmp_path: Path,
    scratch_index: Path,
    embedder: MiniLmEmbedder,
    format_: str,
    filename: str,
    content: str | None,
    problem: str,
) -> None:
    source = tmp_path / filename
    if content is None:
        source.mkdir()
    elif format_ == "rxnorm-rrf" and problem == "line 1":
        source.write_bytes(b"\xff\xfe\x00bad|\n")
    else:
        source.write_text(content)
    before = digest(scratch_index)
    with pytest.raises(TerminologyImportError) as caught:
        build_index(scratch_index, embedder, [create_importer(format_, source)])
    assert problem in str(caught.value)
    assert digest(scratch_index) == before
    assert not list(scratch_index.parent.glob(".*building"))  # no half-built file left behind


def test_loinc_csv_icd_order_fhir_json_and_rf2(tmp_path: Path, scratch_index: Path, embedder: MiniLmEmbedder) -> None:
    loinc = tmp_path / "LoincTableCore.csv"
    loinc.write_text(
        "LOINC_NUM,COMPONENT,PROPERTY,TIME_ASPCT,SYSTEM,SCALE_TYP,METHOD_TYP,CLASS,CLASSTYPE,LONG_COMMON_NAME,"
        "SHORTNAME,EXTERNAL_COPYRIGHT_NOTICE,STATUS,VersionFirstReleased,VersionLastChanged\n"
        '"2339-0","Glucose","MCnc","Pt","Bld","Qn","","CHEM","1","Glucose [Mass/volume] in Blood","Glucose Bld-mCnc",'
        '"","ACTIVE","1.0","2.73"\n'
        '"99999-9","Old","MCnc","Pt","Bld","Qn","","CHEM","1","Deprecated thing","Old","","DEPRECATED","1.0","2.0"\n'
    )
    order = tmp_path / "icd10cm_order_2026.txt"
    order.write_text(
        "00001 A00     0 Cholera                                                      Cholera\n"
        "00002 A000    1 Cholera due to Vibrio cholerae 01, biovar cholerae           Cholera due to Vibrio cholerae"
        " 01, biovar cholerae\n"
    )
    codesystem = tmp_path / "cs.json"
    codesystem.write_text(
        json.dumps(
            {
                "resourceType": "CodeSystem",
                "url": "http://example.org/fhir/CodeSystem/local-findings",
                "version": "1",
                "name": "LocalFindings",
                "status": "active",
                "content": "complete",
                "concept": [
                    {
                        "code": "wheeze",
                        "display": "Wheeze",
                        "concept": [{"code": "exp-wheeze", "display": "Expiratory wheeze"}],
                    }
                ],
            }
        )
    )
    rf2 = tmp_path / "SnomedCT_Test" / "Snapshot" / "Terminology"
    rf2.mkdir(parents=True)
    (rf2 / "sct2_Concept_Snapshot_INT_20260101.txt").write_text(
        "id\teffectiveTime\tactive\tmoduleId\tdefinitionStatusId\n"
        "22298006\t20020131\t1\t900000000000207008\t900000000000074008\n"
        "11111111\t20020131\t0\t900000000000207008\t900000000000074008\n"
    )
    (rf2 / "sct2_Description_Snapshot-en_INT_20260101.txt").write_text(
        "id\teffectiveTime\tactive\tmoduleId\tconceptId\tlanguageCode\ttypeId\tterm\tcaseSignificanceId\n"
        "1\t2002\t1\tm\t22298006\ten\t900000000000003001\tMyocardial infarction (disorder)\tc\n"
        "2\t2002\t1\tm\t22298006\ten\t900000000000013009\tMyocardial infarction\tc\n"
        "3\t2002\t1\tm\t22298006\ten\t900000000000013009\tHeart attack\tc\n"
        "4\t2002\t1\tm\t11111111\ten\t900000000000013009\tInactive thing\tc\n"
    )
    (rf2 / "der2_cRefset_LanguageSnapshot-en_INT_20260101.txt").write_text(
        "id\teffectiveTime\tactive\tmoduleId\trefsetId\treferencedComponentId\tacceptabilityId\n"
        "a\t2002\t1\tm\t900000000000509007\t2\t900000000000548007\n"
        "b\t2002\t1\tm\t900000000000509007\t3\t900000000000549004\n"
    )
    importers = [
        create_importer("loinc-csv", loinc),
        create_importer("icd10cm-order", order),
        create_importer("fhir-json", codesystem),
        create_importer("snomed-rf2", rf2.parent.parent),
    ]
    counts = build_index(scratch_index, embedder, importers)
    assert counts == {"LOINC": 1, "ICD-10-CM": 1, "LocalFindings": 2, "SNOMED CT": 1}
    service = TerminologyService(scratch_index, embedder)
    assert service.concept(LOINC, "2339-0").display == "Glucose [Mass/volume] in Blood"  # type: ignore[union-attr]
    assert service.concept(LOINC, "99999-9") is None
    assert service.concept(ICD10CM, "A00.0") is not None and service.concept(ICD10CM, "A00") is None
    assert service.concept("http://example.org/fhir/CodeSystem/local-findings", "exp-wheeze") is not None
    mi = service.concept(SNOMED, "22298006")
    assert mi is not None and mi.display == "Myocardial infarction" and mi.semantic_type == "disorder"
    assert top_codes(service, "heart attack", SNOMED)[0] == "22298006"
    assert service.concept(SNOMED, "11111111") is None


def test_a_killed_builds_leftover_is_removed(tmp_path: Path, scratch_index: Path, embedder: MiniLmEmbedder) -> None:
    leftover = scratch_index.with_name(f".{scratch_index.name}.999999999.building")  # no such process
    leftover.write_bytes(b"half an index")
    source = tmp_path / "RXNCONSO.RRF"
    source.write_text(RXNCONSO)
    build_index(scratch_index, embedder, [create_importer("rxnorm-rrf", source)])
    assert not leftover.exists()


# The CMS tabular list's structure (icd10cm_tabular_2026.xml), cut down to four categories
TABULAR = """<?xml version="1.0" encoding="utf-8"?>
<ICD10CM.tabular>
  <version>2026</version>
  <chapter>
    <name>1</name>
    <desc>Certain infectious and parasitic diseases (A00-B99)</desc>
    <section id="B00-B09">
      <desc>Viral infections characterized by skin and mucous membrane lesions (B00-B09)</desc>
      <diag>
        <name>B01</name>
        <desc>Varicella [chickenpox]</desc>
        <diag><name>B01.0</name><desc>Varicella meningitis</desc></diag>
        <diag><name>B01.9</name><desc>Varicella without complication</desc></diag>
      </diag>
      <diag>
        <name>B08</name>
        <desc>Other viral infections characterized by skin and mucous membrane lesions, not elsewhere classified</desc>
        <diag><name>B08.3</name><desc>Erythema infectiosum [fifth disease]</desc></diag>
      </diag>
    </section>
  </chapter>
  <chapter>
    <name>9</name>
    <desc>Diseases of the circulatory system (I00-I99)</desc>
    <section id="I30-I5A">
      <desc>Other forms of heart disease (I30-I5A)</desc>
      <diag>
        <name>I50</name>
        <desc>Heart failure</desc>
        <codeFirst><note>heart failure complicating abortion (O00-O07, O08.8)</note></codeFirst>
        <diag>
          <name>I50.1</name>
          <desc>Left ventricular failure, unspecified</desc>
          <inclusionTerm><note>Cardiac asthma</note><note>Edema of lung with heart disease NOS</note></inclusionTerm>
        </diag>
        <diag>
          <name>I50.9</name>
          <desc>Heart failure, unspecified</desc>
          <inclusionTerm><note>Biventricular (heart) failure NOS</note></inclusionTerm>
        </diag>
      </diag>
    </section>
  </chapter>
  <chapter>
    <name>19</name>
    <desc>Injury, poisoning and certain other consequences of external causes (S00-T88)</desc>
    <section id="S00-S09">
      <desc>Injuries to the head (S00-S09)</desc>
      <diag>
        <name>S02</name>
        <desc>Fracture of skull and facial bones</desc>
        <sevenChrNote><note>The appropriate 7th character is to be added to each code from category S02:</note>
        </sevenChrNote>
        <sevenChrDef>
          <extension char="A">initial encounter for closed fracture</extension>
          <extension char="D">subsequent encounter for fracture with routine healing</extension>
        </sevenChrDef>
        <diag>
          <name>S02.0</name>
          <desc>Fracture of vault of skull</desc>
          <inclusionTerm><note>Fracture of frontal bone</note><note>Use two codes if both apply.</note></inclusionTerm>
          <excludes1><note>fracture of orbit floor (S02.85-)</note><note>cardiac arrest (I46.9)</note></excludes1>
        </diag>
        <diag>
          <name>S02.8</name>
          <desc>Fractures of other specified skull and facial bones</desc>
          <diag>
            <name>S02.85</name>
            <desc>Fracture of orbit, unspecified</desc>
            <inclusionTerm><note>Fracture of orbit NOS</note></inclusionTerm>
          </diag>
        </diag>
      </diag>
    </section>
  </chapter>
</ICD10CM.tabular>
"""


TABULAR_CODES = ("B01.0", "B01.9", "B08.3", "I50.1", "I50.9", "S02.0XXA", "S02.0XXD", "S02.85XA", "S02.85XD")


def test_icd10cm_tabular_xml(tmp_path: Path, scratch_index: Path, embedder: MiniLmEmbedder) -> None:
    source = tmp_path / "icd10cm_tabular_2026.xml"
    source.write_text(TABULAR)
    rows = {row.code: row for row in create_importer("icd10cm-tabular", source).rows()}
    # billable codes only; a 7th character makes injury codes billable, with X placeholders
    assert sorted(rows) == list(TABULAR_CODES)
    assert rows["S02.0XXA"].display == "Fracture of vault of skull, initial encounter for closed fracture"
    assert ("Cardiac asthma", "inclusion") in rows["I50.1"].designations
    # a tabular code's terms go to its initial-encounter code; coding instructions are not names
    assert [t for t, _ in rows["S02.0XXA"].designations] == [rows["S02.0XXA"].display, "Fracture of frontal bone"]
    assert len(rows["S02.0XXD"].designations) == 1
    # the synonym in a category's title's brackets names the code a plain mention gets
    assert ("chickenpox", "synonym") in rows["B01.9"].designations
    assert ("fifth disease", "synonym") in rows["B08.3"].designations  # and a billable code's
    counts = build_index(scratch_index, embedder, [create_importer("icd10cm-tabular", source)])
    assert counts == {"ICD-10-CM": len(TABULAR_CODES)}
    service = TerminologyService(scratch_index, embedder)
    assert top_codes(service, "cardiac asthma", ICD10CM)[0] == "I50.1"
    assert [s.info.version for s in service.code_systems() if s.info.system == ICD10CM] == ["2026"]


# The Alphabetic Index of the same release (icd10cm_index_2026.xml), cut down to a few entries
INDEX = """<?xml version="1.0" encoding="utf-8"?>
<ICD10CM.index>
  <version>2026</version>
  <title>ICD-10-CM INDEX TO DISEASES and INJURIES</title>
  <letter>
    <title>F</title>
    <mainTerm>
      <title>Failure</title>
      <term level="1">
        <title>heart<nemod>(acute) (senile) (sudden)</nemod></title>
        <code>I50.9</code>
        <term level="2">
          <title>with</title>
          <term level="3"><title>pulmonary edema</title><code>I50.1</code></term>
        </term>
        <term level="2"><title>biventricular</title><code>I50.9</code></term>
      </term>
    </mainTerm>
    <mainTerm>
      <title>Fracture, traumatic</title>
      <term level="1"><title>orbit, orbital</title><code>S02.85-</code></term>
    </mainTerm>
  </letter>
  <letter>
    <title>L</title>
    <mainTerm><title>Leakage</title><see>Edema</see></mainTerm>
  </letter>
</ICD10CM.index>
"""


def test_icd10cm_release_folder_adds_the_alphabetic_index(
    tmp_path: Path, scratch_index: Path, embedder: MiniLmEmbedder
) -> None:
    release = tmp_path / "icd10cm-table-index-2026"
    release.mkdir()
    (release / "icd10cm_tabular_2026.xml").write_text(TABULAR)
    (release / "icd10cm_index_2026.xml").write_text(INDEX)
    importer = create_importer("icd10cm-tabular", release)
    assert importer.info.version == "2026" and "tabular list and index" in importer.info.source
    rows = {row.code: row.designations for row in importer.rows()}
    assert sorted(rows) == list(TABULAR_CODES)
    # an entry is named by its path, a connective continuing the phrase; nonessential modifiers kept
    assert ("Failure, heart (acute) (senile) (sudden)", "synonym") in rows["I50.9"]
    assert ("Failure, heart (acute) (senile) (sudden) with pulmonary edema", "synonym") in rows["I50.1"]
    # "S02.85-" needs more characters: the entry goes to the code a plain mention gets; so does an
    # Excludes note's pointer; a pointer at a code the release lacks (I46.9) is dropped
    assert {"Fracture, traumatic, orbit, orbital", "fracture of orbit floor"} <= {t for t, _ in rows["S02.85XA"]}
    assert not any("cardiac arrest" in t for terms in rows.values() for t, _ in terms)
    build_index(scratch_index, embedder, [importer])
    service = TerminologyService(scratch_index, embedder)
    assert top_codes(service, "senile heart failure", ICD10CM)[0] == "I50.9"
    # the tabular file alone still imports, without the index's names
    alone = {
        row.code: row.designations
        for row in create_importer("icd10cm-tabular", release / "icd10cm_tabular_2026.xml").rows()
    }
    assert not any(t.startswith("Failure, heart") for t, _ in alone["I50.9"])


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"readme.txt": "hello"}, "no tabular list (icd10cm_tabular_YYYY.xml) in this folder"),
        ({"icd10cm_index_2026.xml": INDEX}, "no tabular list"),
        ({"icd10cm_tabular_2026.xml": TABULAR, "icd10cm_index_2026.xml": INDEX[:300]}, "not well-formed XML"),
        ({"icd10cm_tabular_2026.xml": TABULAR, "icd10cm_index_2026.xml": "<ICD10CM.tabular/>"}, "not <ICD10CM.index>"),
    ],
)
def test_a_bad_release_folder_names_the_file(
    tmp_path: Path, scratch_index: Path, embedder: MiniLmEmbedder, files: dict[str, str], problem: str
) -> None:
    release = tmp_path / "release"
    release.mkdir()
    for name, content in files.items():
        (release / name).write_text(content)
    before = digest(scratch_index)
    with pytest.raises(TerminologyImportError) as caught:
        build_index(scratch_index, embedder, [create_importer("icd10cm-tabular", release)])
    assert problem in str(caught.value) and str(release) in str(caught.value)
    assert digest(scratch_index) == before


def test_an_index_says_when_its_builtins_are_older_than_this_paperchart(
    tmp_path: Path, scratch_index: Path, embedder: MiniLmEmbedder
) -> None:
    from terminology.index import BUILTIN_CONTENT, BUILTIN_CONTENT_KEY

    builtin = [Icd10cmBuiltinImporter(prefixes=("I10",))]
    build_index(scratch_index, embedder, builtin)  # as an older paperchart built it: no content mark
    assert TerminologyService(scratch_index, embedder).builtins_outdated()
    build_index(scratch_index, embedder, builtin, meta={BUILTIN_CONTENT_KEY: str(BUILTIN_CONTENT)})
    assert not TerminologyService(scratch_index, embedder).builtins_outdated()
    # an index of the user's own release files has no built-ins to bring up to date
    source = tmp_path / "icd10cm_tabular_2026.xml"
    source.write_text(TABULAR)
    own = tmp_path / "own.db"
    build_index(own, embedder, [create_importer("icd10cm-tabular", source)])
    assert not TerminologyService(own, embedder).builtins_outdated()


def test_category_inclusion_terms_go_to_the_code_for_a_plain_mention() -> None:
    import simple_icd_10_cm as icd

    from terminology.importers.icd10cm import default_leaf

    assert default_leaf(icd, "I50") == "I50.9"  # not I50.1 "Left ventricular failure, unspecified"
    assert default_leaf(icd, "S02.85") == "S02.85XA"  # the initial encounter
    assert default_leaf(icd, "H44.52") == "H44.529"  # "…, unspecified eye"
    assert default_leaf(icd, "E11") == "E11.9"  # no "unspecified": the one "without complications"
    assert default_leaf(icd, "B02") == "B02.9"  # "Zoster [herpes zoster]", which includes "shingles"
    assert default_leaf(icd, "F10.1") == "F10.10"  # "Alcohol abuse, uncomplicated"
    # the parent's title with an axis left open: "... of unspecified deep veins of [unspecified]
    # lower extremity", whose "Deep vein thrombosis NOS" is I82.409's; "Respiratory tuberculosis [unspecified]"
    assert default_leaf(icd, "I82.40") == "I82.409"
    assert default_leaf(icd, "A15") == "A15.9"
    assert default_leaf(icd, "A18") is None  # none of these: left alone rather than guessed
    # the one child that is the title with "without ..." added, and no "with": the Index's "Hernia,
    # hiatal K44.9" and "Raynaud's disease I73.00"; not "Acute Chagas' disease without heart
    # involvement" for "Chagas' disease", nor one of two "Migraine without aura, [not] intractable"
    assert default_leaf(icd, "K44") == "K44.9"
    assert default_leaf(icd, "I73.0") == "I73.00"
    assert default_leaf(icd, "B57") is None
    assert default_leaf(icd, "G43.0") is None
    rows = {r.code: r for r in Icd10cmBuiltinImporter(prefixes=("K44", "I73.0")).rows()}
    assert ("hiatus hernia (esophageal) (sliding)", "inclusion") in rows["K44.9"].designations
    assert ("Raynaud's disease", "inclusion") in rows["I73.00"].designations
    rows = {r.code: r for r in Icd10cmBuiltinImporter(prefixes=("S02.85", "I82.4", "B01", "B06", "M71.2")).rows()}
    assert ("Fracture of orbit NOS", "inclusion") in rows["S02.85XA"].designations
    assert {("Deep vein thrombosis NOS", "inclusion"), ("DVT NOS", "inclusion")} <= set(rows["I82.409"].designations)
    # a synonym in a category's title's brackets names its default leaf, but not an eponym alone
    assert ("chickenpox", "synonym") in rows["B01.9"].designations
    # ...unless it holds another category's title: "Rubella [German measles]" would take "Measles" (B05)
    assert not any("measles" in term.lower() for term, _ in rows["B06.9"].designations)
    assert not any(term == "Baker" for row in rows.values() for term, _ in row.designations)
    held = Icd10cmBuiltinImporter(prefixes=("S02.85",), held_out={("S02.85XA", "Fracture of orbit NOS")})
    assert ("Fracture of orbit NOS", "inclusion") not in {r.code: r for r in held.rows()}["S02.85XA"].designations


def test_inclusion_terms_that_point_at_other_codes_are_not_names() -> None:
    from terminology.importers.icd10cm import is_term

    # instructions to the coder, read nowhere in a note
    assert not is_term("Conditions classifiable to C81-C90, C96.-")
    assert not is_term("Any condition in I00 with pericarditis")
    assert not is_term("Malignant neoplasm of greater curvature of stomach, not classifiable to C16.0-C16.4")
    assert not is_term("Infestation classifiable to more than one of the categories B85.0-B85.3")
    # names that merely hold a code-like word
    assert is_term("Vitamin B12 deficiency")
    assert is_term("Anoctamin-5-related LGMD R12")
    assert is_term("C6 radiculopathy due to disc disorder")
    # Z86.002 keeps its own name but not "Conditions classifiable to D07"
    rows = {r.code: r for r in Icd10cmBuiltinImporter(prefixes=("Z86.002",)).rows()}
    terms = {term for term, _ in rows["Z86.002"].designations}
    assert terms and not any("classifiable" in term for term in terms)


def test_the_tabulars_includes_and_excludes_notes_name_codes_too() -> None:
    rows = {r.code: r for r in Icd10cmBuiltinImporter(prefixes=("R06.2", "J44.8", "J44.9")).rows()}
    # J45 Asthma: "Excludes1: wheezing NOS (R06.2)"; R06.2's title is "Wheezing" (kept once)
    assert rows["R06.2"].designations == (("Wheezing", "preferred"), ("wheezing NOS", "synonym"))
    # J44 COPD: "Includes: chronic obstructive bronchitis" goes to J44.9, COPD unspecified
    terms = {term.lower() for term, _ in rows["J44.9"].designations}
    assert "chronic bronchitis with emphysema" in terms
    # ...but a name a billable code includes itself stays there: J44.89 "Chronic emphysematous bronchitis"
    assert "chronic emphysematous bronchitis" not in terms
    assert "chronic emphysematous bronchitis" in {term.lower() for term, _ in rows["J44.89"].designations}
    # a held-out term is held out wherever the tabular names it, brackets, case and "NOS" aside
    held = Icd10cmBuiltinImporter(prefixes=("R06.2",), held_out={("R06.2", "Wheezing (NOS)")})
    assert next(iter(held.rows())).designations == (("Wheezing", "preferred"),)


def test_a_name_notes_point_at_several_codes_names_none_of_them() -> None:
    # "herpes zoster (B02.8)" under H62.4 means its otitis externa, "(B02.29)" under H94.0 its
    # auditory nerve disorder; B10's "herpes zoster (B02.-)" points at the category, whose default
    # is B02.9; "syphilis" points at seven manifestations in A52 and, from G99.8's nervous system
    # disorders, at A52.1- (neurosyphilis there), which holds none of the seven: it names nothing
    rows = {r.code: r for r in Icd10cmBuiltinImporter(prefixes=("B02", "A52")).rows()}
    named = {code: {term.lower() for term, _ in row.designations} for code, row in rows.items()}
    assert [code for code, terms in named.items() if "herpes zoster" in terms] == ["B02.9"]
    assert [code for code, terms in named.items() if "syphilis" in terms] == []


def test_notes_that_qualify_the_code_they_sit_under_name_nothing() -> None:
    prefixes = ("J00", "T20.0", "M05.3", "M06.9", "A56.0", "C32", "F20.9", "R06.8")
    rows = {r.code: r for r in Icd10cmBuiltinImporter(prefixes=prefixes).rows()}
    named = {code: {term.lower() for term, _ in row.designations} for code, row in rows.items()}
    # a billable code's title names it by the synonym in its brackets: "Acute nasopharyngitis [common cold]"
    assert "common cold" in named["J00"]
    # ...but brackets that qualify the title do not: "Burn of ... ear [any part, except ear drum]"
    assert not [term for terms in named.values() for term in terms if term.startswith("any part")]
    # "rheumatoid arthritis (M05.31)" under endocarditis is rheumatoid endocarditis, "(M05.32)"
    # under myopathy rheumatoid myopathy: pointed at different categories, it names none of them
    assert not [code for code, terms in named.items() if {"rheumatoid arthritis", "rheumatoid (arthritis)"} & terms]
    # one word that qualifies: "chlamydial (A56.01)" under urethral disorders, "larynx (C32.3)"
    # under connective tissue (the larynx's cartilage)
    assert "chlamydial" not in named["A56.01"] and "larynx" not in named["C32.3"]
    # one word that is a condition's name: "schizophrenia (F20.-)", "hypercapnia (R06.89)"
    assert "schizophrenia" in named["F20.9"] and "hypercapnia" in named["R06.89"]


def clash(mention: str, title: str) -> float:
    """How much a mention and a code's title clash (``_conflicts`` of their qualifiers)."""
    from terminology.lookup import _conflicts, _qualifiers

    return _conflicts(_qualifiers(mention), _qualifiers(title))


def test_a_mention_nos_prefers_the_default_code_and_qualifiers_clash() -> None:
    from terminology.lookup import _asks_default, _is_default, _names_a_complication

    assert _asks_default("Femoral hernia NOS")
    assert not _asks_default("Femoral hernia")
    assert _asks_default("Hb-SS disease with crisis NOS")
    assert _is_default("Unilateral femoral hernia, without obstruction or gangrene")
    assert _is_default("Acute myeloblastic leukemia, not having achieved remission")
    assert _is_default("Pain in unspecified limb")
    assert not _is_default("Acute myeloblastic leukemia, in remission")
    # a mention that names a complication: "unspecified" and "not ..." still the default, "uncomplicated" not
    assert _is_default("Hb-SS disease with crisis, unspecified", "Hb-SS disease with crisis NOS")
    assert _is_default(
        "Acute myeloid leukemia with 11q23-abnormality not having achieved remission",
        "Acute myeloid leukemia with 11q23-abnormality NOS",
    )
    assert not _is_default("Mild persistent asthma, uncomplicated", "Mild persistent asthma with exacerbation NOS")
    assert _is_default("Mild persistent asthma, uncomplicated", "Mild persistent asthma NOS")
    # a complication ("with ...") the mention does not name is no default, "unspecified" or not
    assert not _is_default("Other sickle-cell disorders with crisis, unspecified", "Sickle-cell disorder NOS")
    assert _is_default("Sickle-cell disease without crisis", "Sickle-cell disorder NOS")
    assert _is_default("Migraine, unspecified, not intractable, with status migrainosus", "Status migrainosus NOS")
    # "complicated by" is the classification's other way to write "with"
    assert _names_a_complication("Measles complicated by meningitis", "Measles NOS")
    assert not _names_a_complication("Measles complicated by meningitis", "Measles complicated by meningitis")

    assert clash("Carcinoma in situ of colon", "Malignant neoplasm of colon") == 1
    assert clash("Community acquired pneumonia", "Congenital pneumonia, unspecified") == 1
    assert (
        clash(expand_abbreviations("MRSA pneumonia"), "Pneumonia due to Methicillin susceptible Staphylococcus aureus")
        == 1
    )
    assert clash("Bilateral inguinal hernia", "Unilateral inguinal hernia, without obstruction or gangrene") == 1
    assert clash("Left inguinal hernia", "Unilateral inguinal hernia, without obstruction or gangrene") == 0
    # a setting the code needs and the mention does not state clashes, and the reverse; a cause only one way
    assert (
        clash("Pulmonary hemorrhage NOS", "Unspecified pulmonary hemorrhage originating in the perinatal period") == 1
    )
    assert clash("Varicose veins NOS", "Varicose veins of lower extremity in pregnancy, unspecified trimester") == 1
    assert (
        clash("Varicose veins in pregnancy", "Varicose veins of lower extremity in pregnancy, unspecified trimester")
        == 0
    )
    assert clash("Varicose veins in pregnancy", "Varicose veins of unspecified lower extremity") == 1
    assert clash("Neonatal petechiae", "Spontaneous ecchymoses") == 1
    assert (
        clash("Newborn affected by maternal hypertension", "Newborn affected by maternal hypertensive disorders") == 0
    )
    assert clash("Pneumonia due to pneumococcus", "Pneumonia due to Streptococcus pneumoniae") == 0
    assert clash("Anemia due to chronic kidney disease", "Anemia in chronic kidney disease") == 0
    assert clash("History of stroke", "Family history of stroke") == 1
    assert (
        clash("Mild depression", "Major depressive disorder, recurrent, mild") == 1
    )  # a single episode is the default
    assert clash("Recurrent mild depression", "Major depressive disorder, recurrent, mild") == 0
    # DSM-5's "Other specified X" is ICD-10-CM's "Other X", not "X, unspecified"; an "Other X"
    # title still fits a mention that does not say "other" (guideline I.A.9)
    assert clash("Other specified paraphilic disorder", "Paraphilia, unspecified") == 1
    assert clash("Other specified paraphilic disorder", "Other paraphilias") == 0
    assert clash("Reactive thrombocytosis", "Other thrombocytosis") == 0
    # a remission is coded where the record documents one
    assert clash("Tobacco use disorder, moderate (dependence)", "Nicotine dependence, unspecified, in remission") == 1
    assert clash("Tobacco use disorder, in early remission", "Nicotine dependence, unspecified, in remission") == 0
    assert clash("Acute myeloblastic leukemia", "Acute myeloblastic leukemia, not having achieved remission") == 0
    assert (
        clash("Fever", "Postprocedural fever") == 1
        and clash("Myocardial disease", "Myocarditis in diseases classified elsewhere") == 1
    )
    assert (
        clash("Physical retardation due to malnutrition", "Retarded development following protein-calorie malnutrition")
        == 0
    )
    assert clash("Adhesions of omentum", "Peritoneal adhesions (postprocedural) (postinfection)") == 0  # nonessential
    assert clash("Newborn affected by membranitis", "Newborn affected by other conditions from chorioamnionitis") == 0
    # a code that says a qualifier is unknown does not fit a mention that names it
    assert clash("Pressure ulcer of right hip, stage 3", "Pressure ulcer of right hip, unspecified stage") == 1
    assert clash("ICANS, grade 2", "Immune effector cell-associated neurotoxicity syndrome, grade unspecified") == 1
    assert clash("Pressure ulcer of right hip, stage 3", "Pressure ulcer of unspecified hip, stage 3") == 1
    assert clash("Vascular dementia, mild", "Vascular dementia, unspecified severity, with agitation") == 1
    assert clash("Burn of second degree of left hand", "Burn of unspecified degree of left hand") == 1
    assert clash("Pressure ulcer of hip, stage 3", "Pressure ulcer of unspecified hip, stage 3") == 0
    assert clash("Neoplasm of right bronchus", "Neoplasm of unspecified part of right bronchus") == 0


def test_denials_parenthesized_qualifiers_and_an_unstated_side() -> None:
    # what one denies and the other has clashes, though the crude stem makes esophagitis esophageal
    gerd = "Gastro-esophageal reflux disease"
    assert clash(f"{gerd} with esophagitis", f"{gerd} without esophagitis") == 1
    assert clash(f"{gerd} with esophagitis", f"{gerd} with esophagitis, without bleeding") == 0
    parkinsons = "Parkinson's disease without dyskinesia, with fluctuations"
    assert clash("Parkinson's disease with dyskinesia", parkinsons) == 1
    assert clash("Parkinson's disease with fluctuations", parkinsons) == 0
    complications = "Type 2 diabetes mellitus with unspecified complications"
    assert clash("Type 2 diabetes without complications", complications) == 1
    # a parenthesized qualifier counts where the essential words leave its group empty
    copd = "Chronic obstructive pulmonary disease"
    assert clash(f"{copd} exacerbation", f"{copd} with (acute) exacerbation") == 0
    assert clash("Acute cor pulmonale", "Cor pulmonale (chronic)") == 1
    # methicillin resistance and a chronic embolism are coded only where the record says so
    mrsa = "Sepsis due to Methicillin resistant Staphylococcus aureus"
    assert clash("Staphylococcus aureus sepsis", mrsa) == 1
    assert clash(expand_abbreviations("MRSA sepsis"), mrsa) == 0
    chronic = "Chronic embolism and thrombosis of unspecified deep veins of unspecified lower extremity"
    assert clash("Deep vein thrombosis", chronic) == 1
    assert clash("Chronic deep vein thrombosis", chronic) == 0
    # a side the record does not give is coded as unspecified: half a clash with a sided code
    assert clash("Malignant neoplasm of ovary", "Malignant neoplasm of bilateral ovaries") == 0.5
    assert clash("Malignant neoplasm of ovary", "Malignant neoplasm of unspecified ovary") == 0
    assert clash("Malignant neoplasm of left ovary", "Malignant neoplasm of left ovary") == 0
    # "both" is bilateral
    assert clash("Osteoarthritis of both knees", "Other unilateral secondary osteoarthritis of knee") == 1
    assert clash("Osteoarthritis of both knees", "Bilateral primary osteoarthritis of knee") == 0
    assert clash("Acquired absence of uterus", "Acquired absence of both cervix and uterus") == 0
    # a neoplasm of a site is the organ's, its skin's only where the record says skin
    skin = "Unspecified malignant neoplasm of skin of breast"
    assert clash("Malignant neoplasm of breast", skin) == 1
    assert clash("Basal cell carcinoma of breast", "Basal cell carcinoma of skin of breast") == 0
    assert clash("Carcinoma in situ of anal margin", "Carcinoma in situ of skin of trunk") == 0
    assert clash("Malignant neoplasm of breast", "Malignant neoplasm of unspecified site of female breast") == 0


def test_plain_mentions_read_as_the_classification_words_them(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    prefixes = ("O14", "O24.4", "C44.5", "C50.9", "C56", "C57", "J44", "K21", "Z80", "B02", "L50", "S72.0", "M25.5")
    service, _, _ = held_out_lookup(tmp_path, embedder, prefixes, "O14.90", "nothing held out")
    # a hyphenated compound written without its hyphen is the index's word
    assert service.prepare("Preeclampsia", [ICD10CM]) == "Pre-eclampsia"
    # an everyday word no name has is the Index's word for it, not a misspelling ("lives")
    assert service.prepare("Hives", [ICD10CM]) == "Urticaria"
    assert top_codes(service, "Hives", ICD10CM)[0] == "L50.9"
    # B02 "Zoster [herpes zoster]" includes "shingles": a name of B02.9 "Zoster without complications"
    assert top_codes(service, "Shingles", ICD10CM)[0] == "B02.9"
    # "Fracture, hip - see Fracture, femur, neck", not "Pain in right hip"
    assert top_codes(service, "Right hip fracture", ICD10CM)[0] == "S72.001A"
    assert top_codes(service, "Preeclampsia", ICD10CM)[0] == "O14.90"
    # an axis the title leaves open ("unspecified control") is no excess word
    assert top_codes(service, "Gestational diabetes", ICD10CM)[0] == "O24.419"
    # an organ's adjective is its noun, and an unstated side is the unspecified one
    assert top_codes(service, "Ovarian cancer", ICD10CM)[0] == "C56.9"
    assert top_codes(service, "COPD exacerbation", ICD10CM)[0] == "J44.1"
    assert top_codes(service, "GERD with esophagitis", ICD10CM)[0] == "K21.00"
    # an organ system names its organs: colon is one of Z80.0's "digestive organs"
    assert top_codes(service, "Family history of colon cancer", ICD10CM)[0] == "Z80.0"
    # the breast's, not its skin's
    assert top_codes(service, "Breast cancer", ICD10CM)[0] == "C50.919"


def test_a_word_the_index_sends_elsewhere_is_that_word(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    from terminology.lookup import _words

    # "Bleeding - see Hemorrhage", "Stone(s) - see Calculus" (the Alphabetic Index)
    assert _words("Rectal bleeding") == _words("Hemorrhage of rectum")
    assert _words("Kidney stones") == _words("Calculus of kidney")
    mention = "Personal history of kidney stones"
    service, _, _ = held_out_lookup(tmp_path, embedder, ("Z87.44", "Z85.5"), "Z87.442", mention)
    assert top_codes(service, mention, ICD10CM)[0] == "Z87.442"  # not Z85.528, "... malignant neoplasm of kidney"


def test_a_dsm5_use_disorder_is_coded_by_its_severity() -> None:
    from terminology.lookup import _conflicts, _qualifiers, prepare_query

    assert prepare_query("Cocaine  use disorder, mild, in early remission").endswith("(abuse)")
    assert prepare_query("Alcohol use disorder, severe, with alcohol-induced mild neurocognitive disorder").endswith(
        "(dependence)"
    )  # the use disorder's severity, not the other disorder's
    induced = prepare_query("Cannabis-induced anxiety disorder, without use disorder")
    assert induced.endswith("(use, unspecified)")  # F12.9-, "Cannabis use, unspecified with ..."
    assert _conflicts(_qualifiers(induced), _qualifiers("Cannabis abuse with cannabis-induced anxiety disorder")) == 1
    assert _conflicts(_qualifiers(induced), _qualifiers("Cannabis use, unspecified with anxiety disorder")) == 0
    # the Alphabetic Index: a substance-induced mental disorder that names no use is "use, unspecified"
    assert prepare_query("Opioid-induced delirium") == "Opioid-induced delirium (use, unspecified)"
    for unchanged in ("Alcohol-induced chronic pancreatitis", "Alcohol abuse with alcohol-induced mood disorder"):
        assert prepare_query(unchanged) == unchanged
    assert prepare_query("Alcohol dependence") == "Alcohol dependence"
    assert prepare_query("Hepatosplenic T-cell lymphoma with failed remission") == (
        "Hepatosplenic T-cell lymphoma not having achieved remission"
    )
    mild = _qualifiers(prepare_query("Cannabis use disorder, mild"))
    assert _conflicts(mild, _qualifiers("Cannabis dependence, uncomplicated")) == 1
    assert _conflicts(mild, _qualifiers("Cannabis abuse, uncomplicated")) == 0
    # remission is a status like severity: "in sustained remission" is not "uncomplicated"
    remitted = _qualifiers(prepare_query("Opioid use disorder, severe, in sustained remission"))
    assert _conflicts(remitted, _qualifiers("Opioid dependence, uncomplicated")) == 1
    assert _conflicts(remitted, _qualifiers("Opioid dependence, in remission")) == 0
    assert _conflicts(_qualifiers("Multiple myeloma in remission"), _qualifiers("Multiple myeloma in relapse")) == 1


def test_diabetes_of_no_named_type_is_read_as_type_2() -> None:
    from terminology.lookup import prepare_query

    # ICD-10-CM guideline I.C.4.a.2: E11 when the record gives no type, not E13 "Other specified"
    assert prepare_query("Diabetic nephropathy") == "Diabetic nephropathy (type 2 diabetes mellitus)"
    assert prepare_query("DM with CKD stage 3").endswith("(type 2 diabetes mellitus)")
    assert prepare_query("Diabetic nephropathy", [ICD10CM]).endswith("(type 2 diabetes mellitus)")
    assert prepare_query("Diabetic nephropathy", [SNOMED]) == "Diabetic nephropathy"  # an ICD-10-CM guideline
    for named in (
        "Type 1 diabetes with ketoacidosis",
        "Gestational diabetes",
        "Diabetes insipidus",
        "Steroid-induced diabetes",
        "Diabetes mellitus due to underlying condition with diabetic gangrene",
        "Newborn affected by maternal (pre-existing) diabetes mellitus",
        "Latent diabetes",
        "Long term (current) use of oral antidiabetic drugs",
    ):
        assert prepare_query(named) == named


def test_a_hip_fracture_is_the_femoral_necks() -> None:
    from terminology.lookup import prepare_query

    assert prepare_query("Right hip fracture") == "fracture of neck of right femur"
    assert (
        prepare_query("Fracture of left hip, initial encounter") == "fracture of neck of left femur, initial encounter"
    )
    assert prepare_query("Hip fracture") == "fracture of neck of femur"
    for own in ("Stress fracture of hip", "Pathological hip fracture", "Hip fracture"):
        assert prepare_query(own, [SNOMED] if own == "Hip fracture" else [ICD10CM]) == own


def test_the_knn_product_runs_on_torch_and_matches_numpy() -> None:
    from terminology.lookup import _similarities

    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((1000, 384)).astype(np.float32)
    vector = rng.standard_normal(384).astype(np.float32)
    assert np.allclose(_similarities(matrix, vector), matrix @ vector, atol=1e-4)


def held_out_lookup(
    tmp_path: Path, embedder: MiniLmEmbedder, prefixes: tuple[str, ...], code: str, mention: str
) -> tuple[TerminologyService, dict[str, int], _Retrieved]:
    """An index of the ICD-10-CM codes under ``prefixes`` that lacks ``mention`` as a name of
    ``code``: the service, each code's concept id, and what the hybrid lookup retrieves for it."""
    index = tmp_path / "terminology.db"
    build_index(index, embedder, [Icd10cmBuiltinImporter(prefixes=prefixes, held_out={(code, mention)})])
    service = TerminologyService(index, embedder)
    ids = {row_code: concept_id for concept_id, row_code in service._rows("SELECT id, code FROM concept")}
    return service, ids, service.retrieve(service.prepare(mention), [ICD10CM], (), "hybrid")


def test_a_mention_is_read_by_analogy_with_a_siblings_designation(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    # the index lacks this name of L89.011; its siblings have the same name with another side
    mention = "Pressure pre-ulcer skin changes limited to persistent focal edema, right elbow"
    service, ids, found = held_out_lookup(tmp_path, embedder, ("L89.0",), "L89.011", mention)
    # "..., left elbow" is L89.021's; its title "Pressure ulcer of left elbow, stage 1" with "left"
    # changed to "right" is L89.011's (one word changed: the feature is 1 / 2 words, out and in);
    # "..., unspecified elbow" (L89.001) reads the same with "unspecified" for "left"
    assert list(found.analogies) == [ids["L89.011"]]
    analogy = found.analogies[ids["L89.011"]]
    assert analogy.strength == 0.5 and analogy.source in (ids["L89.021"], ids["L89.001"])
    assert top_codes(service, mention, ICD10CM)[0] == "L89.011"
    assert top_codes(service, "Healing pressure ulcer of right elbow, stage 2", ICD10CM)[0] == "L89.012"
    # the analogy keeps to the lookup's filters, and a mention equal to a designation needs none
    assert not service.retrieve(service.prepare(mention), [SNOMED], (), "hybrid").analogies
    assert not service.retrieve("Pressure ulcer of left elbow, stage 1", [ICD10CM], (), "hybrid").analogies


def test_a_code_named_by_analogy_reads_as_well_as_the_designation_it_was_read_from(
    tmp_path: Path, embedder: MiniLmEmbedder
) -> None:
    # L89.814's own names are short ("Pressure ulcer of head, stage 4"); the mention is worded as
    # L89.894's synonym "..., other site", which alone would win on every wording feature
    mention = "Pressure ulcer with necrosis of soft tissues through to underlying muscle, tendon, or bone, head"
    service, ids, found = held_out_lookup(tmp_path, embedder, ("L89.8", "L89.9"), "L89.814", mention)
    assert found.analogies[ids["L89.814"]].source == ids["L89.894"]
    features, _ = service.rerank_features(service.prepare(mention), found)
    assert (features[ids["L89.814"]][:3] >= features[ids["L89.894"]][:3]).all()
    assert top_codes(service, mention, ICD10CM)[0] == "L89.814"


def test_a_detail_no_code_names_goes_to_the_other_code_not_the_unspecified_one(
    tmp_path: Path, embedder: MiniLmEmbedder
) -> None:
    # guideline I.A.9: "reactive" is a detail D75.83- has no code for, so "Other thrombocytosis"
    mention = "Reactive thrombocytosis"
    service, ids, found = held_out_lookup(tmp_path, embedder, ("D75.8", "N17", "M54.5"), "D75.838", mention)
    features, _ = service.rerank_features(service.prepare(mention), found)
    residual = FEATURES.index("residual")
    assert features[ids["D75.838"]][residual] == 1.0 and features[ids["D75.839"]][residual] == -1.0
    assert top_codes(service, mention, ICD10CM)[0] == "D75.838"
    # the course of a condition is no such detail: a plain mention keeps its unspecified code
    assert top_codes(service, "Acute kidney injury", ICD10CM)[0] == "N17.9"
    assert top_codes(service, "Thrombocytosis", ICD10CM)[0] == "D75.839"
    # and a mention that says all "Other low back pain" says but "Other" is not otherwise specified
    restated = FEATURES.index("restated")
    for plain in ("Acute low back pain", "Chronic low back pain"):
        features, _ = service.rerank_features(plain, service.retrieve(plain, [ICD10CM], (), "hybrid"))
        assert features[ids["M54.59"]][restated] == -1.0 and features[ids["M54.50"]][restated] == 0.0
        assert features[ids["M54.59"]][residual] == 0.0 and features[ids["M54.50"]][residual] == 0.0
        assert top_codes(service, plain, ICD10CM)[0] == "M54.50"


def test_an_other_code_restates_a_mention_only_where_an_unspecified_one_is_there_to_take_it(
    tmp_path: Path, embedder: MiniLmEmbedder
) -> None:
    # G89.2- has no "Chronic pain, unspecified": the Index codes chronic pain G89.29 "Other chronic pain"
    mention = "Chronic pain"
    service, ids, found = held_out_lookup(tmp_path, embedder, ("G89", "M54.5"), "G89.29", mention)
    features, _ = service.rerank_features(service.prepare(mention), found)
    assert features[ids["G89.29"]][FEATURES.index("restated")] == 0.0
    assert top_codes(service, mention, ICD10CM)[0] == "G89.29"


def test_the_course_is_a_detail_where_the_classification_tells_it_apart(
    tmp_path: Path, embedder: MiniLmEmbedder
) -> None:
    from terminology.lookup import _details, _words

    # appendicitis comes acute (K35) or not: "chronic" is a detail no code names, so K36 "Other
    # appendicitis" (the Index: "Appendicitis, chronic K36"), not K37 "Unspecified appendicitis"
    mention = "Chronic appendicitis"
    assert _details(_words(mention), [_words("Unspecified acute appendicitis")]) == _words(mention)
    assert _details(_words(mention), [_words("Other appendicitis")]) == _words("appendicitis")
    assert _details(_words("Chronic low back pain"), [_words("Low back pain, unspecified")]) == _words("low back pain")
    service, ids, found = held_out_lookup(tmp_path, embedder, ("K35", "K36", "K37"), "K36", mention)
    features, _ = service.rerank_features(service.prepare(mention), found)
    residual = FEATURES.index("residual")
    assert features[ids["K36"]][residual] == 1.0 and features[ids["K37"]][residual] == -1.0
    assert top_codes(service, mention, ICD10CM)[0] == "K36"
    assert top_codes(service, "Acute appendicitis", ICD10CM)[0] == "K35.80"


def test_a_mention_of_one_side_of_a_with_is_not_the_code_for_both(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    from terminology.lookup import _unnamed

    # the condition alone, the complication alone; both, or a "with" of the mention's own: neither
    colitis = "Ulcerative (chronic) rectosigmoiditis with rectal bleeding"
    assert _unnamed("Alzheimer's disease with early onset", "Alzheimer's disease") == (1.0, 0.0)
    assert _unnamed(colitis, "Rectal bleeding") == (0.0, 1.0)
    assert _unnamed(colitis, "Rectosigmoiditis, rectal bleeding") == (0.0, 0.0)
    assert _unnamed("Alzheimer's disease with early onset", "Alzheimer's disease with late onset") == (0.0, 0.0)
    assert _unnamed("Alzheimer's disease, unspecified", "Alzheimer's disease") == (0.0, 0.0)
    assert _unnamed("Measles complicated by meningitis", "Measles") == (1.0, 0.0)
    prefixes = ("G30", "N40", "K62", "K51.3", "K51.8", "K50.9")
    service, _, _ = held_out_lookup(tmp_path, embedder, prefixes, "G30.9", "nothing held out")
    assert top_codes(service, "Alzheimer's disease", ICD10CM)[0] == "G30.9"  # G30.0 has it from a note
    assert top_codes(service, "Benign prostatic hyperplasia", ICD10CM)[0] == "N40.0"  # "... without LUTS"
    assert top_codes(service, "Rectal bleeding", ICD10CM)[0] == "K62.5"
    assert top_codes(service, "Ulcerative rectosigmoiditis with rectal bleeding", ICD10CM)[0] == "K51.311"


def test_a_code_rich_in_names_is_no_further_from_a_mention_than_one_with_a_single_name(
    tmp_path: Path, embedder: MiniLmEmbedder
) -> None:
    # K80.20 has its category's names too ("Cholelithiasis", "Colic (recurrent) of gallbladder",
    # "Gallstone (impacted) of cystic duct"); the mean of all of them had put it behind K80.70, whose
    # one name is "Calculus of gallbladder and bile duct without cholecystitis without obstruction"
    service, _, _ = held_out_lookup(tmp_path, embedder, ("K80.2", "K80.7"), "K80.20", "nothing held out")
    assert top_codes(service, "Calculus of gallbladder", ICD10CM)[0] == "K80.20"
    assert top_codes(service, "Gallstones", ICD10CM)[0] == "K80.20"


def test_an_inflammation_is_not_its_organs_other_conditions(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    from terminology.lookup import _words

    assert _words("Diverticulitis") != _words("Diverticulosis") != _words("Diverticular disease")
    assert _words("Reflux esophagitis") != _words("Esophageal reflux")
    assert _words("Ulcers") == _words("Ulcer")  # the six-letter stem still joins inflections
    service, _, _ = held_out_lookup(tmp_path, embedder, ("K57",), "K57.92", "nothing held out")
    # not K57.30 through "Diverticular disease of colon NOS"
    assert top_codes(service, "Diverticulitis", ICD10CM)[0] == "K57.92"


def test_everyday_phrases_are_the_index_words_for_them(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    prefixes = ("I21", "I50", "J11", "A08", "B05", "B06", "K80.2", "K56", "K44", "K46", "E78")
    service, _, _ = held_out_lookup(tmp_path, embedder, prefixes, "I21.9", "nothing held out")
    assert service.prepare("Heart attack", [ICD10CM]) == "Myocardial infarction"
    assert service.prepare("history of german measles", [ICD10CM]) == "history of rubella"
    assert service.prepare("Flushing", [ICD10CM]) == "Flushing"  # whole words only
    assert service.prepare("Stomach flu", [ICD10CM]) == "Viral gastroenteritis"  # not influenza
    everyday = (
        ("Heart attack", "I21.9"),
        ("Flu", "J11.1"),
        ("Intestinal flu", "A08.4"),
        ("German measles", "B06.9"),
        ("Hiatal hernia", "K44.9"),  # not K46.0 through "hernia NOS"
        ("High cholesterol", "E78.00"),  # not E78.6 "Lipoprotein deficiency"
    )
    for mention, code in everyday:
        assert top_codes(service, mention, ICD10CM)[0] == code
    assert top_codes(service, "Gallstones", ICD10CM)[0] == "K80.20"
    # a name the index has is still an exact match as written
    assert service.lookup("Gallstone ileus", systems=[ICD10CM], limit=1)[0].exact


def test_a_deep_vein_thrombosis_is_its_categorys_default_and_counts_as_exact_once(
    tmp_path: Path, embedder: MiniLmEmbedder
) -> None:
    from terminology.lookup import EXACT_BONUS

    index = tmp_path / "terminology.db"
    build_index(index, embedder, [Icd10cmBuiltinImporter(prefixes=("I82.4",))])
    service = TerminologyService(index, embedder)
    for mention in ("DVT", "Deep vein thrombosis"):
        # I82.40's "Deep vein thrombosis NOS" and "DVT NOS" are I82.409's, the unspecified lower
        # extremity's, not I82.499's "... other specified deep vein ..."
        top = service.lookup(mention, systems=[ICD10CM], limit=1)[0]
        assert top.code == "I82.409" and top.exact
        assert top.score < 2 * EXACT_BONUS  # both names equal the mention; the bonus is given once


def test_a_mention_nos_is_read_by_analogy_as_the_unspecified_code(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    # "Mental subnormality NOS" is F79's; the index has only "Mild mental subnormality" (F70),
    # "Moderate ..." (F71) and so on: F70's title "Mild intellectual disabilities" without "mild"
    # and with "unspecified" for "NOS" is F79's "Unspecified intellectual disabilities"
    mention = "Mental subnormality NOS"
    service, ids, found = held_out_lookup(tmp_path, embedder, ("F7",), "F79", mention)
    assert ids["F79"] in found.analogies
    assert top_codes(service, mention, ICD10CM)[0] == "F79"
    assert top_codes(service, "Moderate mental subnormality", ICD10CM)[0] == "F71"


def test_a_changed_title_that_two_codes_share_names_neither(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    # "Primary thrombocytopenia NOS" (D69.49, titled "Other primary thrombocytopenia") without
    # "primary" reads "Other thromb..." under the crude stem: D68.69 "Other thrombophilia" and
    # D75.838 "Other thrombocytosis" both; the NOS default, D75.839, is what the mention means
    mention = "Thrombocytosis NOS"
    service, ids, found = held_out_lookup(tmp_path, embedder, ("D68.6", "D69", "D75.8"), "D75.839", mention)
    assert ids["D75.838"] not in found.analogies and ids["D68.69"] not in found.analogies
    assert top_codes(service, mention, ICD10CM)[0] == "D75.839"


def test_a_mention_equal_to_a_designation_is_exact_though_its_query_is_reworded(
    tmp_path: Path, embedder: MiniLmEmbedder
) -> None:
    mention = "Opioid-induced delirium"  # an inclusion term of F11.921; read as "... (use, unspecified)"
    service, _, _ = held_out_lookup(tmp_path, embedder, ("F11.9",), "F11.90", "nothing held out")
    assert service.prepare(mention, [ICD10CM]) != mention
    top = service.lookup(mention, systems=[ICD10CM], limit=1)[0]
    assert (top.code, top.exact, top.matched) == ("F11.921", True, mention)


def test_cancer_is_a_primary_malignant_neoplasm_and_parenthesized_words_are_nonessential(
    tmp_path: Path, embedder: MiniLmEmbedder
) -> None:
    from terminology.lookup import _conflicts, _qualifiers, prepare_query

    # the Alphabetic Index: "Cancer - see Neoplasm, malignant"; a neoplasm is primary unless stated
    assert prepare_query("Colon cancer") == "Colon malignant neoplasm"
    assert prepare_query("Malignant cancer of colon") == "Malignant cancer of colon"
    lung = _qualifiers(prepare_query("Lung cancer"))
    assert _conflicts(lung, _qualifiers("Secondary malignant neoplasm of unspecified lung")) == 1
    assert _conflicts(_qualifiers("Metastatic lung cancer"), _qualifiers("Secondary malignant neoplasm of lung")) == 0
    assert _conflicts(_qualifiers("Emotional polycythemia"), _qualifiers("Secondary polycythemia")) == 0

    prefixes = ("I10", "I1A", "I97", "C18", "D12", "C34", "C78", "C80")
    service, _, _ = held_out_lookup(tmp_path, embedder, prefixes, "C80.0", "nothing held out")
    # "Hypertension (arterial) (benign) (essential) (malignant) (primary) (systemic)" names plain hypertension
    assert top_codes(service, "Hypertension", ICD10CM)[0] == "I10"
    assert top_codes(service, "Colon cancer", ICD10CM)[0] == "C18.9"  # not D12.6, a benign neoplasm
    assert top_codes(service, "Lung cancer", ICD10CM)[0] == "C34.90"
    assert top_codes(service, "Metastatic lung cancer", ICD10CM)[0] == "C78.00"


def test_and_in_a_short_title_means_and_or(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    # guideline I.A.14: "Syncope and collapse" (R55) names syncope alone, as "Cough syncope" does not
    service, _, _ = held_out_lookup(tmp_path, embedder, ("R05", "R55", "T67", "F48"), "R55", "nothing held out")
    assert top_codes(service, "Syncope", ICD10CM)[0] == "R55"


def test_a_condition_is_acquired_unless_the_mention_says_congenital(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    # Q43.8 "Other specified congenital malformations of intestine" has "Congenital diverticulitis,
    # colon"; a mention that does not say "congenital" is the acquired K57.92. Where the acquired
    # code itself says "acquired", the plain name is the congenital one
    service, _, _ = held_out_lookup(tmp_path, embedder, ("K57", "Q43", "Q55.6", "N48.8"), "K57.92", "nothing held out")
    assert top_codes(service, "Diverticulitis", ICD10CM)[0] == "K57.92"
    assert top_codes(service, "Congenital diverticulitis", ICD10CM)[0] == "Q43.8"
    assert top_codes(service, "Buried penis", ICD10CM)[0] == "Q55.64"


def test_other_x_takes_no_detail_that_a_candidate_names(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    # guideline I.A.9 sends a detail that no code names to "Other X"; "pulmonary" is named, by A15.0
    # "Tuberculosis of lung", so A15.8 "Other respiratory tuberculosis" is not the place for it
    mention = "Pulmonary tuberculosis"
    service, ids, found = held_out_lookup(tmp_path, embedder, ("A15",), "A15.0", mention)
    features, _ = service.rerank_features(service.prepare(mention), found)
    residual = FEATURES.index("residual")
    assert features[ids["A15.8"]][residual] == 0.0 and features[ids["A15.9"]][residual] == -1.0
    assert top_codes(service, mention, ICD10CM)[0] == "A15.0"
    # where no candidate names the detail, "Other X" still takes it
    other = service.prepare("Tuberculosis of tongue")
    features, _ = service.rerank_features(other, service.retrieve(other, [ICD10CM], (), "hybrid"))
    assert features[ids["A15.8"]][residual] == 1.0


def test_a_mention_that_says_congenital_is_no_acquired_code(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    # Q40.2 "Other specified congenital malformations of stomach" does not name an hourglass stomach
    # once its "Congenital hourglass stomach" is held out; K31's acquired codes do
    mention = "Congenital hourglass stomach"
    service, _, _ = held_out_lookup(tmp_path, embedder, ("Q40", "K31"), "Q40.2", mention)
    assert top_codes(service, mention, ICD10CM)[0] == "Q40.2"
    assert top_codes(service, "Hourglass stomach", ICD10CM)[0].startswith("K31")  # acquired, unless said


def test_some_words_say_congenital_without_the_word(tmp_path: Path, embedder: MiniLmEmbedder) -> None:
    # the Index: "Imperforate (congenital)"; T17.200A names the pharynx, but is a foreign body in it
    mention = "Imperforate pharynx"
    service, _, _ = held_out_lookup(tmp_path, embedder, ("Q38", "T17.2", "J39"), "Q38.8", mention)
    assert top_codes(service, mention, ICD10CM)[0] == "Q38.8"
    mention = "Arteriovenous malformation of brain NOS"  # "Malformation (congenital)"; I60.8 is its rupture
    service, _, _ = held_out_lookup(tmp_path / "avm", embedder, ("Q28", "I60"), "Q28.2", mention)
    assert top_codes(service, mention, ICD10CM)[0] == "Q28.2"
