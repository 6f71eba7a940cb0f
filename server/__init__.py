"""paperchart server: ingest, pipeline, store and HTTP API (everything but terminology, FHIR mapping and MCP)."""

__version__ = "0.1.0"
