"""Time-to-event effects (lifelines): Kaplan-Meier medians, log-rank test, Cox hazard ratio.

Each arm is given as ``(durations, events)``: one duration per subject (time from the start to
the event or to censoring, in any one unit) and whether the event was observed (True) or the
subject censored (False).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .ptests import nested_likelihood_ratio_p
from .stats import Estimate, Z

Arm = tuple[np.ndarray, np.ndarray]  # durations, event observed


@dataclass(frozen=True, kw_only=True)
class KaplanMeierMedian:
    """The Kaplan-Meier median of one arm and its CI; None where the curve (or a CI band) never reaches 0.5."""

    n: int
    events: int
    median: float | None
    lower: float | None
    upper: float | None
    alpha: float
    method: str = "Kaplan-Meier; CI where the exponential-Greenwood (log(−log)) band of S(t) crosses 0.5"
    function: str = "lifelines KaplanMeierFitter, lifelines.utils.median_survival_times"


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def kaplan_meier_median(durations: np.ndarray, events: np.ndarray, alpha: float = 0.05) -> KaplanMeierMedian:
    """The median time to event of one arm, with its CI (None when not reached)."""
    from lifelines import KaplanMeierFitter
    from lifelines.utils import median_survival_times

    fitter = KaplanMeierFitter(alpha=alpha).fit(np.asarray(durations, float), np.asarray(events, bool))
    band = median_survival_times(fitter.confidence_interval_)
    return KaplanMeierMedian(n=len(durations), events=int(np.sum(events)), median=_finite(fitter.median_survival_time_),
                             lower=_finite(band.iloc[0, 0]), upper=_finite(band.iloc[0, 1]), alpha=alpha)


def median_difference(treatment: Arm, control: Arm, alpha: float = 0.05) -> Estimate:
    """Difference of the Kaplan-Meier medians (treatment − control), with each arm's median and CI in the note.

    No CI for the difference (none is standard); p is the log-rank test's. Not estimable when an
    arm's median is not reached.
    """
    medians = [kaplan_meier_median(*arm, alpha=alpha) for arm in (treatment, control)]

    def text(m: KaplanMeierMedian) -> str:
        show = lambda v: "not reached" if v is None else f"{v:g}"
        return f"{show(m.median)} ({show(m.lower)}–{show(m.upper)})"
    note = f"medians (95% CI): treatment {text(medians[0])}, control {text(medians[1])}"
    reached = all(m.median is not None for m in medians)
    if not reached:
        note = f"not estimable: a median is not reached; {note}"
    return Estimate(effect="difference of Kaplan-Meier medians", method=f"{medians[0].method}; log-rank p",
                    function=f"{medians[0].function}; {__name__}.log_rank", alpha=alpha,
                    estimate=medians[0].median - medians[1].median if reached else None,  # type: ignore[operator]
                    se=None, lower=None, upper=None, p_value=log_rank(treatment, control, alpha).p_value, note=note)


def log_rank(treatment: Arm, control: Arm, alpha: float = 0.05) -> Estimate:
    """Log-rank test, with the Peto hazard ratio exp((O − E)/V) and its CI exp((O − E)/V ± z/√V).

    O and E are the treatment arm's observed and expected events, V the hypergeometric variance
    (lifelines' ``logrank_test`` gives the p; O, E and V are summed over the distinct event times).
    """
    from lifelines.statistics import logrank_test

    (t1, e1), (t2, e2) = ((np.asarray(t, float), np.asarray(e, bool)) for t, e in (treatment, control))
    test = logrank_test(t1, t2, event_observed_A=e1, event_observed_B=e2)
    times, events, arm = np.concatenate([t1, t2]), np.concatenate([e1, e2]), np.r_[np.ones(len(t1)), np.zeros(len(t2))]
    observed = expected = variance = 0.0
    for time in np.unique(times[events]):
        at_risk = times >= time
        n, n1 = at_risk.sum(), (at_risk & (arm == 1)).sum()
        d = (events & (times == time)).sum()
        observed += (events & (times == time) & (arm == 1)).sum()
        expected += d * n1 / n
        variance += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1) if n > 1 else 0.0
    method, function = "log-rank test; Peto hazard ratio exp((O−E)/V)", "lifelines.statistics.logrank_test"
    if variance == 0:
        return Estimate(effect="hazard ratio (log-rank, Peto)", method=method, function=function, alpha=alpha,
                        estimate=None, se=None, lower=None, upper=None, p_value=None, note="not estimable: no events")
    log_hr, se, z = (observed - expected) / variance, 1 / math.sqrt(variance), Z(1 - alpha / 2)
    return Estimate(effect="hazard ratio (log-rank, Peto)", method=method, function=function, alpha=alpha,
                    estimate=math.exp(log_hr), se=se, lower=math.exp(log_hr - z * se), upper=math.exp(log_hr + z * se),
                    p_value=float(test.p_value))


def cox_hazard_ratio(treatment: Arm, control: Arm, covariates: pd.DataFrame | None = None,
                     alpha: float = 0.05) -> Estimate:
    """Hazard ratio (treatment / control) from a Cox proportional-hazards model, Wald CI and z p, and the
    likelihood-ratio p against the model without treatment.

    Partial likelihood with Efron's method for ties (lifelines ``CoxPHFitter``); ``covariates``
    (one row per subject, treatment arm's subjects first) adjust it.
    """
    from lifelines import CoxPHFitter

    data = pd.DataFrame({"duration": np.concatenate([treatment[0], control[0]]).astype(float),
                         "event": np.concatenate([treatment[1], control[1]]).astype(bool),
                         "treated": np.r_[np.ones(len(treatment[0])), np.zeros(len(control[0]))]})
    if covariates is not None and len(covariates.columns):
        data = pd.concat([data, covariates.reset_index(drop=True).astype(float)], axis=1)
    method = "Cox proportional hazards (Efron ties), Wald CI and z p"
    if not data["event"].any():
        return Estimate(effect="hazard ratio (Cox)", method=method, function="lifelines.CoxPHFitter", alpha=alpha,
                        estimate=None, se=None, lower=None, upper=None, p_value=None, note="not estimable: no events")
    fit = CoxPHFitter(alpha=alpha).fit(data, duration_col="duration", event_col="event")
    if len(data.columns) > 3:
        reduced = CoxPHFitter(alpha=alpha).fit(data.drop(columns="treated"), duration_col="duration", event_col="event")
        likelihood_ratio = nested_likelihood_ratio_p(fit.log_likelihood_, reduced.log_likelihood_)
    else:  # against the model without covariates, as lifelines computes it
        likelihood_ratio = float(fit.log_likelihood_ratio_test().p_value)
    coef, se = float(fit.params_["treated"]), float(fit.standard_errors_["treated"])
    z = Z(1 - alpha / 2)
    return Estimate(effect="hazard ratio (Cox)", method=method, function="lifelines.CoxPHFitter", alpha=alpha,
                    estimate=math.exp(coef), se=se, lower=math.exp(coef - z * se), upper=math.exp(coef + z * se),
                    p_value=float(fit.summary.loc["treated", "p"]), likelihood_ratio_p=likelihood_ratio)


@dataclass(frozen=True, kw_only=True)
class TimeToEventSummary:
    """Subjects, events and the Kaplan-Meier median per arm (treatment first), and the three effects."""

    n: tuple[int, int]
    events: tuple[int, int]
    medians: tuple[KaplanMeierMedian, KaplanMeierMedian]
    cox_hazard_ratio: Estimate
    log_rank: Estimate
    km_median: Estimate

    @property
    def log_rank_p(self) -> float | None:
        return self.log_rank.p_value


def summarize(treatment: Arm, control: Arm, alpha: float = 0.05) -> TimeToEventSummary:
    """Every time-to-event statistic of two arms (each ``(durations, events)``)."""
    return TimeToEventSummary(
        n=(len(treatment[0]), len(control[0])), events=(int(np.sum(treatment[1])), int(np.sum(control[1]))),
        medians=(kaplan_meier_median(*treatment, alpha=alpha), kaplan_meier_median(*control, alpha=alpha)),
        cox_hazard_ratio=cox_hazard_ratio(treatment, control, alpha=alpha), log_rank=log_rank(treatment, control, alpha),
        km_median=median_difference(treatment, control, alpha))
