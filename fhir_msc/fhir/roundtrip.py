"""The lossless round trip, checked both ways.

tables → FHIR → tables must give the same rows, and FHIR → tables → FHIR the same
resources (ignoring meta, which servers rewrite).
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..store.ndjson import Store
from ..study.definition import Study
from ..tables.sdtm import RejectLog
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


def table_rows(directory: Path) -> dict[str, Counter[tuple[str, ...]]]:
    """Each CSV file's header and rows, as a multiset (row order does not matter)."""
    tables = {}
    for path in sorted(directory.glob("*.csv")):
        with open(path, encoding="utf-8-sig", newline="") as handle:
            tables[path.name] = Counter(tuple(row) for row in csv.reader(handle))
    return tables


def compare_tables(expected: Path, actual: Path) -> list[str]:
    left, right = table_rows(expected), table_rows(actual)
    differences = [f"table {name}: only in {expected if name in left else actual}" for name in sorted(set(left) ^ set(right))]
    for name in sorted(set(left) & set(right)):
        missing, extra = left[name] - right[name], right[name] - left[name]
        differences += [f"{name}: row lost: {','.join(row)}" for row in list(missing)[:5]]
        differences += [f"{name}: row added: {','.join(row)}" for row in list(extra)[:5]]
    return differences


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
    table_diffs = compare_tables(tables, workdir / "tables")
    fhir_diffs = compare_stores(first, second)
    return RoundTripResult(tables_equal=not table_diffs, fhir_equal=not fhir_diffs,
                           differences=(table_diffs + fhir_diffs)[:MAX_DIFFERENCES])
