"""Derived endpoints: values computed per subject from the analysis frame built from Observations.

The study definition declares them (``analysis.derived``; :class:`DerivedEndpoint` says what
each kind computes). They are never read from the input: each derived value is computed from
the subject's rows of the frame, so changing one source Observation changes exactly the derived
values computed from it. The derived rows are appended to the frame with the endpoint's code
as ``outcome``, at the visit the value belongs to, and are then analysed like any quantity outcome.
"""

from __future__ import annotations

from collections.abc import Collection
from decimal import Decimal

import numpy as np
import pandas as pd

from ..study.definition import DerivedEndpoint, Study


def visits_needed(study: Study, visits: Collection[str] | None) -> list[str] | None:
    """``visits`` and the visits their derived endpoints are computed from (None: every visit)."""
    if visits is None or study.analysis is None:
        return None if visits is None else list(visits)
    wanted = set(visits)
    for endpoint in study.analysis.derived:
        if endpoint.at in wanted:
            wanted |= {visit for _, visit in endpoint.sources}
    return [visit.code for visit in study.visits if visit.code in wanted]


def values(study: Study, frame: pd.DataFrame, endpoint: DerivedEndpoint) -> pd.Series:
    """The endpoint's value per subject (index: subject), for subjects with every source value.

    Computed in decimal arithmetic on each source value as it was written (the shortest decimal that reads back
    as the frame's number, see :func:`written`), then read as a float: a change or difference is exact at the
    inputs' precision (66.21 − 36.21 and 90.89 − 60.89 are both 30.00, so equal changes stay tied), a quotient
    is the float nearest the exact one.
    """
    wide = source_values(frame, endpoint)
    columns = [np.array([written(v) for v in wide[column].tolist()], dtype=object) for column in wide.columns]
    if endpoint.kind == "auc":
        days = [Decimal(study.visit_by_code[visit].day) for visit in endpoint.visits or []]
        areas = sum((columns[i] + columns[i + 1]) / 2 * (days[i + 1] - days[i]) for i in range(len(columns) - 1))
        return pd.Series([float(area) for area in areas], index=wide.index, dtype=float)
    first, second = columns
    if endpoint.kind == "change":
        numerator, denominator = second - first, None
    elif endpoint.kind == "percent-change":
        numerator, denominator = (second - first) * 100, first
    elif endpoint.kind == "ratio":
        numerator, denominator = first, second
    else:  # difference
        numerator, denominator = first - second, None
    if denominator is None:
        return pd.Series([float(v) for v in numerator], index=wide.index, dtype=float)
    kept = np.array([d != 0 for d in denominator], dtype=bool)  # no value where the baseline or denominator is 0
    quotients = [float(n / d) for n, d in zip(numerator[kept], denominator[kept])]
    return pd.Series(quotients, index=wide.index[kept], dtype=float)


def written(value: float) -> Decimal:
    """A frame's number as the decimal it was written as: the shortest decimal that reads back as the same float
    (``66.21``, not the binary fraction 66.2099999999999937472239...)."""
    return Decimal(repr(float(value)))


def source_values(frame: pd.DataFrame, endpoint: DerivedEndpoint) -> pd.DataFrame:
    """One row per subject with every source value, one column per source (in :attr:`DerivedEndpoint.sources` order)."""
    sources = endpoint.sources
    columns = []
    for outcome, visit in sources:
        rows = frame[(frame["outcome"] == outcome) & (frame["visit"] == visit) & frame["value"].notna()]
        columns.append(pd.Series(rows["value"].to_numpy(), index=rows["subject"].to_numpy(), dtype=float))
    return pd.concat(columns, axis=1, keys=range(len(sources)), join="inner").sort_index()


def add_derived(study: Study, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with one row per subject and derived endpoint (computed from the frame), after its own rows."""
    endpoints = study.analysis.derived if study.analysis else []
    if not endpoints or frame.empty:
        return frame
    outcomes = study.analysed_outcome_by_code
    subjects = frame.drop_duplicates("subject").set_index("subject")[["arm", "sex", "age"]]
    parts = []
    for endpoint in endpoints:
        computed = values(study, frame, endpoint)
        if computed.empty:
            continue
        at = endpoint.at
        dates = frame[(frame["outcome"] == endpoint.sources[-1][0]) & (frame["visit"] == at)].set_index("subject")["date"]
        people = subjects.loc[computed.index]
        parts.append(pd.DataFrame({
            "subject": computed.index.to_numpy(dtype=object), "arm": people["arm"].to_numpy(dtype=object),
            "sex": people["sex"].to_numpy(dtype=object), "age": people["age"].to_numpy(),
            "visit": at, "visitnum": study.visit_by_code[at].visitnum, "outcome": endpoint.code,
            "value": computed.to_numpy(), "answer": None, "unit": outcomes[endpoint.code].unit,
            "date": dates.reindex(computed.index).to_numpy(dtype=object)}))
    if not parts:
        return frame
    rows = pd.concat(parts, ignore_index=True)
    frame = frame.copy()
    for name in ("arm", "sex", "visit", "outcome", "answer", "unit"):
        categories = list(frame[name].cat.categories)
        extra = [value for value in pd.unique(rows[name].dropna()) if value not in categories]
        frame[name] = frame[name].cat.add_categories(extra) if extra else frame[name]
        rows[name] = pd.Categorical(rows[name], categories=frame[name].cat.categories)
    return pd.concat([frame, rows[frame.columns]], ignore_index=True)
