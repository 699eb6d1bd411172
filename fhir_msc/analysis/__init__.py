"""Analysis: FHIR to a tidy frame, between-arm statistics, reports."""
