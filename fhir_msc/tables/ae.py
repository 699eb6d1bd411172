"""The SDTM AE domain: one adverse event per row, parsed into records and written back.

Variables read (names from the study file's ``adverse_events.columns``): STUDYID, USUBJID,
AESEQ, AETERM, AEDECOD, AESER, AESEV, AEREL, AEOUT, AESTDTC and, optionally, AEENDTC.
AEDECOD, AESER, AESEV, AEREL and AEOUT must be terms the study file maps to codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..study.adverse_events import AE_FIELDS, AE_OPTIONAL, AdverseEvents
from ..study.definition import Study
from .reading import read_rows
from .rejects import Rejection, RejectLog
from .sdtm import RowError, SubjectRecord, TableWriter, check_date, known_subject, parse_whole_number

__all__ = ["AdverseEventRecord", "ae_columns", "ae_row", "parse_adverse_event", "read_adverse_events",
           "write_adverse_event"]


@dataclass(frozen=True, kw_only=True, slots=True)
class AdverseEventRecord:
    """An AE row: one adverse event of one subject."""

    subject: str
    seq: int
    term: str  # AETERM, the verbatim term
    decod: str  # AEDECOD, the dictionary term
    serious: str
    severity: str
    related: str
    outcome: str
    start: str
    end: str = ""


def _term(ae: AdverseEvents, column: str, value: str, field: str) -> str:
    known = getattr(ae, field)
    if value not in known:
        raise RowError(column, value, f"not a term of adverse_events.{field} in the study definition: "
                                      f"use one of {', '.join(known)}, or add it there")
    return value


def parse_adverse_event(study: Study, subjects: dict[str, SubjectRecord], row: dict[str, str]) -> AdverseEventRecord:
    """Validate one AE row (RowError names the column and what to do)."""
    ae = study.adverse_events
    c = ae.columns
    if row[c["study"]] != study.study.identifier.value:
        raise RowError(c["study"], row[c["study"]],
                       f"row belongs to another study: this definition is {study.study.identifier.value}")
    subject = known_subject(subjects, c["subject"], row[c["subject"]])
    seq = parse_whole_number(c["seq"], row[c["seq"]], "AESEQ must be a whole number (ASCII digits)")
    if seq < 1:
        raise RowError(c["seq"], row[c["seq"]], "AESEQ must be 1 or more")
    term = row[c["term"]]
    if not term:
        raise RowError(c["term"], term, "the reported term (AETERM) is empty: enter it")
    start = check_date(c["start"], row[c["start"]])
    end = check_date(c["end"], row.get(c["end"], ""), required=False) if "end" in c else ""
    if end and end[:10] < start[:10]:
        raise RowError(c["end"], end, f"the event ends before it starts ({start}): check both dates")
    return AdverseEventRecord(subject=subject, seq=seq, term=term,
                              decod=_term(ae, c["decod"], row[c["decod"]], "terms"),
                              serious=_term(ae, c["serious"], row[c["serious"]], "serious"),
                              severity=_term(ae, c["severity"], row[c["severity"]], "severity"),
                              related=_term(ae, c["related"], row[c["related"]], "related"),
                              outcome=_term(ae, c["outcome"], row[c["outcome"]], "outcome"),
                              start=start, end=end)


def ae_columns(study: Study) -> list[str]:
    c = study.adverse_events.columns
    return [c[key] for key in AE_FIELDS if key in c]


def ae_row(study: Study, record: AdverseEventRecord) -> list[str]:
    values = {"study": study.study.identifier.value, "subject": record.subject, "seq": str(record.seq),
              "term": record.term, "decod": record.decod, "serious": record.serious, "severity": record.severity,
              "related": record.related, "outcome": record.outcome, "start": record.start, "end": record.end}
    return [values[key] for key in AE_FIELDS if key in study.adverse_events.columns]


def write_adverse_event(writer: TableWriter, record: AdverseEventRecord) -> None:
    writer.write_row(writer.study.adverse_events.file, ae_columns(writer.study), ae_row(writer.study, record))


def reject_key(study: Study) -> list[str]:
    """The columns identifying an AE row (for the rejects file)."""
    c = study.adverse_events.columns
    return [c["subject"], c["seq"]]


def read_adverse_events(study: Study, path: Path, log: RejectLog, subjects: dict[str, SubjectRecord],
                        parse: Callable[..., AdverseEventRecord | None]) -> Iterator[AdverseEventRecord]:
    """The valid AE rows of ``path``; bad and repeated ones (same USUBJID and AESEQ) go to ``log``.

    ``parse(log, path, number, header, raw, row, make)`` turns a RowError of ``make()`` into a rejection.
    """
    if not path.exists():
        return
    ae = study.adverse_events
    required = [column for key, column in ae.columns.items() if key not in AE_OPTIONAL]
    seen: set[tuple[str, int]] = set()
    for number, row, header, raw in read_rows(path, required, log, used=list(ae.columns.values()),
                                              key_columns=reject_key(study), table=ae.file):
        record = parse(log, path, number, header, raw, row, lambda: parse_adverse_event(study, subjects, row))
        if record is None:
            continue
        if (record.subject, record.seq) in seen:
            log.reject(Rejection(file=str(path), row=number, column=ae.columns["seq"], value=str(record.seq),
                                 problem="duplicate adverse event: this subject already has this AESEQ; renumber it"),
                       header, raw)
            continue
        seen.add((record.subject, record.seq))
        log.mapped(str(path))
        yield record
