"""Trial tables: SDTM-shaped CSV files in, typed records out (and back).

Reading is streaming and forgiving: each bad row becomes a :class:`Rejection` naming
file, row, column and value with what to do about it, and the row is written
unchanged (plus a REJECT_REASON column) to a rejects file of the same name, so it can be
fixed and replayed with the same command. Good rows go on.
"""

from __future__ import annotations

import csv
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import NamedTuple

import yaml

from ..errors import InputError
from ..store.files import private_dir, private_open, private_write_text
from ..study.definition import BOOLEAN_ANSWERS, Outcome, Study
from .formats import convert_csv
from .reading import read_rows
from .rejects import DATASET_FILE, REJECT_COLUMN, FileAccount, Rejection, RejectLog

__all__ = ["DATASET_FILE", "REJECT_COLUMN", "FileAccount", "Rejection", "RejectLog", "read_rows"]
SYNTHETIC_NOTE = ("SYNTHETIC DATA: not real patients. Every FHIR resource made from these tables carries "
                  "meta.tag HTEST (test health data).")
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$", re.ASCII)
_DATETIME = re.compile(r"^(\d{4}-\d{2}-\d{2})T(\d{2}):(\d{2})(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?$", re.ASCII)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$", re.ASCII)
_WHOLE = re.compile(r"^[+-]?\d+(\.0*)?$", re.ASCII)  # 50, and 50.0 as spreadsheets and SAS write a whole number
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$", re.ASCII)  # 1,234 1,234,567 1,234.5
_DOT_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(\.\d{3})+,\d+$", re.ASCII)  # 1.234,5: a decimal comma, dots grouping
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$", re.ASCII)


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
    visitnum: int | float  # SDTM VISITNUM: 3.1 for an unscheduled visit
    date: str
    not_done: bool = False  # SDTM --STAT NOT DONE: no result (result and unit are empty)
    reason: str = ""  # SDTM --REASND: why it was not done
    visit: str = ""  # SDTM VISIT of an unscheduled visit ("UNSCHEDULED 3.1"); empty for a scheduled one


NOT_DONE = "NOT DONE"  # the one value of SDTM --STAT


class RowError(ValueError):
    """Raised by a row parser; becomes a Rejection for that row."""

    def __init__(self, column: str | None, value: str | None, problem: str):
        super().__init__(problem)
        self.column, self.value, self.problem = column, value, problem


class UnknownSubject(RowError):
    """A row of a subject that DM does not hold (the mapping names the DM row when it was rejected)."""

    def __init__(self, column: str, value: str):
        super().__init__(column, value, "unknown subject: it is not in DM (or was rejected there); fix DM first")


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """What dataset.yaml beside the tables says about them."""

    synthetic: bool = False
    description: str = ""


# --- reading ---------------------------------------------------------------------------

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
    """Return an ISO 8601 date/dateTime FHIR accepts (a real calendar day and time), or raise RowError."""
    if not value:
        if required:
            raise RowError(column, value, "date is required (ISO 8601, e.g. 2023-03-15)")
        return ""
    if moment := _DATETIME.match(value):
        return _check_datetime(column, value, moment)
    if not _DATE.match(value):
        raise RowError(column, value, "not an ISO 8601 date: write it as YYYY-MM-DD")
    try:
        date.fromisoformat(value if len(value) == 10 else f"{value}-01-01"[:10])
    except ValueError:
        raise RowError(column, value, "no such calendar date: check day and month") from None
    return value


def _check_datetime(column: str, value: str, moment: re.Match) -> str:
    day, hours, minutes, seconds, _, zone = moment.groups()
    try:
        date.fromisoformat(day)
    except ValueError:
        raise RowError(column, value, "no such calendar date: check day and month") from None
    try:
        datetime.fromisoformat(f"{day}T{hours}:{minutes}{seconds or ':00'}")
    except ValueError:
        raise RowError(column, value, "no such time of day: hours 00-23, minutes and seconds 00-59") from None
    complete = f"{day}T{hours}:{minutes}{seconds or ':00'}"
    if zone is None:
        raise RowError(column, value, f"a date-time needs its time zone in FHIR; keep the time and add the site's UTC "
                                      f"offset: write e.g. {complete}+08:00, or {complete}Z if it is UTC")
    if zone != "Z" and not (int(zone[1:3]) <= 13 and int(zone[4:]) <= 59 or zone[1:] == "14:00"):
        raise RowError(column, value, "no such time zone offset: use -12:00 to +14:00, or Z")
    if seconds is None:
        raise RowError(column, value, f"a FHIR date-time has seconds: write {complete}{zone}")
    return value


