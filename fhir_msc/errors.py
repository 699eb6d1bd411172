"""One exception root for fhir-msc, and the exit codes the CLI maps them to."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; scripts can rely on them."""

    OK = 0
    FAILURE = 1  # an unexpected internal error (a bug: please report it)
    USAGE = 2  # bad command line (click's own code)
    REJECTED = 3  # the job finished, but some input rows were rejected
    BAD_INPUT = 4  # input or study definition unusable: nothing was done
    INVALID = 5  # produced or given FHIR resources failed validation
    MISMATCH = 6  # a round trip or a verification did not reproduce its source


class FhirMscError(Exception):
    """Root of every error fhir-msc raises on purpose; its message is for the user."""

    exit_code: ExitCode = ExitCode.FAILURE


class StudyDefinitionError(FhirMscError):
    """The study definition (mapping YAML) is missing or invalid."""

    exit_code = ExitCode.BAD_INPUT


class InputError(FhirMscError):
    """Input tables or FHIR files cannot be read at all."""

    exit_code = ExitCode.BAD_INPUT


class ValidationFailed(FhirMscError):
    """FHIR resources did not validate against the fhir.resources models."""

    exit_code = ExitCode.INVALID
