"""Validation of FHIR R4 JSON with the fhir.resources models before anything leaves paperchart.

fhir.resources ships R4B models; for the resources paperchart emits they match R4 (4.0.1).
A failure here is a bug in our mapping, reported as ``FhirValidationError`` with the paths
of the offending elements (never their values, which may be PHI).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import ValidationError


class FhirValidationError(Exception):
    def __init__(self, resource_type: str, problems: list[str]) -> None:
        super().__init__(f"{resource_type} failed FHIR validation: {'; '.join(problems)}")
        self.resource_type = resource_type
        self.problems = problems


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None


def validate_resource(resource: dict[str, Any], *, deep: bool = True) -> None:
    """Raise FhirValidationError unless ``resource`` is valid R4 JSON.

    ``deep=False`` validates a Bundle's shell only, for when every entry was validated already.
    """
    resource_type = str(resource.get("resourceType", ""))
    model = _model(resource_type)
    if model is None:
        raise FhirValidationError(resource_type or "(none)", ["unknown resourceType"])
    data = resource
    if not deep and resource_type == "Bundle":
        data = {
            **resource,
            "entry": [{k: v for k, v in e.items() if k != "resource"} for e in resource.get("entry", [])],
        }
    try:
        model.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in error['loc'])}: {error['type']}" for error in exc.errors()[:10]]
        raise FhirValidationError(resource_type, problems) from None
