"""Model-based and rank effects: adjusted OR (logistic), ANCOVA, proportional odds, rate ratio.

Each returns an :class:`~fhir_msc.analysis.stats.Estimate` for treatment vs control, naming its
method and the function that computed it. ``treated`` is 1 for a subject of the treatment arm(s)
and 0 for the control arm(s); ``covariates`` has one numeric column per covariate (a sex is
given as a 0/1 indicator), one row per subject, in the order of the outcome values.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats

from .ptests import nested_likelihood_ratio_p
from .stats import Estimate, Z


def _design(treated: np.ndarray, covariates: pd.DataFrame | None, constant: bool = True) -> pd.DataFrame:
    design = pd.DataFrame({"treated": np.asarray(treated, float)})
    if covariates is not None and len(covariates.columns):
        design = pd.concat([design, covariates.reset_index(drop=True).astype(float)], axis=1)
    if constant:
        design.insert(0, "const", 1.0)
    return design


def _covariate_text(covariates: pd.DataFrame | None) -> str:
    return ", ".join(covariates.columns) if covariates is not None and len(covariates.columns) else "none"


def adjusted_odds_ratio(event: np.ndarray, treated: np.ndarray, covariates: pd.DataFrame | None = None,
                        alpha: float = 0.05) -> Estimate:
    """Odds ratio of the event for treatment vs control, adjusted by logistic regression on ``covariates``.

    Maximum likelihood (``statsmodels.Logit``), Wald CI and z p on the treatment coefficient; the likelihood-ratio
    p against the model without treatment. Not estimable (None, with the note) when the likelihood has no finite maximum (perfect
    separation, e.g. no events in one arm) or the design is singular.
    """
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

    method = f"logistic regression (ML), Wald CI and z p; covariates: {_covariate_text(covariates)}"
    function = "statsmodels.api.Logit(...).fit()"
    design = _design(treated, covariates)
    y = np.asarray(event, float)
    why = ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PerfectSeparationWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            fit = sm.Logit(y, design).fit(disp=0, maxiter=200)
        if not fit.mle_retvals.get("converged", True):
            why = "not estimable: the logistic regression did not converge"
    except (PerfectSeparationError, PerfectSeparationWarning):
        why = "not estimable: perfect separation (the event is predicted exactly; no finite maximum likelihood)"
    except np.linalg.LinAlgError:
        why = "not estimable: the design is singular (a covariate is constant or duplicates another)"
    if not why:
        coef, se = float(fit.params["treated"]), float(fit.bse["treated"])
        if not math.isfinite(se) or se > 1e3:
            why = "not estimable: no finite maximum likelihood (quasi-separation)"
    if why:
        return Estimate(effect="odds ratio (adjusted)", method=method, function=function, alpha=alpha, estimate=None,
                        se=None, lower=None, upper=None, p_value=None, note=why)
    z = Z(1 - alpha / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reduced = sm.Logit(y, design.drop(columns="treated")).fit(disp=0, maxiter=200)
    return Estimate(effect="odds ratio (adjusted)", method=method, function=function, alpha=alpha,
                    estimate=math.exp(coef), se=se, lower=math.exp(coef - z * se), upper=math.exp(coef + z * se),
                    p_value=float(fit.pvalues["treated"]), likelihood_ratio_p=nested_likelihood_ratio_p(fit.llf, reduced.llf))


def adjusted_mean_difference(value: np.ndarray, treated: np.ndarray, covariates: pd.DataFrame | None = None,
                             alpha: float = 0.05) -> Estimate:
    """Difference of means (treatment − control) adjusted on ``covariates`` by ANCOVA (ordinary least squares).

    t CI and p on the treatment coefficient with the residual degrees of freedom (``statsmodels.OLS``: its Wald test);
    the likelihood-ratio p (normal errors) against the model without treatment.
    """
    import statsmodels.api as sm

    design, y = _design(treated, covariates), np.asarray(value, float)
    fit = sm.OLS(y, design).fit()
    reduced = sm.OLS(y, design.drop(columns="treated")).fit()
    low, high = fit.conf_int(alpha=alpha).loc["treated"]
    return Estimate(effect="difference of means (adjusted)",
                    method=f"ANCOVA (OLS), t CI and p; covariates: {_covariate_text(covariates)}",
                    function="statsmodels.api.OLS(...).fit()", alpha=alpha, estimate=float(fit.params["treated"]),
                    se=float(fit.bse["treated"]), lower=float(low), upper=float(high),
                    p_value=float(fit.pvalues["treated"]), likelihood_ratio_p=nested_likelihood_ratio_p(fit.llf, reduced.llf))


def proportional_odds(level: np.ndarray, treated: np.ndarray, covariates: pd.DataFrame | None = None,
                      alpha: float = 0.05) -> Estimate:
    """Common odds ratio of a higher level for treatment vs control (proportional-odds cumulative logit model).

    ``level`` holds each subject's place on the ordered scale (0 = lowest); an OR above 1 means
    treatment shifts subjects to higher levels. ML fit by ``statsmodels`` ``OrderedModel``
    (logit), Wald CI and z p; the likelihood-ratio p against the model without treatment (without covariates: the
    thresholds alone, whose log-likelihood is Σ n_k log(n_k / N)). Levels nobody reached are left out of the thresholds.
    """
    from statsmodels.miscmodels.ordinal_model import OrderedModel

    method = f"proportional-odds (cumulative logit) model, ML, Wald CI and z p; covariates: {_covariate_text(covariates)}"
    function = 'statsmodels OrderedModel(distr="logit").fit(method="bfgs")'
    observed = np.unique(np.asarray(level))
    if len(observed) < 2:
        return Estimate(effect="odds ratio (proportional odds)", method=method, function=function, alpha=alpha,
                        estimate=None, se=None, lower=None, upper=None, p_value=None,
                        note="not estimable: every subject is at the same level")
    endog = pd.Series(pd.Categorical(np.asarray(level), categories=observed, ordered=True))
    design = _design(treated, covariates, constant=False)

    def fitted(exog: pd.DataFrame):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return OrderedModel(endog, exog, distr="logit").fit(method="bfgs", disp=False, maxiter=1000, gtol=1e-8)
    fit = fitted(design)
    if len(design.columns) > 1:
        reduced = fitted(design.drop(columns="treated")).llf
    else:
        counts = endog.value_counts().to_numpy(float)
        reduced = float((counts * np.log(counts / counts.sum())).sum())
    coef, se = float(fit.params["treated"]), float(fit.bse["treated"])
    z = Z(1 - alpha / 2)
    return Estimate(effect="odds ratio (proportional odds)", method=method, function=function, alpha=alpha,
                    estimate=math.exp(coef), se=se, lower=math.exp(coef - z * se), upper=math.exp(coef + z * se),
                    p_value=float(fit.pvalues["treated"]), likelihood_ratio_p=nested_likelihood_ratio_p(fit.llf, reduced))


def mann_whitney(x: np.ndarray, y: np.ndarray, alpha: float = 0.05) -> Estimate:
    """Mann-Whitney probability P(X > Y) + ½·P(X = Y) (treatment x vs control y) with its two-sided p.

    The estimate is U / (n1·n2); p from ``scipy.stats.mannwhitneyu`` (exact without ties and
    below 8 values per arm, else the normal approximation with the tie correction). No CI.
    """
    result = stats.mannwhitneyu(x, y, alternative="two-sided")
    return Estimate(effect="Mann-Whitney probability P(T > C)", method="Mann-Whitney U / (n1·n2), U test p",
                    function="scipy.stats.mannwhitneyu", alpha=alpha,
                    estimate=float(result.statistic) / (len(x) * len(y)), se=None, lower=None, upper=None,
                    p_value=float(result.pvalue))


def rate_ratio(events: tuple[int, int], exposure: tuple[float, float], alpha: float = 0.05) -> Estimate:
    """Ratio of two Poisson rates (treatment / control): events over exposure per arm.

    Exact conditional inference: given the total count, the treatment's events are binomial with
    p = RR·E1 / (RR·E1 + E2); the CI is the Clopper-Pearson interval of p mapped to RR, and p is
    the exact two-sided binomial test of p = E1 / (E1 + E2) (``scipy.stats.binomtest``). Not
    estimable when neither arm had an event; with none in one arm the estimate is 0 or ∞ and the CI open.
    """
    (x1, x2), (e1, e2) = events, exposure
    method, function = "exact conditional (binomial) CI and p", "scipy.stats.binomtest (Clopper-Pearson)"
    if x1 + x2 == 0:
        return Estimate(effect="rate ratio", method=method, function=function, alpha=alpha, estimate=None, se=None,
                        lower=None, upper=None, p_value=None, note="not estimable: no events in either arm")
    test = stats.binomtest(x1, x1 + x2, e1 / (e1 + e2))
    ci = test.proportion_ci(confidence_level=1 - alpha, method="exact")

    def to_ratio(p: float) -> float:
        return math.inf if p >= 1 else p / (1 - p) * e2 / e1
    estimate = to_ratio(x1 / (x1 + x2))
    note = "an arm had no events: the estimate is on the boundary and the CI open on that side" if 0 in events else ""
    se = math.sqrt(1 / x1 + 1 / x2) if 0 not in events else None
    return Estimate(effect="rate ratio", method=method, function=function, alpha=alpha, estimate=estimate, se=se,
                    lower=to_ratio(ci.low), upper=to_ratio(ci.high), p_value=float(test.pvalue), note=note)
