"""The jobs the CLI runs, callable from Python with the same names.

Each returns a frozen result object; the CLI only formats it.
"""

from __future__ import annotations

import csv
import dataclasses
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pyarrow as pa

from .account import Account
from .analysis import engine_frame, spark_frame
from .analysis import frame as analysis
from .analysis.adverse_events import (
    AdverseEventIncidence,
    incidence,
    incidence_json,
    incidence_table,
    published_pairs,
)
from .analysis.frame import Comparison, Verification
from .analysis.options import DEFAULT_ENGINE, DEFAULT_VIEW_ENGINE, ENGINES, EXPORT_FORMATS, VIEW_ENGINES
from .analysis.outcomes import time_to_event
from .analysis.export import analyze_json
from .analysis.report import write_report
from .analysis.writeback import derived_observations
from .analysis.views.definition import ViewDefinition, load_view
from .analysis.views.output import output_format, write_table
from .analysis.views.python_engine import ViewRun, run_view
from .analysis.views.query import query as query_views
from .analysis.views.tables import duckdb_table, named_views, spooled
from .errors import BadUsage, IncompleteSearch, InputError, StudyDefinitionError
from .fhir.bundle import not_used, open_resources, write_bundle
from .fhir.changes import ChangeTracker, ResourceChanges
from .fhir.mapping import MapResult, reject_keys, tables_to_fhir, tagged_synthetic
from .fhir.roundtrip import RoundTripResult, check_roundtrip
from .fhir.unmapping import UnmapResult, fhir_to_tables, read_records, subjects_in
from .fhir.validate import ValidationReport, validate_resources
from .fhir.versions import (
    MARKED_TYPES,
    VERSIONS,
    FhirVersion,
    administration_medication,
    get_version,
    subject_arm_names,
    subject_version,
)
from .fhir.versions import detect_version as detect_version_of
from .progress import NO_PROGRESS, Progress
from .server import bulk_pull as _bulk_pull
from .server import hospital as _hospital
from .server import sync as _sync
from .server.client import FhirClient
from .server.hospital import HospitalPullResult
from .server.journal import open_journal
from .server.sync import (
    PullResult,
    PushResult,
    StoreInPushOrder,
    SyncResult,
    in_push_order,
    server_profile,
)
from .store.files import private_dir, private_open
from .store.lock import spool_dir, sweep_debris
from .store.ndjson import REJECTS_PREFIX, SUFFIX, Prefilter, Resource, Store
from .store.repair import RepairResult
from .store.repair import repair as _repair
from .store.source import ResourceSource
from .store.study_record import RecordedStudy, forget_study, record_study, recorded_study
from .study import template as study_template
from .study.definition import DEFAULT_STUDY, Study, load_study, package_data
from .tables.formats import count_records, find_table, other_tables
from .tables.rejects import DATASET_FILE, publish_rejects, waiting_rejects
from .tables.sdtm import RejectLog, TableWriter, finding_columns, read_dataset

DEMO_TABLES = package_data("cohort", "fixtures/msc-covid19")  # the synthetic NCT04288102 cohort
# the example studies the demo runs too: (study definition, synthetic tables)
EXAMPLE_STUDIES = tuple((package_data("mappings", "mappings") / f"{name}.yaml",
                         package_data(name.replace("-", "_"), f"fixtures/{name}"))
                        for name in ("example-dose-ranging", "example-zero-cell"))


@dataclass(frozen=True)
class StudyChoice:
    """The study definition a command runs with, and the notes saying why (printed before it runs)."""

    study: Study
    notes: tuple[str, ...] = ()


def choose_study(given: Path | None, store: Path | None = None, *, recording: bool = False) -> StudyChoice:
    """The study definition for a command on ``store`` (a store directory, or None): ``given`` (``--study``), else the
    copy the store records (see ``store.study_record``), else the bundled NCT04288102 definition, with a note.

    A ``given`` definition of another study than the recorded one is refused (:func:`check_study`); ``recording`` is
    for the jobs that record theirs (map, pull, hospital-pull), which replace the record with an edited definition of
    the same study.
    """
    recorded = _recorded(store)
    if given is not None:
        study = load_study(given)
        return StudyChoice(study, tuple(check_study(study, store, recording=recording)) if store is not None else ())
    if recorded is not None:
        return StudyChoice(load_study(recorded.path))
    study = load_study(DEFAULT_STUDY)
    if store is not None and not store.exists() and not recording:
        return StudyChoice(study)  # nothing to read: the command says so
    where = f" and {store} records none" if store is not None and store.is_dir() else ""
    return StudyChoice(study, (f"no --study given{where}: using the bundled {study.study.identifier.value} definition "
                               f"({DEFAULT_STUDY}); pass --study FILE for another study",))


def check_study(study: Study, store: Path, *, recording: bool = False) -> list[str]:
    """Refuse (BadUsage) a definition of another study than the one ``store`` records; notes for what is allowed.

    A store without a recorded definition takes any. An edited definition of the same study (same identifier,
    other bytes) is used, with a note: it replaces the recorded copy when ``recording`` (a job that records its
    definition: map, pull, hospital-pull).
    """
    recorded = _recorded(store)
    if recorded is None or recorded.sha256 == study.sha256:
        return []
    held, identifier = _identifier(recorded), study.study.identifier.value
    given = f"{study.file or '(a definition in memory)'} ({identifier}, sha256 {_short(study.sha256)})"
    if held == identifier:
        done = ("it replaces the copy recorded there" if recording
                else f"used for this command; map or pull into {store} with it to record it")
        return [f"{given} is an edited definition of the study {store} holds (its copy: sha256 "
                f"{_short(recorded.sha256)}): {done}"]
    raise BadUsage(f"--study {given} is not the study definition {store} holds data of ({held}, sha256 "
                   f"{_short(recorded.sha256)}, copied to {recorded.path}): leave out --study to use the store's copy, "
                   f"or map {identifier}'s tables into a store of its own")


