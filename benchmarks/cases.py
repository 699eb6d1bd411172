"""One benchmark case per call, run in its own process: `python -m benchmarks.cases CASE TABLES STORE [URL]`.

Prints one JSON line: seconds, items (what was processed) and peak RSS of this process.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from fhir_msc import Store, get_version, jobs, load_study
from fhir_msc.analysis.frame import analysis_frame
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.fhir.validate import validate_resources
from fhir_msc.tables.sdtm import RejectLog

R4 = get_version("R4")
COLUMNAR = ".columnar"  # the store's Parquet projection (removed before a first run)
# Cases whose work runs in child processes (Spark's JVM and Python workers): memory is the process tree's.
TREE_CASES = {"analyze-spark", "flatten-view-spark"}


CPU = {"seconds": 0.0}  # CPU time (user + system, all threads) of this process during the last timed work


def _timed(work: Callable[[], int]) -> tuple[float, int]:
    started, cpu = time.perf_counter(), time.process_time()
    items = work()
    CPU["seconds"] = time.process_time() - cpu
    return time.perf_counter() - started, items


def case_map(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: tables → NDJSON store, no validation."""
    target = Store(tempfile.mkdtemp(prefix="bench-map-"))
    return _timed(lambda: sum(target.write(tables_to_fhir(load_study(), tables, R4, RejectLog(None))).values()))


