"""The analysis side of visits and outcome types: windows, the account, ordinal/count/time-to-event tables.

Expected values are worked out by hand from tests/data/types-study/tables (RFSTDTC 2024-01-10 = day 0).
"""

from pathlib import Path

import pytest

from fhir_msc import Store, StudyDefinitionError, get_version, jobs, load_study
from fhir_msc.analysis.frame import FREE_TEXT, UNSCHEDULED, compare, frame_and_account
from fhir_msc.analysis.outcomes import BEFORE_START, counts, ordinal_scores, time_to_event, time_to_event_and_account
from fhir_msc.analysis.windows import NOT_NEAREST, OUTSIDE_WINDOWS, study_day
from fhir_msc.study.definition import AnalysisWindow

TYPES = Path(__file__).parents[1] / "data" / "types-study"


@pytest.fixture(scope="module")
def types_study():
    return load_study(TYPES / "study.yaml")


@pytest.fixture(scope="module")
def store(types_study, tmp_path_factory) -> Store:
    path = tmp_path_factory.mktemp("types") / "store"
    assert jobs.map_tables(types_study, TYPES / "tables", store=path, version=get_version("R5")).rows_rejected == 0
    return Store(path)


def _values(frame, code: str, visit: str) -> dict[str, float]:
    rows = frame[(frame.outcome == code) & (frame.visit == visit)]
    return dict(zip(rows.subject, rows.value))


def test_study_day_counts_from_rfstdtc_as_day_0():
    assert study_day("2024-01-10", "2024-01-10") == 0
    assert study_day("2024-03-01T08:00:00+01:00", "2024-01-10") == 51  # 2024 is a leap year
    assert study_day("2024-03", "2024-01-10") is None


def test_the_window_takes_the_finding_nearest_its_target_day(types_study, store):
    frame, account = frame_and_account(types_study, store)
    # TYP-01: Week 12 on day 84 beats UNSCHEDULED 2.1 on day 70; TYP-02: 3.1 (day 79) and 3.2 (day 89) are both
    # 5 days from 84, the earlier wins.
    assert _values(frame, "SCORE", "W12") == {"TYP-01": 10, "TYP-02": 14, "TYP-03": 18, "TYP-04": 19, "TYP-05": 20,
                                              "TYP-06": 22}
    assert account.skipped[NOT_NEAREST] == 2
    assert account.examples[NOT_NEAREST] == ["TYP-01/UNSCHEDULED-2.1/SCORE 2024-03-20",
                                             "TYP-02/UNSCHEDULED-3.2/SCORE 2024-04-08"]
    row = frame[(frame.subject == "TYP-02") & (frame.outcome == "SCORE") & (frame.visit == "W12")]
    assert row.visitnum.tolist() == [3.1]  # the recorded VISITNUM stays with the value


def test_every_observation_is_in_the_frame_or_named(types_study, store):
    frame, account = frame_and_account(types_study, store)
    assert account.balanced and account.read == 42 and len(frame) == 37
    assert account.skipped == {NOT_NEAREST: 2, FREE_TEXT: 2, OUTSIDE_WINDOWS: 1}
    assert account.examples[OUTSIDE_WINDOWS] == ["TYP-03/UNSCHEDULED-1.1/HOSP day 50"]
    assert _values(frame, "FLARES", "W6") == {"TYP-04": 4}  # a scheduled visit without a window keeps its rows


def test_without_windows_unscheduled_visits_are_counted_not_analysed(types_study, store):
    plan = types_study.analysis.model_copy(update={"windows": {}})
    study = types_study.model_copy(update={"analysis": plan})
    frame, account = frame_and_account(study, store)
    assert account.skipped[UNSCHEDULED] == 8 and account.balanced
    assert "TYP-02" not in _values(frame, "SCORE", "W12")


def test_asking_for_a_visit_keeps_its_windowed_findings(types_study, store):
    frame, account = frame_and_account(types_study, store, visits=["W12"])
    assert set(frame.visit) == {"W12"} and _values(frame, "SCORE", "W12")["TYP-02"] == 14
    assert account.balanced and account.read == 42


def test_a_narrower_window_changes_the_choice(types_study, store):
    plan = types_study.analysis.model_copy(update={"windows": {"W12": AnalysisWindow(from_day=70, to_day=80)}})
    frame, _ = frame_and_account(types_study.model_copy(update={"analysis": plan}), store)
    # day 84 is now outside: TYP-01's unscheduled day-70 score is its Week 12 value
    assert _values(frame, "SCORE", "W12") == {"TYP-01": 12, "TYP-02": 14}


def test_values_by_type(types_study, store):
    frame, _ = frame_and_account(types_study, store)
    assert _values(frame, "FLARES", "W12") == {"TYP-01": 0, "TYP-02": 3, "TYP-03": 1, "TYP-04": 5, "TYP-05": 2,
                                               "TYP-06": 6}
    assert _values(frame, "HOSP", "W12") == {"TYP-01": 0, "TYP-02": 1, "TYP-03": 0, "TYP-04": 1, "TYP-05": 1,
                                             "TYP-06": 0}
    assert _values(frame, "RECOVDT", "W12") == {"TYP-01": 41, "TYP-02": 51, "TYP-04": 75, "TYP-06": 82}


