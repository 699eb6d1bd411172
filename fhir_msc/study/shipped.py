"""Where the files shipped with fhir-msc are: the bundled study definitions and synthetic tables.

Importing this module costs nothing more than the standard library, so the CLI's option
defaults (and its --help) need not load the study model.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the source checkout, when running from one


def package_data(name: str, checkout: str) -> Path:
    """A data directory shipped in the wheel as ``fhir_msc/_data/NAME``.

    Running from a source checkout or an editable install, where pyproject.toml's mapping
    of the top-level directories into the package does not apply, it is ``CHECKOUT``
    under the repository root instead.
    """
    shipped = files("fhir_msc").joinpath("_data", name)
    return shipped if isinstance(shipped, Path) and shipped.is_dir() else REPO_ROOT / checkout


DEFAULT_STUDY = package_data("mappings", "mappings") / "msc-covid19.yaml"
