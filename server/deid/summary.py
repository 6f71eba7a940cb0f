"""A clinician-readable summary of an extraction Bundle, de-identified after it is written.

The summary is built from the coded resources (a template; an LLM summary plugs in here once
an LLM extractor is configured) and then passed through the same free-text scrubber as every
other output, and checked: if any PHI value known from the source survives, nothing is returned.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from fhir_profiles.bundle import needs_review
from server.deid.text import leaked, scrub_text
from server.errors import ProcessingFailed

logger = logging.getLogger(__name__)


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"].get("resourceType") == kind]


def _code_text(concept: dict[str, Any] | None) -> str:
    if not concept:
        return "unnamed"
    coding = concept.get("coding") or [{}]
    return str(concept.get("text") or coding[0].get("display") or coding[0].get("code") or "unnamed")


def _quantity(quantity: dict[str, Any] | None) -> str:
    if not quantity:
        return ""
    value = quantity.get("value")
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {quantity.get('unit', '')}".strip()


def _age_band(birth_date: str | None, today: dt.date) -> str:
    if not birth_date:
        return "age not recorded"
    age = today.year - int(birth_date[:4])
    if age > 89:
        return "aged 90 or over"
    low = age - age % 5
    return f"aged {low}-{low + 4}"


def clinical_summary(bundle: dict[str, Any], today: dt.date | None = None) -> str:
    """Plain-text summary of what was extracted (it still contains whatever PHI the Bundle has)."""
    today = today or dt.date.today()
    lines: list[str] = []
    patients = _resources(bundle, "Patient")
    if patients:
        patient = patients[0]
        lines.append(
            f"Patient: {patient.get('gender', 'gender not recorded')}, {_age_band(patient.get('birthDate'), today)}."
        )
    present: list[str] = []
    absent: list[str] = []
    for condition in _resources(bundle, "Condition"):
        status = (condition.get("verificationStatus") or {}).get("coding", [{}])[0].get("code")
        (absent if status == "refuted" else present).append(_code_text(condition.get("code")))
    if present:
        lines.append("Problems: " + "; ".join(present) + ".")
    if absent:
        lines.append("Ruled out or denied: " + "; ".join(absent) + ".")
    medications = []
    for kind, key in (("MedicationStatement", "dosage"), ("MedicationRequest", "dosageInstruction")):
        for statement in _resources(bundle, kind):
            dosage = (statement.get(key) or [{}])[0]
            medications.append(dosage.get("text") or _code_text(statement.get("medicationCodeableConcept")))
    if medications:
        lines.append("Medications: " + "; ".join(medications) + ".")
    allergies = []
    for allergy in _resources(bundle, "AllergyIntolerance"):
        reactions = [
            " ".join(filter(None, [r.get("severity"), *(m.get("text") for m in r.get("manifestation", []))]))
            for r in allergy.get("reaction", [])
        ]
        text = _code_text(allergy.get("code"))
        allergies.append(f"{text} ({', '.join(reactions)})" if any(reactions) else text)
    if allergies:
        lines.append("Allergies: " + "; ".join(allergies) + ".")
    procedures = []
    for procedure in _resources(bundle, "Procedure"):
        when = procedure.get("performedDateTime")
        text = _code_text(procedure.get("code"))
        procedures.append(f"{text} ({when[:4]})" if when else text)
    if procedures:
        lines.append("Procedures: " + "; ".join(procedures) + ".")
    plans = [str(p.get("description", "")) for p in _resources(bundle, "CarePlan") if p.get("description")]
    if plans:
        lines.append("Follow-up: " + "; ".join(plans) + ".")
    vitals: list[str] = []
    labs: list[str] = []
    for observation in _resources(bundle, "Observation"):
        categories = {c.get("code") for cat in observation.get("category", []) for c in cat.get("coding", [])}
        name = _code_text(observation.get("code"))
        if observation.get("component"):
            value = "/".join(_quantity(c.get("valueQuantity")).split(" ")[0] for c in observation["component"])
            unit = _quantity(observation["component"][0].get("valueQuantity")).partition(" ")[2]
            text = f"{name} {value} {unit}".strip()
        else:
            text = f"{name} {_quantity(observation.get('valueQuantity'))}".strip()
        flags = [c.get("code") for i in observation.get("interpretation", []) for c in i.get("coding", [])]
        if flags and flags[0] not in ("N", None):
            text += f" ({flags[0]})"
        (vitals if "vital-signs" in categories else labs).append(text)
    if vitals:
        lines.append("Vital signs: " + "; ".join(vitals) + ".")
    if labs:
        lines.append("Laboratory results: " + "; ".join(labs) + ".")
    if needs_review(bundle):
        # the reasons are machine codes with PHI-free sentences (fhir_profiles.bundle)
        reasons = [
            str(e["valueCoding"].get("display", ""))
            for e in bundle.get("meta", {}).get("extension", [])
            if "valueCoding" in e
        ]
        lines.append("Flagged for human review" + (": " + " ".join(r for r in reasons if r) if any(reasons) else "."))
    return "\n".join(lines) if lines else "Nothing clinical was extracted from this document."


SUMMARY_PROMPT = (
    "You write short summaries of clinical documents for clinicians. From the facts given, write one "
    "paragraph: active problems, what was ruled out, medications with doses, allergies, past procedures, "
    "abnormal results and vital signs, items flagged for review. Use only the facts given; add nothing; "
    "do not name anyone."
)


def deidentified_summary(
    bundle: dict[str, Any],
    known_phi: list[str],
    today: dt.date | None = None,
    writer: Callable[[str, str], str] | None = None,
) -> str:
    """The summary, scrubbed, and refused if a known PHI value would still be in it.

    With a ``writer`` (an LLM's ``complete_text``) the template's facts, already scrubbed, are
    rewritten as prose; the model never sees an identifier, and its answer is scrubbed and checked
    like the template. If the model fails, the template stands.
    """
    facts = scrub_text(clinical_summary(bundle, today), known_phi)
    text = facts
    if writer is not None:
        try:
            text = scrub_text(writer(SUMMARY_PROMPT, facts), known_phi)
        except Exception:  # the template is a complete answer on its own
            logger.warning("the LLM summary failed; using the template summary")
            text = facts
    if leaked(text, known_phi):
        raise ProcessingFailed("the de-identified summary still contained an identifier; it was withheld")
    return text
