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
import json
import logging
import os
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pandas as pd

from ..account import MAX_EXAMPLES, Account
from ..errors import BadUsage, InputError
from ..fhir.unmapping import NOT_A_NUMBER, NOT_ASKED, ResourceSource
from ..store.files import private_open
from ..store.columnar import ColumnarProjection, Projection
from ..store.ndjson import Store
from ..study.definition import Study
from ..tables.sdtm import COMPARATORS
from .frame import (
    CENSORED,
    DUPLICATE,
    FRAME_COLUMNS,
    NOT_DONE,
    NOT_RANDOMIZED,
    frame_categories,
)
from .derived import add_derived, visits_needed
from .views.duckdb_engine import _reason, compile_view, connect

log = logging.getLogger(__name__)

VIEWS = {"patients": "Patient", "subjects": "ResearchSubject", "visits": "Encounter", "observations": "Observation"}
LINE = "_line"  # each view's extra column: the resource's line in its file (reading order)
ENGINE_VERSION = "duckdb-5"  # part of each projected table's key: change it when compile_view's output changes
MEMORY_LIMIT = "1GB"  # DuckDB spills (to an owner-only temporary directory) beyond this


def shipped_view(name: str) -> dict:
    """One of the ViewDefinitions shipped in ``fhir_msc/analysis/views`` (patients, subjects, visits, observations)."""
    return json.loads(files("fhir_msc.analysis.views").joinpath(f"{name}.json").read_text())


def frame_and_account(study: Study, source: ResourceSource, visits: Collection[str] | None = None
                      ) -> tuple[pd.DataFrame, Account]:
    """The frame and Observations' account of :func:`fhir_msc.analysis.frame.frame_and_account`, from DuckDB.

    Derived endpoints are appended as the Python reader does; outcome types other than quantity and
    coded, unscheduled visits and analysis windows are not read by these views yet (BadUsage says so).
    """
    if visits is not None:
        unknown = [code for code in visits if code not in study.visit_by_code]
        if unknown:
            raise InputError(f"unknown visit {', '.join(unknown)}: use one of {', '.join(study.visit_by_code)}")
    _check_supported(study)
    visits = visits_needed(study, visits)
    with _as_store(source) as store, _connection() as con:
        try:
            for name, projection in project(study, store, con).items():
                con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM read_parquet({_text(str(projection.path))})")
            lines = isinstance(getattr(source, "store", source), Store)  # raw lines: the reader prefilters them
            con.execute(f"CREATE TEMP TABLE placed AS {_placed_sql(study, visits, lines)}")
            return add_derived(study, _frame(study, con)), _account(con)
        except duckdb.Error as error:
            raise InputError(f"{getattr(store, 'path', source)}: {_reason(error)}") from None


def project(study: Study, store: Store, con: duckdb.DuckDBPyConnection) -> dict[str, Projection]:
    """Each shipped view of ``study`` over ``store`` as a Parquet table of the store's columnar projection.

    A table is computed (streamed by DuckDB from the NDJSON into Parquet) when it is missing or stale:
    its key is a digest of the view with the study's constants and of ``ENGINE_VERSION``, its stamp the
    NDJSON file it reads (see :mod:`fhir_msc.store.columnar`). A store whose directory is not writable
    gets its tables in a temporary directory, for this run only.
    """
    directory = None if os.access(store.path, os.W_OK) else Path(_scratch(con)) / "columnar"
    projection = ColumnarProjection(store, directory)
    found = {}
    for name, resource_type in VIEWS.items():
        view = _with_study_constants(shipped_view(name), study)
        key = hashlib.sha256(orjson.dumps([ENGINE_VERSION, view], option=orjson.OPT_SORT_KEYS)).hexdigest()

        def write(path: Path, metadata: dict[bytes, bytes], view: dict = view) -> None:
            kv = ", ".join(f"{_text(k.decode())}: {_text(v.decode())}" for k, v in metadata.items())
            compile_view(view, store, ordinal=LINE).run(
                lambda sql: con.execute(f"COPY ({sql}) TO {_text(str(path))} (FORMAT parquet, KV_METADATA {{{kv}}})"))
        found[name] = projection.table_written(name, [resource_type], key, write)
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


