"""The study ``fhir-msc init`` writes: a commented study file and synthetic tables that map, analyse and verify.

They ship in the package (``new_study/``). The study file's JSON Schema is written beside it, where the file's
``# yaml-language-server: $schema=study.schema.json`` line points editors. Optional sections are commented out
below a line ending in "remove the # to use:", up to the next blank line.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

STUDY_FILE, SCHEMA_FILE, TABLES = "study.yaml", "study.schema.json", "tables"
OPTIONAL_MARK = "remove the # to use:"


def _shipped() -> Traversable:
    return files("fhir_msc.study").joinpath("new_study")


def study_text() -> str:
    """The commented study file."""
    return _shipped().joinpath(STUDY_FILE).read_text(encoding="utf-8")


def schema_text() -> str:
    """The study file's JSON Schema as shipped (fhir_msc/schemas/study.schema.json)."""
    return files("fhir_msc").joinpath("schemas", SCHEMA_FILE).read_text(encoding="utf-8")


def new_study_files() -> dict[str, bytes]:
    """Every file ``init`` writes, by its path in the new directory: the study file, its schema and the tables."""
    tables = _shipped().joinpath(TABLES)
    written = {STUDY_FILE: study_text().encode("utf-8"), SCHEMA_FILE: schema_text().encode("utf-8")}
    written |= {f"{TABLES}/{table.name}": table.read_bytes() for table in sorted(tables.iterdir(), key=lambda t: t.name)
                if table.is_file()}
    return written


def with_optional_sections(text: str) -> str:
    """The study file with its optional sections uncommented: the lines after each "remove the # to use:" line,
    up to a blank line, without their "# "."""
    lines, optional = [], False
    for line in text.splitlines(keepends=True):
        if optional and line.lstrip().startswith("# "):
            indent = line[:len(line) - len(line.lstrip())]
            line = indent + line.lstrip()[2:]
        else:
            optional = False
        lines.append(line)
        optional = optional or line.rstrip().endswith(OPTIONAL_MARK)
    return "".join(lines)
