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
from .fhir.changes import ChangeTracker
from .fhir.mapping import MapResult, reject_keys, tables_to_fhir
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
from .server.sync import PullResult, PushResult, SyncResult, in_push_order, push_order
from .store.ndjson import Store
from .study.definition import REPO_ROOT, Study
from .tables.rejects import DATASET_FILE, publish_rejects, waiting_rejects
from .tables.sdtm import RejectLog, TableWriter, read_dataset

Progress = Callable[[int], None] | None
DEMO_TABLES = REPO_ROOT / "fixtures" / "msc-covid19"


def map_tables(study: Study, source: Path, *, store: Path | None = None, bundle: Path | None = None,
               version: FhirVersion = get_version("R4"), rejects: Path | None = None,
               progress: Progress = None) -> MapResult:
    """Map the trial tables in ``source`` into a store directory (upsert) or a transaction bundle file.

    Rejected rows go to ``rejects`` (default: ``STORE/rejects`` or ``BUNDLE.rejects``).
    Replaying that directory replaces the files it read with the rows rejected again; any
    other run keeps the rows waiting there, except those it read again, and adds its own.
    Nothing else in the directory is touched.
    """
    if (store is None) == (bundle is None):
        raise InputError("give exactly one target: a store directory or a bundle file")
    _check_map_paths(study, source, store, bundle)
    rejects = rejects or (store / "rejects" if store else bundle.with_name(bundle.name + ".rejects"))
    if rejects.exists() and not rejects.is_dir():
        raise InputError(f"{rejects}: is a file; give --rejects a directory")
    keys = reject_keys(study)
    replay = rejects.resolve() == source.resolve()
    spool = Path(tempfile.mkdtemp(prefix=".rejects-", dir=rejects.parent if rejects.parent.is_dir() else None))
    log = RejectLog(spool, waiting={} if replay else waiting_rejects(rejects, keys))
    changes = {}
    try:
        if store is not None:
            target = Store(store)
            tracker = ChangeTracker(target)
            resources = tables_to_fhir(study, source, version, log, subjects_in(study, target), progress)
            target.write(tracker.changed(_widen_existing_visits(target, resources)))
            changes = tracker.changes
            counts = {t: c.total for t, c in changes.items()}
        else:
            counts = write_bundle(tables_to_fhir(study, source, version, log, None, progress), bundle)
    except BaseException:
        log.close()
        shutil.rmtree(spool, ignore_errors=True)
        raise
    log.close()
    replayed = [p.name for p in source.iterdir() if p.name in keys] if replay else []
    files = publish_rejects(spool, rejects, replayed=replayed, handled=log.handled, key_columns=keys,
                            dataset=source / DATASET_FILE)
    return MapResult(counts=counts, changes=changes, accounts=log.accounts, rejections=log.rejections,
                     rejects_files=files, notes=log.notes, synthetic=read_dataset(source).synthetic)


def _check_map_paths(study: Study, source: Path, store: Path | None, bundle: Path | None) -> None:
    """One line for each path map cannot use, before anything is read or written."""
    if not source.exists():
        raise InputError(f"{source}: no such directory: give the directory holding "
                         f"{study.tables.dm.file}, {study.tables.ex.file} and the findings tables")
    if not source.is_dir():
        raise InputError(f"{source}: is a file, not a directory of trial tables ({study.tables.dm.file}, "
                         f"{study.tables.ex.file}, findings)")
    if bundle is not None and not bundle.parent.is_dir():
        raise InputError(f"{bundle.parent}: no such directory for the bundle {bundle.name}: "
                         "create it or give --bundle a path in an existing directory")
    if bundle is not None and bundle.is_dir():
        raise InputError(f"{bundle}: is a directory; give --bundle a file name")
    if store is not None and store.exists() and not store.is_dir():
        raise InputError(f"{store}: is a file; give --store a directory")
    if store is not None and not Store(store).resource_types() and not (source / study.tables.dm.file).exists():
        raise InputError(f"{source}: no {study.tables.dm.file} and {store} holds no subjects yet: map DM first")


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
    return push_order(opened) if isinstance(opened, Store) else in_push_order(list(opened.read_all()))


def push(study: Study, source: Path, client: FhirClient, state: Path, *, bundle_size: int = 50,
         method: str = "auto", dry_run: bool = False, progress: Progress = None) -> PushResult:
    """Push a store, bundle or trial tables to the server; incremental and resumable via ``state``."""
    with open_journal(state) as journal:
        return _sync.push(client, resources_of(study, source, client.fhir_version()), journal,
                          bundle_size=bundle_size, method=method, dry_run=dry_run, progress=progress)


def pull(study: Study, client: FhirClient, store: Path, state: Path, *, full: bool = False,
         progress: Progress = None) -> PullResult:
    """Pull the study from the server into a store; incremental via ``state``."""
    with open_journal(state) as journal:
        return _sync.pull(client, study, Store(store), journal, full=full, progress=progress)


def sync(study: Study, source: str, target: str, state: Path, connect_to: Callable[[str], FhirClient], *,
         bundle_size: int = 50, progress: Progress = None) -> SyncResult:
    """Store → server, server → store, or server → server (through a staging store in ``state``)."""
    if not is_server(source) and not is_server(target):
        raise InputError("sync needs a server on at least one side: --from or --to must be an http(s) URL")
    with open_journal(state) as journal:
        pulled = None
        if is_server(source):
            staging = Path(target) if not is_server(target) else state / "staging"
            pulled = _sync.pull(connect_to(source), study, Store(staging), journal, progress=progress)
            source_path = staging
        else:
            source_path = Path(source)
        pushed = None
        if is_server(target):
            client = connect_to(target)
            pushed = _sync.push(client, resources_of(study, source_path, client.fhir_version()), journal,
                                bundle_size=bundle_size, progress=progress)
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