def _check_supported(study: Study) -> None:
    """Refuse, in one line, a study using what the shipped views and this join do not read yet."""
    other = [f"{o.code} ({o.type})" for o in study.outcomes if o.type not in ("quantity", "coded")]
    features = ([f"outcome types other than quantity and coded: {', '.join(other)}"] if other else []) + \
        (["unscheduled visits"] if study.unscheduled else []) + \
        (["analysis windows"] if study.analysis and study.analysis.windows else [])
    if features:
        raise BadUsage(f"--engine duckdb does not read {'; '.join(features)} yet: use --engine python")


def _with_study_constants(view: dict, study: Study) -> dict:
    values = {"studyCodeSystem": study.study.codesystem, "subjectSystem": study.system("subject")}
    constants = [{"name": c["name"], "valueUri": values[c["name"]]} for c in view.get("constant", [])]
    return {**view, "constant": constants}


@contextmanager
def _as_store(source: Any) -> Iterator[Store]:
    """The source as a store: itself, or its resources of the four types spooled into an owner-only temporary one."""
    store = getattr(source, "store", source)  # a metered store reads as the store itself
    if isinstance(store, Store):
        yield store
        return
    with tempfile.TemporaryDirectory(prefix="fhir-msc-views-") as tmp:
        for resource_type in VIEWS.values():
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
    """Each Observation with its reason to be dropped (NULL: a row) and the frame's columns as category codes.

    With ``visits`` and a source of raw ``lines`` (a store), an Observation referring plainly to any
    Encounter not of those visits is not asked for, as ``encounter_prefilter`` decides before parsing:
    it is left out here (only counted, by :func:`_account`), so the query holds only what was asked for.
    """
    categories = frame_categories(study)
    arm_names = {arm.name: arm.code for arm in study.arms}
    arm_name_by_code = {arm.code: arm.name for arm in study.arms}
    gender_to_sex = {gender: sex for sex, gender in study.terms.sex.items()}
    visit_codes = [visit.code for visit in study.visits]
    visitnum = {visit.code: str(visit.visitnum) for visit in study.visits}
    wanted = visit_codes if visits is None else [code for code in visit_codes if code in set(visits)]
    outcomes = study.outcomes

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

    number_text = ("CASE WHEN o.scaled = trunc(o.scaled) AND abs(o.scaled) < 1e15 THEN CAST(CAST(o.scaled AS BIGINT) AS VARCHAR) "
                   "ELSE CAST(o.scaled AS VARCHAR) END")
    named = "'Observation/' || coalesce(o.id, 'None')"
    finding = "o.subject_id || '/' || o.visit_code || '/' || o.code"
    prefiltered = "false" if visits is None or not lines else (
        "(o.encounter LIKE 'Encounter/%' AND o.encounter NOT IN (SELECT 'Encounter/' || id FROM wanted_visits))")
    not_performed = "(NOT coalesce(o.has_value, false) AND coalesce(o.not_performed, false))"
    return f"""
WITH patient AS (
  SELECT id, subject, gender, birth_date FROM patients WHERE id IS NOT NULL
  QUALIFY row_number() OVER (PARTITION BY id ORDER BY {LINE}) = 1),
study_patient AS (SELECT * FROM patient WHERE subject IS NOT NULL),
arm_named AS (
  SELECT *, CASE WHEN assigned_group IS NOT NULL THEN coalesce({_case('assigned_group', arm_name_by_code)}, assigned_group)
                 ELSE coalesce(assigned_arm, '') END AS assigned_name,
            CASE WHEN assigned_group IS NOT NULL THEN coalesce({_case("coalesce(actual_group, '')", arm_name_by_code)},
                                                               actual_group, '')
                 ELSE coalesce(actual_arm, '') END AS actual_name
  FROM subjects),
randomized AS (
  SELECT p.subject, {_case('r.assigned_name', arm_names)} AS arm, {_case('p.gender', gender_to_sex)} AS sex,
         CASE WHEN regexp_full_match(left(coalesce(r.start, ''), 4), '[0-9]{{4}}')
                   AND regexp_full_match(left(coalesce(p.birth_date, ''), 4), '[0-9]+')
              THEN CAST(left(r.start, 4) AS BIGINT) - CAST(left(p.birth_date, 4) AS BIGINT) ELSE 0 END AS age
  FROM arm_named r JOIN study_patient p ON p.id = {_ref_id('r.patient')}
  WHERE r.assigned_name IN (SELECT unnest({_list(list(arm_names))})) AND r.actual_name IN (SELECT unnest({_list(list(arm_names))}))
  QUALIFY row_number() OVER (PARTITION BY p.subject ORDER BY r.{LINE} DESC) = 1),
visit AS (
  SELECT id, list_filter(type_codes, lambda c: list_contains({_list(visit_codes)}, c))[1] AS visit_code, {LINE}
  FROM visits WHERE id IS NOT NULL),
wanted_visits AS (
  SELECT id, visit_code FROM visit WHERE list_contains({_list(wanted)}, visit_code)
  QUALIFY row_number() OVER (PARTITION BY id ORDER BY {LINE} DESC) = 1),
other_visits AS (SELECT DISTINCT id FROM visit WHERE visit_code IS NOT NULL AND NOT list_contains({_list(wanted)}, visit_code)),
read AS (
  SELECT o.*, p.subject AS subject_id, w.visit_code, ov.id IS NOT NULL AS other_visit,
         coalesce(nullif(o.unit_code, ''), o.unit) AS unit_used
  FROM observations o
  LEFT JOIN study_patient p ON p.id = {_ref_id('o.subject')}
  LEFT JOIN wanted_visits w ON w.id = {_ref_id('o.encounter')}
  LEFT JOIN other_visits ov ON ov.id = {_ref_id('o.encounter')}
  WHERE NOT coalesce({prefiltered}, false)),
valued AS (
  SELECT o.*, {per_outcome(factor)} AS factor, {per_outcome(answer)} AS answer,
         {per_outcome(lambda o: _text(o.type))} AS outcome_type, {not_performed} AS not_done
  FROM read o),
scaled AS (SELECT o.*, round(o.value * o.factor, 6) AS scaled FROM valued o),
checked AS (
  SELECT o.*, CASE
    WHEN o.code IS NULL OR NOT list_contains({_list([x.code for x in outcomes])}, o.code) THEN 'no outcome code of this study'
    WHEN o.subject_id IS NULL THEN 'unknown subject'
    WHEN o.visit_code IS NULL AND o.other_visit THEN {_text(NOT_ASKED)}
    WHEN o.visit_code IS NULL THEN 'unknown visit'
    WHEN o.not_done THEN NULL
    WHEN o.outcome_type = 'coded' AND o.answer IS NULL THEN 'unknown answer code'
    WHEN o.outcome_type = 'coded' THEN NULL
    WHEN o.has_number AND o.value IS NULL THEN {_text(NOT_A_NUMBER)}
    WHEN o.factor IS NULL OR NOT coalesce(o.has_number, false)
         OR (coalesce(o.comparator, '') <> '' AND NOT list_contains({_list(list(COMPARATORS))}, o.comparator))
      THEN 'value not interpretable (no value, unit not convertible or comparator unknown)'
    END AS reason
  FROM scaled o),
framed AS (
  SELECT o.*, s.arm, s.sex, s.age, coalesce(o.comparator, '') <> '' AS censored, CASE
    WHEN o.reason IS NOT NULL THEN o.reason
    WHEN s.subject IS NULL THEN {_text(NOT_RANDOMIZED)}
    WHEN o.not_done THEN {_text(NOT_DONE)}
    WHEN o.outcome_type <> 'coded' AND coalesce(o.comparator, '') <> '' THEN {_text(CENSORED)}
    END AS dropped
  FROM checked o LEFT JOIN randomized s ON s.subject = o.subject_id)
SELECT o.{LINE}, o.dropped, CASE
    WHEN o.dropped IN ('no outcome code of this study', 'unknown subject', 'unknown visit',
                       {_text(NOT_A_NUMBER)}) THEN {named}
    WHEN o.dropped = 'unknown answer code' THEN {named} || ' (' || o.code || ': ' ||
         coalesce(nullif(array_to_string(list_sort(list_distinct(o.answers)), ', '), ''), 'no coding') || ')'
    WHEN o.dropped LIKE 'value not interpretable%' THEN {named} || ' (' || o.code || ': ' || coalesce(o.comparator, '') ||
         coalesce(o.value_text, '') || ' ' || coalesce(o.unit_used, 'None') || ')'
    WHEN o.dropped = {_text(NOT_RANDOMIZED)} THEN o.subject_id
    WHEN o.dropped = {_text(NOT_DONE)} THEN {finding}
    WHEN o.dropped = {_text(CENSORED)} THEN {finding} || ' ' || o.comparator || {number_text}
    END AS example,
  o.subject_id AS subject, o.visit_code AS visit, o.code AS outcome, o.arm, o.sex, o.age,
  CASE WHEN o.outcome_type = 'coded' THEN NULL ELSE o.scaled END AS value,
  CASE WHEN o.outcome_type = 'coded' THEN o.answer END AS answer,
  CASE WHEN o.outcome_type <> 'coded' THEN {per_outcome(lambda x: _text(x.unit) if x.unit else 'NULL')} END AS unit,
  coalesce(o.date, '') AS date,
  {_case('o.visit_code', visitnum)} AS visitnum,
  list_position({_list(categories['outcome'])}, o.code) AS outcome_order
FROM framed o
"""


