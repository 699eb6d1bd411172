"""FHIR servers: the HTTP client, the sync journal, push/pull/sync, hospital pulls."""
