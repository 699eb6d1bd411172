"""Shared fixtures: the study definition, the synthetic cohort, and stores mapped from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhir_msc import Store, get_version, load_study
from fhir_msc.mapping import tables_to_fhir
from fhir_msc.study import REPO_ROOT, Study
from fhir_msc.tables import RejectLog

COHORT = REPO_ROOT / "fixtures" / "msc-covid19"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def study() -> Study:
    return load_study()


@pytest.fixture(scope="session")
def cohort() -> Path:
    return COHORT


@pytest.fixture(scope="session", params=["R4", "R5"])
def mapped(request, study, tmp_path_factory) -> tuple[str, Store]:
    """The cohort mapped once per FHIR version into a store (read-only for tests)."""
    store = Store(tmp_path_factory.mktemp(f"store-{request.param}"))
    log = RejectLog(None)
    store.write(tables_to_fhir(study, COHORT, get_version(request.param), log))
    assert log.rejections == []
    return request.param, store


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
    store = Store(tmp_path_factory.mktemp("demo-store"))
    store.write(tables_to_fhir(study, COHORT, get_version("R4"), RejectLog(None)))
    return store
