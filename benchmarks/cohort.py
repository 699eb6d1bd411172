"""Scaled synthetic cohorts: the 100-subject fixture replicated with renamed subjects.

Every copy keeps the fixture's design (arms, visits, missed visits, all outcomes), so a
1,000-subject cohort is 10 copies with USUBJIDs suffixed -R0000 … -R0009. SYNTHETIC DATA.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fhir_msc.study.definition import REPO_ROOT

FIXTURE = REPO_ROOT / "fixtures" / "msc-covid19"
CACHE = REPO_ROOT / "benchmarks" / ".cache"


def scaled_cohort(subjects: int) -> Path:
    """Trial tables for ``subjects`` (a multiple of 100) subjects, cached between runs."""
    if subjects % 100:
        raise ValueError("cohort sizes are multiples of the 100-subject fixture")
    out = CACHE / f"tables-{subjects}"
    if (out / "done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    copies = subjects // 100
    for source in sorted(FIXTURE.glob("*.csv")):
        lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
        with open(out / source.name, "w", encoding="utf-8") as handle:
            handle.write(lines[0])
            for copy in range(copies):
                suffix = f"-R{copy:04d}"
                for line in lines[1:]:
                    study, subject, rest = line.split(",", 2)
                    handle.write(f"{study},{subject}{suffix},{rest}")
    shutil.copy(FIXTURE / "dataset.yaml", out / "dataset.yaml")
    (out / "done").write_text("")
    return out
