"""Trial tables: SDTM-shaped CSV files in, typed records out (and back).

Reading is streaming and forgiving: each bad row becomes a :class:`Rejection` naming
file, row, column and value with what to do about it, and the row is written
unchanged (plus a REJECT_REASON column) to a rejects file of the same name, so it can be
fixed and replayed with the same command. Good rows go on.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import NamedTuple, TextIO

import yaml

from ..errors import InputError
from ..store.files import private_dir, private_open, private_write_text
from ..study.definition import Outcome, Study

REJECT_COLUMN = "REJECT_REASON"
DATASET_FILE = "dataset.yaml"
SYNTHETIC_NOTE = ("SYNTHETIC DATA: not real patients. Every FHIR resource made from these tables carries "
                  "meta.tag HTEST (test health data).")
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


# --- records: one validated row each ----------------------------------------------

@dataclass(frozen=True, kw_only=True, slots=True)
class SubjectRecord:
    """A DM row: one randomized participant."""

    subject: str
    age: int
    sex: str
    country: str
    arm_code: str
    actual_arm_code: str
    start: str
    end: str


@dataclass(frozen=True, kw_only=True, slots=True)
class DoseRecord:
    """An EX row: one infusion."""

    subject: str
    treatment: str
    dose: float
    dose_unit: str
    route: str
    date: str


class FindingRecord(NamedTuple):
    """A findings row: one outcome measured at one visit (value in the outcome's unit).

    A NamedTuple rather than a frozen dataclass: a cohort has millions of these, and a
    tuple is built several times faster.
    """

    subject: str
    domain: str
    testcd: str
    test: str
    result: str  # the coded answer, or the number formatted by format_number, after its comparator if censored (<0.5)
    unit: str
    visitnum: int
    date: str


@dataclass(frozen=True, kw_only=True)
class Rejection:
    """One input problem: where it is, what was found, and what to do."""

    file: str
    row: int | None
    column: str | None
    value: str | None
    problem: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}, row {self.row}"
        if self.column is not None:
            where += f", column {self.column}"
            if self.value is not None:
                where += f" = {self.value!r}"
        return f"{where}: {self.problem}"


class RowError(ValueError):
    """Raised by a row parser; becomes a Rejection for that row."""

    def __init__(self, column: str | None, value: str | None, problem: str):
        super().__init__(problem)
        self.column, self.value, self.problem = column, value, problem


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """What dataset.yaml beside the tables says about them."""

    synthetic: bool = False
    description: str = ""


# --- rejects -------------------------------------------------------------------------

@dataclass
class RejectLog:
    """Collects rejections and writes rejected rows to ``directory/<file name>``."""

    directory: Path | None
    rejections: list[Rejection] = field(default_factory=list)
    _writers: dict[str, tuple[object, csv.writer]] = field(default_factory=dict)

    def reject(self, rejection: Rejection, header: list[str] | None = None, row: list[str] | None = None) -> None:
        self.rejections.append(rejection)
        if self.directory is None or header is None or row is None:
            return
        name = Path(rejection.file).name
        if name not in self._writers:
            private_dir(self.directory)
            handle = private_open(self.directory / name, "w", encoding="utf-8", errors="surrogateescape", newline="")
            writer = csv.writer(handle)
            writer.writerow([*header, REJECT_COLUMN])
            self._writers[name] = (handle, writer)
        self._writers[name][1].writerow([*row, *[""] * (len(header) - len(row)), str(rejection)])

    @property
    def files(self) -> list[Path]:
        return [self.directory / name for name in self._writers] if self.directory else []

    def close(self) -> None:
        for handle, _ in self._writers.values():
            handle.close()  # type: ignore[attr-defined]
        self._writers.clear()


# --- reading ---------------------------------------------------------------------------

def open_table(path: Path) -> TextIO:
    """A trial table opened for csv: UTF-8 with or without BOM, undecodable bytes kept (as surrogates) to be reported."""
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def read_rows(path: Path, required: list[str], log: RejectLog) -> Iterator[tuple[int, dict[str, str], list[str], list[str]]]:
    """Yield (row number, {column: value}, header, raw row) for each readable data row.

    Row numbers count lines as a spreadsheet does: the header is row 1. File-level
    problems (empty file, missing columns) are logged once and nothing is yielded.
    """
    display = str(path)
    try:
        handle = open_table(path)
    except FileNotFoundError:
        log.reject(Rejection(file=display, row=None, column=None, value=None,
                             problem="file not found: export it from the trial database or fix the path"))
        return
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            log.reject(Rejection(file=display, row=1, column=None, value=None,
                                 problem=f"file is empty: expected a header row with {', '.join(required)}"))
            return
        header = [h.strip() for h in header]
        if missing := [c for c in required if c not in header]:
            log.reject(Rejection(file=display, row=1, column=", ".join(missing), value=None,
                                 problem="required column missing from the header: add it and rerun (no row of this file was mapped)"))
            return
        strip = str.strip
        for number, raw in enumerate(reader, start=2):
            joined = "".join(raw)
            if not joined or joined.isspace():
                continue
            if _SURROGATE.search(joined):
                column, value = _undecodable(header, raw)
                log.reject(Rejection(file=display, row=number, column=column, value=value,
                                     problem="not valid UTF-8: save the file as UTF-8 and replay the rejects file"),
                           header, raw)
                continue
            if len(raw) != len(header):
                log.reject(Rejection(file=display, row=number, column=None, value=None,
                                     problem=f"row has {len(raw)} fields but the header has {len(header)}: check quoting and delimiters"),
                           header, raw)
                continue
            yield number, dict(zip(header, map(strip, raw))), header, raw


_SURROGATE = re.compile("[\udc80-\udcff]")


def _undecodable(header: list[str], raw: list[str]) -> tuple[str | None, str]:
    """The column and value of the first cell holding bytes that were not UTF-8 (shown escaped)."""
    index, cell = next((i, v) for i, v in enumerate(raw) if _SURROGATE.search(v))
    column = header[index] if index < len(header) else None
    return column, cell.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_dataset(directory: Path) -> Dataset:
    path = directory / DATASET_FILE
    if not path.exists():
        return Dataset()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return Dataset(synthetic=bool(raw.get("synthetic", False)), description=str(raw.get("description", "")))
    except (yaml.YAMLError, UnicodeDecodeError, AttributeError) as exc:
        raise InputError(f"{path}: not a valid dataset description ({exc}); expected 'synthetic: true|false'") from None


# --- row parsers -------------------------------------------------------------------------

def check_date(column: str, value: str, *, required: bool = True) -> str:
    """Return an ISO 8601 date/dateTime FHIR accepts, or raise RowError."""
    if not value:
        if required:
            raise RowError(column, value, "date is required (ISO 8601, e.g. 2023-03-15)")
        return ""
    if _DATETIME.match(value):
        return value
    if not _DATE.match(value):
        raise RowError(column, value, "not an ISO 8601 date: write it as YYYY-MM-DD")
    if len(value) == 10:
        try:
            date.fromisoformat(value)
        except ValueError:
            raise RowError(column, value, "no such calendar date: check day and month") from None
    return value


def parse_number(column: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise RowError(column, value, "not a number: enter the numeric result (decimal point, no units)") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise RowError(column, value, "not a finite number")
    return number


COMPARATORS = ("<=", ">=", "<", ">")  # FHIR Quantity.comparator of a censored result, as written before the number


def split_comparator(text: str) -> tuple[str, str]:
    """``("<", "0.5")`` for the censored result ``<0.5``; ``("", text)`` for a plain one."""
    if text[:1] not in ("<", ">"):
        return "", text
    size = 2 if text[1:2] == "=" else 1
    return text[:size], text[size:].lstrip()


def format_number(value: float) -> str:
    """The one textual form of a number in tables fhir-msc writes (67 and 52.5, not 67.0)."""
    text = repr(round(value, 6))
    return text[:-2] if text.endswith(".0") else text


def parse_subject(study: Study, row: dict[str, str]) -> SubjectRecord:
    c = study.tables.dm.columns
    _check_study(study, c["study"], row[c["study"]])
    subject = _required(c["subject"], row[c["subject"]])
    arm_code = _arm(study, c["arm_code"], row[c["arm_code"]], c["arm"], row[c["arm"]])
    actual = _arm(study, c["actual_arm_code"], row[c["actual_arm_code"]], c["actual_arm"], row[c["actual_arm"]])
    age_text = row[c["age"]]
    try:
        age = int(age_text)
    except ValueError:
        raise RowError(c["age"], age_text, "age must be a whole number of years") from None
    if not 0 <= age <= 120:
        raise RowError(c["age"], age_text, "age out of range 0-120: check the value")
    sex = row[c["sex"]]
    if sex not in study.terms.sex:
        raise RowError(c["sex"], sex, f"unknown sex code: use one of {', '.join(study.terms.sex)}")
    start = check_date(c["start"], row[c["start"]])
    end = check_date(c["end"], row[c["end"]], required=False)
    return SubjectRecord(subject=subject, age=age, sex=sex, country=row.get(c["country"], ""),
                         arm_code=arm_code, actual_arm_code=actual, start=start, end=end)


def parse_dose(study: Study, subjects: dict[str, SubjectRecord], row: dict[str, str]) -> DoseRecord:
    c = study.tables.ex.columns
    _check_study(study, c["study"], row[c["study"]])
    subject = _known_subject(subjects, c["subject"], row[c["subject"]])
    treatment = row[c["treatment"]]
    if treatment not in study.intervention_by_treatment:
        known = ", ".join(study.intervention_by_treatment)
        raise RowError(c["treatment"], treatment, f"unknown treatment: use one of {known}")
    arm = study.arm_by_code[subjects[subject].actual_arm_code]
    expected = study.interventions[arm.intervention].treatment
    if treatment != expected:
        raise RowError(c["treatment"], treatment, f"subject's actual arm {arm.code} receives {expected}: check EXTRT or ACTARMCD")
    dose = parse_number(c["dose"], row[c["dose"]])
    unit = row[c["dose_unit"]]
    if unit not in study.terms.dose_unit:
        raise RowError(c["dose_unit"], unit, f"unknown dose unit: use one of {', '.join(study.terms.dose_unit)}")
    route = row[c["route"]]
    if route not in study.terms.route:
        raise RowError(c["route"], route, f"unknown route: use one of {', '.join(study.terms.route)}")
    return DoseRecord(subject=subject, treatment=treatment, dose=dose, dose_unit=unit, route=route,
                      date=check_date(c["date"], row[c["date"]]))


@dataclass(frozen=True)
class FindingColumns:
    """The column names of one findings domain's table (QSTESTCD, QSORRES, … for QS)."""

    domain: str
    study: str
    subject: str
    visitnum: str
    visit: str
    testcd: str
    test: str
    result: str
    unit: str
    date: str

    @classmethod
    def of(cls, study: Study, domain: str) -> FindingColumns:
        c, s = study.tables.findings.columns, study.tables.findings.suffixes
        return cls(domain=domain, study=c["study"], subject=c["subject"], visitnum=c["visitnum"], visit=c["visit"],
                   **{key: domain + s[key] for key in ("testcd", "test", "result", "unit", "date")})


def parse_finding(study: Study, col: FindingColumns, subjects: dict[str, SubjectRecord], row: dict[str, str]) -> FindingRecord:
    _check_study(study, col.study, row[col.study])
    subject = _known_subject(subjects, col.subject, row[col.subject])
    testcd = row[col.testcd]
    outcome = study.outcome_by_code.get(testcd)
    if outcome is None or outcome.domain != col.domain:
        known = ", ".join(o.code for o in study.outcomes_in(col.domain))
        raise RowError(col.testcd, testcd, f"unknown test code for domain {col.domain}: use one of {known}, or add it to the study definition")
    visitnum_text = row[col.visitnum]
    try:
        visit = study.visit_by_num[visit_number(visitnum_text)]
    except KeyError:
        nums = ", ".join(str(v.visitnum) for v in study.visits)
        raise RowError(col.visitnum, visitnum_text, f"unknown visit number: use one of {nums}") from None
    if row[col.visit] != visit.name:
        raise RowError(col.visit, row[col.visit], f"VISITNUM {visit.visitnum} is {visit.name!r}: fix VISIT or VISITNUM")
    result, unit = _result(outcome, col.result, row[col.result], col.unit, row[col.unit])
    return FindingRecord(subject=subject, domain=col.domain, testcd=testcd, test=row.get(col.test) or outcome.display,
                         result=result, unit=unit, visitnum=visit.visitnum,
                         date=check_date(col.date, row[col.date]))


def visit_number(text: str) -> int | str:
    """VISITNUM as a whole number ("9" and "9.0" are visit 9); text that is not a number stays as it is."""
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return text


def _result(outcome: Outcome, result_column: str, text: str, unit_column: str, unit: str) -> tuple[str, str]:
    """Validate a result; numbers are converted to the outcome's unit."""
    if not text:
        raise RowError(result_column, text, "result is empty: enter it, or drop the row if the test was not done")
    if outcome.type == "coded":
        if text not in outcome.answers:
            raise RowError(result_column, text, f"not an allowed answer for {outcome.code}: use one of {', '.join(outcome.answers)}")
        return text, ""
    comparator, digits = split_comparator(text)
    try:
        number = parse_number(result_column, digits)
    except RowError as err:
        raise RowError(result_column, text, err.problem + " (a censored result is written <0.5, >1000, <= or >=)") from None
    factor = outcome.factor_from(unit)
    if factor is None:
        accepted = ", ".join([outcome.unit, *outcome.unit_aliases])
        raise RowError(unit_column, unit, f"unit not convertible to {outcome.unit} for {outcome.code}: use one of {accepted}")
    value = round(number * factor, 6)
    if not outcome.in_range(value):
        low, high = (format_number(v) for v in outcome.range)
        raise RowError(result_column, text, f"{outcome.code} out of plausible range {low}-{high} {outcome.unit}: check the value and unit")
    return comparator + format_number(value), outcome.unit


def _required(column: str, value: str) -> str:
    if not value:
        raise RowError(column, value, "required value is empty")
    return value


def _check_study(study: Study, column: str, value: str) -> None:
    if value != study.study.identifier.value:
        raise RowError(column, value, f"row belongs to another study: this definition is {study.study.identifier.value}")


def _known_subject(subjects: dict[str, SubjectRecord], column: str, value: str) -> str:
    if value not in subjects:
        raise RowError(column, value, "unknown subject: it is not in DM (or was rejected there); fix DM first")
    return value


def _arm(study: Study, code_column: str, code: str, name_column: str, name: str) -> str:
    arm = study.arm_by_code.get(code)
    if arm is None:
        raise RowError(code_column, code, f"unknown arm: use one of {', '.join(study.arm_by_code)}")
    if name and name != arm.name:
        raise RowError(name_column, name, f"arm {code} is named {arm.name!r}: fix ARM or ARMCD")
    return code


# --- writing ---------------------------------------------------------------------------------

def dm_columns(study: Study) -> list[str]:
    return list(study.tables.dm.columns.values())


def ex_columns(study: Study) -> list[str]:
    return list(study.tables.ex.columns.values())


def finding_columns(study: Study, domain: str) -> list[str]:
    col = FindingColumns.of(study, domain)
    return [col.study, col.subject, col.testcd, col.test, col.result, col.unit, col.visitnum, col.visit, col.date]


def subject_row(study: Study, record: SubjectRecord) -> list[str]:
    c = study.tables.dm.columns
    arm, actual = study.arm_by_code[record.arm_code], study.arm_by_code[record.actual_arm_code]
    values = {"study": study.study.identifier.value, "subject": record.subject, "age": str(record.age),
              "sex": record.sex, "country": record.country, "arm_code": arm.code, "arm": arm.name,
              "actual_arm_code": actual.code, "actual_arm": actual.name, "start": record.start, "end": record.end}
    return [values[key] for key in c]


def dose_row(study: Study, record: DoseRecord) -> list[str]:
    values = {"study": study.study.identifier.value, "subject": record.subject, "treatment": record.treatment,
              "dose": format_number(record.dose), "dose_unit": record.dose_unit, "route": record.route,
              "date": record.date}
    return [values[key] for key in study.tables.ex.columns]


def finding_row(study: Study, record: FindingRecord) -> list[str]:
    visit = study.visit_by_num[record.visitnum]
    return [study.study.identifier.value, record.subject, record.testcd, record.test, record.result,
            record.unit, str(record.visitnum), visit.name, record.date]


class TableWriter:
    """Writes the study's tables (dm, ex, one per findings domain) into a directory."""

    def __init__(self, study: Study, directory: Path):
        self.study, self.directory = study, directory
        private_dir(directory)
        self._files: dict[str, tuple[object, csv.writer]] = {}
        self.rows: dict[str, int] = {}

    def _writer(self, name: str, header: list[str]) -> csv.writer:
        if name not in self._files:
            handle = private_open(self.directory / name, "w", encoding="utf-8", newline="")
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            self._files[name] = (handle, writer)
            self.rows[name] = 0
        self.rows[name] += 1
        return self._files[name][1]

    def subject(self, record: SubjectRecord) -> None:
        self._writer(self.study.tables.dm.file, dm_columns(self.study)).writerow(subject_row(self.study, record))

    def dose(self, record: DoseRecord) -> None:
        self._writer(self.study.tables.ex.file, ex_columns(self.study)).writerow(dose_row(self.study, record))

    def finding(self, record: FindingRecord) -> None:
        name = self.study.tables.findings.files[record.domain]
        self._writer(name, finding_columns(self.study, record.domain)).writerow(finding_row(self.study, record))

    def dataset(self, dataset: Dataset) -> None:
        if dataset.synthetic:
            text = yaml.safe_dump({"synthetic": True, "description": SYNTHETIC_NOTE}, sort_keys=False, width=100)
            private_write_text(self.directory / DATASET_FILE, text)

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()  # type: ignore[attr-defined]
        self._files.clear()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
