"""Analysis results as JSON documents for scripts: numbers, not display strings.

The documents follow the JSON Schemas shipped in ``fhir_msc/schemas/``
(``analyze.schema.json``, ``verify.schema.json``). Their keys never depend on the study's
arm codes: each arm is an entry of ``arms`` with its ``role`` in the study definition's
analysis plan (``treatment`` or ``control``) and its ``code``. Values that were not
computed (a χ² test on a table with an empty margin, an SE that does not exist) are null.
"""

from __future__ import annotations

import json
import math
from importlib.resources import files
from typing import Any

from ..account import Account
from ..study.definition import NOT_ESTIMABLE, PublishedResult, Stated, Study, arm_label
from .frame import Comparison, Verification, binary_estimates, continuous_estimates
from .published import FieldCheck
from .stats import BinarySummary, ContinuousSummary, Estimate
from .survival import TimeToEventSummary

SCHEMA_BASE = "https://fhir-msc.org/schemas/"
ROLES = ("treatment", "control")


def schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one document (``analyze``, ``verify`` or ``validate``), as shipped in the package."""
    return json.loads(files("fhir_msc").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8"))


def number(value: float | None) -> float | None:
    """A float for JSON: NaN and infinities (not JSON) become null."""
    return None if value is None or not math.isfinite(value) else float(value)


def estimate_json(key: str, estimate: Estimate) -> dict[str, Any]:
    """One estimate: its effect key (as in the study definition), numbers, and how it was computed."""
    return {"effect": key, "label": estimate.effect, "estimate": number(estimate.estimate), "se": number(estimate.se),
            "lower": number(estimate.lower), "upper": number(estimate.upper), "p": number(estimate.p_value),
            "alpha": estimate.alpha, "method": estimate.method, "function": estimate.function, "note": estimate.note}


def _estimates(comparison: Comparison) -> dict[str, Estimate]:
    """Every estimate computed for the comparison, by effect key; the reported one included."""
    s = comparison.summary
    found: dict[str, Estimate]
    if isinstance(s, BinarySummary):
        found = binary_estimates(s)
    elif isinstance(s, TimeToEventSummary):
        found = {"cox-hazard-ratio": s.cox_hazard_ratio, "log-rank": s.log_rank, "km-median": s.km_median}
    else:
        found = continuous_estimates(s)
    if comparison.key:  # an effect only computed when asked for (MH, adjusted…)
        found.setdefault(comparison.key, comparison.effect)
    return found


def _p_values(comparison: Comparison, estimates: dict[str, Estimate]) -> dict[str, float | None]:
    """Every p-value computed for the comparison, named by its test."""
    s = comparison.summary
    if isinstance(s, BinarySummary):
        p = {"fisher_exact": s.fisher_p, "chi_square": s.chi2_p, "chi_square_yates": s.chi2_yates_p,
             "likelihood_ratio": s.likelihood_ratio_p, "wald_odds_ratio": s.odds_ratio.p_value,
             "wald_risk_difference": s.risk_difference.p_value, "wald_relative_risk": s.relative_risk.p_value}
        if "odds-ratio-mh" in estimates:
            p["mantel_haenszel"] = estimates["odds-ratio-mh"].p_value
    elif isinstance(s, TimeToEventSummary):
        p = {"log_rank": s.log_rank_p, "wald_cox": s.cox_hazard_ratio.p_value,
             "likelihood_ratio_cox": s.cox_hazard_ratio.likelihood_ratio_p}
    else:
        p = {"t_pooled": s.mean_difference.p_value, "t_welch": s.mean_difference_welch.p_value,
             "mann_whitney": s.mann_whitney_p, "wilcoxon": s.wilcoxon_p}
    for key in ("adjusted-odds-ratio", "adjusted-mean-difference", "proportional-odds"):  # fitted models' own tests
        if key in estimates:
            name = key.replace("-", "_")
            p.update({f"wald_{name}": estimates[key].p_value, f"likelihood_ratio_{name}": estimates[key].likelihood_ratio_p})
    return {name: number(value) for name, value in p.items()}


def _arm(study: Study, comparison: Comparison, index: int) -> dict[str, Any]:
    code, s = comparison.arms[index], comparison.summary
    name = " + ".join(study.arm_by_code[arm].name for arm in comparison.groups[index]) if comparison.groups[index] else code
    arm: dict[str, Any] = {"role": ROLES[index], "code": code, "name": name, "n": s.n[index]}
    if isinstance(s, BinarySummary):
        arm.update(events=s.events[index], percent=number(s.percent[index]))
    elif isinstance(s, ContinuousSummary):
        arm.update(mean=number(s.mean[index]), sd=number(s.sd[index]), median=number(s.median[index]),
                   q1=number(s.q1[index]), q3=number(s.q3[index]))
    elif isinstance(s, TimeToEventSummary):
        km = s.medians[index]
        arm.update(events=s.events[index], median=number(km.median), median_lower=number(km.lower),
                   median_upper=number(km.upper))
    return arm


def comparison_json(study: Study, comparison: Comparison) -> dict[str, Any]:
    """One outcome at one visit: both arms, the planned effect, every estimate and every p-value; whether it is
    baseline balance, and the effect's p adjusted in its family (null when in none)."""
    estimates = _estimates(comparison)
    key = comparison.key or next(k for k, e in estimates.items() if e is comparison.effect)
    return {"outcome": comparison.outcome, "display": comparison.display, "visit": comparison.visit,
            "type": comparison.kind, "arms": [_arm(study, comparison, i) for i in range(2)],
            "effect": estimate_json(key, comparison.effect),
            "estimates": {k: estimate_json(k, e) for k, e in estimates.items()},
            "p_values": _p_values(comparison, estimates), "baseline_balance": comparison.baseline_balance,
            "p_adjusted": None if comparison.adjusted is None else {
                "p": number(comparison.adjusted.p), "method": comparison.adjusted.method,
                "family": comparison.adjusted.family, "size": comparison.adjusted.size},
            **({"excluded": {reason: list(subjects) for reason, subjects in comparison.excluded.items()}}
               if comparison.excluded else {})}


