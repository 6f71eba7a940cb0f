"""De-identification (HIPAA Safe Harbor): Bundles, free text and summaries, with stable pseudonyms."""

from server.deid.bundle import PSEUDONYMIZED, SAFE_HARBOR, Deidentifier, DeidPolicy
from server.deid.summary import clinical_summary, deidentified_summary
from server.deid.text import leaked, scrub_text

__all__ = [
    "PSEUDONYMIZED",
    "SAFE_HARBOR",
    "DeidPolicy",
    "Deidentifier",
    "clinical_summary",
    "deidentified_summary",
    "leaked",
    "scrub_text",
]