def test_ordinal_scores_keep_the_order_of_the_yaml(types_study, store):
    frame, _ = frame_and_account(types_study, store)
    scores = ordinal_scores(types_study, frame, "WHO", "W12").set_index("subject")
    assert list(scores.answer.cat.categories) == ["AMBULATORY", "HOSPITALISED", "VENTILATED"]
    assert scores.answer.cat.ordered
    assert scores["rank"].to_dict() == {"TYP-01": 1, "TYP-02": 2, "TYP-03": 1, "TYP-04": 3, "TYP-05": 2, "TYP-06": 2}
    assert scores.loc["TYP-04", "answer"] > scores.loc["TYP-05", "answer"]
    with pytest.raises(StudyDefinitionError, match="not ordinal"):
        ordinal_scores(types_study, frame, "FLARES", "W12")


def test_counts_are_whole_numbers(types_study, store):
    frame, _ = frame_and_account(types_study, store)
    table = counts(types_study, frame, "FLARES", "W12")
    assert table["count"].dtype == "int64" and table.groupby("arm", observed=True)["count"].sum().to_dict() == {
        "TRT": 4, "CTL": 13}


def test_boolean_and_count_outcomes_are_compared_ordinal_ones_are_left_to_their_estimators(types_study, store):
    frame, _ = frame_and_account(types_study, store)
    hospitalised = compare(types_study, frame, types_study.outcome_by_code["HOSP"], "W12")
    assert hospitalised.kind == "binary" and hospitalised.summary.events == (1, 2)
    assert compare(types_study, frame, types_study.outcome_by_code["FLARES"], "W12").kind == "continuous"
    assert compare(types_study, frame, types_study.outcome_by_code["WHO"], "W12") is None


def test_time_to_event_from_the_event_date_and_the_censoring_date(types_study, store):
    table = time_to_event(types_study, store, "TTRECOV").set_index("subject")
    # events: recovery dates; TYP-03 censored at RFENDTC 2024-04-10 (day 91); TYP-05 has no RFENDTC: censored at
    # its last finding, 2024-04-03 (day 84)
    assert table.duration_days.to_dict() == {"TYP-01": 41, "TYP-02": 51, "TYP-03": 91, "TYP-04": 75, "TYP-05": 84,
                                             "TYP-06": 82}
    assert table.event.to_dict() == {"TYP-01": True, "TYP-02": True, "TYP-03": False, "TYP-04": True,
                                     "TYP-05": False, "TYP-06": True}
    assert table.arm.astype(str).to_dict()["TYP-04"] == "CTL"


def test_time_to_event_from_an_event_observation_and_last_contact(types_study, store):
    tte = types_study.time_to_event[0].model_copy(update={"event": "HOSP", "censor": "last-contact"})
    study = types_study.model_copy(update={"time_to_event": [tte]})
    table = time_to_event(study, store, "TTRECOV").set_index("subject")
    # first HOSP = Y: TYP-02 2024-03-29 (day 79), TYP-03 2024-02-29 (day 50, unscheduled), TYP-04 and TYP-05 day 84
    assert table[table.event].duration_days.to_dict() == {"TYP-02": 79, "TYP-03": 50, "TYP-04": 84, "TYP-05": 84}
    assert table[~table.event].duration_days.to_dict() == {"TYP-01": 84, "TYP-06": 86}


def test_an_event_before_rfstdtc_is_counted_not_used(types_study, store, tmp_path):
    copy = Store(tmp_path / "copy")
    copy.write(store.read_all())
    [recovery] = [o for o in copy.read("Observation") if o.get("valueDateTime") == "2024-02-20"]
    copy.write([{**recovery, "valueDateTime": "2023-12-31"}])
    table, account = time_to_event_and_account(types_study, copy, "TTRECOV")
    assert "TYP-01" not in set(table.subject) and account.skipped == {BEFORE_START: 1} and account.balanced


def test_an_unknown_time_to_event_code_says_which_exist(types_study, store):
    with pytest.raises(StudyDefinitionError, match="no time_to_event entry 'OS'.*TTRECOV"):
        time_to_event(types_study, store, "OS")


def _finding(visitnum, date, result="1"):
    from fhir_msc.tables.sdtm import FindingRecord
    return FindingRecord(subject="S", domain="XS", testcd="SCORE", test="", result=result, unit="{score}",
                         visitnum=visitnum, date=date, visit="" if visitnum == 3 else f"UNSCHEDULED {visitnum}")


def test_window_ties_on_the_same_date_keep_the_first_read_and_partial_dates_are_named(types_study):
    from fhir_msc.account import Tally
    from fhir_msc.analysis.windows import NO_DAY, WindowChooser
    tally = Tally()
    chooser = WindowChooser(types_study, tally)
    chooser.offer(_finding(3.1, "2024-04-03", "first"), "2024-01-10")
    chooser.offer(_finding(3.2, "2024-04-03T09:00:00Z", "second"), "2024-01-10")
    chooser.offer(_finding(3.3, "2024-04"), "2024-01-10")
    [(chosen, visit)] = list(chooser.chosen())
    assert (chosen.result, visit) == ("first", "W12")
    assert dict(tally.skipped) == {NOT_NEAREST: 1, NO_DAY: 1}


def test_visitnum_stays_a_whole_number_column_without_fractional_visits(tmp_path):
    mini = load_study(Path(__file__).parents[1] / "data" / "mini-study" / "study.yaml")
    jobs.map_tables(mini, Path(__file__).parents[1] / "data" / "mini-study" / "tables", store=tmp_path / "store")
    frame, _ = frame_and_account(mini, Store(tmp_path / "store"))
    assert frame.visitnum.dtype == "int64" and set(frame.visitnum) == {2}