def _recorded(store: Path | None) -> RecordedStudy | None:
    return recorded_study(store) if store is not None and store.is_dir() else None


def _identifier(recorded: RecordedStudy) -> str:
    """The study identifier of a recorded definition (what it is said to be when this version cannot read it)."""
    try:
        return load_study(recorded.path).study.identifier.value
    except StudyDefinitionError:
        return "a definition this version of fhir-msc cannot read"


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "none"


def _record(study: Study, store: Path) -> None:
    """Record the definition ``study`` was loaded from in ``store`` unless it is there already (hold the lock)."""
    recorded = recorded_study(store)
    if study.file is not None and (recorded is None or recorded.sha256 != study.sha256):
        record_study(store, study.file)


def map_tables(study: Study, source: Path, *, store: Path | None = None, bundle: Path | None = None,
               version: FhirVersion = get_version("R4"), rejects: Path | None = None,
               progress: Progress = NO_PROGRESS) -> MapResult:
    """Map the trial tables in ``source`` into a store directory (upsert) or a transaction bundle file.

    Rejected rows go to ``rejects`` (default: ``STORE/rejects`` or ``BUNDLE.rejects``).
    Replaying that directory replaces the files it read with the rows rejected again; any
    other run keeps the rows waiting there, except those it read again, and adds its own.
    Nothing else in the directory is touched. The store's write lock is held throughout
    (``SyncLocked``, exit 9, if another job writes it); what killed jobs left is completed or
    removed first and listed in ``recovered``. Progress is counted in input rows. A store
    records ``study`` (see :func:`choose_study`); one that records another study refuses it.
    Files in ``source`` that look like tables but are none of the study's are named in the notes.
    """
    if (store is None) == (bundle is None):
        raise BadUsage("give exactly one target: a store directory (--store) or a bundle file (--bundle)")
    _check_map_paths(study, source, store, bundle)
    if store is not None:
        check_study(study, store, recording=True)
    rejects = rejects or (store / "rejects" if store else bundle.with_name(bundle.name + ".rejects"))
    if rejects.exists() and not rejects.is_dir():
        raise InputError(f"{rejects}: is a file; give --rejects a directory")
    progress.start(f"mapping {source}", _table_rows(study, source) if progress.active else None, "rows")
    with Store(store).writing() if store is not None else nullcontext([]) as recovered:
        recovered += [f"removed {path}: left by a killed job" for path in sweep_debris(rejects.parent, REJECTS_PREFIX)]
        with spool_dir(rejects.parent, REJECTS_PREFIX) as spool:
            result = _map_spooled(study, source, store, bundle, version, rejects, spool, progress)
        if store is not None:
            _record(study, store)
    return dataclasses.replace(result, recovered=tuple(recovered))


def _map_spooled(study: Study, source: Path, store: Path | None, bundle: Path | None, version: FhirVersion,
                 rejects: Path, spool: Path, progress: Progress) -> MapResult:
    """The mapping itself, rejected rows spooled in ``spool`` and then published into ``rejects``."""
    keys = reject_keys(study)
    replay = rejects.resolve() == source.resolve()
    log = RejectLog(spool, waiting={} if replay else waiting_rejects(rejects, keys))
    for path in other_tables(source, _table_names(study)):
        log.note(f"{path}: not a table of {study.study.identifier.value} ({', '.join(_table_names(study))}): not read")
    changes = {}
    try:
        if store is not None:
            target = Store(store)
            tracker = ChangeTracker(target)
            resources = tables_to_fhir(study, source, version, log, subjects_in(study, target), progress.advance)
            target.write(tracker.changed(_widen_existing_visits(target, resources)))
            changes = tracker.changes
            counts = {t: c.total for t, c in changes.items()}
        else:
            counts = write_bundle(tables_to_fhir(study, source, version, log, None, progress.advance), bundle)
    finally:  # after an error or Ctrl-C this run's rejects are not published: spool_dir removes them
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
    tables = {name: find_table(source, name) for name in _table_names(study)}  # one file per table, or one error
    if store is not None and not Store(store).resource_types() and not tables[study.tables.dm.file].exists():
        raise InputError(f"{source}: no {study.tables.dm.file} and {store} holds no subjects yet: map DM first")


def _table_names(study: Study) -> list[str]:
    ae = [study.adverse_events.file] if study.adverse_events else []
    return [study.tables.dm.file, study.tables.ex.file, *study.tables.findings.files.values(), *ae]


def _table_rows(study: Study, source: Path) -> int:
    """Data rows in the input tables (lines after each header, records of XPORT/JSON): the map job's total, cheaply."""
    paths = [p for p in (find_table(source, name) for name in _table_names(study)) if p.is_file()]
    return sum(max(_lines(p) - 1, 0) if (records := count_records(p)) is None else records for p in paths)


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


def unmap(study: Study, source: Path, out: Path, progress: Progress = NO_PROGRESS, fmt: str = "csv") -> UnmapResult:
    """Write the study's trial tables from a store directory or bundle file into ``out`` (csv, xpt or json)."""
    check_study(study, source)
    opened = _opened(source, progress, "unmapping")
    return dataclasses.replace(fhir_to_tables(study, opened, out, fmt), not_used=not_used(opened))


def detect_version(source: Path) -> tuple[FhirVersion, str]:
    """The FHIR version a store or bundle is written in, and the evidence (R4, the default, when nothing tells).

    The first resource of each type whose elements differ between R4 and R5 is looked at.
    """
    opened = open_resources(source)
    found = detect_version_of(next(opened.read(t), {}) for t in MARKED_TYPES)
    return found or (get_version("R4"), "no element that differs between R4 and R5: R4, the default")


