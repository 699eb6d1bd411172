"""The jobs the CLI runs, callable from Python with the same names.

Each returns a frozen result object; the CLI only formats it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .analysis import frame as analysis
from .analysis.frame import Comparison, Verification
from .analysis.report import write_report
from .errors import InputError
from .fhir.bundle import open_resources, write_bundle
from .fhir.mapping import MapResult, tables_to_fhir
from .fhir.roundtrip import RoundTripResult, check_roundtrip
from .fhir.unmapping import UnmapResult, fhir_to_tables, subjects_in
from .fhir.validate import ValidationReport, validate_resources
from .fhir.versions import (
    VERSIONS,
    FhirVersion,
    administration_medication,
    get_version,
    subject_arm_names,
    subject_version,
)
from .server import hospital as _hospital
from .server import sync as _sync
from .server.client import FhirClient
from .server.hospital import HospitalPullResult
from .server.journal import open_journal
from .server.sync import PullResult, PushResult, StoreInPushOrder, SyncResult, in_push_order, server_profile
from .store.ndjson import Store
from .study.definition import REPO_ROOT, Study
from .tables.sdtm import RejectLog, TableWriter, read_dataset

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
    if store is not None and not Store(store).resource_types() and not (source / study.tables.dm.file).exists():
        raise InputError(f"{source}: no {study.tables.dm.file} and {store} holds no subjects yet: map DM first")
    if not source.is_dir():
        raise InputError(f"{source}: not a directory of trial tables (dm.csv, ex.csv, findings)")
    rejects = rejects or (store / "rejects" if store else bundle.with_name(bundle.name + ".rejects"))
    spool = Path(tempfile.mkdtemp(prefix=".rejects-", dir=rejects.parent if rejects.parent.exists() else None))
    log = RejectLog(spool)
    try:
        if store is not None:
            target = Store(store)
            resources = tables_to_fhir(study, source, version, log, subjects_in(study, target), progress)
            counts = target.write(_widen_existing_visits(target, resources))
        else:
            counts = write_bundle(tables_to_fhir(study, source, version, log, None, progress), bundle)
    finally:
        log.close()
    files = _publish_rejects(spool, rejects)
    return MapResult(counts=counts, rejections=log.rejections, rejects_files=files,
                     synthetic=read_dataset(source).synthetic)


def _widen_existing_visits(store: Store, resources: Iterable[dict]) -> Iterable[dict]:
    """A visit Encounter already in the store keeps the dates it spans when new findings join it."""
    periods = {e["id"]: e.get("period") or e.get("actualPeriod") for e in store.read("Encounter")}
    for resource in resources:
        old = periods.get(resource["id"]) if resource["resourceType"] == "Encounter" else None
        if old:
            key = "actualPeriod" if "actualPeriod" in resource else "period"
            new = resource[key]
            resource = {**resource, key: {"start": min(old["start"], new["start"]), "end": max(old["end"], new["end"])}}
        yield resource


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


def analysis_frame(study: Study, source: Path | FhirClient, visits: list[str] | None = None):
    """The analysis DataFrame from a store directory, a bundle file, or a server (pulled in full)."""
    if isinstance(source, FhirClient):
        with tempfile.TemporaryDirectory(prefix="fhir-msc-pull-") as tmp:
            with open_journal(Path(tmp) / "state", lock=False) as journal:
                _sync.pull(source, study, Store(Path(tmp) / "store"), journal, full=True)
            return analysis.analysis_frame(study, Store(Path(tmp) / "store"), visits)
    return analysis.analysis_frame(study, open_resources(source), visits)


def analyze(study: Study, source: Path | FhirClient, visits: list[str] | None = None,
            outcomes: list[str] | None = None) -> list[Comparison]:
    """Between-arm comparisons for the FHIR data in a store, bundle or on a server."""
    return analysis.analyze(study, analysis_frame(study, source, visits), visits, outcomes)


def verify(study: Study, source: Path | FhirClient) -> list[Verification]:
    """Recompute the study's published results from a store, bundle or server."""
    visits = sorted({result.visit for result in study.analysis.published}) if study.analysis else None
    return analysis.verify(study, analysis_frame(study, source, visits))


