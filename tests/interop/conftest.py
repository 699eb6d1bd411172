"""SMART's reference Bulk Data server (a peer this project did not write), started on a free loopback port.

``make interop`` builds it into ``.interop/`` and runs these tests with FHIR_MSC_PEER set to its
folder; without FHIR_MSC_PEER they are not collected (tests/conftest.py), so ``make test`` never
needs Node's native build or the peer's data.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

STARTUP_SECONDS = 120  # ts-node compiles the server at start: ~20 s on 2 busy cores


class Peer:
    """The running peer: its origin, and its FHIR base URL with options in the path (`{origin}/<options>/fhir`)."""

    def __init__(self, origin: str):
        self.origin = origin

    def base(self, **options) -> str:
        """The FHIR base URL; options (``secure``, ``err``, ``page``, …) ride in a base64url JSON path segment."""
        if not options:
            return f"{self.origin}/fhir"
        segment = base64.urlsafe_b64encode(json.dumps(options).encode()).decode().rstrip("=")
        return f"{self.origin}/{segment}/fhir"

    def resource_counts(self) -> dict[str, int]:
        """The server's own count of each type it holds (``$get-resource-counts``)."""
        body = requests.get(f"{self.origin}/fhir/$get-resource-counts", timeout=30).json()
        return {p["name"]: p["valueInteger"] for p in body["parameter"]}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def peer() -> Iterator[Peer]:
    folder = Path(os.environ["FHIR_MSC_PEER"])
    port = _free_port()
    origin = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile(mode="w+")
    env = {**os.environ, "NODE_ENV": "production", "PORT": str(port), "BASE_URL": origin}
    process = subprocess.Popen([shutil.which("node") or "node", "node_modules/.bin/ts-node", "--transpile-only", "."],
                               cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        while True:
            try:
                if requests.get(f"{origin}/fhir/metadata", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() - started > STARTUP_SECONDS:
                log.seek(0)
                raise RuntimeError(f"the Bulk Data server in {folder} did not start: {log.read()[-2000:]}")
            time.sleep(1)
        yield Peer(origin)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