def validate(source: Path, version: FhirVersion | None = None, progress: Progress = NO_PROGRESS) -> ValidationReport:
    """Validate every resource of a store directory or bundle file (in ``version``, else the one detected)."""
    version = version or detect_version(source)[0]
    progress.start(f"validating {source} ({version.name})", None)
    opened = _opened(source, progress, f"validating ({version.name})")
    if isinstance(opened, Store | _Metered):
        return validate_resources(opened.read_all(), version)
    resources = list(opened.read_all())
    progress.start(f"validating ({version.name})", len(resources))
    return dataclasses.replace(validate_resources(resources, version, progress.advance), not_used=not_used(opened))


def analysis_frame(study: Study, source: Path | FhirClient, visits: list[str] | None = None,
                   progress: Progress = NO_PROGRESS, engine: str = DEFAULT_ENGINE) -> pd.DataFrame:
    """The analysis DataFrame from a store directory, a bundle file, or a server (pulled in full)."""
    return frame_and_account(study, source, visits, progress, engine=engine)[0]


def _engine_frame(study: Study, source: ResourceSource, visits: list[str] | None, engine: str,
                  progress: Progress = NO_PROGRESS, spark_master: str | None = None) -> tuple[pd.DataFrame, Account]:
    if engine not in ENGINES:
        raise BadUsage(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if spark_master is not None and engine != "spark":
        raise BadUsage(f"--spark-master is for --engine spark, not --engine {engine}: add --engine spark or leave it out")
    if engine == "spark":
        return spark_frame.frame_and_account(study, source, visits, spark_master)
    if engine == "duckdb":  # python reports progress as the source is read (a metered store)
        return engine_frame.frame_and_account(study, source, visits, progress)
    return analysis.frame_and_account(study, source, visits)


def frame_and_account(study: Study, source: Path | FhirClient, visits: list[str] | None = None,
                      progress: Progress = NO_PROGRESS, unused: list[str] | None = None,
                      engine: str = DEFAULT_ENGINE, events: dict[str, pd.DataFrame] | None = None, *,
                      spark_master: str | None = None,
                      also: Callable[[ResourceSource], None] | None = None) -> tuple[pd.DataFrame, Account]:
    """The analysis DataFrame and the account of the Observations read, from a store, bundle or server;
    ``events`` (a dict), when given, receives each time_to_event entry's table from the same source, and ``also``
    is called with that source (a server's resources pulled into a temporary store), e.g. to count adverse events.

    Raises InputError when the source holds no findings of the study's subjects (at ``visits``),
    with the account of what was read instead; from a server, IncompleteSearch when the pull's searches fall short
    of what the server says they match (see ``sync.pull``). Lines about input holding no resource (bundle
    entries without one) are appended to ``unused``, before any error. ``engine`` (see ``ENGINES``)
    builds the frame; all give the same frame and account (``spark_master``: the Spark master URL of
    ``engine="spark"``, local mode if None).
    """
    if isinstance(source, Path):
        check_study(study, source)
    if isinstance(source, FhirClient):
        with tempfile.TemporaryDirectory(prefix="fhir-msc-pull-") as tmp:
            with open_journal(Path(tmp) / "state", lock=False) as journal:
                pulled = _sync.pull(source, study, Store(Path(tmp) / "store"), journal, full=True, progress=progress)
            if pulled.missed:
                more = f" and {len(pulled.missed) - 1} more search(es)" if len(pulled.missed) > 1 else ""
                raise IncompleteSearch(f"{source.base_url} did not list all of the study's data ({pulled.missed[0]}{more}), "
                                       "so it is not analysed on part of it; where the server offers Bulk Data export, "
                                       "`fhir-msc pull --bulk` it into a store and analyse that")
            frame, observations = _engine_frame(study, Store(Path(tmp) / "store"), visits, engine, progress,
                                                spark_master)
            _time_to_event_tables(study, Store(Path(tmp) / "store"), events)
            if also is not None:
                also(Store(Path(tmp) / "store"))
    else:
        opened = _opened(source, progress, "reading")
        if unused is not None:
            unused.extend(not_used(opened))
        frame, observations = _engine_frame(study, opened, visits, engine, progress, spark_master)
        _time_to_event_tables(study, opened, events)
        if also is not None:
            also(_opened(source, NO_PROGRESS, "reading"))
    if frame.empty:
        where = f" at visit {', '.join(visits)}" if visits else ""
        name = source.base_url if isinstance(source, FhirClient) else source
        raise InputError(f"{name}: no findings of {study.study.identifier.value} subjects{where} "
                         f"(Observations: {observations.describe()}): map or pull the study first, or check --study")
    return frame, observations


def _time_to_event_tables(study: Study, source, events: dict[str, pd.DataFrame] | None) -> None:
    if events is not None:
        events.update({entry.code: time_to_event(study, source, entry.code) for entry in study.time_to_event})


@dataclass(frozen=True, kw_only=True)
class AnalysisResult:
    """Between-arm comparisons, and the account of the Observations read (rows of the frame + dropped)."""

    comparisons: list[Comparison]
    observations: Account
    adverse_events: AdverseEventIncidence | None = None  # when the study file has adverse_events and the source AdverseEvents
    arms_not_compared: tuple[str, ...] = ()  # arms with findings in no comparison of the plan
    not_compared: tuple[tuple[str, str, str], ...] = ()  # outcomes compared at no visit: (code, type, why)
    synthetic: bool = False  # every ResearchSubject is tagged HTEST (see synthetic_data)


@dataclass(frozen=True, kw_only=True)
class VerifyResult:
    """Published results next to their recomputation, and the account of the Observations read."""

    checks: list[Verification]
    observations: Account

    @property
    def reproduced(self) -> int:
        return sum(check.matches for check in self.checks)


def analyze(study: Study, source: Path | FhirClient, visits: list[str] | None = None,
            outcomes: list[str] | None = None, progress: Progress = NO_PROGRESS,
            unused: list[str] | None = None, engine: str = DEFAULT_ENGINE, *,
            exact_odds_ratio: bool = False, spark_master: str | None = None) -> AnalysisResult:
    """Between-arm comparisons for the FHIR data in a store, bundle or on a server (``unused``: see frame_and_account);
    ``exact_odds_ratio``: also the exact conditional OR of every binary comparison (see ``analysis.compare``)."""
    known = [*study.analysed_outcome_by_code, *(entry.code for entry in study.time_to_event)]
    unknown = [code for code in outcomes or [] if code not in known]
    if unknown:
        raise InputError(f"unknown outcome {', '.join(unknown)}: use one of {', '.join(known)}")
    read = analysis.visits_to_read(study, visits) if visits and study.analysis else visits  # + covariates' visits
    events: dict[str, pd.DataFrame] = {}
    counted: list[AdverseEventIncidence | None] = []
    tagged: list[bool] = []
    frame, observations = frame_and_account(
        study, source, read, progress, unused, engine, events, spark_master=spark_master,
        also=lambda opened: (counted.append(incidence(study, opened, engine)), tagged.append(synthetic_data(opened))))
    comparisons = analysis.analyze(study, frame, visits, outcomes, events, exact_odds_ratio=exact_odds_ratio)
    if not comparisons:
        raise InputError(f"{_source_name(source)}: nothing to compare: each arm needs at least 2 values of an outcome at a visit")
    return AnalysisResult(comparisons=comparisons, observations=observations, adverse_events=counted[0],
                          arms_not_compared=tuple(analysis.arms_not_compared(study, frame)),
                          not_compared=tuple(analysis.not_compared(study, outcomes)), synthetic=tagged[0])


def verify(study: Study, source: Path | FhirClient, progress: Progress = NO_PROGRESS,
           unused: list[str] | None = None, engine: str = DEFAULT_ENGINE, *, spark_master: str | None = None
           ) -> VerifyResult:
    """Recompute the study's published results from a store, bundle or server (``unused``: see frame_and_account)."""
    visits = (analysis.visits_to_read(study, {result.visit for result in study.analysis.published if result.visit})
              if study.analysis and any(result.visit for result in study.analysis.published) else None)
    events: dict[str, pd.DataFrame] = {}
    counted: list[AdverseEventIncidence | None] = []
    frame, observations = frame_and_account(
        study, source, visits, progress, unused, engine, events, spark_master=spark_master,
        also=lambda opened: counted.append(_published_incidence(study, opened, engine)))
    return VerifyResult(checks=analysis.verify(study, frame, events, counted[0]), observations=observations)


def _published_incidence(study: Study, source: ResourceSource, engine: str = "python") -> AdverseEventIncidence | None:
    """The adverse-event incidence of the pairs of the study's published adverse-event entries (None: there are none)."""
    pairs = published_pairs(study)
    return incidence(study, source, engine, pairs) if pairs else None


@dataclass(frozen=True, kw_only=True)
class ReportResult:
    """The report written (file kind -> path), what it shows, and the account of the Observations read."""

    paths: dict[str, Path]
    comparisons: list[Comparison]
    checks: list[Verification]
    observations: Account
    adverse_events: AdverseEventIncidence | None
    synthetic: bool

    @property
    def reproduced(self) -> int:
        return sum(check.matches for check in self.checks)


def report(study: Study, source: Path | FhirClient, out: Path, progress: Progress = NO_PROGRESS,
           unused: list[str] | None = None, engine: str = DEFAULT_ENGINE, *, spark_master: str | None = None,
           input_name: str | None = None) -> ReportResult:
    """Analyze and verify the study's data in a store, bundle or on a server, and write the report into ``out``:
    report.html (self-contained), analysis.csv, analysis.json (the ``analyze`` document), forest.png and forest.svg
    (see ``analysis.report.write_report``). The data are marked synthetic when every ResearchSubject carries the HTEST
    tag. ``input_name`` names the input in the report (default: the store's directory name or the server's URL)."""
    events: dict[str, pd.DataFrame] = {}
    found: list[tuple[AdverseEventIncidence | None, AdverseEventIncidence | None, bool]] = []
    frame, observations = frame_and_account(
        study, source, None, progress, unused, engine, events, spark_master=spark_master,
        also=lambda opened: found.append((incidence(study, opened, engine), _published_incidence(study, opened, engine),
                                          synthetic_data(opened))))
    (counted, published, synthetic), = found
    comparisons = analysis.analyze(study, frame, events=events)
    if not comparisons:
        raise InputError(f"{_source_name(source)}: nothing to compare: each arm needs at least 2 values of an outcome "
                         "at a visit")
    checks = analysis.verify(study, frame, events, published)
    document = analyze_json(study, comparisons, observations, incidence_json(counted) if counted else None,
                            tuple(analysis.arms_not_compared(study, frame)), tuple(analysis.not_compared(study, None)))
    paths = write_report(out, comparisons, checks, study=study, source=input_name or _input_name(source),
                         synthetic=synthetic, document=document,
                         adverse_events=incidence_table(counted) if counted else None)
    return ReportResult(paths=paths, comparisons=comparisons, checks=checks, observations=observations,
                        adverse_events=counted, synthetic=synthetic)


def synthetic_data(source: ResourceSource) -> bool:
    """Whether the source's data are synthetic: it holds ResearchSubjects, each tagged HTEST (test health data)."""
    subjects = iter(source.read("ResearchSubject"))
    first = next(subjects, None)
    return first is not None and tagged_synthetic(first) and all(tagged_synthetic(s) for s in subjects)


def _input_name(source: Path | FhirClient) -> str:
    """The input as a report names it: a server's URL, a store's or bundle's name (never a local path)."""
    if isinstance(source, FhirClient):
        return f"the server {source.base_url}"
    return f"the store directory {source.name}/" if source.is_dir() else f"the bundle {source.name}"


def _source_name(source: Path | FhirClient) -> str | Path:
    return source.base_url if isinstance(source, FhirClient) else source


@dataclass(frozen=True, kw_only=True)
class DeriveResult:
    """Derived values written back to a store as Observations (``analysis.writeback``)."""

    values: dict[str, int]  # per derived endpoint code, in the study definition's order
    changes: ResourceChanges  # of the derived Observations in the store
    stale: list[str]  # business identifiers of derived Observations stored earlier whose sources give no value now
    observations: Account


def derive(study: Study, store_path: Path, progress: Progress = NO_PROGRESS) -> DeriveResult:
    """Compute the study's derived endpoints from a store's Observations and upsert them there as Observations.

    The store's write lock is held from reading to writing; unchanged Observations are not rewritten.
    Stale derived Observations are named, never removed.
    """
    if study.analysis is None or not study.analysis.derived:
        raise InputError("the study definition declares no derived endpoints: add them under analysis.derived")
    store = Store(store_path)
    with store.writing():
        frame, observations = frame_and_account(study, store_path, None, progress)
        resources, stale = derived_observations(study, store, frame)
        tracker = ChangeTracker(store)
        store.write(tracker.changed(resources))
    counts = Counter(r["code"]["coding"][0]["code"] for r in resources)
    return DeriveResult(values={d.code: counts[d.code] for d in study.analysis.derived},
                        changes=tracker.changes.get("Observation", ResourceChanges()), stale=stale,
                        observations=observations)


def is_server(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def resources_of(study: Study, source: Path, version: FhirVersion) -> Iterable[dict]:
    """Resources to push from a store directory, a bundle file, or a directory of trial tables."""
    check_study(study, source)
    if source.is_dir() and find_table(source, study.tables.dm.file).exists():
        log = RejectLog(None)
        resources = list(tables_to_fhir(study, source, version, log))
        if log.rejections:
            raise InputError(f"{source}: {len(log.rejections)} row(s) rejected (first: {log.rejections[0]}); "
                             "run `fhir-msc map` to see and fix them before pushing")
        return in_push_order(resources)
    opened = open_resources(source)
    return StoreInPushOrder(opened) if isinstance(opened, Store) else in_push_order(list(opened.read_all()))


def _push_stage(source: Path, resources: Iterable[dict], progress: Progress) -> None:
    total = None
    if progress.active:
        total = len(resources) if isinstance(resources, list) else sum(Store(source).counts().values())
    progress.start(f"pushing {source}", total)


def push(study: Study, source: Path, client: FhirClient, state: Path, *, bundle_size: int = 50,
         method: str = "auto", mode: str = "push", fhir_version: str | None = None,
         progress: Progress = NO_PROGRESS) -> PushResult:
    """Push a store, bundle or trial tables to the server; incremental and resumable via ``state``.

    Ends by checking that the server holds every resource (see ``sync.push`` for ``mode``).
    Asks for write access (SMART scopes) unless ``mode`` only reads (``dry-run``, ``verify``).
    """
    if mode in _sync.SENDING_MODES:
        client.need_access("write")
    profile = server_profile(client, fhir_version)
    with open_journal(state) as journal:
        resources = resources_of(study, source, profile.version)
        _push_stage(source, resources, progress)
        return _sync.push(client, resources, journal, bundle_size=bundle_size, method=method, mode=mode,
                          profile=profile, progress=progress.advance)


def pull(study: Study, client: FhirClient, store: Path, state: Path, *, full: bool = False,
         fhir_version: str | None = None, bulk: bool = False, since: str | None = None, prefer: str = "local",
         progress: Progress = NO_PROGRESS) -> PullResult | _bulk_pull.BulkPullResult:
    """Pull the study from the server into a store, removing what the server deleted; incremental via ``state``.

    With ``bulk``, by Bulk Data $export when the server declares it (paged search otherwise),
    ``since`` overriding the journal's mark; a killed export resumes from ``state``. Either
    keeps local data the server does not have unless ``prefer`` is "server", and lists such
    conflicts in ``state/pull-conflicts.csv``. The store's write lock is held throughout.
    """
    check_study(study, store, recording=True)
    with Store(store).writing() as recovered, open_journal(state) as journal:
        if bulk:
            result = _bulk_pull.pull(client, study, Store(store), journal, state, full=full, since=since, prefer=prefer,
                                     progress=progress)
        else:
            result = _sync.pull(client, study, Store(store), journal, full=full, prefer=prefer,
                                profile=server_profile(client, fhir_version), progress=progress)
        _record(study, store)
    return dataclasses.replace(_with_conflicts_file(result, state), recovered=tuple(recovered))


def sync(study: Study, source: str, target: str, state: Path, connect_to: Callable[[str], FhirClient], *,
         bundle_size: int = 50, method: str = "auto", fhir_version: str | None = None, prefer: str = "local",
         progress: Progress = NO_PROGRESS) -> SyncResult:
    """Store → server, server → store, or server → server (through a staging store in ``state``).

    Only the target server is asked for write access (SMART scopes).
    """
    if not is_server(source) and not is_server(target):
        raise InputError("sync needs a server on at least one side: --from or --to must be an http(s) URL")
    with open_journal(state) as journal:
        pulled = None
        if is_server(source):
            staging = Path(target) if not is_server(target) else state / "staging"
            client = connect_to(source)
            check_study(study, staging, recording=True)
            with Store(staging).writing() as recovered:
                pulled = _sync.pull(client, study, Store(staging), journal, prefer=prefer,
                                    profile=server_profile(client, fhir_version), progress=progress)
                _record(study, staging)
            pulled = dataclasses.replace(_with_conflicts_file(pulled, state), recovered=tuple(recovered))
            source_path = staging
        else:
            source_path = Path(source)
        pushed = None
        if is_server(target):
            client = connect_to(target)
            client.need_access("write")
            profile = server_profile(client, fhir_version)
            resources = resources_of(study, source_path, profile.version)
            _push_stage(source_path, resources, progress)
            pushed = _sync.push(client, resources, journal, bundle_size=bundle_size, method=method, profile=profile,
                                progress=progress.advance)
        return SyncResult(source=source, target=target, pulled=pulled, pushed=pushed)


PULL_CONFLICTS_FILE = "pull-conflicts.csv"
PULL_CONFLICT_COLUMNS = ["RESOURCE_TYPE", "ID", "WHAT_DIFFERS", "SERVER_LAST_UPDATED", "KEPT"]
_PullOutcome = TypeVar("_PullOutcome", PullResult, _bulk_pull.BulkPullResult)  # a paged or a bulk pull's result


def _with_conflicts_file(result: _PullOutcome, state: Path) -> _PullOutcome:
    """A pull that met conflicts lists them in ``state/pull-conflicts.csv`` (replacing the last such list), named in
    the result; one without conflicts leaves the file as it is."""
    if not result.conflicts:
        return result
    path = state / PULL_CONFLICTS_FILE
    _write_csv(path, PULL_CONFLICT_COLUMNS, ([c.resource_type, c.id, c.differs, c.server_last_updated, c.kept]
                                             for c in result.conflicts))
    return dataclasses.replace(result, conflicts_file=str(path))


CONFLICTS_FILE = "conflicts.csv"
CONFLICT_COLUMNS = ["USUBJID", "TESTCD", "VISITNUM", "VISIT", "UNIT", "STUDY_RESULT", "STUDY_DATE",
                    "HOSPITAL_RESULT", "HOSPITAL_DATE", "HOSPITAL_OBSERVATION", "KEPT"]


def hospital_pull(study: Study, client: FhirClient, enrollment: Path, store: Path, out: Path,
                  prefer: str = "study", progress: Progress = NO_PROGRESS, *, bulk_state: Path | None = None) -> HospitalPullResult:
    """Place hospital results of enrolled subjects at study visits: findings tables in ``out``, mapped into ``store``.

    A value for a subject, outcome and visit the store already holds is a conflict: written
    with both values to ``out/conflicts.csv`` and left out, unless ``prefer`` is "hospital".
    With ``bulk_state``, by Bulk Data export when the server declares one (its journal and files
    kept there, so a killed export resumes). Holds the store's write lock throughout.
    """
    check_study(study, store, recording=True)
    with Store(store).writing() as recovered:
        result = _hospital_pull(study, client, enrollment, store, out, prefer, progress, bulk_state)
    return dataclasses.replace(result, notes=[*recovered, *result.notes])


def _hospital_pull(study: Study, client: FhirClient, enrollment: Path, store: Path, out: Path, prefer: str,
                   progress: Progress, bulk_state: Path | None) -> HospitalPullResult:
    if (out / study.tables.dm.file).exists():
        raise InputError(f"{out} holds trial tables ({study.tables.dm.file}): give --out a directory of its own")
    people = _hospital.read_enrollment(enrollment)
    subjects, study_values = _held_values(study, Store(store), {person.subject for person in people})
    if not subjects:
        raise InputError(f"{store}: no study subjects in this store: map or pull the study first")
    result = _hospital.pull_hospital(client, study, people, subjects, study_values, prefer, progress, bulk_state=bulk_state)
    with TableWriter(study, out) as writer:
        for finding in result.findings:
            writer.finding(finding)
    for domain, name in study.tables.findings.files.items():  # an earlier run's table is replaced, not mapped again
        if name not in writer.rows and (out / name).exists():
            (out / name).write_text(",".join(finding_columns(study, domain)) + "\n", encoding="utf-8")
    _write_conflicts(study, result.conflicts, out / CONFLICTS_FILE)
    if result.findings:
        version = subject_version(next(Store(store).read("ResearchSubject"), {}))
        mapped = map_tables(study, out, store=store, version=version, rejects=out / "rejects", progress=progress)
        if mapped.rejections:
            raise InputError(f"{len(mapped.rejections)} hospital finding(s) could not be mapped; see {out / 'rejects'}")
    return result


def repair(store: Path, *, dry_run: bool = False) -> RepairResult:
    """Complete a write a killed job committed, remove killed jobs' debris, and drop unreadable lines.

    Every dropped line is reported (file, line number, first bytes); ``dry_run`` only says
    what would be done. Holds the store's write lock like every job that writes it.
    """
    if not store.is_dir():
        raise InputError(f"{store}: no such store directory")
    target = Store(store)
    with target.writing(recover=False):
        return _repair(target, dry_run=dry_run)


def _held_values(study: Study, store: Store, enrolled: set[str]) -> tuple[dict, _hospital.StudyValues]:
    """The store's subjects, and a stream of its values of the enrolled subjects for the outcomes a hospital can give."""
    codes = {outcome.code for outcome in _hospital.hospital_outcomes(study).values()}
    subjects, findings, _ = read_records(study, store)
    values = (((f.subject, f.visitnum, f.testcd), (f.result, f.date)) for f in findings
              if f.testcd in codes and f.subject in enrolled)
    return subjects, values


def _write_conflicts(study: Study, conflicts: list[_hospital.Conflict], path: Path) -> None:
    """Both values of every conflict (owner-only: it holds trial and hospital data); header only if none."""
    _write_csv(path, CONFLICT_COLUMNS, ([c.subject, c.testcd, c.visitnum, study.visit_by_num[c.visitnum].code, c.unit,
                                         c.study_result, c.study_date, c.hospital_result, c.hospital_date,
                                         c.hospital_observation, c.kept] for c in conflicts))


def _write_csv(path: Path, columns: list[str], rows: Iterable[list]) -> None:
    """A CSV file of trial data: owner-only, a header, then the rows."""
    with private_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)


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
    observations: Account  # of the analysis frame of the store
    verification: list[Verification]
    adverse_events: AdverseEventIncidence | None
    report: dict[str, Path]
    examples: tuple[ExampleResult, ...] = ()  # the example studies, when asked for

    @property
    def reproduced(self) -> int:
        return sum(check.matches for check in self.verification)

    @property
    def all_reproduced(self) -> bool:
        """Every published result of the study and of each example study reproduced."""
        return all(c.matches for c in self.verification) and all(e.reproduced == len(e.verification) for e in self.examples)


@dataclass(frozen=True, kw_only=True)
class ExampleResult:
    """One example study the demo mapped into its own store, analysed, verified and reported."""

    study: Study
    tables: Path
    store: Path
    mapped: MapResult
    observations: Account
    verification: list[Verification]
    report: dict[str, Path]

    @property
    def reproduced(self) -> int:
        return sum(check.matches for check in self.verification)


def example_demo(study: Study, tables: Path, workdir: Path, progress: Progress = NO_PROGRESS) -> ExampleResult:
    """Map an example study's tables into ``workdir``/store, analyze and verify them there, and write its report."""
    private_dir(workdir)
    store = workdir / "store"
    Store(store).clear()
    mapped = map_tables(study, tables, store=store, version=get_version("R4"), progress=progress)
    reported = report(study, store, workdir / "report", progress, input_name=_demo_input(tables, store))
    return ExampleResult(study=study, tables=tables, store=store, mapped=mapped, observations=reported.observations,
                         verification=reported.checks, report=reported.paths)


def _demo_input(tables: Path, store: Path) -> str:
    return f"trial tables {tables.name}, mapped into the store {store.name}"


def demo(study: Study, workdir: Path, tables: Path = DEMO_TABLES, progress: Progress = NO_PROGRESS,
         examples: bool = False) -> DemoResult:
    """Map trial tables (default: the synthetic cohort), validate them (R4, R5), round-trip, export a bundle, analyze, verify;
    with ``examples``, also each of EXAMPLE_STUDIES under ``workdir``/examples/KEY (see :func:`example_demo`)."""
    private_dir(workdir)
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
    reported = report(study, store, workdir / "report", progress, input_name=_demo_input(tables, store))
    shown = []
    for definition, example_tables in EXAMPLE_STUDIES if examples else ():
        example = load_study(definition)
        shown.append(example_demo(example, example_tables, workdir / "examples" / example.study.key, progress))
    return DemoResult(workdir=workdir, store=store, bundle=bundle, mapped=mapped, subjects_by_arm=dict(by_arm),
                      infusions=dict(infusions), verification=reported.checks, report=reported.paths,
                      validation=validation, roundtrip=roundtrip, observations=reported.observations,
                      adverse_events=reported.adverse_events,
                      examples=tuple(shown))


@dataclass(frozen=True, kw_only=True)
class ViewRunResult:
    """A view written to a file: its rows and columns, resources read per type, and those skipped with why."""

    out: Path
    engine: str
    resource: str
    columns: list[str]
    rows: int
    read: dict[str, int]
    skipped: dict[str, int]


def view_run(view: Path | dict, source: Path | str | FhirClient, out: Path, *, engine: str = DEFAULT_VIEW_ENGINE,
             spark_master: str | None = None) -> ViewRunResult:
    """Run a SQL-on-FHIR ViewDefinition over a store, bundle file or server, writing Parquet, CSV or NDJSON.

    Only the view's resource type is read (a server is searched for it, every page). With
    ``engine="duckdb"`` DuckDB reads a store's NDJSON file (a bundle's or server's resources of
    that type are spooled into an owner-only temporary store first); with ``engine="spark"`` a
    store's NDJSON file (or ``source`` given as a URL Spark reads, e.g. ``s3a://bucket/store``) is
    read by Spark itself. Every engine gives the same table.
    """
    if engine not in VIEW_ENGINES:
        raise BadUsage(f"--engine {engine}: use one of {', '.join(VIEW_ENGINES)}")
    output_format(out)
    if isinstance(source, str) and "://" in source and engine != "spark":
        raise BadUsage(f"--store {source}: only --engine spark reads URLs; give a store directory or bundle file")
    checked = load_view(view)
    run = ViewRun()
    if engine == "spark":
        rows = _spark_view(checked, source, out, run, spark_master)
    else:
        if engine == "duckdb":
            table = _duckdb_view(checked, source, run)
        elif isinstance(source, FhirClient):
            table = run_view(checked, source.search(checked.resource), run)
        else:
            table = run_view(checked, open_resources(source).read(checked.resource), run)
        write_table(table, out)
        rows = table.num_rows
    return ViewRunResult(out=out, engine=engine, resource=checked.resource, columns=checked.column_names,
                         rows=rows, read=run.read, skipped=run.skipped)


def _duckdb_view(view: ViewDefinition, source: Path | FhirClient, run: ViewRun):
    """The view by DuckDB over a store's file, or over a bundle's or server's resources spooled into a temporary store."""
    if isinstance(source, Path) and source.is_dir():
        return duckdb_table(view, Store(source), run)
    resources = source.search(view.resource) if isinstance(source, FhirClient) else open_resources(source).read(view.resource)
    with spooled(resources) as store:
        return duckdb_table(view, store, run)


def _spark_view(view: ViewDefinition, source: Path | str | FhirClient, out: Path, run: ViewRun,
                master: str | None) -> int:
    """The view run by Spark and written to ``out``; the rows written. NDJSON files are written by Spark in
    parts and streamed into ``out`` on a local master (never collected whole to this process), collected
    from a cluster's; resources read here (a server's, a bundle's) are collected."""
    from .analysis.views import spark_engine

    session = spark_engine.spark_session(master)
    paths: list[str] = []
    resources: Iterable[dict] = []
    if isinstance(source, FhirClient):
        resources = source.search(view.resource)
    elif isinstance(source, str) and "://" in source:
        paths = [f"{source.rstrip('/')}/{view.resource}{SUFFIX}"]
    elif Path(source).is_dir():
        held = Store(Path(source)).current_file(view.resource)
        paths = [str(held)] if held is not None else []
    else:
        resources = open_resources(Path(source)).read(view.resource)
    if paths and session.sparkContext.master.startswith("local"):
        return spark_engine.write_view_on_paths(session, view, paths, out, run)
    table = (spark_engine.run_view_on_paths(session, view, paths, run) if paths
             else spark_engine.run_view_on_resources(session, view, resources, run))
    write_table(table, out)
    return table.num_rows


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """Views written as tables: one file per view, its rows, and the resources read per type."""

    out: Path
    format: str
    files: dict[str, Path]  # per view name, in order: the shipped views, then those given
    rows: dict[str, int]
    read: dict[str, int]  # resources per type in the store files the views read
    skipped: dict[str, dict[str, int]]  # per view: resources its where left out


def export(study: Study, store: Path, out: Path, fmt: str = "parquet", views: Iterable[Path | dict] = ()) -> ExportResult:
    """Write the shipped analysis views and any ``views`` given as Parquet or CSV files ``out/NAME.parquet|csv``.

    DuckDB runs them over the store's NDJSON files. Each file is owner-only and written through a
    temporary file beside it (never half-written); ``out`` is created owner-only if missing. CSV
    holds a collection column as a JSON array. The store is only read.
    """
    if fmt not in EXPORT_FORMATS:
        raise BadUsage(f"--format {fmt}: use one of {', '.join(EXPORT_FORMATS)}")
    source = _view_store(study, store)
    if out.resolve() == store.resolve():
        raise BadUsage(f"--out {out}: is the store itself; give the tables a directory of their own")
    named = named_views(study, views)
    private_dir(out)
    files, rows, read, skipped = {}, {}, {}, {}
    for name, view in named.items():
        run = ViewRun()
        table = duckdb_table(view, source, run)
        files[name] = out / f"{name}.{fmt}"
        write_table(table, files[name])
        rows[name] = table.num_rows
        read.update(run.read)
        skipped[name] = run.skipped
    return ExportResult(out=out, format=fmt, files=files, rows=rows, read=read, skipped=skipped)


def _view_store(study: Study, store: Path) -> Store:
    if not store.is_dir():
        raise InputError(f"{store}: no such store directory: give --store the directory `fhir-msc map` or `pull` wrote")
    check_study(study, store)
    return Store(store)


@dataclass(frozen=True, kw_only=True)
class SqlResult:
    """A query's result over the views' tables, and the tables it could use."""

    table: pa.Table
    tables: list[str]


def sql(study: Study, query: str, store: Path, views: Iterable[Path | dict] = ()) -> SqlResult:
    """Run one SELECT over the shipped analysis views and any ``views`` given, each a table named by its ``name``.

    DuckDB computes the views from the store's NDJSON files, then runs the query shut off from
    files and network: anything but a single SELECT is refused (BadUsage), a query DuckDB cannot
    run is one line (InputError), and nothing is written anywhere.
    """
    named = named_views(study, views)
    return SqlResult(table=query_views(query, named, _view_store(study, store)), tables=list(named))


@dataclass(frozen=True, kw_only=True)
class InitResult:
    """A new study's starting point: its study file, that file's JSON Schema, and synthetic tables."""

    study: Path  # the study file
    schema: Path  # its JSON Schema, which the study file's first line points editors to
    tables: list[Path]  # the synthetic tables (and dataset.yaml, which says they are synthetic)


def init_study(directory: Path) -> InitResult:
    """Write a new study into ``directory``: a commented study file of a made-up two-arm trial, its JSON Schema,
    and synthetic tables in ``directory/tables`` that map, analyse and verify as written.

    ``directory`` must be new or empty (BadUsage otherwise): init never overwrites. Directories are made 0700 and
    files 0600, as everywhere fhir-msc writes what will hold trial data.
    """
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        what = "not empty" if directory.is_dir() else "exists and is not a directory"
        raise BadUsage(f"{directory}: {what}: give a new or empty directory (init never overwrites)")
    written = []
    for name, content in study_template.new_study_files().items():
        path = directory / name
        private_dir(path.parent)
        with private_open(path, "wb") as handle:
            handle.write(content)
        written.append(path)
    return InitResult(study=directory / study_template.STUDY_FILE, schema=directory / study_template.SCHEMA_FILE,
                      tables=[path for path in written if path.parent.name == study_template.TABLES])
