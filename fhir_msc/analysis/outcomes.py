"""Per-subject tables of the outcome types beyond quantity and coded, for the estimators.

``time_to_event`` builds, from FHIR, one row per randomized subject: days from RFSTDTC to the
event, or to the censoring date, and whether the event was seen (``study.time_to_event``).
``ordinal_scores`` and ``counts`` take an outcome at one visit from the analysis frame.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from ..account import Account, Tally
from ..errors import StudyDefinitionError
from ..fhir.unmapping import ResourceSource, read_records
from ..study.definition import Study, TimeToEvent
from .windows import study_day

TIME_TO_EVENT_COLUMNS = ["subject", "arm", "duration_days", "event", "date"]
NO_CENSOR_DATE = "no event and no censoring date (no RFENDTC and no finding with a full date)"
BEFORE_START = "event or censoring date before RFSTDTC: check the dates"
PARTIAL = "RFSTDTC or the event date has no day (a partial date): no duration"


def time_to_event(study: Study, source: ResourceSource, code: str) -> pd.DataFrame:
    """One row per randomized subject: subject, arm, duration_days, event, date (see :func:`time_to_event_and_account`)."""
    return time_to_event_and_account(study, source, code)[0]


def time_to_event_and_account(study: Study, source: ResourceSource, code: str) -> tuple[pd.DataFrame, Account]:
    """The time-to-event table of ``study.time_to_event`` entry ``code``, and the account of the subjects.

    The event date is the earliest of the subject's event Observations: the value of a datetime
    outcome (valueDateTime), or the effective date of a coded, ordinal or boolean outcome whose
    answer is its event answer. Without an event the subject is censored at RFENDTC
    (``censor: end``; the last contact where RFENDTC is empty) or at the last contact
    (``censor: last-contact``): the latest date of any of the subject's findings. ``duration_days``
    is days from RFSTDTC (day 0) to that date; ``event`` is True for an event, False if censored.
    Subjects whose dates give no duration are counted under a reason, not guessed at.
    """
    tte = _entry(study, code)
    outcome = study.outcome_by_code[tte.event]
    subjects, findings, _ = read_records(study, source)
    events: dict[str, str] = {}
    last_contact: dict[str, str] = {}
    for finding in findings:
        if len(finding.date) >= 10 and finding.date[:10] > last_contact.get(finding.subject, ""):
            last_contact[finding.subject] = finding.date[:10]
        if finding.testcd != outcome.code or finding.not_done:
            continue
        if outcome.type == "datetime":
            when = finding.result
        elif finding.result == outcome.event_answer:
            when = finding.date
        else:
            continue
        if finding.subject not in events or when[:10] < events[finding.subject][:10]:
            events[finding.subject] = when
    tally = Tally()
    rows = []
    for subject in sorted(subjects):
        record = subjects[subject]
        tally.read += 1
        event = subject in events
        when = events.get(subject) or _censor_date(tte, record.end, last_contact.get(subject, ""))
        if not when:
            tally.skip(NO_CENSOR_DATE, subject)
            continue
        days = study_day(when, record.start)
        if days is None:
            tally.skip(PARTIAL, f"{subject} {record.start}/{when}")
            continue
        if days < 0:
            tally.skip(BEFORE_START, f"{subject} {record.start}/{when}")
            continue
        tally.used += 1
        rows.append((subject, record.arm_code, days, event, when[:10]))
    table = pd.DataFrame(rows, columns=TIME_TO_EVENT_COLUMNS)
    table["arm"] = pd.Categorical(table["arm"], categories=[arm.code for arm in study.arms])
    table["duration_days"] = table["duration_days"].astype("int64")
    table["event"] = table["event"].astype(bool)
    return table, replace(tally.account(), used=len(table))


def _entry(study: Study, code: str) -> TimeToEvent:
    entry = next((t for t in study.time_to_event if t.code == code), None)
    if entry is None:
        known = ", ".join(t.code for t in study.time_to_event) or "none declared"
        raise StudyDefinitionError(f"no time_to_event entry {code!r} in the study definition ({known})")
    return entry


def _censor_date(tte: TimeToEvent, end: str, last_contact: str) -> str:
    if tte.censor == "end" and len(end) >= 10:
        return end
    return last_contact


def ordinal_scores(study: Study, frame: pd.DataFrame, code: str, visit: str) -> pd.DataFrame:
    """subject, arm, answer (an ordered categorical, lowest first as the YAML lists them), rank (1 = lowest)."""
    outcome = study.outcome_by_code[code]
    if outcome.type != "ordinal":
        raise StudyDefinitionError(f"outcome {code} is {outcome.type}, not ordinal")
    rows = frame[(frame["outcome"] == code) & (frame["visit"] == visit)]
    return pd.DataFrame({"subject": rows["subject"].to_numpy(), "arm": rows["arm"].to_numpy(),
                         "answer": pd.Categorical(rows["answer"].astype(str), categories=list(outcome.answers),
                                                  ordered=True),
                         "rank": rows["value"].astype("int64").to_numpy()})


def counts(study: Study, frame: pd.DataFrame, code: str, visit: str) -> pd.DataFrame:
    """subject, arm, count (int64) of an integer outcome at one visit."""
    outcome = study.outcome_by_code[code]
    if outcome.type != "integer":
        raise StudyDefinitionError(f"outcome {code} is {outcome.type}, not integer")
    rows = frame[(frame["outcome"] == code) & (frame["visit"] == visit)]
    return pd.DataFrame({"subject": rows["subject"].to_numpy(), "arm": rows["arm"].to_numpy(),
                         "count": rows["value"].astype("int64").to_numpy()})
