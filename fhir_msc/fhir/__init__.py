"""FHIR resources: mapping tables to FHIR and back, R4/R5 differences, validation, bundles."""
