"""fhir-msc: clinical-trial tables ↔ FHIR, for the NCT04288102 MSC trial and any study defined in mappings/."""

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