def account_json(account: Account) -> dict[str, Any]:
    """An account as numbers: read, used, skipped by reason, and the first items named per reason."""
    return {"read": account.read, "used": account.used, "skipped": dict(account.skipped),
            "examples": {reason: list(named) for reason, named in account.examples.items()}}


def analyze_json(study: Study, comparisons: list[Comparison], observations: Account,
                 adverse_events: dict[str, Any] | None = None, arms_not_compared: tuple[str, ...] = (),
                 not_compared: tuple[tuple[str, str, str], ...] = ()) -> dict[str, Any]:
    """The ``analyze`` document (schema ``analyze.schema.json``); ``adverse_events``: analysis.adverse_events.incidence_json;
    ``arms_not_compared`` and ``not_compared`` (outcomes compared at no visit, with why) only when there are any."""
    document = {"$schema": SCHEMA_BASE + "analyze.schema.json", "study": study.study.identifier.value,
                "comparisons": [comparison_json(study, c) for c in comparisons],
                "observations": account_json(observations)}
    if adverse_events is not None:
        document["adverse_events"] = adverse_events
    if arms_not_compared:
        document["arms_not_compared"] = list(arms_not_compared)
    if not_compared:
        document["not_compared"] = [{"outcome": code, "type": kind, "reason": why} for code, kind, why in not_compared]
    return document


def _published_json(study: Study, target: PublishedResult) -> dict[str, Any]:
    plan = study.analysis
    assert plan is not None  # verify() needs a plan
    pair = ((target.treatment, target.control) if target.treatment is not None and target.control is not None
            else plan.pairs([a.code for a in study.arms])[0])
    arms = []
    per_arm = {"proportion": target.proportions, "percent": target.percents, "mean": target.means, "sd": target.sds,
               "median": target.medians}
    for role, code in zip(ROLES, (arm_label(side) for side in pair)):
        arm: dict[str, Any] = {"role": role, "code": code}
        if target.n and code in target.n:
            arm.update(n=target.n[code])
        if target.counts and code in target.counts:
            arm.update(events=target.counts[code][0], n=target.counts[code][1])
        for name, given in per_arm.items():
            if given and code in given:
                arm[name] = stated_json(given[code])
        if target.iqrs and code in target.iqrs:
            arm.update(q1=stated_json(target.iqrs[code][0]), q3=stated_json(target.iqrs[code][1]))
        arms.append(arm)
    given = {name: getattr(target, name) for name in ("estimate", "lower", "upper", "number_needed_to_treat")}
    numbers = {name: None if stated is None else NOT_ESTIMABLE if stated.value is None else stated.value
               for name, stated in given.items()}
    return {**numbers, "unit": target.unit, "decimals": target.decimals, "source": target.source, "arms": arms,
            "relative_risk_reduction": None if target.relative_risk_reduction is None else stated_json(
                target.relative_risk_reduction),
            "p": None if target.p is None else {"test": target.p.test, **stated_json(target.p.value)},
            "p_adjusted": None if target.p_adjusted is None else stated_json(target.p_adjusted)}


def stated_json(stated: Stated) -> dict[str, Any]:
    """A published number: value, decimals as written, comparator (``<`` in ``<0.001``, else empty)."""
    return {"value": stated.value, "decimals": stated.decimals, "comparator": stated.comparator}


def field_json(field: FieldCheck) -> dict[str, Any]:
    """One published field checked: expected as written, recomputed at its decimals, whether they match."""
    return {"field": field.field, "arm": field.arm, "test": field.test, "expected": field.expected, "got": field.got,
            "decimals": field.decimals, "matches": field.matches, "note": field.note}


def verify_json(study: Study, checks: list[Verification], observations: Account) -> dict[str, Any]:
    """The ``verify`` document (schema ``verify.schema.json``): overall result, counts, each check."""
    reproduced = sum(check.matches for check in checks)
    return {
        "$schema": SCHEMA_BASE + "verify.schema.json", "study": study.study.identifier.value,
        "result": "reproduced" if reproduced == len(checks) else "not reproduced",
        "counts": {"published": len(checks), "reproduced": reproduced, "not_reproduced": len(checks) - reproduced},
        "results": [{"outcome": check.published.outcome, "adverse_event": check.published.adverse_event,
                     "visit": check.published.visit,
                     "effect": check.published.effect, "matches": check.matches, "mismatches": list(check.mismatches),
                     "fields": [field_json(field) for field in check.fields],
                     "published": _published_json(study, check.published),
                     "reproduced": comparison_json(study, check.reproduced) if check.reproduced else None}
                    for check in checks],
        "observations": account_json(observations),
    }
