"""The jobs the CLI runs, callable from Python with the same names.

Each returns a frozen result object; the CLI only formats it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .analysis import frame as analysis
from .analysis.frame import Comparison, Verification
from .analysis.report import write_report
from .errors import InputError
from .progress import NO_PROGRESS, Progress
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
from .server import bulk_pull as _bulk_pull
from .server import hospital as _hospital
from .server import sync as _sync
from .server.client import FhirClient
from .server.hospital import HospitalPullResult
from .server.journal import open_journal
from .server.sync import PullResult, PushResult, SyncResult, in_push_order, push_order
from .store.ndjson import SUFFIX, Prefilter, Resource, Store
from .study.definition import Study, package_data
from .tables.sdtm import RejectLog, TableWriter, read_dataset

DEMO_TABLES = package_data("cohort", "fixtures/msc-covid19")  # the synthetic NCT04288102 cohort


def map_tables(study: Study, source: Path, *, store: Path | None = None, bundle: Path | None = None,
               version: FhirVersion = get_version("R4"), rejects: Path | None = None,
               progress: Progress = NO_PROGRESS) -> MapResult:
    """Map the trial tables in ``source`` into a store directory or a transaction bundle file.

    Rejected rows are written to ``rejects`` (default: ``STORE/rejects`` or
    ``BUNDLE.rejects``), replacing what an earlier run left there. Progress is counted in
    input rows.
    """
    if (store is None) == (bundle is None):
        raise InputError("give exactly one target: a store directory or a bundle file")
    if store is not None and not Store(store).resource_types() and not (source / study.tables.dm.file).exists():
        raise InputError(f"{source}: no {study.tables.dm.file} and {store} holds no subjects yet: map DM first")
    if not source.is_dir():
        raise InputError(f"{source}: not a directory of trial tables (dm.csv, ex.csv, findings)")
    rejects = rejects or (store / "rejects" if store else bundle.with_name(bundle.name + ".rejects"))
    progress.start(f"mapping {source}", _table_rows(study, source) if progress.active else None, "rows")
    spool = Path(tempfile.mkdtemp(prefix=".rejects-", dir=rejects.parent if rejects.parent.exists() else None))
    log = RejectLog(spool)
    try:
        if store is not None:
            target = Store(store)
            resources = tables_to_fhir(study, source, version, log, subjects_in(study, target), progress.advance)
            counts = target.write(_widen_existing_visits(target, resources))
        else:
            counts = write_bundle(tables_to_fhir(study, source, version, log, None, progress.advance), bundle)
    except BaseException:  # an error or Ctrl-C: this run's rejects are not published, the spool goes
        log.close()
        shutil.rmtree(spool, ignore_errors=True)
        raise
    log.close()
    files = _publish_rejects(spool, rejects)
    return MapResult(counts=counts, rejections=log.rejections, rejects_files=files,
                     synthetic=read_dataset(source).synthetic)


def _table_rows(study: Study, source: Path) -> int:
    """Data rows in the input tables (lines after each header): the map job's total, cheaply."""
    names = [study.tables.dm.file, study.tables.ex.file, *study.tables.findings.files.values()]
    return sum(max(_lines(source / name) - 1, 0) for name in names if (source / name).is_file())


def _lines(path: Path) -> int:
    """Lines of a file (a last line without a newline counts), read in 1 MiB chunks."""
    lines, last = 0, b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines, last = lines + chunk.count(b"\n"), chunk[-1:]
    return lines + (last != b"\n")


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


class _Metered:
    """A store read with one progress stage per resource type, counted in bytes of its file.

    Lines are counted by a prefilter that passes on to the caller's, so lines the caller
    skips unparsed are counted too; the store is read as before when no one watches.
    """

    def __init__(self, store: Store, progress: Progress, verb: str):
        self.store, self.progress, self.verb = store, progress, verb

    def resource_types(self) -> list[str]:
        return self.store.resource_types()

    def read(self, resource_type: str, prefilter: Prefilter | None = None) -> Iterator[Resource]:
        path = self.store.path / f"{resource_type}{SUFFIX}"
        self.progress.start(f"{self.verb} {resource_type}", path.stat().st_size if path.exists() else 0, "B")
        pending = 0

        def counting(line: bytes) -> bool:
            nonlocal pending
            pending += len(line)
            if pending >= METER_STEP:
                self.progress.advance(pending)
                pending = 0
            return prefilter is None or prefilter(line)

        yield from self.store.read(resource_type, counting)
        self.progress.advance(pending)

    def read_all(self) -> Iterator[Resource]:
        for resource_type in self.resource_types():
            yield from self.read(resource_type)


