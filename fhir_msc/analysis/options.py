"""What the analysis jobs can be asked for: the engines that build frames and tables, and the output formats.

Kept apart from the modules that do the work, so that listing the choices (the CLI's --help)
loads none of pandas, DuckDB or Spark.
"""

from __future__ import annotations

FORMATS = ("table", "csv", "json", "markdown", "html")  # how a result table is shown

ENGINES = ("duckdb", "python", "spark")  # the shipped ViewDefinitions in DuckDB or in Spark (joined in DuckDB), or Python
DEFAULT_ENGINE = "duckdb"  # python: the reference engine the others are tested against

VIEW_ENGINES = ["duckdb", "python", "spark"]  # --engine choices of `view run`; identical tables
DEFAULT_VIEW_ENGINE = "duckdb"

EXPORT_FORMATS = ("parquet", "csv")  # file formats of the exported analysis views
