"""The CapabilityStatement served at ``GET /fhir/metadata``: what this server really supports."""

from __future__ import annotations

from typing import Any, Final

from fhir_profiles import validate_resource
from server import __version__
from server.config import Settings

# Types produced by extraction, readable by id and searchable by patient.
SEARCHABLE_TYPES: Final = (
    "Patient",
    "Condition",
    "MedicationStatement",
    "Observation",
    "Provenance",
    "Bundle",
    "Encounter",
    "FamilyMemberHistory",
    "DiagnosticReport",
    "AllergyIntolerance",
    "Procedure",
    "MedicationRequest",
    "CarePlan",
)
_PATIENT_PARAM: Final = {
    "name": "patient",
    "type": "reference",
    "documentation": "The patient the resource is about (Patient/id or id)",
}
_ID_PARAM: Final = {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"}
_IDENTIFIER_PARAM: Final = {
    "name": "identifier",
    "type": "token",
    "definition": "http://hl7.org/fhir/SearchParameter/Patient-identifier",
}
TRANSACTION_OPERATION_URL: Final = "http://paperchart.org/fhir/OperationDefinition/Bundle-transaction"
EXTRACT_OPERATION_URL: Final = "http://paperchart.org/fhir/OperationDefinition/DocumentReference-extract"


def capability_statement(settings: Settings) -> dict[str, Any]:
    resources: list[dict[str, Any]] = [
        {
            "type": "DocumentReference",
            "interaction": [{"code": "create"}, {"code": "read"}],
            "operation": [
                {
                    "name": "extract",
                    "definition": EXTRACT_OPERATION_URL,
                    "documentation": "Run OCR and extraction on the document; returns a FHIR Bundle. Asynchronous by "
                    "default (202 + Content-Location); send 'Prefer: respond-sync' to wait for the Bundle.",
                }
            ],
        },
        {"type": "Binary", "interaction": [{"code": "read"}]},
        {
            "type": "CodeSystem",
            "operation": [
                {"name": "lookup", "definition": "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup"},
                {
                    "name": "validate-code",
                    "definition": "http://hl7.org/fhir/OperationDefinition/CodeSystem-validate-code",
                },
            ],
        },
        {
            "type": "ValueSet",
            "operation": [
                {"name": "expand", "definition": "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"},
            ],
        },
    ]
    for resource_type in SEARCHABLE_TYPES:
        params = [_ID_PARAM] if resource_type in ("Patient", "Bundle", "Provenance") else [_PATIENT_PARAM, _ID_PARAM]
        if resource_type == "Patient":
            params = [*params, _IDENTIFIER_PARAM]
        entry: dict[str, Any] = {
            "type": resource_type,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": params,
        }
        if resource_type == "Bundle":
            entry["operation"] = [
                {
                    "name": "transaction",
                    "definition": TRANSACTION_OPERATION_URL,
                    "documentation": "The Bundle as a transaction (urn:uuid references, conditional "
                    "create of the Patient on its identifier) for loading elsewhere.",
                }
            ]
        resources.append(entry)
    resources.append(
        {
            "type": "AuditEvent",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [_PATIENT_PARAM],
        }
    )
    auth = settings.auth_base_url
    # SMART App Launch 2.x §"Capability Statement": the oauth-uris extension and the SMART service
    security = {
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "token", "valueUri": f"{auth}/token"},
                    {"url": "authorize", "valueUri": f"{auth}/authorize"},
                    {"url": "introspect", "valueUri": f"{auth}/introspect"},
                    {"url": "revoke", "valueUri": f"{auth}/revoke"},
                ],
            }
        ],
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ]
            }
        ],
        "description": "SMART on FHIR: OAuth 2 bearer tokens with SMART v1/v2 scopes on every interaction",
    }
    statement = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "paperchart",
        "kind": "instance",
        "software": {"name": "paperchart", "version": __version__},
        "implementation": {
            "description": "paperchart clinical document extraction server",
            "url": settings.fhir_base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": security,
                "resource": resources,
                "operation": [
                    {"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}
                ],
            }
        ],
    }
    validate_resource(statement)
    return statement
