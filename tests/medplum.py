"""The independent FHIR validator (server/validate.mjs: Medplum's validateResource) driven from Python."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fhir_msc.study.definition import REPO_ROOT

SERVER_DIR = REPO_ROOT / "server"


@dataclass(frozen=True)
class Report:
    """Medplum's verdict on every resource under the paths it was given."""

    checked: int
    invalid: int
    issues: list[dict]

    @property
    def errors(self) -> list[dict]:
        return [issue for issue in self.issues if issue["severity"] in ("error", "fatal")]

    @property
    def invalid_resources(self) -> set[str]:
        """``Type/id`` of each resource with at least one error."""
        return {issue["resource"] for issue in self.errors}


class IndependentValidator:
    """One `node validate.mjs --serve` process for one FHIR version; each request is a list of paths."""

    def __init__(self, version: str):
        node = shutil.which("node")
        if node is None or not (SERVER_DIR / "node_modules" / "hl7.fhir.r5.core").exists():
            raise RuntimeError("the independent validator is not installed: run `make test` (it runs npm ci in server/)")
        self.version = version
        self._log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([node, "validate.mjs", "--fhir-version", version, "--serve"], cwd=SERVER_DIR,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        ready = self.process.stdout.readline()
        if not ready:
            self._log.seek(0)
            raise RuntimeError(f"validate.mjs did not start: {self._log.read()}")
        assert json.loads(ready) == {"ready": version}

    def validate(self, *paths: Path) -> Report:
        self.process.stdin.write(json.dumps([str(p) for p in paths]) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        if "error" in answer:
            raise RuntimeError(f"validate.mjs: {answer['error']}")
        return Report(checked=answer["checked"], invalid=answer["invalid"], issues=answer["issues"])

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=10)
        self._log.close()
