"""Shared fixtures: the study definition, the synthetic cohort, stores mapped from it, FHIR servers (real and mocked)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import responses

from fhir_msc import Store, get_version, load_study
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.store.columnar import DIRECTORY as COLUMNAR
from fhir_msc.store.study_record import record_study
from fhir_msc.study.definition import REPO_ROOT, Study
from fhir_msc.tables.sdtm import RejectLog

COHORT = REPO_ROOT / "fixtures" / "msc-covid19"
DATA = Path(__file__).parent / "data"
# tests/interop/ runs against a peer server that `make interop` builds and names in FHIR_MSC_PEER: not by default.
collect_ignore = [] if os.environ.get("FHIR_MSC_PEER") else ["interop"]


@pytest.fixture(scope="session")
def study() -> Study:
    return load_study()


@pytest.fixture(scope="session")
def cohort() -> Path:
    return COHORT


@pytest.fixture(scope="session", params=["R4", "R5"])
def mapped(request, study, tmp_path_factory) -> tuple[str, Store]:
    """The cohort mapped once per FHIR version into a store (read-only for tests)."""
    return request.param, _mapped_cohort(study, tmp_path_factory, request.param)


_COHORT_STORES: dict[str, Store] = {}


def _mapped_cohort(study, tmp_path_factory, version: str) -> Store:
    """Map the cohort once per version for the whole session, shared by `mapped` and `demo_store`; the store
    records its study definition, as `fhir-msc map` does."""
    if version not in _COHORT_STORES:
        store = Store(tmp_path_factory.mktemp(f"store-{version}"))
        log = RejectLog(None)
        store.write(tables_to_fhir(study, COHORT, get_version(version), log))
        assert log.rejections == []
        record_study(store.path, study.file)
        _COHORT_STORES[version] = store
    return _COHORT_STORES[version]


@pytest.fixture(autouse=True)
def _shared_stores_as_mapped() -> Iterator[None]:
    """Each test finds the shared stores as mapped, whatever ran before it: the DuckDB engine keeps its columnar
    projection (``.columnar/``) in any store it can write, and a store's mode does not stop root, so the
    projection a test left is removed after it."""
    yield
    for store in _COHORT_STORES.values():
        shutil.rmtree(store.path / COLUMNAR, ignore_errors=True)


# --- the real FHIR engine ----------------------------------------------------------------

from loopback import LoopbackServer  # noqa: E402


@pytest.fixture
def fhir_server():
    """A fresh, empty server for one test."""
    server = LoopbackServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_store(study, tmp_path_factory) -> Store:
    """The cohort mapped to R4 (read-only)."""
    return _mapped_cohort(study, tmp_path_factory, "R4")


# --- the independent validator (Medplum, server/validate.mjs) ------------------------------

from medplum import IndependentValidator  # noqa: E402

_VALIDATORS: dict[str, IndependentValidator] = {}


@pytest.fixture(scope="session")
def independent_validator():
    """``independent_validator("R4")``: one validate.mjs process per FHIR version for the whole session."""
    def get(version: str) -> IndependentValidator:
        if version not in _VALIDATORS:
            _VALIDATORS[version] = IndependentValidator(version)
        return _VALIDATORS[version]
    yield get
    while _VALIDATORS:
        _VALIDATORS.popitem()[1].stop()


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which default files are world-readable (0644)."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# --- a FHIR server mocked with `responses` ---------------------------------------------

@pytest.fixture
def server_holds():
    """Make the mocked server's searches answer with the given resources (or bare ids) per type.

    Only ``_id`` and ``_summary=count`` are honoured; every other search parameter matches everything.
    """

    def register(base: str, held_by_type: dict[str, list]) -> None:
        def answer(request):
            parts = urlsplit(request.url)
            resource_type, query = parts.path.rsplit("/", 1)[-1], parse_qs(parts.query)
            held = [r if isinstance(r, dict) else {"resourceType": resource_type, "id": r}
                    for r in held_by_type.get(resource_type, [])]
            if "_id" in query:
                held = [r for r in held if r["id"] in query["_id"][0].split(",")]
            entries = [] if query.get("_summary") == ["count"] else [{"resource": r} for r in held]
            return 200, {}, json.dumps({"resourceType": "Bundle", "type": "searchset", "total": len(held), "entry": entries})

        responses.add_callback(responses.GET, re.compile(rf"{re.escape(base)}/[A-Z]\w*(\?.*)?$"), callback=answer)

    return register


# --- Spark (local mode, loopback only) ------------------------------------------------------

@pytest.fixture(scope="session")
def spark():
    """A Spark session for the Spark tests (starting one takes seconds); a test giving another master replaces it,
    so take the running one with ``spark_session()``."""
    from fhir_msc.analysis.views.spark_engine import spark_session

    yield spark_session()
    spark_session().stop()
