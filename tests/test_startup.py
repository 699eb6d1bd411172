"""Start-up is part of the interface: `import fhir_msc` and `fhir-msc --help` load none of the libraries a job needs.

Checked by what a fresh interpreter has imported, not by timing it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fhir_msc

# what the jobs need and --help or `import fhir_msc` must not load (fhir: fhir.resources; pydantic, yaml: the study model)
HEAVY = ("duckdb", "fhir", "jsonschema", "lifelines", "matplotlib", "numpy", "orjson", "pandas", "pyarrow", "pydantic",
         "pyspark", "requests", "scipy", "statsmodels", "tqdm", "yaml")

_LOADED = f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"


def _loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter has imported after running ``code``."""
    done = subprocess.run([sys.executable, "-c", f"import json, sys\n{code}\n{_LOADED}"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_import_fhir_msc_loads_no_heavy_library():
    assert _loaded_after("import fhir_msc") == []


def test_help_of_every_command_loads_no_heavy_library():
    help_of_all = """
from fhir_msc.cli import main
import click
def commands(group, path):
    for name, command in group.commands.items():
        yield [*path, name]
        if isinstance(command, click.Group):
            yield from commands(command, [*path, name])
for argv in ([], *commands(main, [])):
    main([*argv, "--help"], standalone_mode=False)
"""
    assert _loaded_after(help_of_all) == []


@pytest.mark.parametrize("name", fhir_msc.__all__)
def test_public_names_are_the_objects_of_their_modules(name):
    value = getattr(fhir_msc, name)
    home = sys.modules[value.__module__]
    assert getattr(home, name) is value
    assert name in dir(fhir_msc)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'map'"):
        fhir_msc.map  # noqa: B018  (the lookup is the test)