METER_STEP = 1 << 20  # bytes read between progress updates


def _opened(source: Path, progress: Progress, verb: str):
    """``open_resources(source)``, metered when it is a store and someone watches."""
    opened = open_resources(source)
    return _Metered(opened, progress, verb) if progress.active and isinstance(opened, Store) else opened


def unmap(study: Study, source: Path, out: Path, progress: Progress = NO_PROGRESS) -> UnmapResult:
    """Write the study's trial tables from a store directory or bundle file into ``out``."""
    return fhir_to_tables(study, _opened(source, progress, "unmapping"), out)


def validate(source: Path, version: FhirVersion, progress: Progress = NO_PROGRESS) -> ValidationReport:
    """Validate every resource of a store directory or bundle file."""
    progress.start(f"validating {source} ({version.name})", None)
    opened = _opened(source, progress, f"validating ({version.name})")
    if isinstance(opened, Store | _Metered):
        return validate_resources(opened.read_all(), version)
    resources = list(opened.read_all())
    progress.start(f"validating ({version.name})", len(resources))
    return validate_resources(resources, version, progress.advance)


def analysis_frame(study: Study, source: Path | FhirClient, visits: list[str] | None = None,
                   progress: Progress = NO_PROGRESS):
    """The analysis DataFrame from a store directory, a bundle file, or a server (pulled in full).

    Raises InputError when the source holds no findings of the study's subjects (at ``visits``).
    """
    if isinstance(source, FhirClient):
        with tempfile.TemporaryDirectory(prefix="fhir-msc-pull-") as tmp:
            with open_journal(Path(tmp) / "state", lock=False) as journal:
                _sync.pull(source, study, Store(Path(tmp) / "store"), journal, full=True, progress=progress)
            frame = analysis.analysis_frame(study, Store(Path(tmp) / "store"), visits)
    else:
        frame = analysis.analysis_frame(study, _opened(source, progress, "reading"), visits)
    if frame.empty:
        where = f" at visit {', '.join(visits)}" if visits else ""
        name = source.base_url if isinstance(source, FhirClient) else source
        raise InputError(f"{name}: no findings of {study.study.identifier.value} subjects{where} "
                         "(no ResearchSubject of this study with Observations): map or pull the study first, "
                         "or check --study")
    return frame


def analyze(study: Study, source: Path | FhirClient, visits: list[str] | None = None,
            outcomes: list[str] | None = None, progress: Progress = NO_PROGRESS) -> list[Comparison]:
    """Between-arm comparisons for the FHIR data in a store, bundle or on a server."""
    unknown = [code for code in outcomes or [] if code not in study.outcome_by_code]
    if unknown:
        raise InputError(f"unknown outcome {', '.join(unknown)}: use one of {', '.join(study.outcome_by_code)}")
    comparisons = analysis.analyze(study, analysis_frame(study, source, visits, progress), visits, outcomes)
    if not comparisons:
        name = source.base_url if isinstance(source, FhirClient) else source
        raise InputError(f"{name}: nothing to compare: each arm needs at least 2 values of an outcome at a visit")
    return comparisons


def verify(study: Study, source: Path | FhirClient, progress: Progress = NO_PROGRESS) -> list[Verification]:
    """Recompute the study's published results from a store, bundle or server."""
    visits = sorted({result.visit for result in study.analysis.published}) if study.analysis else None
    return analysis.verify(study, analysis_frame(study, source, visits, progress))


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


def _push_stage(source: Path, resources: Iterable[dict], progress: Progress) -> None:
    total = None
    if progress.active:
        total = len(resources) if isinstance(resources, list) else sum(Store(source).counts().values())
    progress.start(f"pushing {source}", total)


def push(study: Study, source: Path, client: FhirClient, state: Path, *, bundle_size: int = 50,
         method: str = "auto", dry_run: bool = False, progress: Progress = NO_PROGRESS) -> PushResult:
    """Push a store, bundle or trial tables to the server; incremental and resumable via ``state``."""
    with open_journal(state) as journal:
        resources = resources_of(study, source, client.fhir_version())
        _push_stage(source, resources, progress)
        return _sync.push(client, resources, journal, bundle_size=bundle_size, method=method, dry_run=dry_run,
                          progress=progress.advance)


