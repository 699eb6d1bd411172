"""Adverse events per compared arm from the shipped ViewDefinitions, run by DuckDB and joined in SQL.

``patients``, ``subjects`` and ``adverse_events`` (``fhir_msc/analysis/views/*.json``) are kept in
the store's columnar projection like the frame's views (same keys, same stamps); SQL joins them and
gives each AdverseEvent its subject or its reason to be skipped, in the order of checks of the
Python reader (``fhir_msc.fhir.unmapping.read_adverse_event_records``), so the counts and the
Account are the same. Not checked here: elements of the wrong JSON shape, which the Python reader
counts as not readable; a view reads them as absent.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import duckdb

from ..account import MAX_EXAMPLES, Account, by_count
from ..errors import InputError
from ..study.definition import Study
from .engine_frame import (
    LINE,
    STUDY_PATIENT_SQL,
    _as_store,
    _connection,
    _list,
    _ref_id,
    _text,
    project,
    subjects_sql,
)
from .views.duckdb_engine import _reason


EVENT_VIEWS = {"patients": "Patient", "subjects": "ResearchSubject", "adverse_events": "AdverseEvent"}
NOT_COMPARED = "subject in no compared arm"
NO_IDENTIFIER = "no adverse-event identifier of this study (USUBJID/AESEQ)"


@dataclass(frozen=True, kw_only=True)
class EventCounts:
    """Per compared arm (as treated): its subjects, those with ≥1 event of each kind; and the AdverseEvents' account.

    A subject is in one arm, so the counts of pooled arms are sums."""

    n: dict[str, int]  # arm code -> subjects
    any: dict[str, int]
    serious: dict[str, int]
    terms: dict[str, dict[str, int]]  # AEDECOD term (in the study file's order) -> arm code -> subjects with ≥1 event
    account: Account


def event_counts(study: Study, source: Any, arms: Collection[str]) -> EventCounts | None:
    """The counts for the compared ``arms`` (arm codes) from DuckDB; None when ``source`` holds no AdverseEvent.
    ``source``: a store (its projection is used and kept) or any resource source."""
    with _as_store(source, EVENT_VIEWS.values()) as store, _connection() as con:
        try:
            for name, projection in project(study, store, con, views=EVENT_VIEWS).items():
                con.execute(f"CREATE TEMP VIEW {name} AS SELECT * FROM read_parquet({_text(str(projection.path))})")
            con.execute(f"CREATE TEMP TABLE compared AS {_compared_sql(study, arms)}")
            con.execute(f"CREATE TEMP TABLE placed AS {_placed_sql(study)}")
            return _counts(study, con, arms) if con.sql("SELECT count(*) FROM placed").fetchall()[0][0] else None
        except duckdb.Error as error:
            raise InputError(f"{store.path}: {_reason(error)}") from None


def _keys(codings: str) -> str:
    """The Codings (a JSON array) as 'system|code' texts."""
    return f"list_transform(CAST({codings} AS JSON[]), lambda c: (c ->> 'system') || '|' || (c ->> 'code'))"


def _term(keys: str, terms: dict[str, Any]) -> str:
    """The first study term (in the study file's order) whose Coding is among ``keys`` ('system|code' texts)."""
    whens = " ".join(f"WHEN list_contains({keys}, {_text(f'{c.system}|{c.code}')}) THEN {_text(term)}"
                     for term, c in terms.items())
    return f"CASE {whens} ELSE NULL END" if whens else "NULL"


def _compared_sql(study: Study, arms: Collection[str]) -> str:
    """Each study subject whose actual arm is a compared one, with that arm."""
    return f"""
WITH {subjects_sql(study)}
SELECT subject, actual_arm AS arm FROM randomized WHERE list_contains({_list(list(arms))}, actual_arm)
"""


def _placed_sql(study: Study) -> str:
    """Each AdverseEvent with its subject, arm, AEDECOD, whether serious, and its reason to be skipped (NULL: used)."""
    ae = study.adverse_events
    system = _text(study.system("adverse-event"))
    codings = {"AEDECOD": ("CASE WHEN r5 THEN code_codings ELSE event_codings END", ae.terms),
               "AESER": ("seriousness_codings", ae.serious),
               "AESEV": ("CASE WHEN r5 THEN severity_extension_codings ELSE severity_codings END", ae.severity),
               "AEOUT": ("outcome_codings", ae.outcome),
               "AEREL": ("CASE WHEN r5 THEN relatedness_codings ELSE assessment_codings END", ae.related)}
    keys = ", ".join(f"{_keys(sql)} AS {name}_keys" for name, (sql, _) in codings.items())
    terms = ", ".join(f"{_term(f'e.{name}_keys', known)} AS {name}" for name, (_, known) in codings.items())
    missing = ", ".join(f"CASE WHEN {name} IS NULL THEN {_text(name)} END" for name in codings)
    return f"""
WITH {STUDY_PATIENT_SQL},
identified AS (
  SELECT *, {keys},
         coalesce(list_filter(CAST(identifiers AS JSON[]), lambda i: (i ->> 'system') = {system})[1] ->> 'value', '')
           AS business_identifier
  FROM adverse_events),
coded AS (
  SELECT e.*, regexp_extract(e.business_identifier, '^(.*)/', 1) AS identified_subject,
         regexp_extract(e.business_identifier, '[^/]*$') AS seq, p.subject AS subject_id,
         {terms},
         CASE WHEN e.r5 THEN CASE WHEN e.period_start IS NOT NULL OR e.period_end IS NOT NULL THEN e.period_start
                                  ELSE e.occurrence_date_time END
              ELSE CASE WHEN e.extension_start IS NOT NULL OR e.extension_end IS NOT NULL THEN e.extension_start
                        ELSE e.date END END AS onset
  FROM identified e LEFT JOIN study_patient p ON p.id = {_ref_id('e.subject')}),
checked AS (
  SELECT *, CASE
    WHEN NOT regexp_full_match(seq, '[0-9]+') THEN {_text(NO_IDENTIFIER)}
    WHEN subject_id IS NULL OR subject_id <> identified_subject THEN 'unknown subject'
    WHEN AEDECOD IS NULL OR AESER IS NULL OR AESEV IS NULL OR AEOUT IS NULL OR AEREL IS NULL
      THEN 'no code of this study''s adverse_events terms (' || concat_ws(', ', {missing}) || ')'
    WHEN coalesce(onset, '') = '' THEN 'no onset date (AESTDTC)'
    END AS reason
  FROM coded)
SELECT e.{LINE}, e.subject_id AS subject, c.arm, e.AEDECOD AS decod, e.AESER = {_text(ae.serious_event)} AS serious,
  coalesce(e.reason, CASE WHEN c.arm IS NULL THEN {_text(NOT_COMPARED)} END) AS reason,
  CASE WHEN e.reason IS NOT NULL THEN 'AdverseEvent/' || coalesce(e.id, 'None')
       WHEN c.arm IS NULL THEN e.subject_id || '/' || coalesce(nullif(ltrim(e.seq, '0'), ''), '0') END AS example
FROM checked e LEFT JOIN compared c ON c.subject = e.subject_id
"""


def _by_arm(con: duckdb.DuckDBPyConnection, sql: str, arms: Collection[str]) -> dict[str, int]:
    found = dict(con.sql(sql).fetchall())
    return {arm: found.get(arm, 0) for arm in arms}


def _counts(study: Study, con: duckdb.DuckDBPyConnection, arms: Collection[str]) -> EventCounts:
    """Subjects per arm, those with ≥1 used event of each kind, and the account, from ``compared`` and ``placed``."""
    used = "count(DISTINCT subject) FROM placed WHERE reason IS NULL"
    terms = {term: dict.fromkeys(arms, 0) for term in study.adverse_events.terms}
    for term, arm, subjects in con.sql(f"SELECT decod, arm, {used} GROUP BY decod, arm").fetchall():
        terms[term][arm] = subjects
    return EventCounts(n=_by_arm(con, "SELECT arm, count(*) FROM compared GROUP BY arm", arms),
                       any=_by_arm(con, f"SELECT arm, {used} GROUP BY arm", arms),
                       serious=_by_arm(con, f"SELECT arm, {used} AND serious GROUP BY arm", arms),
                       terms=terms, account=_account(con))


def _account(con: duckdb.DuckDBPyConnection) -> Account:
    """Read, used, and skipped by reason (by count, then name) with examples in the reader's order: the reasons met
    while reading by their first AdverseEvent, then NOT_COMPARED (counted once every event is read)."""
    read, used = con.sql("SELECT count(*), count(*) FILTER (WHERE reason IS NULL) FROM placed").fetchall()[0]
    found = con.sql(f"""SELECT reason, count(*), list_slice(list(example ORDER BY {LINE}), 1, {MAX_EXAMPLES})
                        FROM placed WHERE reason IS NOT NULL
                        GROUP BY reason ORDER BY reason = {_text(NOT_COMPARED)}, min({LINE})""").fetchall()
    skipped = by_count({reason: count for reason, count, _ in found})
    return Account(read=read, used=used, skipped=skipped,
                   examples={reason: named for reason, _, named in found})
