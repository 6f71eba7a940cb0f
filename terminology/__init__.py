"""Code systems and lookup: UCUM unit normalisation and the built-in LOINC lab table.

Sources and licences of every built-in table are stated next to it (see ``labs.py``).
"""

from terminology.labs import LabTest, find_lab_test, lab_tests
from terminology.units import normalize_unit

__all__ = ["LabTest", "find_lab_test", "lab_tests", "normalize_unit"]
