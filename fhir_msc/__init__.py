"""fhir-msc: clinical-trial tables ↔ FHIR, for the NCT04288102 MSC trial and any study defined in mappings/."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import (
        ExitCode,
        FhirMscError,
        InputError,
        StudyDefinitionError,
        ValidationFailed,
    )
    from .fhir.versions import FhirVersion, get_version
    from .jobs import demo, map_tables, unmap, validate
    from .store.ndjson import Store
    from .study.definition import Study, load_study

__all__ = [
    "ExitCode", "FhirMscError", "InputError", "StudyDefinitionError", "ValidationFailed",
    "FhirVersion", "Store", "Study", "demo", "get_version", "load_study", "map_tables", "unmap", "validate",
]
__version__ = "0.1.0"

# where each public name lives: imported on first use, so `import fhir_msc` (and the CLI's --help) stays quick
_HOME = {
    **dict.fromkeys(("ExitCode", "FhirMscError", "InputError", "StudyDefinitionError", "ValidationFailed"), ".errors"),
    **dict.fromkeys(("FhirVersion", "get_version"), ".fhir.versions"),
    **dict.fromkeys(("demo", "map_tables", "unmap", "validate"), ".jobs"),
    "Store": ".store.ndjson",
    **dict.fromkeys(("Study", "load_study"), ".study.definition"),
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_HOME[name], __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