def _frame(study: Study, con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The rows in (outcome, visit number, subject) order, the first read of each subject, visit and outcome kept."""
    con.execute(f"""CREATE TEMP TABLE ordered AS
        SELECT *, row_number() OVER (PARTITION BY subject, visitnum, outcome ORDER BY {LINE}) > 1 AS repeated
        FROM placed WHERE dropped IS NULL ORDER BY outcome_order, CAST(visitnum AS BIGINT), subject, {LINE}""")
    table = con.sql(f"SELECT subject, arm, sex, age, visit, CAST(visitnum AS BIGINT) AS visitnum, outcome, value, "
                    f"answer, unit, date FROM ordered WHERE NOT repeated ORDER BY outcome_order, "
                    f"CAST(visitnum AS BIGINT), subject, {LINE}").to_arrow_table()
    categories = frame_categories(study)
    columns: dict[str, Any] = {}
    for name in FRAME_COLUMNS:
        values = table[name].to_numpy(zero_copy_only=False)
        if name in categories:
            columns[name] = pd.Categorical(values, categories=categories[name])
        elif name in ("age", "visitnum"):
            columns[name] = values.astype(np.int64)
        elif name == "value":
            columns[name] = np.asarray(values, dtype=float)
        else:
            columns[name] = values.astype(object)
    return pd.DataFrame(columns, columns=FRAME_COLUMNS)


def _account(con: duckdb.DuckDBPyConnection) -> Account:
    read = con.sql("SELECT count(*) FROM observations").fetchall()[0][0]
    unasked = read - con.sql("SELECT count(*) FROM placed").fetchall()[0][0]  # left out by the prefilter
    used = con.sql("SELECT count(*) FROM ordered WHERE NOT repeated").fetchall()[0][0]
    found = con.sql(f"""
        SELECT dropped, count(*), list(example ORDER BY {LINE}) FILTER (WHERE example IS NOT NULL)
        FROM placed WHERE dropped IS NOT NULL GROUP BY dropped""").fetchall()
    skipped = {reason: count for reason, count, _ in found}
    if unasked:
        skipped[NOT_ASKED] = skipped.get(NOT_ASKED, 0) + unasked
    examples = {reason: named[:MAX_EXAMPLES] for reason, _, named in found if named}
    repeats = con.sql(f"""SELECT subject || '/' || visit || '/' || outcome FROM ordered WHERE repeated
                          ORDER BY outcome_order, CAST(visitnum AS BIGINT), subject, {LINE}""").fetchall()
    if repeats:
        skipped[DUPLICATE] = len(repeats)
        examples[DUPLICATE] = [row[0] for row in repeats[:MAX_EXAMPLES]]
    ordered = dict(sorted(skipped.items(), key=lambda item: (-item[1], item[0])))
    return Account(read=read, used=used, skipped=ordered, examples=examples)