def is_number(text: str) -> bool:
    """Whether ``text`` is a decimal number as fhir-msc reads one (ASCII digits, a decimal point, an exponent)."""
    return bool(_NUMBER.match(text))


def parse_number(column: str, value: str) -> float:
    """A decimal number as written in a table: ASCII digits, a decimal point; nothing else is guessed."""
    if not _NUMBER.match(value):
        raise RowError(column, value, _not_a_number(value))
    number = float(value)
    if number in (float("inf"), float("-inf")):
        raise RowError(column, value, "not a finite number")
    return number


def _not_a_number(value: str) -> str:
    """What to do about a value that is not a number as fhir-msc reads one: digit grouping and decimal commas named."""
    replay = "and replay the rejects file"
    integer = value.lstrip("+-").split(",")[0]
    if _THOUSANDS.match(value) and integer != "0":
        if value.count(",") == 1 and "." not in value:  # 1,234: one thousand and more, or one and a fraction
            return (f"ambiguous: {value.replace(',', '')} with a thousands separator, or {value.replace(',', '.')} with "
                    f"a decimal comma: write the number meant without digit grouping, with a decimal point, {replay}")
        return f"thousands separator: write {value.replace(',', '')} (no digit grouping) {replay}"
    if _DOT_THOUSANDS.match(value):
        return (f"decimal comma with '.' grouping: write {value.replace('.', '').replace(',', '.')} "
                f"(a decimal point, no digit grouping) {replay}")
    if _DECIMAL_COMMA.match(value):
        return f"decimal comma: write the number with a decimal point ({value.replace(',', '.')}) {replay}"
    return "not a number: enter the numeric result with ASCII digits and a decimal point (no units, no digit grouping)"


COMPARATORS = ("<=", ">=", "<", ">")  # FHIR Quantity.comparator of a censored result, as written before the number


def split_comparator(text: str) -> tuple[str, str]:
    """``("<", "0.5")`` for the censored result ``<0.5``; ``("", text)`` for a plain one."""
    if text[:1] not in ("<", ">"):
        return "", text
    size = 2 if text[1:2] == "=" else 1
    return text[:size], text[size:].lstrip()


def parse_whole_number(column: str, value: str, problem: str) -> int:
    """A whole number as people write it: ``50``, or ``50.0`` (a whole number a spreadsheet or SAS wrote as a decimal)."""
    if not _WHOLE.match(value):
        raise RowError(column, value, problem)
    return int(value.split(".")[0])


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
    age = parse_whole_number(c["age"], age_text, "age must be a whole number of years (ASCII digits)")
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
    subject = known_subject(subjects, c["subject"], row[c["subject"]])
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
    status: str | None = None  # --STAT and --REASND: optional, declared as suffixes status and reason
    reason: str | None = None

    @classmethod
    def of(cls, study: Study, domain: str) -> FindingColumns:
        c, s = study.tables.findings.columns, study.tables.findings.suffixes
        return cls(domain=domain, study=c["study"], subject=c["subject"], visitnum=c["visitnum"], visit=c["visit"],
                   **{key: domain + s[key] for key in ("testcd", "test", "result", "unit", "date")},
                   **{key: domain + s[key] for key in ("status", "reason") if key in s})


