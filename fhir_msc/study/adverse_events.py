"""The study file's ``adverse_events`` section: the SDTM AE table and how its terms become FHIR codes.

Every code that lands in FHIR is data here: the dictionary term of each AEDECOD (e.g. a MedDRA
preferred term, with the dictionary's system and version), and the Codings of AESER, AESEV,
AEREL and AEOUT. AESEV and AEOUT land in R4 elements with a required binding
(AdverseEvent.severity, AdverseEvent.outcome) and are checked against those value sets on load.
"""

from __future__ import annotations

from pydantic import model_validator

from .fhir_codes import check_coding
from .model import Coding
from .model import StudyModel as _Model

# The AE variables fhir-msc reads (keys of ``columns``); ``end`` (AEENDTC) may be left out of a table.
AE_FIELDS = ("study", "subject", "seq", "term", "decod", "serious", "severity", "related", "outcome", "start", "end")
AE_OPTIONAL = ("end",)


class AdverseEvents(_Model):
    """The AE domain: one row per adverse event (AESEQ within a subject).

    ``terms`` maps each AEDECOD to its dictionary Coding; ``analyze`` reports the incidence of each of
    them. ``serious`` (AESER), ``severity`` (AESEV), ``related`` (AEREL) and ``outcome`` (AEOUT)
    map the table's controlled terms to Codings.
    """

    file: str = "ae.csv"
    """Its file in the tables directory."""
    columns: dict[str, str]
    """study, subject, seq, term, decod, serious, severity, related, outcome, start (and optionally end) → the table's
    columns (AESEQ, AETERM, AEDECOD, …)."""
    terms: dict[str, Coding]
    """AEDECOD → its dictionary Coding (e.g. a MedDRA preferred term)."""
    serious: dict[str, Coding]
    """AESER value → AdverseEvent.seriousness."""
    serious_event: str = "Y"
    """The AESER value counted as serious in the incidence table."""
    severity: dict[str, Coding]
    """AESEV value → AdverseEvent.severity (R4: a code of its required value set, adverse-event-severity)."""
    related: dict[str, Coding]
    """AEREL value → the causality assessment of the study treatment."""
    outcome: dict[str, Coding]
    """AEOUT value → AdverseEvent.outcome (R4: a code of its required value set, adverse-event-outcome)."""

    @model_validator(mode="after")
    def _complete(self) -> AdverseEvents:
        if missing := [key for key in AE_FIELDS if key not in AE_OPTIONAL and key not in self.columns]:
            raise ValueError(f"columns: missing {', '.join(missing)}")
        if unknown := [key for key in self.columns if key not in AE_FIELDS]:
            raise ValueError(f"columns: unknown {', '.join(unknown)}: use {', '.join(AE_FIELDS)}")
        if self.serious_event not in self.serious:
            raise ValueError(f"serious_event: {self.serious_event!r} is not one of serious: {', '.join(self.serious)}")
        for name, element in (("severity", "AdverseEvent.severity (R4)"), ("outcome", "AdverseEvent.outcome (R4)")):
            for term, coding in getattr(self, name).items():
                try:
                    check_coding(coding.system, coding.code, element)
                except ValueError as exc:
                    raise ValueError(f"{name}.{term}: {exc}") from None
        return self
