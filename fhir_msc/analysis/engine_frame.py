"""The analysis frame from the shipped ViewDefinitions, run by DuckDB and joined in SQL.

``patients``, ``subjects``, ``visits`` and ``observations`` (``fhir_msc/analysis/views/*.json``)
flatten the store's Patients, ResearchSubjects, Encounters and Observations; one SQL query
joins them and gives each Observation its place: a row of the frame or a reason to drop it,
in the same order of checks as the Python reader (``fhir_msc.fhir.unmapping.read_records`` and
``fhir_msc.analysis.frame.frame_and_account``), so the frame and the Account are the same.
Not checked here: elements of the wrong JSON shape (a ``code`` that is a string, say), which the
Python reader counts as not readable; a view reads them as absent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pandas as pd

from ..account import MAX_EXAMPLES, Account, by_count
from ..errors import InputError
from ..fhir.unmapping import DERIVED, NOT_A_NUMBER, NOT_ASKED, VALUE_ELEMENT, ResourceSource
from ..progress import NO_PROGRESS, Progress
from ..store.files import private_open
from ..store.columnar import ColumnarProjection, Projection
from ..store.ndjson import Store
from ..study.definition import BOOLEAN_ANSWERS, Study
from ..tables.sdtm import COMPARATORS
from .frame import (
    CENSORED,
    DUPLICATE,
    FRAME_COLUMNS,
    FREE_TEXT,
    NOT_DONE,
    NOT_RANDOMIZED,
    UNSCHEDULED,
    check_visits,
    frame_categories,
)
from .derived import add_derived, visits_needed
from .views.duckdb_engine import _reason, compile_view, connect
from .views.tables import shipped_view as study_view
from .windows import NO_DAY, NOT_NEAREST, OUTSIDE_WINDOWS

log = logging.getLogger(__name__)

VIEWS = {"patients": "Patient", "subjects": "ResearchSubject", "visits": "Encounter", "observations": "Observation"}
LINE = "_line"  # each view's extra column: the resource's line in its file (reading order)
ENGINE_VERSION = "duckdb-6"  # part of each projected table's key: change it when compile_view's output changes
MEMORY_LIMIT = "1GB"  # DuckDB spills (to an owner-only temporary directory) beyond this


def frame_and_account(study: Study, source: ResourceSource, visits: Collection[str] | None = None,
                      progress: Progress = NO_PROGRESS) -> tuple[pd.DataFrame, Account]:
    """The frame and Observations' account of :func:`fhir_msc.analysis.frame.frame_and_account`, from DuckDB.

    Derived endpoints are appended as the Python reader does. A line of the store DuckDB cannot read
    is named as the store's reader names it (file, line, what to do). ``progress`` gets one stage per
    view, counted in bytes of the NDJSON file it reads.
    """
    check_visits(study, visits)
    visits = visits_needed(study, visits)
    with _as_store(source) as store, _connection() as con:
        try:
            for name, projection in project(study, store, con, progress).items():
                con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM read_parquet({_text(str(projection.path))})")
            lines = isinstance(getattr(source, "store", source), Store)  # raw lines: the reader prefilters them
            con.execute(f"CREATE TEMP TABLE placed AS {_placed_sql(study, visits, lines)}")
            return add_derived(study, _frame(study, con)), _account(con)
        except duckdb.Error as error:
            _raise_unreadable_line(store)
            raise InputError(f"{getattr(store, 'path', source)}: {_reason(error)}") from None


def _raise_unreadable_line(store: Store) -> None:
    """The store reader's InputError for the first line it cannot read, in the order the Python reader reads the types."""
    for resource_type in ("Patient", "Encounter", "ResearchSubject", "Observation"):
        for _ in store.read(resource_type):
            pass


