"""De-identification: PHI leak rate and over-redaction on generated documents with known PHI.

    .venv/bin/python bench/deid.py [--documents 40]

For each generated document (all kinds, born-digital), the pipeline extracts a Bundle; then:
- structured: the de-identified Bundle is searched for every identifier in the ground truth
  (names, MRN, NHS number, birth date as ISO and as printed, phone, street, postcode, the
  document's date) — goal 0 leaks;
- free text: the page text, plus a sentence that names the patient in running prose (no label,
  no title), is scrubbed with what the extraction found (names, identifiers) plus
  the Safe Harbor patterns; name recall = share of patient-name occurrences removed (goal
  >= 0.99), identifier leaks counted separately; over-redaction = share of clinical words (the
  ground truth's diagnoses, medications and lab tests) removed (goal <= 2%).
The peer, in the same run, is the pattern scrubber alone (no extraction-informed names), the
usual regex de-identification. Caveat: generated documents follow a few templates, so these
figures show the method is sound on them, not its recall on real clinical writing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import pdfplumber

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhir_profiles import BundleContext
from server.config import load_settings
from server.deid import Deidentifier, scrub_text
from server.services import build_pipeline
from tests.fixtures.generate import KINDS, DocumentTruth, render_document


def printed_forms(truth: DocumentTruth) -> tuple[list[str], list[str]]:
    """(name strings, identifier strings) as they may appear in text."""
    p = truth.patient
    born = dt.date.fromisoformat(p.birth_date)
    nhs = p.nhs_number
    identifiers = [
        p.mrn,
        nhs,
        f"{nhs[:3]} {nhs[3:6]} {nhs[6:]}",
        p.birth_date,
        born.strftime("%d %B %Y"),
        f"{born.day} {born.strftime('%B %Y')}",
        born.strftime("%d/%m/%Y"),
        p.phone,
        p.postal_code,
        p.address.split(",")[0],  # house number and street
        truth.document_date,
        dt.date.fromisoformat(truth.document_date).strftime("%d %b %Y"),  # as printed: Safe Harbor dates
    ]
    return [p.given, p.family], [i for i in identifiers if i]


def count(text: str, value: str) -> int:
    return len(re.findall(rf"(?<!\w){re.escape(value)}(?!\w)", text, flags=re.IGNORECASE))


def clinical_words(truth: DocumentTruth) -> list[str]:
    phrases = [d.text for d in truth.diagnoses] + [m.name for m in truth.medications] + [lab.test for lab in truth.labs]
    return [w for phrase in phrases for w in re.findall(r"[A-Za-z][A-Za-z-]{2,}", phrase)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=40)
    args = parser.parse_args()
    settings = load_settings({}, data_dir=Path(tempfile.mkdtemp()), semantic_search=False)
    pipeline = build_pipeline(settings)
    deid = Deidentifier(b"bench-secret-bench-secret-bench!")
    totals = {
        "structured_leaks": 0,
        "structured_items": 0,
        "ours_name_left": 0,
        "peer_name_left": 0,
        "name_total": 0,
        "ours_id_left": 0,
        "peer_id_left": 0,
        "id_total": 0,
        "ours_clinical_lost": 0,
        "peer_clinical_lost": 0,
        "clinical_total": 0,
    }
    ours_seconds = peer_seconds = 0.0
    for index in range(args.documents):
        kind = KINDS[index % len(KINDS)]
        document = render_document(kind, seed=500 + index)
        truth = document.truth
        context = BundleContext(
            bundle_id=f"bench-{index}",
            id_seed=f"bench-{index}",
            document_reference_id=f"doc-{index}",
            fhir_base_url="http://127.0.0.1:8080/fhir",
            recorded="2026-11-23T00:00:00Z",
            software="paperchart bench",
        )
        result = pipeline.run(document.pdf, "application/pdf", context)
        bundle = json.loads(json.dumps(result.bundle))
        with pdfplumber.open(io.BytesIO(document.pdf)) as pdf:
            text = "\n".join(page.extract_text() or "" for page in pdf.pages)
        names, identifiers = printed_forms(truth)
        # names also occur in running prose, where no label or title gives them away
        given, family = names
        text += f"\n{given} attended with a relative. The {family} household reports no change in {given}'s mobility."

        deid_json = json.dumps(deid.bundle(bundle))
        for value in [*names, *identifiers, truth.patient.name]:
            totals["structured_items"] += 1
            totals["structured_leaks"] += int(value.lower() in deid_json.lower())

        known = deid.known_phi(bundle)
        started = time.perf_counter()
        ours = scrub_text(text, known)
        ours_seconds += time.perf_counter() - started
        started = time.perf_counter()
        peer = scrub_text(text)
        peer_seconds += time.perf_counter() - started
        for value in names:
            totals["name_total"] += count(text, value)
            totals["ours_name_left"] += count(ours, value)
            totals["peer_name_left"] += count(peer, value)
        for value in identifiers:
            totals["id_total"] += count(text, value)
            totals["ours_id_left"] += count(ours, value)
            totals["peer_id_left"] += count(peer, value)
        for word in clinical_words(truth):
            present = count(text, word)
            totals["clinical_total"] += present
            totals["ours_clinical_lost"] += max(0, present - count(ours, word))
            totals["peer_clinical_lost"] += max(0, present - count(peer, word))

    def rate(part: int, whole: int) -> float:
        return part / whole if whole else 0.0

    ours_recall = 1 - rate(totals["ours_name_left"], totals["name_total"])
    peer_recall = 1 - rate(totals["peer_name_left"], totals["name_total"])
    rows = [
        (
            "structured identifier leaks (de-identified Bundle)",
            f"{totals['structured_leaks']}/{totals['structured_items']}",
            "-",
            "-",
        ),
        (
            "free-text patient-name recall",
            f"{ours_recall:.4f}",
            f"{peer_recall:.4f}",
            f"{ours_recall / peer_recall:.2f}" if peer_recall else "inf",
        ),
        (
            "free-text identifier leaks (MRN, NHS, dates, phone, address)",
            f"{totals['ours_id_left']}/{totals['id_total']}",
            f"{totals['peer_id_left']}/{totals['id_total']}",
            "-",
        ),
        (
            "over-redaction (clinical words removed)",
            f"{rate(totals['ours_clinical_lost'], totals['clinical_total']):.2%}",
            f"{rate(totals['peer_clinical_lost'], totals['clinical_total']):.2%}",
            "-",
        ),
        (
            "scrub time per document (ms)",
            f"{ours_seconds / args.documents * 1000:.2f}",
            f"{peer_seconds / args.documents * 1000:.2f}",
            f"{ours_seconds / peer_seconds:.2f}" if peer_seconds else "-",
        ),
    ]
    print(f"De-identification on {args.documents} generated documents ({', '.join(KINDS)})")
    print(f"{'measure':<52} {'paperchart':>12} {'patterns only':>14} {'ratio':>6}")
    for name, ours_value, peer_value, ratio in rows:
        print(f"{name:<52} {ours_value:>12} {peer_value:>14} {ratio:>6}")
    print("goals: 0 structured leaks; name recall >= 0.99; over-redaction <= 2%")


if __name__ == "__main__":
    main()