def case_map_validate(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: tables → NDJSON store, then every resource validated (fhir_msc.fhir.validate: the model per shape)."""
    target = Store(tempfile.mkdtemp(prefix="bench-mapv-"))

    def work() -> int:
        target.write(tables_to_fhir(load_study(), tables, R4, RejectLog(None)))
        return sum(validate_resources(target.read_all(), R4).checked.values())
    return _timed(work)


def case_map_model(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """Peer: tables → NDJSON store, then every resource built as a fhir.resources (R4B) model, one by one."""
    target = Store(tempfile.mkdtemp(prefix="bench-mapm-"))

    def work() -> int:
        target.write(tables_to_fhir(load_study(), tables, R4, RejectLog(None)))
        return _build_models(target)
    return _timed(work)


def case_validate(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: validate every resource of the store (fhir_msc.fhir.validate)."""
    return _timed(lambda: sum(validate_resources(Store(store).read_all(), R4).checked.values()))


def case_floor_json(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """Floor: orjson-serialising the same already-built dicts to NDJSON."""
    resources = list(tables_to_fhir(load_study(), tables, R4, RejectLog(None)))
    out = Path(tempfile.mkdtemp(prefix="bench-floor-")) / "all.ndjson"

    def work() -> int:
        with open(out, "wb") as handle:
            for r in resources:
                handle.write(orjson.dumps(r) + b"\n")
        return len(resources)
    return _timed(work)


def case_model_per_resource(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """Peer: building every resource as a fhir.resources (R4B) model, one by one."""
    return _timed(lambda: _build_models(Store(store)))


def _build_models(store: Store) -> int:
    """Build every resource of ``store`` as a fhir.resources (R4B) model; how many were built."""
    import fhir.resources.R4B as models

    count = 0
    for r in store.read_all():
        models.get_fhir_model_class(r["resourceType"])(**r)
        count += 1
    return count


def case_flatten(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: NDJSON store → the analysis DataFrame (arm, visit, outcome, value per row)."""
    return _timed(lambda: len(analysis_frame(load_study(), Store(store))))


# The like-for-like flatten: one ViewDefinition (15 columns of every Observation, paths every peer
# here evaluates correctly), run by each engine over the store's Observation.ndjson.
FLAT_VIEW = Path(__file__).parent / "views" / "observation_flat.json"
# fhiry's columns for the view's columns (fhiry names nested fields by their dotted path, joins codings' codes).
FHIRY_COLUMNS = {"id": "id", "identifier": "identifier", "status": "status", "code": "code.coding.codes",
                 "code_text": "code.text", "subject": "subject.reference", "encounter": "encounter.reference",
                 "date": "effectiveDateTime", "value": "valueQuantity.value", "unit": "valueQuantity.unit",
                 "unit_code": "valueQuantity.code", "comparator": "valueQuantity.comparator",
                 "answer": "valueCodeableConcept.coding.codes", "answer_text": "valueCodeableConcept.text",
                 "absent_reason": "dataAbsentReason.text"}


def _flat_view() -> dict:
    return json.loads(FLAT_VIEW.read_text())


def case_flatten_view_duckdb(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc DuckDB engine: the flat Observation view over the store's NDJSON, to Arrow."""
    from fhir_msc.analysis.views import duckdb_engine

    return _timed(lambda: duckdb_engine.run_view(_flat_view(), Store(store)).num_rows)


def case_flatten_view_python(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc python (reference) engine: the flat Observation view over the store's Observations, to Arrow."""
    from fhir_msc.analysis.views import python_engine

    return _timed(lambda: python_engine.run_view(_flat_view(), Store(store).read("Observation")).num_rows)


def case_flatten_view_spark(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc Spark engine (local[*]): the flat Observation view over Observation.ndjson, session start included."""
    def work() -> int:
        from fhir_msc.analysis.views import spark_engine

        session = spark_engine.spark_session()
        return spark_engine.run_view_on_paths(session, _flat_view(), [str(store / "Observation.ndjson")]).num_rows
    return _timed(work)


def case_flatten_view_fhir4ds(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """Peer: fhir4ds 0.5.1 running the same view; the NDJSON is loaded into its resource table by DuckDB read_json_objects."""
    import logging

    import duckdb
    from fhir4ds.datastore import FHIRDataStore
    from fhir4ds.dialects import DuckDBDialect

    from .sof_conformance import _NoInstall

    logging.getLogger("fhir4ds").setLevel(logging.CRITICAL)

    def work() -> int:
        connection = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False, "threads": 2})
        datastore = FHIRDataStore(dialect=DuckDBDialect(connection=_NoInstall(connection)))
        connection.execute(f"INSERT INTO {datastore.table_name} ({datastore.json_col}) SELECT json FROM "
                           f"read_json_objects('{store / 'Observation.ndjson'}', format='newline_delimited')")
        return len(datastore.view_runner().execute_view_definition(_flat_view()).fetchall())
    return _timed(work)


def case_flatten_fhiry_observations(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """Peer: fhiry flattening the store's Observations only (a folder holding Observation.ndjson), then the view's columns."""
    from fhiry import Fhirndjson

    folder = Path(tempfile.mkdtemp(prefix="bench-fhiry-"))
    (folder / "Observation.ndjson").symlink_to(store / "Observation.ndjson")

    def work() -> int:
        reader = Fhirndjson()
        reader.folder = str(folder)
        reader.process_source()
        frame = reader.df.reindex(columns=list(FHIRY_COLUMNS.values()))
        frame["identifier"] = frame["identifier"].map(lambda ids: ids[0].get("value") if isinstance(ids, list) and ids else None)
        return len(frame.set_axis(list(FHIRY_COLUMNS), axis=1))
    return _timed(work)


def case_analyze(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: month-36 between-arm table from the embedded store, as `fhir-msc analyze --visit M36` does it (python engine)."""
    study = load_study()
    return _timed(lambda: len(jobs.analyze(study, store, visits=["M36"], engine="python").comparisons))


def case_analyze_duckdb(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: the same month-36 table with --engine duckdb, first run from the raw NDJSON (STORE/.columnar removed first)."""
    shutil.rmtree(store / COLUMNAR, ignore_errors=True)
    return case_analyze_duckdb_again(tables, store, url)


def case_analyze_duckdb_again(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: month-36 table with --engine duckdb on the store as it is (its projection, if any, kept)."""
    study = load_study()
    return _timed(lambda: len(jobs.analyze(study, store, visits=["M36"], engine="duckdb").comparisons))


def case_analyze_duckdb_projected(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: month-36 table with --engine duckdb once the projection exists (built by an untimed run in another process)."""
    subprocess.run([sys.executable, "-m", "benchmarks.cases", "analyze-duckdb-again", str(tables), str(store)],
                   check=True, capture_output=True)
    return case_analyze_duckdb_again(tables, store, url)


def case_analyze_spark(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: month-36 table with --engine spark (local[*]; the Spark session's start is included)."""
    study = load_study()
    return _timed(lambda: len(jobs.analyze(study, store, visits=["M36"], engine="spark").comparisons))


def case_frame_m36(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: only the frame and account analyze builds for --visit M36 (python engine), no statistics."""
    return _timed(lambda: _frame_m36(store, "python"))


def case_frame_m36_duckdb(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: only the frame and account for --visit M36 with --engine duckdb, its projection built by an untimed run first."""
    subprocess.run([sys.executable, "-m", "benchmarks.cases", "analyze-duckdb-again", str(tables), str(store)],
                   check=True, capture_output=True)
    return _timed(lambda: _frame_m36(store, "duckdb"))


def _frame_m36(store: Path, engine: str) -> int:
    from fhir_msc.analysis.frame import visits_to_read

    study = load_study()
    return len(jobs.frame_and_account(study, store, visits_to_read(study, ["M36"]), engine=engine)[0])


# The floor for analyze: one hand-written DuckDB query over the store's NDJSON files, month-36
# n and mean per arm × outcome × answer (no accounting, censored values not set apart).
FLOOR_M36 = """
WITH subjects AS (
  SELECT individual.reference AS patient, assignedArm AS arm
  FROM read_json('{store}/ResearchSubject.ndjson', format='newline_delimited',
                 columns={{individual: 'STRUCT(reference VARCHAR)', assignedArm: 'VARCHAR'}})),
visits AS (
  SELECT 'Encounter/' || id AS encounter
  FROM read_json('{store}/Encounter.ndjson', format='newline_delimited',
                 columns={{id: 'VARCHAR', type: 'STRUCT(coding STRUCT(code VARCHAR)[])[]'}})
  WHERE type[1].coding[1].code = 'M36'),
observations AS (
  SELECT subject.reference AS patient, encounter.reference AS encounter, code.coding[1].code AS outcome,
         valueQuantity.value AS value, valueCodeableConcept.coding[1].code AS answer
  FROM read_json('{store}/Observation.ndjson', format='newline_delimited',
                 columns={{subject: 'STRUCT(reference VARCHAR)', encounter: 'STRUCT(reference VARCHAR)',
                          code: 'STRUCT(coding STRUCT(code VARCHAR)[])', valueQuantity: 'STRUCT(value DOUBLE)',
                          valueCodeableConcept: 'STRUCT(coding STRUCT(code VARCHAR)[])'}}))
SELECT s.arm, o.outcome, o.answer, count(*) AS n, avg(o.value) AS mean
FROM observations o JOIN visits v USING (encounter) JOIN subjects s USING (patient)
GROUP BY ALL ORDER BY ALL
"""


def case_floor_duckdb_m36(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """Floor: a hand-written DuckDB query over the NDJSON, month-36 n and mean per arm and outcome (2 threads)."""
    import duckdb

    def work() -> int:
        connection = duckdb.connect(config={"threads": 2, "autoinstall_known_extensions": False})
        return len(connection.sql(FLOOR_M36.format(store=store)).fetchall())
    return _timed(work)


def case_push_transactions(tables: Path, store: Path, url: str) -> tuple[float, int]:
    """fhir-msc push: transaction Bundles of 50 (PUT Type/id)."""
    from fhir_msc.server.client import FhirClient
    from fhir_msc.server.journal import Journal
    from fhir_msc.server.sync import push, push_order

    client = FhirClient(url)
    journal = Journal(Path(tempfile.mkdtemp(prefix="bench-journal-")))
    return _timed(lambda: (lambda r: r.created + r.updated)(push(client, push_order(Store(store)), journal)))


def case_push_single(tables: Path, store: Path, url: str) -> tuple[float, int]:
    """Baseline: one PUT request per resource (requests.Session)."""
    import requests

    from fhir_msc.server.sync import push_order

    session = requests.Session()

    def work() -> int:
        count = 0
        for r in push_order(Store(store)):
            session.put(f"{url}/{r['resourceType']}/{r['id']}", json=r,
                        headers={"Content-Type": "application/fhir+json"}).raise_for_status()
            count += 1
        return count
    return _timed(work)


def case_push_fhirpy(tables: Path, store: Path, url: str) -> tuple[float, int]:
    """Peer: a plain fhirpy loop saving each resource (PUT by id)."""
    from fhirpy import SyncFHIRClient

    from fhir_msc.server.sync import push_order

    client = SyncFHIRClient(url)

    def work() -> int:
        count = 0
        for r in push_order(Store(store)):
            client.resource(r["resourceType"], **{k: v for k, v in r.items() if k != "resourceType"}).save()
            count += 1
        return count
    return _timed(work)


def case_pull(tables: Path, store: Path, url: str) -> tuple[float, int]:
    """fhir-msc: pull the study from the server and build the analysis DataFrame."""
    from fhir_msc.server.client import FhirClient
    from fhir_msc.server.journal import Journal
    from fhir_msc.server.sync import pull

    study = load_study()
    target = Store(tempfile.mkdtemp(prefix="bench-pull-"))

    def work() -> int:
        pull(FhirClient(url), study, target, Journal(Path(tempfile.mkdtemp(prefix="bench-pj-"))))
        return len(analysis_frame(study, target))
    return _timed(work)


def case_pull_paged(tables: Path, store: Path, url: str) -> tuple[float, int]:
    """fhir-msc: pull the study into a store by paged search (items: resources stored)."""
    from fhir_msc.server.client import FhirClient
    from fhir_msc.server.journal import Journal
    from fhir_msc.server.sync import pull

    target = Store(tempfile.mkdtemp(prefix="bench-paged-"))

    def work() -> int:
        pull(FhirClient(url), load_study(), target, Journal(Path(tempfile.mkdtemp(prefix="bench-pj-"))))
        return sum(target.counts().values())
    return _timed(work)


def case_pull_bulk(tables: Path, store: Path, url: str) -> tuple[float, int]:
    """fhir-msc: pull the study into a store by one Bulk Data export (the test server's Retry-After 1 s included)."""
    from fhir_msc.server import bulk_pull
    from fhir_msc.server.client import FhirClient
    from fhir_msc.server.journal import Journal

    target = Store(tempfile.mkdtemp(prefix="bench-bulk-"))
    state = Path(tempfile.mkdtemp(prefix="bench-bs-"))

    def work() -> int:
        bulk_pull.pull(FhirClient(url), load_study(), target, Journal(state), state)
        return sum(target.counts().values())
    return _timed(work)


def case_hospital_pull_bulk(tables: Path, store: Path, url: str) -> tuple[float, int]:
    """fhir-msc: hospital-pull --bulk of every subject of the cohort (items: Observations accounted for).

    The loopback server holding the cohort stands in for the hospital: each subject is enrolled
    by its Patient identifier, and the hospital's values are the study's own (each one, placed
    at its visit, is "same as the study value"). The store is copied first (not timed): the job
    holds its lock and would map findings into it.
    """
    import shutil

    from fhir_msc.server.client import FhirClient

    study = load_study()
    scratch = Path(tempfile.mkdtemp(prefix="bench-hospital-"))
    target = scratch / "store"
    shutil.copytree(store, target, ignore=shutil.ignore_patterns(".*", "done"))
    enrollment = scratch / "enrollment.csv"
    with open(enrollment, "w", encoding="utf-8") as handle:
        handle.write("USUBJID,PATIENT_IDENTIFIER\n")
        for patient in Store(store).read("Patient"):
            identifier = patient["identifier"][0]
            handle.write(f"{identifier['value']},{identifier['system']}|{identifier['value']}\n")

    def work() -> int:
        result = jobs.hospital_pull(study, FhirClient(url), enrollment, target, scratch / "out", bulk_state=scratch / "state")
        assert result.method == "bulk" and result.patients.used == result.enrolled, result.patients
        return result.observations.read
    return _timed(work)


def case_pull_fhirpy(tables: Path, store: Path, url: str) -> tuple[float, int]:
    """Peer: fhirpy fetching every page of each resource type, pandas json_normalize on Observations."""
    import pandas as pd
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(url)

    def work() -> int:
        frames = {}
        for resource_type in ("ResearchSubject", "Patient", "Encounter", "Observation"):
            rows = [r.serialize() for r in client.resources(resource_type).limit(1000).fetch_all()]
            frames[resource_type] = pd.json_normalize(rows)
        return len(frames["Observation"])
    return _timed(work)


CASES = {name[len("case_"):].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("case_")}


def main() -> None:
    name, tables, store = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    url = sys.argv[4] if len(sys.argv) > 4 else None
    tree = TreeMemory() if name in TREE_CASES else None
    seconds, items = CASES[name](tables, store, url)
    result = {"case": name, "seconds": seconds, "items": items, "peak_rss_mb": peak_rss_mb(), "cpu_seconds": CPU["seconds"]}
    if tree:
        result.update(tree.stop())
        result["peak_rss_mb"] = max(result["peak_rss_mb"], result["tree_peak_rss_mb"])
        result["cpu_seconds"] += result.pop("children_cpu_seconds")
    print(json.dumps(result))


class TreeMemory:
    """Peak memory of this process and all its descendants (Spark's JVM, its Python workers).

    A thread sums VmRSS over the process tree every 0.1 s and keeps the largest sum
    (``tree_peak_rss_mb``); at the end the VmHWM of every process still alive is summed too
    (``tree_hwm_sum_mb``, an upper bound: each process's own peak, whenever it was), and so is
    the CPU time of the descendants (``children_cpu_seconds``: user + system, with that of
    their own children already ended).
    """

    def __init__(self, interval: float = 0.1):
        self.peak_kb = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._done.wait(interval):
            self.peak_kb = max(self.peak_kb, sum(_status_kb(pid, "VmRSS:") for pid in _tree(os.getpid())))

    def stop(self) -> dict:
        self._done.set()
        self._thread.join()
        pids = _tree(os.getpid())
        return {"tree_peak_rss_mb": self.peak_kb / 1024, "tree_hwm_sum_mb": sum(_status_kb(p, "VmHWM:") for p in pids) / 1024,
                "tree_processes": len(pids), "children_cpu_seconds": sum(_cpu_seconds(p) for p in pids[1:])}


def _tree(root: int) -> list[int]:
    """``root`` and every process descending from it (from /proc/*/stat parent ids)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = open(f"/proc/{entry.name}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (/proc/PID/stat fields 14-17), in seconds."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM; ru_maxrss would include the parent's peak, kept across exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