def project(study: Study, store: Store, con: duckdb.DuckDBPyConnection, progress: Progress = NO_PROGRESS,
            views: dict[str, str] = VIEWS) -> dict[str, Projection]:
    """Each shipped view of ``views`` (name: resource type) over ``store`` as a Parquet table of the store's
    columnar projection.

    A table is computed (streamed by DuckDB from the NDJSON into Parquet) when it is missing or stale:
    its key is a digest of the view with the study's constants and of ``ENGINE_VERSION``, its stamp the
    NDJSON file it reads (see :mod:`fhir_msc.store.columnar`). A store whose directory is not writable
    gets its tables in a temporary directory, for this run only.
    """
    directory = None if os.access(store.path, os.W_OK) else Path(_scratch(con)) / "columnar"
    projection = ColumnarProjection(store, directory)
    found = {}
    for name, resource_type in views.items():
        view = study_view(name, study)
        key = hashlib.sha256(orjson.dumps([ENGINE_VERSION, view], option=orjson.OPT_SORT_KEYS)).hexdigest()

        def write(path: Path, metadata: dict[bytes, bytes], view: dict = view) -> None:
            kv = ", ".join(f"{_text(k.decode())}: {_text(v.decode())}" for k, v in metadata.items())
            compile_view(view, store, ordinal=LINE).run(
                lambda sql: con.execute(f"COPY ({sql}) TO {_text(str(path))} (FORMAT parquet, KV_METADATA {{{kv}}})"))
        held = store.current_file(resource_type)
        size = held.stat().st_size if held is not None else 0
        progress.start(f"reading {resource_type}", size, "B")
        found[name] = projection.table_written(name, [resource_type], key, write)
        progress.advance(size)
        log.info("columnar projection: %s %s (%d rows)", name, "rebuilt" if found[name].rebuilt else "used",
                 found[name].rows)
    return found


