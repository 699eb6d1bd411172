"""The base of every part of a study definition: frozen models that refuse unknown keys, and the Coding."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StudyModel(BaseModel):
    """A part of the study definition: read-only once loaded; a key it does not know is an error.

    The string below a field is its description in the study file's JSON Schema and reference page (``schema.py``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(StudyModel):
    """A FHIR Coding the study definition puts into resources (``version``: e.g. the dictionary's, MedDRA 26.0)."""

    system: str
    """The code system's URI (e.g. http://loinc.org)."""
    code: str
    """The code."""
    display: str | None = None
    """Its display text."""
    version: str | None = None
    """The code system's version (e.g. MedDRA 26.0)."""

    def as_fhir(self) -> dict:
        return self.model_dump(exclude_none=True)
