"""The built wheel installs anywhere: the study definition and the demo cohort ship inside it.

The wheel is built from a copy of the checkout (``pip wheel``, setuptools from PyPI in an
isolated build environment) and installed with ``--no-deps`` into a clean venv. So that the
test does not download pandas, scipy and the rest, the clean venv then sees this test
venv's site-packages through a ``.pth`` file, after its own: ``--system-site-packages``
would give the base interpreter's packages, not this venv's. fhir_msc itself is imported
from the wheel (asserted), and everything runs from a directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "node_modules", "build", "*.egg-info", "__pycache__",
                                     "fhir-msc-demo", ".cache", ".fhir-msc", ".pytest_cache", "dist")


def run(argv: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_MSC") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """(the wheel, pip's verbose build log), built from a copy of the checkout."""
    source = tmp_path_factory.mktemp("source") / "fhir-msc"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    out = tmp_path_factory.mktemp("wheel")
    done = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", out, source], cwd=source)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return next(out.glob("fhir_msc-*.whl")), done.stdout + done.stderr


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory) -> Path:
    """A clean venv with the wheel installed, then given this venv's dependencies."""
    venv = tmp_path_factory.mktemp("venv")
    assert run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv).returncode == 0
    python = venv / "bin" / "python"
    done = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", built[0]], cwd=venv)
    assert done.returncode == 0, done.stderr
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).stdout.strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "zz-test-dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return venv


def test_wheel_holds_every_module_the_data_and_the_license(built):
    wheel, log = built
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "fhir_msc").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, modules - names
    cohort = {f"fhir_msc/_data/cohort/{p.name}" for p in (REPO / "fixtures" / "msc-covid19").iterdir()}
    schemas = {f"fhir_msc/schemas/{p.name}" for p in (REPO / "fhir_msc" / "schemas").glob("*.schema.json")}
    assert cohort | schemas | {"fhir_msc/_data/mappings/msc-covid19.yaml", "fhir_msc/py.typed"} <= names
    new_study = REPO / "fhir_msc" / "study" / "new_study"  # what `fhir-msc init` writes
    assert {str(p.relative_to(REPO)) for p in new_study.rglob("*") if p.is_file() and "__pycache__" not in p.parts} <= names
    assert "fhir_msc/schemas/study.schema.json" in names
    for example in ("example-dose-ranging", "example-zero-cell"):  # definition and synthetic tables; not the scripts
        data = {f"fhir_msc/_data/{example.replace('-', '_')}/{p.name}" for p in (REPO / "fixtures" / example).iterdir()
                if p.suffix in (".csv", ".yaml")}
        assert len(data) >= 4 and data | {f"fhir_msc/_data/mappings/{example}.yaml"} <= names
    dist_info = wheel.name.split("-py3")[0] + ".dist-info"
    assert f"{dist_info}/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    summary = next(line for line in metadata.splitlines() if line.startswith("Summary: "))
    assert "FHIR" in summary and "NCT04288102" not in summary  # names the tool, not its first trial
    assert {"Classifier: Operating System :: POSIX :: Linux", "Classifier: Operating System :: MacOS"} <= set(metadata.splitlines())
    warnings = re.findall(r"\b[A-Z]\w*Warning\b.*", log) + re.findall(r".*deprecat.*", log, re.IGNORECASE)
    assert warnings == []  # e.g. SetuptoolsDeprecationWarning for a license table instead of an SPDX expression


def test_installed_wheel_runs_the_demo_and_analyze_outside_the_checkout(venv, tmp_path):
    python, fhir_msc = venv / "bin" / "python", venv / "bin" / "fhir-msc"
    where = run([python, "-c", "import fhir_msc, fhir_msc.jobs as j, fhir_msc.study.definition as d; "
                               "print(fhir_msc.__file__, d.DEFAULT_STUDY, j.DEMO_TABLES, sep='\\n')"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(venv) and Path(path).exists(), path
    demo = run([fhir_msc, "demo"], cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "round trip: lossless" in demo.stdout and "reproduced 3/3 published results" in demo.stdout
    assert "example EXDR-001 (example-dose-ranging.yaml): mapped 469 resources, reproduced 7/7" in demo.stdout
    assert "example EXZC-001 (example-zero-cell.yaml): mapped 194 resources, reproduced 3/3" in demo.stdout
    analyze = run([fhir_msc, "analyze", "--store", "fhir-msc-demo/store", "--visit", "M36", "--outcome", "CTNORM",
                   "--json"], cwd=tmp_path)
    assert analyze.returncode == 0, analyze.stderr
    (comparison,) = json.loads(analyze.stdout)["comparisons"]
    assert round(comparison["effect"]["estimate"], 2) == 1.68 and comparison["arms"][0]["events"] == 23


def test_installed_wheel_starts_a_study_of_ones_own_outside_the_checkout(venv, tmp_path):
    fhir_msc = venv / "bin" / "fhir-msc"
    for argv in (["init", "t"], ["map", "t/tables", "--study", "t/study.yaml", "--store", "s"],
                 ["analyze", "--store", "s", "--study", "t/study.yaml"], ["verify", "--store", "s", "--study", "t/study.yaml"],
                 ["check", "t/study.yaml"]):
        done = run([fhir_msc, *argv], cwd=tmp_path)
        assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    assert "reproduced 3/3 published results" in run([fhir_msc, "verify", "--store", "s", "--study", "t/study.yaml"],
                                                     cwd=tmp_path).stdout
