"""One benchmark case per call, run in its own process: `python -m benchmarks.cases CASE TABLES STORE [URL]`.

Prints one JSON line: seconds, items (what was processed) and peak RSS of this process.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
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


def _timed(work: Callable[[], int]) -> tuple[float, int]:
    started = time.perf_counter()
    items = work()
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


def case_flatten_fhiry(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """Peer: fhiry flattening the same NDJSON folder into a DataFrame."""
    from fhiry import Fhirndjson

    def work() -> int:
        reader = Fhirndjson()
        reader.folder = str(store)
        reader.process_source()
        return len(reader.df)
    return _timed(work)


def case_analyze(tables: Path, store: Path, url: str | None) -> tuple[float, int]:
    """fhir-msc: month-36 between-arm table from the embedded store, as `fhir-msc analyze --visit M36` does it."""
    study = load_study()
    return _timed(lambda: len(jobs.analyze(study, store, visits=["M36"]).comparisons))


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
    seconds, items = CASES[name](tables, store, url)
    print(json.dumps({"case": name, "seconds": seconds, "items": items, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM; ru_maxrss would include the parent's peak, kept across exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
