"""SQL-on-FHIR v2 ViewDefinitions: flat tables defined over FHIR resources, run by interchangeable engines.

An engine is ``run_view(view, source) -> pyarrow.Table`` (columns in the view's order, Arrow
types from each column's FHIR ``type``): ``python_engine`` (the reference, on fhirpathpy),
``duckdb_engine`` (one DuckDB query over the store's NDJSON files) and ``spark_engine`` (PySpark,
each partition flattened by the DuckDB query). The ViewDefinitions that define the analysis frame
and the adverse-event incidence are shipped in this package (``*.json``).
"""
