"""SQL-on-FHIR v2 ViewDefinitions: flat tables of FHIR resources, run by interchangeable engines."""