def is_server(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def resources_of(study: Study, source: Path, version: FhirVersion) -> Iterable[dict]:
    """Resources to push from a store directory, a bundle file, or a directory of trial tables."""
    if source.is_dir() and (source / study.tables.dm.file).exists():
        log = RejectLog(None)
        resources = list(tables_to_fhir(study, source, version, log))
        if log.rejections:
            raise InputError(f"{source}: {len(log.rejections)} row(s) rejected (first: {log.rejections[0]}); "
                             "run `fhir-msc map` to see and fix them before pushing")
        return in_push_order(resources)
    opened = open_resources(source)
    return StoreInPushOrder(opened) if isinstance(opened, Store) else in_push_order(list(opened.read_all()))


def push(study: Study, source: Path, client: FhirClient, state: Path, *, bundle_size: int = 50,
         method: str = "auto", mode: str = "push", fhir_version: str | None = None,
         progress: Progress = None) -> PushResult:
    """Push a store, bundle or trial tables to the server; incremental and resumable via ``state``.

    Ends by checking that the server holds every resource (see ``sync.push`` for ``mode``).
    """
    profile = server_profile(client, fhir_version)
    with open_journal(state) as journal:
        return _sync.push(client, resources_of(study, source, profile.version), journal, bundle_size=bundle_size,
                          method=method, mode=mode, profile=profile, progress=progress)


def pull(study: Study, client: FhirClient, store: Path, state: Path, *, full: bool = False,
         fhir_version: str | None = None, progress: Progress = None) -> PullResult:
    """Pull the study from the server into a store, removing what the server deleted; incremental via ``state``."""
    profile = server_profile(client, fhir_version)
    with open_journal(state) as journal:
        return _sync.pull(client, study, Store(store), journal, full=full, profile=profile, progress=progress)


def sync(study: Study, source: str, target: str, state: Path, connect_to: Callable[[str], FhirClient], *,
         bundle_size: int = 50, method: str = "auto", fhir_version: str | None = None,
         progress: Progress = None) -> SyncResult:
    """Store → server, server → store, or server → server (through a staging store in ``state``)."""
    if not is_server(source) and not is_server(target):
        raise InputError("sync needs a server on at least one side: --from or --to must be an http(s) URL")
    with open_journal(state) as journal:
        pulled = None
        if is_server(source):
            staging = Path(target) if not is_server(target) else state / "staging"
            client = connect_to(source)
            pulled = _sync.pull(client, study, Store(staging), journal, profile=server_profile(client, fhir_version),
                                progress=progress)
            source_path = staging
        else:
            source_path = Path(source)
        pushed = None
        if is_server(target):
            client = connect_to(target)
            profile = server_profile(client, fhir_version)
            pushed = _sync.push(client, resources_of(study, source_path, profile.version), journal,
                                bundle_size=bundle_size, method=method, profile=profile, progress=progress)
        return SyncResult(source=source, target=target, pulled=pulled, pushed=pushed)


def hospital_pull(study: Study, client: FhirClient, enrollment: Path, store: Path, out: Path) -> HospitalPullResult:
    """Place hospital results of enrolled subjects at study visits: findings tables in ``out``, mapped into ``store``."""
    subjects = subjects_in(study, Store(store))
    if not subjects:
        raise InputError(f"{store}: no study subjects in this store: map or pull the study first")
    result = _hospital.pull_hospital(client, study, _hospital.read_enrollment(enrollment), subjects)
    with TableWriter(study, out) as writer:
        for finding in result.findings:
            writer.finding(finding)
    if result.findings:
        version = subject_version(next(Store(store).read("ResearchSubject"), {}))
        mapped = map_tables(study, out, store=store, version=version, rejects=out / "rejects")
        if mapped.rejections:
            raise InputError(f"{len(mapped.rejections)} hospital finding(s) could not be mapped; see {out / 'rejects'}")
    return result


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