def parse_finding(study: Study, col: FindingColumns, subjects: dict[str, SubjectRecord], row: dict[str, str]) -> FindingRecord:
    _check_study(study, col.study, row[col.study])
    subject = known_subject(subjects, col.subject, row[col.subject])
    testcd = row[col.testcd]
    outcome = study.outcome_by_code.get(testcd)
    if outcome is None or outcome.domain != col.domain:
        known = ", ".join(o.code for o in study.outcomes_in(col.domain))
        raise RowError(col.testcd, testcd, f"unknown test code for domain {col.domain}: use one of {known}, or add it to the study definition")
    visitnum, unscheduled_name = _visit(study, col, row)
    not_done, reason = _not_done(col, row)
    if not_done:
        result = unit = ""
    else:
        result, unit = _result(outcome, col.result, row[col.result], col.unit, row[col.unit])
    return FindingRecord(subject=subject, domain=col.domain, testcd=testcd, test=row.get(col.test) or outcome.display,
                         result=result, unit=unit, visitnum=visitnum,
                         date=check_date(col.date, row[col.date]), not_done=not_done, reason=reason,
                         visit=unscheduled_name)


def _visit(study: Study, col: FindingColumns, row: dict[str, str]) -> tuple[int | float, str]:
    """VISITNUM of a scheduled visit (and ""), or of an unscheduled one (a fractional number) and its VISIT."""
    visitnum_text, name = row[col.visitnum], row[col.visit]
    number = visit_number(visitnum_text)
    visit = study.visit_by_num.get(number) if not isinstance(number, str) else None
    if visit is not None:
        if name != visit.name:
            raise RowError(col.visit, name, f"VISITNUM {visit.visitnum} is {visit.name!r}: fix VISIT or VISITNUM")
        return visit.visitnum, ""
    nums = ", ".join(str(v.visitnum) for v in study.visits)
    if not isinstance(number, float):
        raise RowError(col.visitnum, visitnum_text, f"unknown visit number: use one of {nums}"
                                                    + (" (or a fractional one for an unscheduled visit)"
                                                       if study.unscheduled else ""))
    if study.unscheduled is None:
        raise RowError(col.visitnum, visitnum_text, f"fractional visit number (an unscheduled visit): this study "
                                                    f"declares only visits {nums}; add an 'unscheduled:' section to "
                                                    "the study definition to keep unscheduled visits, or give the "
                                                    "row a scheduled visit")
    if not name or name in {v.name for v in study.visits}:
        raise RowError(col.visit, name, f"VISITNUM {visitnum_text} is an unscheduled visit: name it in {col.visit} "
                                        f"(e.g. UNSCHEDULED {number}), not as a scheduled visit")
    return number, name


def _not_done(col: FindingColumns, row: dict[str, str]) -> tuple[bool, str]:
    """Whether the row says the test was not done (--STAT NOT DONE), and why (--REASND)."""
    status = row.get(col.status, "") if col.status else ""
    reason = row.get(col.reason, "") if col.reason else ""
    if status not in ("", NOT_DONE):
        raise RowError(col.status, status, f"unknown status: write {NOT_DONE} if the test was not done, or leave it empty")
    if status and row[col.result]:
        raise RowError(col.result, row[col.result], f"{col.status} is {NOT_DONE} but there is a result: "
                                                     f"empty {col.result} or {col.status}")
    if status and row[col.unit]:
        raise RowError(col.unit, row[col.unit], f"{col.status} is {NOT_DONE}: a test not done has no unit; empty {col.unit}")
    if reason and not status:
        raise RowError(col.reason, reason, f"a reason not done needs {col.status} {NOT_DONE}: "
                                            f"set {col.status} or empty {col.reason}")
    return bool(status), reason


def visit_number(text: str) -> int | float | str:
    """VISITNUM as a number: whole ("9" and "9.0" are visit 9) or not (3.1); text that is no number stays as it is."""
    if not _NUMBER.match(text):
        return text
    number = float(text)
    if number != number or number in (float("inf"), float("-inf")):
        return text
    return int(number) if number.is_integer() else number


