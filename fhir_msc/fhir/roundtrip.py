"""The lossless round trip, checked both ways.

tables → FHIR → tables must give the same rows, and FHIR → tables → FHIR the same
resources (ignoring meta, which servers rewrite). Rows are compared by value: a number
written ``20.0`` in a numeric column (AGE, EXDOSE, VISITNUM, a result) is the value 20, as
FHIR holds it, so the table written back with ``20`` reproduces it.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from ..store.ndjson import Store
from ..study.definition import Study
from ..tables.sdtm import FindingColumns, RejectLog, is_number, numeric_columns, split_comparator
from .mapping import tables_to_fhir
from .unmapping import fhir_to_tables
from .versions import FhirVersion

MAX_DIFFERENCES = 20


@dataclass(frozen=True, kw_only=True)
class RoundTripResult:
    """Whether each direction reproduced its source, with the first differences if not."""

    tables_equal: bool
    fhir_equal: bool
    differences: list[str]

    @property
    def lossless(self) -> bool:
        return self.tables_equal and self.fhir_equal


Cell = str | tuple[str, Decimal]  # text, or a number as (comparator, value)


def table_rows(directory: Path, numeric: Collection[str] = ()) -> dict[str, Counter[tuple[Cell, ...]]]:
    """Each CSV file's header and rows, as a multiset (row order does not matter).

    Cells of the ``numeric`` columns that hold a number (after a censoring comparator) are
    compared as that number: ``20.0`` is ``20``, ``<0.50`` is ``<0.5``.
    """
    tables = {}
    for path in sorted(directory.glob("*.csv")):
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = csv.reader(handle)
            header = next(rows, [])
            numbers = {index for index, column in enumerate(header) if column in numeric}
            tables[path.name] = Counter([tuple(header), *(tuple(_value(cell) if index in numbers else cell
                                                                for index, cell in enumerate(row)) for row in rows)])
    return tables


def _value(cell: str) -> Cell:
    comparator, digits = split_comparator(cell)
    return (comparator, Decimal(digits)) if is_number(digits) else cell


def _text(cell: Cell) -> str:
    return cell if isinstance(cell, str) else f"{cell[0]}{cell[1]}"


def compare_tables(expected: Path, actual: Path, numeric: Collection[str] = ()) -> list[str]:
    """What differs between the CSV tables of two directories (cells of ``numeric`` columns by value)."""
    left, right = table_rows(expected, numeric), table_rows(actual, numeric)
    differences = [f"table {name}: only in {expected if name in left else actual}" for name in sorted(set(left) ^ set(right))]
    for name in sorted(set(left) & set(right)):
        missing, extra = left[name] - right[name], right[name] - left[name]
        differences += [f"{name}: row lost: {','.join(map(_text, row))}" for row in list(missing)[:5]]
        differences += [f"{name}: row added: {','.join(map(_text, row))}" for row in list(extra)[:5]]
    return differences


def value_columns(study: Study) -> set[str]:
    """The columns whose cells are compared as numbers: AGE, EXDOSE, VISITNUM (and AESEQ), and each --ORRES."""
    results = {FindingColumns.of(study, domain).result for domain in study.tables.findings.files}
    return numeric_columns(study) | results


def compare_stores(expected: Store, actual: Store) -> list[str]:
    differences = []
    for resource_type in sorted(set(expected.resource_types()) | set(actual.resource_types())):
        left = {r["id"]: _without_meta(r) for r in expected.read(resource_type)}
        for resource in actual.read(resource_type):
            before = left.pop(resource["id"], None)
            if before is None:
                differences.append(f"{resource_type}/{resource['id']}: added")
            elif before != _without_meta(resource):
                differences.append(f"{resource_type}/{resource['id']}: changed")
        differences += [f"{resource_type}/{rid}: lost" for rid in left]
    return differences


def _without_meta(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k != "meta"}


def check_roundtrip(study: Study, tables: Path, version: FhirVersion, workdir: Path) -> RoundTripResult:
    """Map ``tables``, unmap, map again; compare tables with tables and FHIR with FHIR."""
    first, second = Store(workdir / "fhir-1"), Store(workdir / "fhir-2")
    for store in (first, second):
        store.clear()
    first.write(tables_to_fhir(study, tables, version, RejectLog(None)))
    fhir_to_tables(study, first, workdir / "tables")
    second.write(tables_to_fhir(study, workdir / "tables", version, RejectLog(None)))
    table_diffs = compare_tables(tables, workdir / "tables", value_columns(study))
    fhir_diffs = compare_stores(first, second)
    return RoundTripResult(tables_equal=not table_diffs, fhir_equal=not fhir_diffs,
                           differences=(table_diffs + fhir_diffs)[:MAX_DIFFERENCES])
