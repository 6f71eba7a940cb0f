"""Extraction → FHIR R4: the resource mapping, Bundle and Provenance assembly, validation."""

from fhir_profiles.bundle import BundleContext, build_bundle, resource_id
from fhir_profiles.compartment import patient_of
from fhir_profiles.extraction import Extraction
from fhir_profiles.outcome import operation_outcome
from fhir_profiles.validate import FhirValidationError, validate_resource

__all__ = [
    "BundleContext",
    "Extraction",
    "FhirValidationError",
    "build_bundle",
    "operation_outcome",
    "patient_of",
    "resource_id",
    "validate_resource",
]