def _result(outcome: Outcome, result_column: str, text: str, unit_column: str, unit: str) -> tuple[str, str]:
    """Validate a result; numbers are converted to the outcome's unit."""
    if not text:
        raise RowError(result_column, text, "result is empty: enter it, or write NOT DONE in --STAT (and why in "
                                            "--REASND) if the test was not done")
    if outcome.type != "quantity" and unit:
        raise RowError(unit_column, unit, f"{outcome.code} is {_a(outcome.type)} outcome and has no unit: empty {unit_column}")
    if outcome.type in ("coded", "ordinal", "boolean"):
        if text not in outcome.answer_keys:
            raise RowError(result_column, text, f"not an allowed answer for {outcome.code}: use one of "
                                                f"{', '.join(outcome.answer_keys)}")
        return text, ""
    if outcome.type == "integer":
        number = parse_whole_number(result_column, text, f"{outcome.code} is a count: write a whole number "
                                                         "(ASCII digits; 20 or 20.0, not 20.5)")
        if not -2**31 <= number < 2**31:
            raise RowError(result_column, text, "beyond the range of a FHIR integer (32 bits): check the value")
        if not outcome.in_range(number):
            low, high = (format_number(v) for v in outcome.range)
            raise RowError(result_column, text, f"{outcome.code} out of plausible range {low}-{high}: check the value")
        return str(number), ""
    if outcome.type == "datetime":
        return check_date(result_column, text), ""
    if outcome.type == "text":
        return text, ""
    comparator, digits = split_comparator(text)
    try:
        number = parse_number(result_column, digits)
    except RowError as err:
        censored = " (a censored result is written <0.5, >1000, <= or >=)" if err.problem.startswith("not a number") else ""
        raise RowError(result_column, text, err.problem + censored) from None
    factor = outcome.factor_from(unit)
    if factor is None:
        accepted = ", ".join([outcome.unit, *outcome.unit_aliases])
        raise RowError(unit_column, unit, f"unit not convertible to {outcome.unit} for {outcome.code}: use one of {accepted}")
    value = round(number * factor, 6)
    if not outcome.in_range(value):
        low, high = (format_number(v) for v in outcome.range)
        raise RowError(result_column, text, f"{outcome.code} out of plausible range {low}-{high} {outcome.unit}: check the value and unit")
    return comparator + format_number(value), outcome.unit


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _required(column: str, value: str) -> str:
    if not value:
        raise RowError(column, value, "required value is empty")
    return value


def _check_study(study: Study, column: str, value: str) -> None:
    if value != study.study.identifier.value:
        raise RowError(column, value, f"row belongs to another study: this definition is {study.study.identifier.value}")


def known_subject(subjects: dict[str, SubjectRecord], column: str, value: str) -> str:
    if value not in subjects:
        raise UnknownSubject(column, value)
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


def finding_columns(study: Study, domain: str, not_done: bool = False) -> list[str]:
    """A findings table's header; ``not_done`` adds --STAT and --REASND (after the unit, as SDTM orders them)."""
    col = FindingColumns.of(study, domain)
    extra = [col.status, col.reason] if not_done and col.status and col.reason else []
    return [col.study, col.subject, col.testcd, col.test, col.result, col.unit, *extra, col.visitnum, col.visit, col.date]


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


def finding_row(study: Study, record: FindingRecord, not_done: bool = False) -> list[str]:
    name = record.visit or study.visit_by_num[record.visitnum].name
    extra = [NOT_DONE if record.not_done else "", record.reason] if not_done else []
    return [study.study.identifier.value, record.subject, record.testcd, record.test, record.result,
            record.unit, *extra, str(record.visitnum), name, record.date]


def boolean_value(answer: str) -> bool:
    """valueBoolean of a boolean outcome's table result (CDISC NY: Y or N)."""
    return BOOLEAN_ANSWERS[answer]


def boolean_answer(value: bool) -> str:
    """The table result (Y or N) of a valueBoolean."""
    return next(key for key, flag in BOOLEAN_ANSWERS.items() if flag is value)


def numeric_columns(study: Study) -> set[str]:
    """The columns SDTM holds as numbers (AGE, EXDOSE, VISITNUM): numeric variables in XPORT and Dataset-JSON."""
    numeric = {study.tables.dm.columns["age"], study.tables.ex.columns["dose"], study.tables.findings.columns["visitnum"]}
    return numeric | ({study.adverse_events.columns["seq"]} if study.adverse_events else set())


