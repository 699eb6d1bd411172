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

SERVER_DIR = REPO_ROOT / "server"


class LoopbackServer:
    """A running loopback FHIR server (Medplum fhir-router in memory) started by the suite."""

    def __init__(self, env: dict[str, str] | None = None):
        import json
        import os
        import shutil
        import subprocess

        node = shutil.which("node")
        if node is None or not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").exists():
            raise RuntimeError("the test FHIR server is not installed: run `make test` (it runs npm ci in server/)")
        self.process = subprocess.Popen([node, "--experimental-websocket", "server.mjs", "0"], cwd=SERVER_DIR,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, **(env or {})})
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"test FHIR server did not start: {self.process.stderr.read()}")
        self.base = json.loads(line)["base"]
        assert self.base.startswith("http://127.0.0.1:")

    def count(self, resource_type: str) -> int:
        import requests

        return requests.get(f"{self.base}/{resource_type}", params={"_count": "0"}, timeout=30).json().get("total", 0)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


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
