"""Analysis visit windows: which finding counts for a visit, by its day relative to RFSTDTC.

A study may declare, per visit, the days (RFSTDTC is day 0, as ``visits.N.day``) in which a
finding counts for that visit in the analysis (``analysis.windows``). Findings recorded at a
windowed visit, and findings of unscheduled visits, are placed by their date: of the findings of
one subject and outcome in a window, the one nearest the window's target day is analysed (ties:
the earlier date; same date: the first read). The others are counted under a reason, as are
findings in no window. Findings at a scheduled visit without a window keep that visit.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

from ..account import Tally
from ..study.definition import AnalysisWindow, Study
from ..tables.sdtm import FindingRecord

OUTSIDE_WINDOWS = ("outside every analysis window (analysis.windows), not at a scheduled visit without one: "
                   "recorded, not analysed")
NOT_NEAREST = "another finding in the same analysis window is nearer its target day (ties: the earlier): not analysed"
NO_DAY = "date without a day (a partial date): cannot be placed in an analysis window"


def study_day(when: str, start: str) -> int | None:
    """Days from RFSTDTC (day 0) to ``when`` (a date or date-time; its date part); None if either has no day."""
    if len(when) < 10 or len(start) < 10:
        return None
    return (date.fromisoformat(when[:10]) - date.fromisoformat(start[:10])).days


class WindowChooser:
    """Places findings in analysis windows and keeps, per subject, outcome and window, the nearest."""

    def __init__(self, study: Study, tally: Tally):
        self.study, self.tally = study, tally
        windows = study.analysis.windows if study.analysis else {}
        self.windows: list[tuple[str, AnalysisWindow, int]] = [
            (code, w, study.visit_by_code[code].day if w.target_day is None else w.target_day)
            for code, w in windows.items()]
        self.windowed = set(windows)
        self._best: dict[tuple[str, str, str], tuple[tuple[int, int], FindingRecord]] = {}

    def offer(self, finding: FindingRecord, start: str) -> None:
        """Consider ``finding`` (of a subject whose RFSTDTC is ``start``) for the window its date falls in."""
        label = f"{finding.subject}/{self.study.visit_key(finding.visitnum)}/{finding.testcd}"
        day = study_day(finding.date, start)
        if day is None:
            self.tally.skip(NO_DAY, f"{label} {finding.date}")
            return
        window = next(((code, target) for code, w, target in self.windows if w.from_day <= day <= w.to_day), None)
        if window is None:
            self.tally.skip(OUTSIDE_WINDOWS, f"{label} day {day}")
            return
        code, target = window
        key = (finding.subject, finding.testcd, code)
        rank = (abs(day - target), day)
        held = self._best.get(key)
        if held is None or rank < held[0]:
            if held is not None:
                self._lose(held[1])
            self._best[key] = (rank, finding)
        else:
            self._lose(finding)

    def _lose(self, finding: FindingRecord) -> None:
        self.tally.skip(NOT_NEAREST, f"{finding.subject}/{self.study.visit_key(finding.visitnum)}/{finding.testcd} "
                                     f"{finding.date}")

    def chosen(self) -> Iterator[tuple[FindingRecord, str]]:
        """Each window's chosen finding and the visit code it is analysed at."""
        for (_, _, code), (_, finding) in self._best.items():
            yield finding, code