@contextmanager
def _connection() -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection spilling, when memory runs short, into an owner-only temporary directory."""
    with tempfile.TemporaryDirectory(prefix="fhir-msc-duckdb-") as scratch, connect() as con:
        con.execute(f"SET temp_directory = {_text(scratch)}")
        con.execute(f"SET memory_limit = {_text(MEMORY_LIMIT)}")
        con.execute("SET preserve_insertion_order = false")  # every query orders by the resources' lines itself
        yield con


def _scratch(con: duckdb.DuckDBPyConnection) -> str:
    return con.sql("SELECT current_setting('temp_directory')").fetchall()[0][0]


@contextmanager
def _as_store(source: Any, resource_types: Collection[str] = tuple(VIEWS.values())) -> Iterator[Store]:
    """The source as a store: itself, or its resources of ``resource_types`` (the four views' by default)
    spooled into an owner-only temporary one."""
    store = getattr(source, "store", source)  # a metered store reads as the store itself
    if isinstance(store, Store):
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="fhir-msc-views-") as tmp:
        for resource_type in resource_types:
            with private_open(Path(tmp) / f"{resource_type}.ndjson", "wb") as handle:
                for resource in source.read(resource_type):
                    handle.write(orjson.dumps(resource) + b"\n")
        yield Store(tmp)


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _list(values: Collection[Any]) -> str:
    return "[" + ", ".join(_text(v) if isinstance(v, str) else repr(float(v)) for v in values) + "]::" + \
        ("VARCHAR[]" if all(isinstance(v, str) for v in values) else "DOUBLE[]")


def _case(column: str, mapping: dict[str, str], default: str = "NULL") -> str:
    whens = " ".join(f"WHEN {_text(k)} THEN {_text(v)}" for k, v in mapping.items())
    return f"CASE {column} {whens} ELSE {default} END" if mapping else default


def _ref_id(column: str) -> str:
    """``ref_id``: the logical id in ``Type/id``, ``http://…/Type/id`` or ``urn:uuid:id``."""
    return f"regexp_extract(coalesce({column}, ''), '[^/:]*$')"


def _placed_sql(study: Study, visits: Collection[str] | None, lines: bool) -> str:
    """Each Observation with its reason to be dropped (NULL: a row) and the frame's columns.

    The checks come in the Python reader's order: reading a finding (study code, subject, visit,
    value by outcome type), then the frame's (randomized, not done, censored, free text, visit asked
    for), then, for a finding at an unscheduled or windowed visit, its analysis window. ``example``
    names a dropped Observation as the reader does; (``example_phase``, ``example_at``) orders one
    reason's examples as the reader meets them; (``phase``, ``add_order``) is the order the reader
    adds rows in. With ``visits`` and a source of raw ``lines`` (a store), an Observation referring
    plainly to an Encounter not of those visits is left out here, as ``encounter_prefilter`` leaves
    it unparsed (only counted, by :func:`_account`). With analysis windows every visit is read.
    """
    windowed = bool(study.analysis and study.analysis.windows)
    read_visits = None if windowed else visits
    prefiltered = read_visits is not None and lines
    ctes = [subjects_sql(study), _encounters_sql(study, read_visits), _findings_sql(study, prefiltered),
            _framed_sql(study, visits)]
    if windowed:
        ctes.append(_windowed_sql(study, visits))
    rows = "SELECT * FROM framed WHERE dropped IS DISTINCT FROM 'window'" + (
        " UNION ALL SELECT * FROM windowed" if windowed else "")
    return f"WITH {', '.join(ctes)}\n{rows}"


def _arm_named_sql(study: Study) -> str:
    """``arm_named``: each ResearchSubject row with the names of its assigned and actual arms (R4 arm names, or
    R5 comparison-group codes turned into the study's arm names; '' when it has none)."""
    arm_name_by_code = {arm.code: arm.name for arm in study.arms}
    return f"""arm_named AS (
  SELECT *, CASE WHEN assigned_group IS NOT NULL THEN coalesce({_case('assigned_group', arm_name_by_code)}, assigned_group)
                 ELSE coalesce(assigned_arm, '') END AS assigned_name,
            CASE WHEN assigned_group IS NOT NULL THEN coalesce({_case("coalesce(actual_group, '')", arm_name_by_code)},
                                                               actual_group, '')
                 ELSE coalesce(actual_arm, '') END AS actual_name
  FROM subjects)"""


STUDY_PATIENT_SQL = f"""study_patient AS (
  SELECT id, subject, gender, birth_date FROM patients WHERE id IS NOT NULL AND subject IS NOT NULL
  QUALIFY row_number() OVER (PARTITION BY id ORDER BY {LINE}) = 1)"""  # each Patient id's first row with a subject


def subjects_sql(study: Study) -> str:
    """``randomized``: each study subject's arm, actual arm, sex, age and RFSTDTC, from its last ResearchSubject
    with arms of the study (as the Python reader's subjects); ``study_patient``: see ``STUDY_PATIENT_SQL``."""
    arm_names = {arm.name: arm.code for arm in study.arms}
    gender_to_sex = {gender: sex for sex, gender in study.terms.sex.items()}
    return f"""
{STUDY_PATIENT_SQL},
{_arm_named_sql(study)},
randomized AS (
  SELECT p.subject, {_case('r.assigned_name', arm_names)} AS arm, {_case('r.actual_name', arm_names)} AS actual_arm,
         {_case('p.gender', gender_to_sex)} AS sex,
         CASE WHEN regexp_full_match(left(coalesce(r.start, ''), 4), '[0-9]{{4}}')
                   AND regexp_full_match(left(coalesce(p.birth_date, ''), 4), '[0-9]+')
              THEN CAST(left(r.start, 4) AS BIGINT) - CAST(left(p.birth_date, 4) AS BIGINT) ELSE 0 END AS age,
         coalesce(r.start, '') AS start
  FROM arm_named r JOIN study_patient p ON p.id = {_ref_id('r.patient')}
  WHERE r.assigned_name IN (SELECT unnest({_list(list(arm_names))})) AND r.actual_name IN (SELECT unnest({_list(list(arm_names))}))
  QUALIFY row_number() OVER (PARTITION BY p.subject ORDER BY r.{LINE} DESC) = 1)"""


def _encounters_sql(study: Study, read_visits: Collection[str] | None) -> str:
    """``indexed``: each study-visit Encounter id read (only ``read_visits``, by code, if given) with its VISITNUM and
    scheduled visit (NULL: unscheduled), the last of one id winning; ``other_visits``: those of the visits not read."""
    visit_codes = [visit.code for visit in study.visits]
    visitnum = {visit.code: repr(float(visit.visitnum)) for visit in study.visits}
    read = "true" if read_visits is None else f"list_contains({_list(list(read_visits))}, scheduled)"
    unscheduled = _unscheduled_sql(study)
    return f"""
encounter AS (
  SELECT id, {LINE}, scheduled, CASE {" ".join(f"WHEN scheduled = {_text(c)} THEN {n}" for c, n in visitnum.items())}
         ELSE unscheduled END AS visitnum
  FROM (SELECT *, list_filter(type_codes, lambda c: list_contains({_list(visit_codes)}, c))[1] AS scheduled,
               {unscheduled} AS unscheduled
        FROM visits WHERE id IS NOT NULL)
  WHERE scheduled IS NOT NULL OR unscheduled IS NOT NULL),
indexed AS (
  SELECT id, scheduled, visitnum FROM encounter WHERE {read if read_visits is None else f"scheduled IS NOT NULL AND {read}"}
  QUALIFY row_number() OVER (PARTITION BY id ORDER BY {LINE} DESC) = 1),
other_visits AS (SELECT DISTINCT id FROM encounter WHERE {"false" if read_visits is None else f"NOT coalesce({read}, false)"})"""


def _unscheduled_sql(study: Study) -> str:
    """An unscheduled-visit Encounter's VISITNUM, from its identifier (…/UNSCHEDULED-3.1), when it also has a VISIT
    (its type's text) and the number is fractional and no scheduled visit's; else NULL."""
    if study.unscheduled is None:
        return "NULL::DOUBLE"
    code = study.unscheduled.code
    marker = _text(f"/{code}-")
    text = f"list_last(string_split(visit_identifier, {marker}))"
    number = f"TRY_CAST({text} AS DOUBLE)"
    valid = (f"list_contains(type_codes, {_text(code)}) AND contains(coalesce(visit_identifier, ''), {marker}) "
             f"AND regexp_full_match({text}, '[+-]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?') "
             f"AND isfinite({number}) AND {number} <> trunc({number}) "
             f"AND NOT list_contains({_list([float(v.visitnum) for v in study.visits])}, {number}) "
             f"AND coalesce(unscheduled_text, '') <> ''")
    return f"CASE WHEN {valid} THEN {number} END"


def _findings_sql(study: Study, prefiltered: bool) -> str:
    """``checked``: each Observation read, its subject, visit and value, and why reading it as a finding fails (NULL: it does not)."""
    outcomes = study.outcomes
    derived = [code for code in study.analysed_outcome_by_code if code not in study.outcome_by_code]

    def per_outcome(choose: Any, default: str = "NULL") -> str:
        whens = " ".join(f"WHEN {_text(o.code)} THEN {choose(o)}" for o in outcomes)
        return f"CASE o.code {whens} ELSE {default} END"

    def answer(o: Any) -> str:  # the first answer of the study (in its order) among the codings
        keys = [f"list_contains(o.answers, {_text(f'{a.system}|{a.code}')}) THEN {_text(key)}" for key, a in o.answers.items()]
        return "CASE " + " ".join(f"WHEN {k}" for k in keys) + " ELSE NULL END" if keys else "NULL"

    def factor(o: Any) -> str:
        aliases = {o.unit: 1.0, **{u: f for u, f in o.unit_aliases.items() if u != o.unit}} if o.unit else dict(o.unit_aliases)
        whens = " ".join(f"WHEN {_text(u)} THEN {float(f)!r}" for u, f in aliases.items())
        return f"CASE coalesce(o.unit_used, '') {whens} ELSE NULL END" if whens else "NULL"

    plain = {"integer": "o.value_integer IS NOT NULL", "boolean": "o.value_boolean IS NOT NULL",
             "datetime": _valid_datetime("o.value_datetime"), "text": "coalesce(o.value_string, '') <> ''"}
    not_plain = " ".join(f"WHEN o.outcome_type = {_text(kind)} AND NOT coalesce({test}, false) THEN "
                         f"{_text(f'value not interpretable as {kind} (value{VALUE_ELEMENT[kind]} expected)')}"
                         for kind, test in plain.items())
    left_out = ("(o.encounter LIKE 'Encounter/%' AND o.encounter NOT IN (SELECT 'Encounter/' || id FROM indexed))"
                if prefiltered else "false")
    not_performed = "(NOT coalesce(o.has_value, false) AND coalesce(o.not_performed, false))"
    return f"""
passed AS (SELECT * FROM observations o WHERE NOT coalesce({left_out}, false)),  -- the prefilter, before the joins
read AS (
  SELECT o.*, p.subject AS subject_id, v.scheduled, v.visitnum, ov.id IS NOT NULL AS other_visit,
         coalesce(nullif(o.unit_code, ''), o.unit) AS unit_used
  FROM passed o
  LEFT JOIN study_patient p ON p.id = {_ref_id('o.subject')}
  LEFT JOIN indexed v ON v.id = {_ref_id('o.encounter')}
  LEFT JOIN other_visits ov ON ov.id = {_ref_id('o.encounter')}),
valued AS (
  SELECT o.*, {per_outcome(factor)} AS factor, {per_outcome(answer)} AS answer,
         {per_outcome(lambda o: _text(o.type))} AS outcome_type, {not_performed} AS not_done,
         {per_outcome(lambda o: "list_position(" + _list(list(o.answers)) + ", answer)" if o.answers else "NULL")} AS rank
  FROM read o),
scaled AS (SELECT o.*, round(o.value * o.factor, 6) AS scaled FROM valued o),
checked AS (
  SELECT o.*, CASE
    WHEN o.code IS NULL OR NOT list_contains({_list([x.code for x in outcomes])}, o.code) THEN
      CASE WHEN list_contains({_list(derived)}, o.code) THEN {_text(DERIVED)} ELSE 'no outcome code of this study' END
    WHEN o.subject_id IS NULL THEN 'unknown subject'
    WHEN o.visitnum IS NULL AND o.other_visit THEN {_text(NOT_ASKED)}
    WHEN o.visitnum IS NULL THEN 'unknown visit'
    WHEN o.not_done THEN NULL
    {not_plain}
    WHEN o.outcome_type IN ('coded', 'ordinal') AND o.answer IS NULL THEN 'unknown answer code'
    WHEN o.outcome_type <> 'quantity' THEN NULL
    WHEN o.has_number AND o.value IS NULL THEN {_text(NOT_A_NUMBER)}
    WHEN o.factor IS NULL OR NOT coalesce(o.has_number, false)
         OR (coalesce(o.comparator, '') <> '' AND NOT list_contains({_list(list(COMPARATORS))}, o.comparator))
      THEN 'value not interpretable (no value, unit not convertible or comparator unknown)'
    END AS reason
  FROM scaled o)"""


def _valid_datetime(column: str) -> str:
    """Whether ``column`` is a date or date-time ``check_date`` accepts (a calendar day; a time with seconds and zone)."""
    day = (f"(left({column}, 4) <> '0000' AND TRY_CAST(CASE length({column}) WHEN 4 THEN {column} || '-01-01' "
           f"WHEN 7 THEN {column} || '-01' ELSE left({column}, 10) END AS DATE) IS NOT NULL)")
    date = f"regexp_full_match({column}, '[0-9]{{4}}(-[0-9]{{2}}(-[0-9]{{2}})?)?')"
    moment = (f"(regexp_full_match({column}, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
              f"([.][0-9]{{1,9}})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9]|[+-]14:00)'))")
    return f"(({date} OR {moment}) AND {day})"


def _framed_sql(study: Study, visits: Collection[str] | None) -> str:
    """``framed``: each Observation with its reason to be dropped, in the reader's order of checks, and its row's
    columns; 'window' marks a finding the analysis windows place (see :func:`_windowed_sql`)."""
    categories = frame_categories(study)
    windows = study.analysis.windows if study.analysis else {}
    nominal = [v.code for v in study.visits if v.code not in windows]  # analysed at their own visit
    asked = "false" if visits is None else f"NOT list_contains({_list(list(visits))}, o.visit)"
    unscheduled = study.unscheduled.code if study.unscheduled else "UNSCHEDULED"
    number_text = ("CASE WHEN o.scaled = trunc(o.scaled) AND abs(o.scaled) < 1e15 THEN CAST(CAST(o.scaled AS BIGINT) AS VARCHAR) "
                   "ELSE CAST(o.scaled AS VARCHAR) END")
    named = "'Observation/' || coalesce(o.id, 'None')"
    value = ("CASE o.outcome_type WHEN 'quantity' THEN o.scaled WHEN 'integer' THEN CAST(o.value_integer AS DOUBLE) "
             "WHEN 'ordinal' THEN CAST(o.rank AS DOUBLE) WHEN 'boolean' THEN CASE WHEN o.value_boolean THEN 1.0 ELSE 0.0 END "
             f"WHEN 'datetime' THEN CAST({_study_day('o.value_datetime', 'o.start')} AS DOUBLE) END")
    yes, no = (key for key, flag in sorted(BOOLEAN_ANSWERS.items(), key=lambda item: not item[1]))
    answer = (f"CASE o.outcome_type WHEN 'coded' THEN o.answer WHEN 'ordinal' THEN o.answer "
              f"WHEN 'boolean' THEN CASE WHEN o.value_boolean THEN {_text(yes)} ELSE {_text(no)} END END")
    units = _case("o.code", {o.code: o.unit for o in study.outcomes if o.unit})
    return f"""
labelled AS (
  SELECT o.*, s.arm, s.sex, s.age, s.start, s.subject IS NOT NULL AS randomized,
         CASE WHEN list_contains({_list(nominal)}, o.scheduled) THEN o.scheduled END AS visit,
         o.subject_id || '/' || coalesce(o.scheduled, {_text(unscheduled + '-')} || CAST(o.visitnum AS VARCHAR))
           || '/' || o.code AS label
  FROM checked o LEFT JOIN randomized s ON s.subject = o.subject_id),
framed AS (
  SELECT o.{LINE}, o.dropped, CASE
      WHEN o.dropped IN ('no outcome code of this study', {_text(DERIVED)}, 'unknown subject', 'unknown visit',
                         {_text(NOT_A_NUMBER)}) OR o.dropped LIKE 'value not interpretable as %' THEN {named}
      WHEN o.dropped = 'unknown answer code' THEN {named} || ' (' || o.code || ': ' ||
           coalesce(nullif(array_to_string(list_sort(list_distinct(o.answers)), ', '), ''), 'no coding') || ')'
      WHEN o.dropped LIKE 'value not interpretable%' THEN {named} || ' (' || o.code || ': ' ||
           coalesce(o.comparator, '') || coalesce(o.value_text, '') || ' ' || coalesce(o.unit_used, 'None') || ')'
      WHEN o.dropped = {_text(NOT_RANDOMIZED)} THEN o.subject_id
      WHEN o.dropped IN ({_text(NOT_DONE)}, {_text(FREE_TEXT)}, {_text(UNSCHEDULED)})
           OR (o.dropped = {_text(NOT_ASKED)} AND o.visit IS NOT NULL) THEN o.label
      WHEN o.dropped = {_text(CENSORED)} THEN o.label || ' ' || o.comparator || {number_text}
      END AS example,
    0 AS example_phase, o.{LINE} AS example_at,
    o.subject_id AS subject, o.visit, o.code AS outcome, o.arm, o.sex, o.age,
    {value} AS value, {answer} AS answer,
    CASE WHEN o.outcome_type = 'quantity' THEN {units} END AS unit,
    coalesce(o.date, '') AS date, o.visitnum, list_position({_list(categories['outcome'])}, o.code) AS outcome_order,
    0 AS phase, o.{LINE} AS add_order, o.label, o.start
  FROM (SELECT o.*, CASE
      WHEN o.reason IS NOT NULL THEN o.reason
      WHEN NOT o.randomized THEN {_text(NOT_RANDOMIZED)}
      WHEN o.not_done THEN {_text(NOT_DONE)}
      WHEN o.outcome_type = 'quantity' AND coalesce(o.comparator, '') <> '' THEN {_text(CENSORED)}
      WHEN o.outcome_type = 'text' THEN {_text(FREE_TEXT)}
      WHEN o.visit IS NOT NULL AND {asked} THEN {_text(NOT_ASKED)}
      WHEN o.visit IS NOT NULL THEN NULL
      ELSE {_text('window' if windows else UNSCHEDULED)}
      END AS dropped FROM labelled o) o)"""


def _windowed_sql(study: Study, visits: Collection[str] | None) -> str:
    """``windowed``: the findings ``framed`` marks 'window', placed as :class:`.windows.WindowChooser` places them.

    Of one subject's findings of an outcome at one VISITNUM the first is offered; it needs a day
    (from RFSTDTC) in a window; of one window's findings the nearest its target day is kept (ties: the
    earlier day, then the first read). A finding loses when a later one beats it, or on arrival
    (``lost_at``); the chosen ones are added in the order their window was first offered one.
    """
    windows = [(code, w.from_day, w.to_day, study.visit_by_code[code].day if w.target_day is None else w.target_day)
               for code, w in study.analysis.windows.items()]
    in_window = " ".join(f"WHEN day BETWEEN {low} AND {high} THEN {_text(code)}" for code, low, high, _ in windows)
    target = " ".join(f"WHEN day BETWEEN {low} AND {high} THEN {day}" for _, low, high, day in windows)
    asked = "false" if visits is None else f"NOT list_contains({_list(list(visits))}, in_window)"
    key = "PARTITION BY subject, outcome, in_window"
    return f"""
offered AS (
  SELECT *, row_number() OVER (PARTITION BY subject, visitnum, outcome ORDER BY {LINE}) > 1 AS again,
         {_study_day('date', 'start')} AS day
  FROM framed WHERE dropped = 'window'),
placed_in AS (
  SELECT *, CASE WHEN NOT again THEN CASE {in_window} END END AS in_window, CASE {target} END AS target FROM offered),
ranked AS (  -- the rank (distance to the target day, then the day) as one number: days lie within ±5,000,000
  SELECT *, abs(day - target) * 10000000 + day + 5000000 AS rank_key FROM placed_in),
contending AS (
  SELECT *, coalesce(rank_key < min(rank_key) OVER ({key} ORDER BY {LINE} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING),
                     true) AS best_so_far,
         min({LINE}) OVER ({key}) AS key_line
  FROM ranked),
chosen AS (
  SELECT *, CASE WHEN best_so_far THEN lead({LINE}) OVER ({key}, best_so_far ORDER BY {LINE}) ELSE {LINE} END AS lost_at
  FROM contending),
decided AS (
  SELECT *, CASE
      WHEN again THEN {_text(DUPLICATE)}
      WHEN day IS NULL THEN {_text(NO_DAY)}
      WHEN in_window IS NULL THEN {_text(OUTSIDE_WINDOWS)}
      WHEN lost_at IS NOT NULL THEN {_text(NOT_NEAREST)}
      WHEN {asked} THEN {_text(NOT_ASKED)}
      END AS placed
  FROM chosen),
windowed AS (
  SELECT {LINE}, placed AS dropped, CASE placed
      WHEN {_text(DUPLICATE)} THEN label
      WHEN {_text(NO_DAY)} THEN label || ' ' || date
      WHEN {_text(OUTSIDE_WINDOWS)} THEN label || ' day ' || CAST(day AS VARCHAR)
      WHEN {_text(NOT_NEAREST)} THEN label || ' ' || date
      WHEN {_text(NOT_ASKED)} THEN subject || '/' || in_window || '/' || outcome
      END AS example,
    CASE WHEN placed IS NULL OR placed = {_text(NOT_ASKED)} THEN 1 ELSE 0 END AS example_phase,
    CASE WHEN placed = {_text(NOT_NEAREST)} THEN lost_at WHEN placed IS NULL OR placed = {_text(NOT_ASKED)} THEN key_line
         ELSE {LINE} END AS example_at,
    subject, in_window AS visit, outcome, arm, sex, age, value, answer, unit, date, visitnum, outcome_order,
    1 AS phase, key_line AS add_order, label, start
  FROM decided)"""


def _study_day(when: str, start: str) -> str:
    """:func:`.windows.study_day` in SQL: days from RFSTDTC to ``when`` (NULL if either has no day)."""
    return (f"CASE WHEN length({when}) >= 10 AND length({start}) >= 10 "
            f"THEN TRY_CAST(left({when}, 10) AS DATE) - TRY_CAST(left({start}, 10) AS DATE) END")


ORDER = "outcome_order, visitnum, subject, phase, add_order"  # the reader's: (outcome, VISITNUM, subject), then as added


def _frame(study: Study, con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The rows in (outcome, visit number, subject) order, the first added of each subject, visit and outcome kept.

    VISITNUM is a whole number where every row's is (3.1 makes the column decimal), as the reader makes it.
    Coded columns come as their categories' codes (-1: not a category), computed in SQL.
    """
    con.execute(f"""CREATE TEMP TABLE ordered AS
        SELECT {', '.join(FRAME_COLUMNS)}, outcome_order, phase, add_order,
               row_number() OVER (PARTITION BY subject, visit, outcome ORDER BY phase, add_order) > 1 AS repeated
        FROM placed WHERE dropped IS NULL""")
    categories = frame_categories(study)
    selected = [f"coalesce(list_position({_list(categories[name])}, {name}) - 1, -1) AS {name}"
                if name in categories and categories[name] else name for name in FRAME_COLUMNS]
    table = con.sql(f"SELECT {', '.join(selected)} FROM ordered WHERE NOT repeated ORDER BY {ORDER}").to_arrow_table()
    columns: dict[str, Any] = {}
    for name in FRAME_COLUMNS:
        values = table[name].to_numpy(zero_copy_only=False)
        if name in categories and categories[name]:
            columns[name] = pd.Categorical.from_codes(values.astype(np.int64), categories=categories[name])
        elif name in categories:
            columns[name] = pd.Categorical(values, categories=[])
        elif name == "age":
            columns[name] = values.astype(np.int64)
        elif name in ("value", "visitnum"):
            columns[name] = np.asarray(values, dtype=float)
        else:
            columns[name] = values.astype(object)
    if np.all(np.mod(columns["visitnum"], 1) == 0):
        columns["visitnum"] = columns["visitnum"].astype(np.int64)
    return pd.DataFrame(columns, columns=FRAME_COLUMNS)


def _account(con: duckdb.DuckDBPyConnection) -> Account:
    """The Observations' account: each reason's examples in the order the reader meets them, repeated rows last."""
    read = con.sql("SELECT count(*) FROM observations").fetchall()[0][0]
    unasked = read - con.sql("SELECT count(*) FROM placed").fetchall()[0][0]  # left out by the prefilter
    used = con.sql("SELECT count(*) FROM ordered WHERE NOT repeated").fetchall()[0][0]
    found = con.sql("""
        SELECT dropped, count(*), list(example ORDER BY example_phase, example_at) FILTER (WHERE example IS NOT NULL)
        FROM placed WHERE dropped IS NOT NULL GROUP BY dropped
        ORDER BY min(example_phase * 1099511627776 + example_at) FILTER (WHERE example IS NOT NULL), dropped
        """).fetchall()  # reasons with examples in the order the reader names the first of each (2**40 lines at most)
    skipped = {reason: count for reason, count, _ in found}
    if unasked:
        skipped[NOT_ASKED] = skipped.get(NOT_ASKED, 0) + unasked
    examples = {reason: named[:MAX_EXAMPLES] for reason, _, named in found if named}
    repeats = con.sql(f"""SELECT subject || '/' || visit || '/' || outcome FROM ordered WHERE repeated
                          ORDER BY {ORDER}""").fetchall()
    if repeats:
        skipped[DUPLICATE] = skipped.get(DUPLICATE, 0) + len(repeats)
        examples[DUPLICATE] = (examples.get(DUPLICATE, []) + [row[0] for row in repeats])[:MAX_EXAMPLES]
    ordered = by_count(skipped)
    return Account(read=read, used=used, skipped=ordered, examples=examples)
