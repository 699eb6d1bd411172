"""The jobs the CLI runs, callable from Python with the same names.

Each returns a frozen result object; the CLI only formats it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import analysis
from .analysis import Comparison, Verification
from .bundle import write_bundle
from .report import write_report
from .errors import InputError
from .mapping import MapResult, tables_to_fhir
from .roundtrip import RoundTripResult, check_roundtrip
from .store import Store, open_resources
from .study import REPO_ROOT, Study
from .tables import RejectLog, read_dataset
from .unmapping import UnmapResult, fhir_to_tables, subjects_in
from .validate import ValidationReport, validate_resources
from .versions import VERSIONS, FhirVersion, administration_medication, get_version, subject_arm_names

Progress = Callable[[int], None] | None
DEMO_TABLES = REPO_ROOT / "fixtures" / "msc-covid19"


def map_tables(study: Study, source: Path, *, store: Path | None = None, bundle: Path | None = None,
               version: FhirVersion = get_version("R4"), rejects: Path | None = None,
               progress: Progress = None) -> MapResult:
    """Map the trial tables in ``source`` into a store directory or a transaction bundle file.

    Rejected rows are written to ``rejects`` (default: ``STORE/rejects`` or
    ``BUNDLE.rejects``), replacing what an earlier run left there.
    """
    if (store is None) == (bundle is None):
        raise InputError("give exactly one target: a store directory or a bundle file")
    if not source.is_dir():
        raise InputError(f"{source}: not a directory of trial tables (dm.csv, ex.csv, findings)")
    rejects = rejects or (store / "rejects" if store else bundle.with_name(bundle.name + ".rejects"))
    spool = Path(tempfile.mkdtemp(prefix=".rejects-", dir=rejects.parent if rejects.parent.exists() else None))
    log = RejectLog(spool)
    try:
        if store is not None:
            target = Store(store)
            resources = tables_to_fhir(study, source, version, log, subjects_in(study, target), progress)
            counts = target.write(resources)
        else:
            counts = write_bundle(tables_to_fhir(study, source, version, log, None, progress), bundle)
    finally:
        log.close()
    files = _publish_rejects(spool, rejects)
    return MapResult(counts=counts, rejections=log.rejections, rejects_files=files,
                     synthetic=read_dataset(source).synthetic)


def _publish_rejects(spool: Path, rejects: Path) -> list[Path]:
    """Move this run's rejects files into place (the source may have been the old rejects)."""
    if rejects.exists():
        shutil.rmtree(rejects)
    files = sorted(spool.glob("*.csv"))
    if not files:
        shutil.rmtree(spool)
        return []
    rejects.parent.mkdir(parents=True, exist_ok=True)
    spool.rename(rejects)
    return [rejects / f.name for f in files]


def unmap(study: Study, source: Path, out: Path) -> UnmapResult:
    """Write the study's trial tables from a store directory or bundle file into ``out``."""
    return fhir_to_tables(study, open_resources(source), out)


def validate(source: Path, version: FhirVersion, progress: Progress = None) -> ValidationReport:
    """Validate every resource of a store directory or bundle file."""
    return validate_resources(open_resources(source).read_all(), version, progress)


def analyze(study: Study, source: Path, visits: list[str] | None = None,
            outcomes: list[str] | None = None) -> list[Comparison]:
    """Between-arm comparisons for the FHIR data in a store directory or bundle file."""
    return analysis.analyze(study, analysis.analysis_frame(study, open_resources(source)), visits, outcomes)


def verify(study: Study, source: Path) -> list[Verification]:
    """Recompute the study's published results from a store directory or bundle file."""
    return analysis.verify(study, analysis.analysis_frame(study, open_resources(source)))


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    """Everything the demo did, for the summary."""

    workdir: Path
    store: Path
    bundle: Path
    mapped: MapResult
    subjects_by_arm: dict[str, int]
    infusions: dict[str, int]
    validation: dict[str, ValidationReport]
    roundtrip: RoundTripResult
    verification: list[Verification]
    report: dict[str, Path]

    @property
    def reproduced(self) -> int:
        return sum(check.matches for check in self.verification)


def demo(study: Study, workdir: Path, tables: Path = DEMO_TABLES, progress: Progress = None) -> DemoResult:
    """Map the synthetic cohort, validate it (R4, R5), round-trip it, export a bundle, analyze and verify it."""
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "store"
    Store(store).clear()
    r4 = get_version("R4")
    mapped = map_tables(study, tables, store=store, version=r4, progress=progress)
    validation = {"R4": validate(store, r4, progress)}
    for name in VERSIONS[1:]:
        other = workdir / f"store-{name.lower()}"
        Store(other).clear()
        map_tables(study, tables, store=other, version=get_version(name))
        validation[name] = validate(other, get_version(name), progress)
    roundtrip = check_roundtrip(study, tables, r4, workdir / "roundtrip")
    bundle = workdir / "bundle.json"
    write_bundle(Store(store).read_all(), bundle)
    arm_names = {arm.code: arm.name for arm in study.arms}
    by_arm = Counter(subject_arm_names(rs, arm_names)[0] for rs in Store(store).read("ResearchSubject"))
    infusions = Counter(administration_medication(a)["coding"][0]["code"]
                        for a in Store(store).read("MedicationAdministration"))
    frame = analysis.analysis_frame(study, Store(store))
    checks = analysis.verify(study, frame)
    report = write_report(workdir / "report", analysis.analyze(study, frame), checks,
                          f"{study.study.identifier.value}: between-arm comparisons (synthetic data)" if mapped.synthetic
                          else f"{study.study.identifier.value}: between-arm comparisons")
    return DemoResult(workdir=workdir, store=store, bundle=bundle, mapped=mapped, subjects_by_arm=dict(by_arm),
                      infusions=dict(infusions), verification=checks, report=report,
                      validation=validation, roundtrip=roundtrip)
