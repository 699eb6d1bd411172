"""The base of every part of a study definition: frozen models that refuse unknown keys, and the Coding."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StudyModel(BaseModel):
    """A part of the study definition: read-only once loaded; a key it does not know is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(StudyModel):
    """A FHIR Coding the study definition puts into resources (``version``: e.g. the dictionary's, MedDRA 26.0)."""

    system: str
    code: str
    display: str | None = None
    version: str | None = None

    def as_fhir(self) -> dict:
        return self.model_dump(exclude_none=True)
