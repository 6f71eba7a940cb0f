"""HTTP route handlers and the translation of errors into FHIR OperationOutcomes."""
