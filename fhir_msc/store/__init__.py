"""The embedded store: FHIR NDJSON files, one per resource type."""
