"""Clinical abbreviations expanded before lookup ("HTN" → "hypertension").

Matched as whole words. Upper-case abbreviations match case-sensitively (so the word "pe" in a
sentence is not a pulmonary embolism); lower-case SIG-style ones match in any case. Abbreviations
with more than one common meaning ("MS": multiple sclerosis, mitral stenosis, morphine sulfate;
"ASD"; "ALL"; "GAD", also an antibody) are left out: a wrong expansion codes a wrong disease.
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
    "PAD": "peripheral arterial disease",
    "AAA": "abdominal aortic aneurysm",
    "NSTEMI": "non-ST elevation myocardial infarction",
    "STEMI": "ST elevation myocardial infarction",
    "SVT": "supraventricular tachycardia",
    "VSD": "ventricular septal defect",
    "PDA": "patent ductus arteriosus",
    "LVH": "left ventricular hypertrophy",
    "HFrEF": "systolic heart failure",  # heart failure with reduced ejection fraction
    "HFpEF": "diastolic heart failure",  # heart failure with preserved ejection fraction
    "SAH": "subarachnoid hemorrhage",
    "ICH": "intracerebral hemorrhage",
    "ARDS": "acute respiratory distress syndrome",
    "RSV": "respiratory syncytial virus",
    "MRSA": "methicillin resistant Staphylococcus aureus",
    "MSSA": "methicillin susceptible Staphylococcus aureus",
    "URI": "upper respiratory infection",
    "TB": "tuberculosis",
    "HCV": "hepatitis C",
    "HBV": "hepatitis B",
    "DKA": "diabetic ketoacidosis",
    "GDM": "gestational diabetes mellitus",
    "IDA": "iron deficiency anemia",
    "SLE": "systemic lupus erythematosus",
    "PUD": "peptic ulcer disease",
    "IBD": "inflammatory bowel disease",
    "NASH": "nonalcoholic steatohepatitis",
    "NAFLD": "nonalcoholic fatty liver disease",
    "GI": "gastrointestinal",
    "PCOS": "polycystic ovary syndrome",
    "BPPV": "benign paroxysmal positional vertigo",
    "CLL": "chronic lymphocytic leukemia",
    "CML": "chronic myeloid leukemia",
    "ADHD": "attention-deficit hyperactivity disorder",
    "OCD": "obsessive-compulsive disorder",
    "PTSD": "post-traumatic stress disorder",
    "MDD": "major depressive disorder",
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