class TableWriter:
    """Writes the study's tables (dm, ex, one per findings domain) into a directory.

    ``fmt`` is ``csv`` (the study's file names), ``xpt`` (SAS XPORT v5) or ``json``
    (Dataset-JSON v1.1): then ``dm.csv`` is written as ``dm.xpt`` or ``dm.json``.
    """

    def __init__(self, study: Study, directory: Path, fmt: str = "csv"):
        self.study, self.directory, self.fmt = study, directory, fmt
        private_dir(directory)
        self._staging = directory if fmt == "csv" else Path(tempfile.mkdtemp(prefix=".fhir-msc-tables-", dir=directory))
        self._files: dict[str, tuple[object, csv.writer]] = {}
        self._not_done: set[str] = set()  # findings tables with --STAT and --REASND columns
        self.rows: dict[str, int] = {}

    def _writer(self, name: str, header: list[str]) -> csv.writer:
        if name not in self._files:
            handle = private_open(self._staging / name, "w", encoding="utf-8", newline="")
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            self._files[name] = (handle, writer)
            self.rows[name] = 0
        self.rows[name] += 1
        return self._files[name][1]

    def write_row(self, name: str, header: list[str], row: list[str]) -> None:
        """One row of table ``name`` (a table not above, e.g. AE: tables/ae.py)."""
        self._writer(name, header).writerow(row)

    def subject(self, record: SubjectRecord) -> None:
        self._writer(self.study.tables.dm.file, dm_columns(self.study)).writerow(subject_row(self.study, record))

    def dose(self, record: DoseRecord) -> None:
        self._writer(self.study.tables.ex.file, ex_columns(self.study)).writerow(dose_row(self.study, record))

    def finding(self, record: FindingRecord) -> None:
        name = self.study.tables.findings.files[record.domain]
        if record.not_done and name not in self._not_done:
            self._add_not_done_columns(name, record.domain)
        not_done = name in self._not_done
        self._writer(name, finding_columns(self.study, record.domain, not_done)).writerow(
            finding_row(self.study, record, not_done))

    def _add_not_done_columns(self, name: str, domain: str) -> None:
        """Give a findings table --STAT and --REASND at its first row not done (rows written before get them empty).

        Tables without such a row keep the columns they had, so they come back as they were mapped.
        """
        self._not_done.add(name)
        if name not in self._files:
            return
        handle, _ = self._files.pop(name)
        handle.close()  # type: ignore[attr-defined]
        path = self._staging / name
        narrow = path.replace(path.with_name(f".{name}.narrow"))
        at = len(finding_columns(self.study, domain)) - 3  # after the unit, before VISITNUM, VISIT and the date
        with open(narrow, encoding="utf-8", newline="") as old, private_open(path, "w", encoding="utf-8", newline="") as new:
            rows = csv.reader(old)
            next(rows)
            writer = csv.writer(new, lineterminator="\n")
            writer.writerow(finding_columns(self.study, domain, not_done=True))
            writer.writerows(row[:at] + ["", ""] + row[at:] for row in rows)
        narrow.unlink()
        handle = private_open(path, "a", encoding="utf-8", newline="")
        self._files[name] = (handle, csv.writer(handle, lineterminator="\n"))

    def dataset(self, dataset: Dataset) -> None:
        if dataset.synthetic:
            text = yaml.safe_dump({"synthetic": True, "description": SYNTHETIC_NOTE}, sort_keys=False, width=100)
            private_write_text(self.directory / DATASET_FILE, text)

    def close(self) -> None:
        for handle, _ in self._files.values():
            handle.close()  # type: ignore[attr-defined]
        names, self._files = list(self._files), {}
        if self.fmt == "csv":
            return
        try:
            for name in names:
                target = self.directory / f"{Path(name).stem}.{self.fmt}"
                convert_csv(self._staging / name, target, numeric=numeric_columns(self.study), dataset=Path(name).stem)
                self.rows[target.name] = self.rows.pop(name)
        finally:
            shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is not None and self.fmt != "csv":  # failed: nothing half-written is converted
            self.fmt = "csv"
            self.close()
            shutil.rmtree(self._staging, ignore_errors=True)
            return
        self.close()