def pull(study: Study, client: FhirClient, store: Path, state: Path, *, full: bool = False, bulk: bool = False,
         since: str | None = None, progress: Progress = NO_PROGRESS) -> PullResult | _bulk_pull.BulkPullResult:
    """Pull the study from the server into a store; incremental via ``state``.

    With ``bulk``, by Bulk Data $export when the server declares it (paged search otherwise),
    ``since`` overriding the journal's mark; a killed export resumes from ``state``.
    """
    with open_journal(state) as journal:
        if bulk:
            return _bulk_pull.pull(client, study, Store(store), journal, state, full=full, since=since, progress=progress)
        return _sync.pull(client, study, Store(store), journal, full=full, progress=progress)


def sync(study: Study, source: str, target: str, state: Path, connect_to: Callable[[str], FhirClient], *,
         bundle_size: int = 50, progress: Progress = NO_PROGRESS) -> SyncResult:
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
            resources = resources_of(study, source_path, client.fhir_version())
            _push_stage(source_path, resources, progress)
            pushed = _sync.push(client, resources, journal, bundle_size=bundle_size, progress=progress.advance)
        return SyncResult(source=source, target=target, pulled=pulled, pushed=pushed)


def hospital_pull(study: Study, client: FhirClient, enrollment: Path, store: Path, out: Path,
                  progress: Progress = NO_PROGRESS) -> HospitalPullResult:
    """Place hospital results of enrolled subjects at study visits: findings tables in ``out``, mapped into ``store``."""
    subjects = subjects_in(study, Store(store))
    if not subjects:
        raise InputError(f"{store}: no study subjects in this store: map or pull the study first")
    result = _hospital.pull_hospital(client, study, _hospital.read_enrollment(enrollment), subjects, progress)
    with TableWriter(study, out) as writer:
        for finding in result.findings:
            writer.finding(finding)
    if result.findings:
        version = subject_version(next(Store(store).read("ResearchSubject"), {}))
        mapped = map_tables(study, out, store=store, version=version, rejects=out / "rejects", progress=progress)
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


def demo(study: Study, workdir: Path, tables: Path = DEMO_TABLES, progress: Progress = NO_PROGRESS) -> DemoResult:
    """Map trial tables (default: the synthetic cohort), validate them (R4, R5), round-trip, export a bundle, analyze, verify."""
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "store"
    Store(store).clear()
    r4 = get_version("R4")
    mapped = map_tables(study, tables, store=store, version=r4, progress=progress)
    validation = {"R4": validate(store, r4, progress)}
    for name in VERSIONS[1:]:
        other = workdir / f"store-{name.lower()}"
        Store(other).clear()
        map_tables(study, tables, store=other, version=get_version(name), progress=progress)
        validation[name] = validate(other, get_version(name), progress)
    roundtrip = check_roundtrip(study, tables, r4, workdir / "roundtrip")
    bundle = workdir / "bundle.json"
    write_bundle(Store(store).read_all(), bundle)
    arm_names = {arm.code: arm.name for arm in study.arms}
    by_arm = Counter(subject_arm_names(rs, arm_names)[0] for rs in Store(store).read("ResearchSubject"))
    infusions = Counter(administration_medication(a)["coding"][0]["code"]
                        for a in Store(store).read("MedicationAdministration"))
    frame = analysis.analysis_frame(study, Store(store))
    comparisons = analysis.analyze(study, frame)
    if not comparisons:
        raise InputError(f"{tables}: no outcome has 2 or more values in each arm at any visit: nothing to compare; "
                         "check the tables and that --study describes them")
    checks = analysis.verify(study, frame)
    report = write_report(workdir / "report", comparisons, checks,
                          f"{study.study.identifier.value}: between-arm comparisons (synthetic data)" if mapped.synthetic
                          else f"{study.study.identifier.value}: between-arm comparisons",
                          study=study, source=f"trial tables {tables}, mapped into the store {store}")
    return DemoResult(workdir=workdir, store=store, bundle=bundle, mapped=mapped, subjects_by_arm=dict(by_arm),
                      infusions=dict(infusions), verification=checks, report=report,
                      validation=validation, roundtrip=roundtrip)
