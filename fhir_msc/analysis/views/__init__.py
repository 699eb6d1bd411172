"""SQL-on-FHIR v2 ViewDefinitions: flat tables defined over FHIR resources, run by an engine.

An engine is ``run_view(view, source) -> pyarrow.Table`` (columns in the view's order, Arrow
types from each column's FHIR ``type``). ``duckdb_engine`` compiles a view into one DuckDB
query over the store's NDJSON files. The ViewDefinitions that define the analysis frame are
shipped in this package (``*.json``).
"""
