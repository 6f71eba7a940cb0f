"""Clinical abbreviations expanded before lookup ("HTN" → "hypertension").

Matched as whole words. Upper-case abbreviations match case-sensitively (so the word "pe" in a
sentence is not a pulmonary embolism); lower-case SIG-style ones match in any case.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Final

ABBREVIATIONS: Final[dict[str, str]] = {
    "HTN": "hypertension",
    "T2DM": "type 2 diabetes mellitus",
    "T1DM": "type 1 diabetes mellitus",
    "DM": "diabetes mellitus",
    "SOB": "shortness of breath",
    "COPD": "chronic obstructive pulmonary disease",
    "CKD": "chronic kidney disease",
    "AF": "atrial fibrillation",
    "AFib": "atrial fibrillation",
    "CHF": "congestive heart failure",
    "HF": "heart failure",
    "MI": "myocardial infarction",
    "IHD": "ischaemic heart disease",
    "CAD": "coronary artery disease",
    "PE": "pulmonary embolism",
    "DVT": "deep vein thrombosis",
    "UTI": "urinary tract infection",
    "GORD": "gastro-oesophageal reflux disease",
    "GERD": "gastroesophageal reflux disease",
    "OA": "osteoarthritis",
    "RA": "rheumatoid arthritis",
    "TIA": "transient ischaemic attack",
    "CVA": "cerebrovascular accident",
    "URTI": "upper respiratory tract infection",
    "LRTI": "lower respiratory tract infection",
    "CAP": "community acquired pneumonia",
    "AKI": "acute kidney injury",
    "BPH": "benign prostatic hyperplasia",
    "HLD": "hyperlipidemia",
    "OSA": "obstructive sleep apnoea",
    "IBS": "irritable bowel syndrome",
    "N/V": "nausea and vomiting",
    "CP": "chest pain",
    "HA": "headache",
    "LBP": "low back pain",
    "ESRD": "end stage renal disease",
    "PVD": "peripheral vascular disease",
    "qhs": "at bedtime",
    "bid": "twice daily",
    "tid": "three times daily",
    "qid": "four times daily",
    "prn": "as needed",
    "po": "by mouth",
}


@cache
def _pattern() -> tuple[re.Pattern[str], dict[str, str]]:
    lookup: dict[str, str] = {}
    alternatives = []
    for short, long in ABBREVIATIONS.items():
        if short.islower():
            lookup[short.lower()] = long
            alternatives.append(f"(?i:{re.escape(short)})")
        else:
            lookup[short] = long
            alternatives.append(re.escape(short))
    alternatives.sort(key=len, reverse=True)
    return re.compile(r"(?<![\w/])(" + "|".join(alternatives) + r")(?![\w/])"), lookup


def expand_abbreviations(text: str) -> str:
    pattern, lookup = _pattern()
    return pattern.sub(lambda m: lookup.get(m.group(1), lookup.get(m.group(1).lower(), m.group(1))), text)
