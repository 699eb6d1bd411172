"""Start and stop the loopback FHIR test server (server/server.mjs) from Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import requests

from fhir_msc.study.definition import REPO_ROOT

SERVER_DIR = REPO_ROOT / "server"


class LoopbackServer:
    """A running loopback FHIR server (Medplum fhir-router in memory) started by the suite."""

    def __init__(self, env: dict[str, str] | None = None, port: int = 0):
        node = shutil.which("node")
        if node is None or not (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").exists():
            raise RuntimeError("the test FHIR server is not installed: run `make test` (it runs npm ci in server/)")
        self._log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks
        self.process = subprocess.Popen([node, "--experimental-websocket", "server.mjs", str(port)], cwd=SERVER_DIR,
                                        stdout=subprocess.PIPE, stderr=self._log, text=True,
                                        env={**os.environ, **(env or {})})
        line = self.process.stdout.readline()
        if not line:
            self._log.seek(0)
            raise RuntimeError(f"test FHIR server did not start: {self._log.read()}")
        self.base = json.loads(line)["base"]
        assert self.base.startswith("http://127.0.0.1:")

    def count(self, resource_type: str) -> int:
        return requests.get(f"{self.base}/{resource_type}", params={"_count": "0"}, timeout=30).json().get("total", 0)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._log.close()


