"""Small copies of the synthetic cohort's tables, for tests that map it several times."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path


def write_subset(cohort: Path, out: Path, subjects: int) -> Path:
    """``cohort``'s tables restricted to its first ``subjects`` subjects (rows as they were), and its dataset.yaml if it has one."""
    out.mkdir(parents=True, exist_ok=True)
    with open(cohort / "dm.csv", newline="") as handle:
        keep = {row["USUBJID"] for _, row in zip(range(subjects), csv.DictReader(handle))}
    for table in sorted(cohort.glob("*.csv")):
        lines = table.read_text().splitlines(keepends=True)
        column = next(csv.reader([lines[0]])).index("USUBJID")
        (out / table.name).write_text(lines[0] + "".join(
            line for line in lines[1:] if next(csv.reader([line]))[column] in keep))
    if (cohort / "dataset.yaml").exists():
        shutil.copy(cohort / "dataset.yaml", out / "dataset.yaml")
    return out


def edit_rows(path: Path, edit) -> None:
    """Rewrite a CSV table: ``edit(row number, {column: value})`` changes rows in place (header is row 1)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
        header = list(rows[0]) if rows else []
    for number, row in enumerate(rows, start=2):
        edit(number, row)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
