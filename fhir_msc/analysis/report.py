"""Formatting of analysis results: tables in five formats, a forest plot, the verify table, the HTML report."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from ..study.definition import NOT_ESTIMABLE, Study
from .frame import Comparison, Verification
from .multiplicity import METHODS
from .options import FORMATS
from .stats import BinarySummary, Estimate
from .survival import TimeToEventSummary

BASELINE_BALANCE, TREATMENT_EFFECT = "baseline balance", "treatment effect"  # the purpose column's values


def comparison_table(comparisons: list[Comparison]) -> pd.DataFrame:
    """Outcome, visit, n and summary per arm, effect, 95% CI, p, the other tests' p, method: one row per comparison.

    An effect the data cannot estimate reads "not estimable" (the method column says why). When a comparison is
    at the baseline visit, a ``purpose`` column says which rows are baseline balance (the others: treatment effect);
    when a p is adjusted for multiple comparisons, ``p adjusted`` and ``family`` follow ``p`` ("—" for a row in no
    family).
    """
    rows = []
    several = len({c.arms for c in comparisons}) > 1  # several pairs of arms: columns by role, a comparison column
    balance = any(c.baseline_balance for c in comparisons)
    adjusted = any(c.adjusted for c in comparisons)
    for c in comparisons:
        treatment, control = ("treatment", "control") if several else c.arms
        rows.append({
            "outcome": c.outcome, "visit": c.visit,
            **({"purpose": BASELINE_BALANCE if c.baseline_balance else TREATMENT_EFFECT} if balance else {}),
            **({"comparison": " vs ".join(c.arms)} if several else {}),
            f"n {treatment}": c.n[0], f"n {control}": c.n[1],
            treatment: c.arm_summary(0), control: c.arm_summary(1), "effect": c.effect.effect,
            "estimate": estimate_text(c.effect), "ci": ci_text(c.effect), "p": format_p(c.effect.p_value),
            **({"p adjusted": format_p(c.adjusted.p) if c.adjusted else "—",
                "family": c.adjusted.describe() if c.adjusted else "—"} if adjusted else {}),
            "tests p": tests_text(c), "method": c.effect.method + (f"; {c.effect.note}" if c.effect.note else ""),
        })
    return pd.DataFrame(rows)


def comparisons_summary(study: Study, comparisons: list[Comparison]) -> str:
    """How many comparisons there are, which are baseline balance, and how their p-values are adjusted."""
    plan = study.analysis
    balance = sum(c.baseline_balance for c in comparisons)
    effects = len(comparisons) - balance
    text = f"{len(comparisons)} between-arm comparison(s): {effects} treatment effect(s)"
    if balance:
        text += (f" and {balance} baseline balance at {plan.baseline if plan else ''} (tests of chance imbalance "
                 "between the randomized arms, not treatment effects; in no multiplicity family)")
    elif plan is None or plan.baseline is None:
        text += " (no baseline visit is named in analysis.baseline: every visit is compared as a treatment effect)"
    if plan is None or plan.multiplicity is None:
        return text + ". p is not adjusted for multiple comparisons (the plan names no analysis.multiplicity)."
    families = dict.fromkeys((c.adjusted.family, c.adjusted.size) for c in comparisons if c.adjusted)
    scope = ("one list of outcomes of analysis.multiplicity.families" if plan.multiplicity.families
             else "every outcome")
    text += (f". p adjusted: {METHODS[plan.multiplicity.method]} within each family (the comparisons of {scope} at "
             "one visit, every pair of arms): " + (", ".join(f"{name} ({size})" for name, size in families) or "none"))
    unadjusted = effects - sum(1 for c in comparisons if c.adjusted)
    if unadjusted:
        text += f"; {unadjusted} treatment effect(s) in no family or without a p, not adjusted"
    return text + "."


DECIMALS = 2  # an estimate and both its CI limits are printed with this many decimals


def number_text(value: float, decimals: int = DECIMALS) -> str:
    """A number at ``decimals`` places (27.00, not 27.0); ``∞`` or ``−∞`` for an unbounded one."""
    return f"{value:.{decimals}f}" if math.isfinite(value) else ("∞" if value > 0 else "−∞")


def estimate_text(e: Estimate, decimals: int = DECIMALS) -> str:
    """The estimate at the precision of its CI (:func:`ci_text`); "not estimable" when there is none."""
    return number_text(e.estimate, decimals) if e.estimable else "not estimable"


def ci_text(e: Estimate, decimals: int = DECIMALS) -> str:
    """``lower–upper``; ``∞`` for an unbounded side, ``—`` when not estimable."""
    if e.lower is None or e.upper is None:
        return "—"
    return f"{number_text(e.lower, decimals)}–{number_text(e.upper, decimals)}"


def tests_text(c: Comparison) -> str:
    """The p of the tests beside the effect's own: Fisher exact and Pearson χ², or Mann-Whitney."""
    s = c.summary
    if isinstance(s, BinarySummary):
        return f"Fisher {format_p(s.fisher_p)}; χ² {format_p(s.chi2_p)}"
    if isinstance(s, TimeToEventSummary):
        return f"log-rank {format_p(s.log_rank_p)}"
    return f"Mann-Whitney {format_p(s.mann_whitney_p)}"


def format_p(p: float | None) -> str:
    """A p-value for people: three decimals, ``<0.001`` below that (never ``0.0``), ``—`` if none."""
    if p is None or math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def verification_table(checks: list[Verification]) -> pd.DataFrame:
    """One row per published result: its headline as published and recomputed, how many fields match, the mismatches."""
    rows = []
    several = len({check.reproduced.arms for check in checks if check.reproduced}) > 1  # name each result's arms
    for check in checks:
        target, got = check.published, check.reproduced
        rows.append({"outcome": target.label, "visit": target.visit or "",
                     **({"comparison": " vs ".join(got.arms) if got else "—"} if several else {}),
                     "effect": target.effect or (got.effect.effect if got else "—"),
                     "published": _headline(check, "expected"), "reproduced": "—" if got is None else _headline(check, "got"),
                     "fields": f"{sum(f.matches for f in check.fields)}/{len(check.fields)}",
                     "status": "match" + _tests_found(check) if check.matches else "MISMATCH: " + "; ".join(check.mismatches)})
    return pd.DataFrame(rows)


def _tests_found(check: Verification) -> str:
    """For a p whose test the paper does not name: the tests of the effect that give it."""
    named = check.published.p is not None and check.published.p.test is not None
    return "".join(f" (p: {f.test})" for f in check.fields if f.field == "p" and f.test and not named)


def _headline(check: Verification, side: str) -> str:
    """Estimate (lower–upper), or the p, as published (``expected``) or recomputed (``got``) at the published decimals;
    a recomputed estimate that is not estimable says why."""
    found = {f.field: getattr(f, side) for f in check.fields if f.field in ("estimate", "lower", "upper", "p")}
    if "estimate" in found:
        note = next(f.note for f in check.fields if f.field == "estimate")
        text = (note if side == "got" and note.startswith(NOT_ESTIMABLE) else found["estimate"]) or NOT_ESTIMABLE
        if "lower" in found and not found["lower"] == found["upper"] == NOT_ESTIMABLE:
            text += f" ({found['lower'] or '—'}–{found['upper'] or '—'})"
        return text
    if "p" in found:
        return f"p {found['p'] or '—'}"
    return "—"


def render(frame: pd.DataFrame, fmt: str) -> str:
    """The frame as text in one of FORMATS."""
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "json":
        return json.dumps(frame.to_dict(orient="records"), indent=2, ensure_ascii=False)
    if fmt == "markdown":
        header = "| " + " | ".join(frame.columns) + " |"
        rule = "|" + "---|" * len(frame.columns)
        body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
        return "\n".join([header, rule, *body])
    if fmt == "html":
        return frame.to_html(index=False, escape=True)
    return frame.to_string(index=False)


# --- forest plot --------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ForestRow:
    """One comparison as the forest plot draws it: the numbers printed beside it, on its own scale."""

    outcome: str
    label: str  # "SF-36 general health · M36"
    visit: str
    effect: str  # "odds ratio", "difference of means", "median difference (Hodges-Lehmann)", …
    n: tuple[int, int]  # treatment, control
    estimate: float
    lower: float
    upper: float
    p: float | None
    text: str  # "12.86 (1.44 to 24.28)"


@dataclass(frozen=True, kw_only=True)
class ForestPanel:
    """Rows sharing one axis: one effect scale, one unit and one direction of benefit."""

    title: str
    axis: str
    null: float
    log: bool
    favours: tuple[str, str]  # the labels under the left and right side of the axis
    test: str  # the test of the rows' p ("Wald z", "Fisher exact", …), as the p column's header names it
    rows: list[ForestRow]


@dataclass(frozen=True, kw_only=True)
class ForestPlot:
    """What ``forest_plot`` drew, panel by panel, and where."""

    paths: tuple[Path, ...]  # the same plot in each format asked for (PNG, SVG)
    title: str
    arms: tuple[str, str]  # treatment, control names
    panels: list[ForestPanel]
    left_out: list[str]  # "label: why" for each comparison with no finite estimate and CI to draw
    ticks: list[list[float]]  # per panel, the values labelled on its axis


def _number(value: float) -> str:
    return number_text(value).replace("-", "−")


def unit_text(unit: str | None) -> str:
    """A UCUM unit for people: ``{score}`` → points, ``%`` → percentage points (a difference of %)."""
    if not unit:
        return ""
    return {"{score}": "points", "%": "percentage points"}.get(unit, re.sub(r"\{([^}]*)\}", r"\1", unit))


def forest_panels(comparisons: list[Comparison], study: Study | None = None) -> tuple[tuple[str, str], list[ForestPanel]]:
    """The comparisons grouped into panels, each on its own scale: odds ratios and relative risks on a log axis,
    differences in the outcome's own unit; rows whose benefit lies on opposite sides, or whose outcomes are of other
    types (an event, an ordinal scale, a time to event), never share a panel. Arms are named as the study definition
    names them. A comparison with nothing finite to draw is left out (``left_out`` names it and why)."""
    names = arm_namer(study)
    better = study.analysis.better if study and study.analysis else {}
    units = {o.code: o.unit for o in study.analysed_outcomes} if study else {}
    types = {o.code: o.type for o in study.analysed_outcomes} if study else {}
    several = len({c.arms for c in comparisons}) > 1  # several pairs of arms: each row names its own
    treatment, control = ("treatment", "control") if several else (
        tuple(names(a) for a in comparisons[0].arms) if comparisons else ("", ""))
    groups: dict[tuple, list[Comparison]] = {}
    for c in comparisons:
        if not drawable(c.effect):
            continue
        ratio = c.effect.effect.startswith(RATIOS)
        kind = "ordinal" if types.get(c.outcome) == "ordinal" else c.kind
        scale = ("ratio", next(r for r in RATIOS if c.effect.effect.startswith(r))) if ratio else ("risk" if c.kind == "binary" else unit_text(units.get(c.outcome)))
        groups.setdefault((scale, kind, better.get(c.outcome)), []).append(c)
    panels = []
    for (scale, kind, direction), rows in groups.items():
        effects = list(dict.fromkeys(c.effect.effect for c in rows))
        if isinstance(scale, tuple):
            what = scale[1]
            title, axis, null, log = f"{what[0].upper()}{what[1:]}, {treatment} vs {control}", f"{what} (log scale), 95% CI", 1.0, True
        else:
            what = "risk difference" if scale == "risk" else (effects[0] if len(effects) == 1 else "difference")
            in_unit = "" if scale == "risk" else f", {scale}" if scale else ""
            title, null, log = f"{what[0].upper()}{what[1:]}, {treatment} − {control}{in_unit}", 0.0, False
            axis = f"{what}{in_unit}, 95% CI"
        neutral, labels = _OUTCOME_TYPES[kind if log or kind == "ordinal" else "continuous"]
        favours = {"higher": (f"← favours {control}", f"favours {treatment} →"),
                   "lower": (f"← favours {treatment}", f"favours {control} →")}.get(
            direction or "", tuple(side.format(treatment) for side in neutral))
        panels.append(ForestPanel(title=title + labels.get(direction or "", ""), axis=axis, null=null, log=log,
                                  favours=favours, test=" / ".join(dict.fromkeys(p_test(c.effect) for c in rows)),
                                  rows=[_forest_row(c, len(effects) > 1, names if several else None) for c in rows]))
    return (treatment, control), panels


# per outcome type: the sides' labels when the plan names no better direction, and the title's note when it does
_OUTCOME_TYPES = {
    "binary": (("← fewer events with {}", "more events with {} →"),
               {"higher": " · the event is good", "lower": " · the event is bad"}),
    "time-to-event": (("← lower hazard with {}", "higher hazard with {} →"),
                      {"higher": " · the event is good", "lower": " · the event is bad"}),
    "ordinal": (("← lower levels with {}", "higher levels with {} →"),
                {"higher": " · ordinal scale, higher is better", "lower": " · ordinal scale, lower is better"}),
    "continuous": (("← lower with {}", "higher with {} →"),
                   {"higher": " · higher is better", "lower": " · lower is better"}),
}


def arm_namer(study: Study | None):
    """Arm code (or pooled codes joined by '+') → the study's arm name(s); a code the study does not name stays."""
    names = {arm.code: arm.name for arm in study.arms} if study else {}
    return lambda label: " + ".join(names.get(code, code) for code in label.split("+"))


RATIOS = ("odds ratio", "relative risk", "hazard ratio")  # drawn on a log axis, one panel each

# the test of an effect's p, found in its method: (words in the method, the test's name), first match wins
_P_TESTS = (("Fisher exact", "Fisher exact"), ("MH test", "Mantel-Haenszel"), ("χ²", "Pearson χ²"),
            ("log-rank", "log-rank"), ("Mann-Whitney", "Mann-Whitney"), ("U test", "Mann-Whitney"),
            ("binomial", "exact binomial"), ("Welch t", "Welch t"), ("t CI and p", "t"), ("pooled-variance t", "t"),
            ("Wald", "Wald z"), ("z p", "Wald z"))


def p_test(e: Estimate) -> str:
    """The name of the test that gave the effect's p (the comparison table's p), as its method says."""
    return next((name for words, name in _P_TESTS if words in e.method), "as the method says")


def drawable(e: Estimate) -> bool:
    """Whether the estimate and both CI limits are finite numbers (positive, for a ratio on a log axis)."""
    values = (e.estimate, e.lower, e.upper)
    if any(v is None or not math.isfinite(v) for v in values):
        return False
    return not e.effect.startswith(RATIOS) or min(values) > 0  # type: ignore[type-var]


def left_out(comparisons: list[Comparison]) -> list[str]:
    """The comparisons ``forest_panels`` does not draw, each with why."""
    return [f"{c.display} · {c.visit or 'follow-up'}: " + (c.effect.note if not c.effect.estimable else
                                             "the estimate or a CI limit is 0 or unbounded, which a log axis cannot show"
                                             if c.effect.effect.startswith(RATIOS)
                                             else "a CI limit is unbounded")
            for c in comparisons if not drawable(c.effect)]


def _forest_row(c: Comparison, name_effect: bool, names=None) -> ForestRow:
    e = c.effect
    short = {"difference of means": "mean", "median difference (Hodges-Lehmann)": "median, HL"}.get(e.effect, e.effect)
    label = (f"{c.display} · {c.visit or 'follow-up'}" + (f" · {' vs '.join(names(a) for a in c.arms)}" if names else "")
             + (f" ({short})" if name_effect else ""))
    return ForestRow(outcome=c.outcome, label=label, visit=c.visit, effect=e.effect, n=c.n, estimate=e.estimate,
                     lower=e.lower, upper=e.upper, p=e.p_value,
                     text=f"{_number(e.estimate)} ({_number(e.lower)} to {_number(e.upper)})")


def plot_title(study: Study, synthetic: bool = False) -> str:
    """The forest plot's and the report's title: the study's identifier and title, and whether the data are synthetic."""
    return (f"{study.study.identifier.value}: between-arm effects"
            + (" (synthetic data)" if synthetic else ""))


# layout in inches
_WIDTH, _ROW, _TITLE, _HEADER, _FOOT, _TOP, _LEGEND = 11.0, 0.3, 0.42, 0.3, 0.78, 0.62, 0.4
_AXES = (0.385, 0.66)  # left and right edge of the plot column, as fractions of the width
_COLUMNS = {"label": 0.012, "n": 0.37, "estimate": 0.685, "p": 0.985}
_LOG_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 7, 10, 20, 50, 100,
              200, 500, 1000)
_TICK_GAP = 0.16  # the least distance between two labelled ticks, as a fraction of the axis width
_INK, _MUTED, _ACCENT, _BAND, _WARN = "#1f2933", "#6b7785", "#1f5fa8", "#f2f5f8", "#a61b1b"


def log_ticks(low: float, high: float) -> list[float]:
    """The values to label on a log axis from ``low`` to ``high``: 1 always, then each candidate at least
    ``_TICK_GAP`` of the axis width from every label kept, so no two labels ever touch."""
    span = math.log(high / low)
    kept = [1.0]
    for tick in sorted((t for t in _LOG_TICKS if low <= t <= high and t != 1), key=lambda t: abs(math.log(t))):
        if all(abs(math.log(tick / other)) >= _TICK_GAP * span for other in kept):
            kept.append(tick)
    return sorted(kept)


def forest_plot(comparisons: list[Comparison], paths: Path | tuple[Path, ...], title: str = "",
                study: Study | None = None, *, synthetic: bool = False) -> ForestPlot:
    """Forest plot, written to each of ``paths`` (PNG or SVG by suffix): estimate, CI, n per arm and p (its test named
    in the header) beside each row; odds ratios and relative risks on a log axis, differences in the outcome's own unit
    (one panel per scale, unit, outcome type and direction of benefit), sides labelled by the arm they favour when the
    study definition says which direction is better (``analysis.better``). Under the title (default: the study's, see
    :func:`plot_title`) a mark when the data are ``synthetic``; a legend explains the squares; with nothing to draw,
    a panel says why instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = (paths,) if isinstance(paths, Path) else paths
    title = title or (plot_title(study, synthetic) if study else "Between-arm effects")
    arms, panels = forest_panels(comparisons, study)
    missing = left_out(comparisons)
    heights = [_TITLE + _HEADER + _ROW * len(p.rows) + _FOOT for p in panels] or [0.5 + 0.25 * max(len(missing), 1)]
    total = _TOP + sum(heights) + _LEGEND
    fig = plt.figure(figsize=(_WIDTH, total))
    fig.patch.set_facecolor("white")
    fig.text(_COLUMNS["label"], 1 - 0.3 / total, title, fontsize=13, weight="bold", color=_INK, va="center")
    if synthetic:
        fig.text(_COLUMNS["p"], 1 - 0.3 / total, "SYNTHETIC DATA (tagged HTEST)", fontsize=9, weight="bold",
                 color=_WARN, ha="right", va="center", bbox={"boxstyle": "round,pad=0.35", "fc": "#fbe2e2", "ec": _WARN})
    top = total - _TOP
    ticks = []
    for panel, height in zip(panels, heights):
        rows_top = top - _TITLE - _HEADER
        ax = fig.add_axes((_AXES[0], (rows_top - _ROW * len(panel.rows)) / total, _AXES[1] - _AXES[0],
                           _ROW * len(panel.rows) / total))
        fig.text(_COLUMNS["label"], (top - _TITLE / 2) / total, panel.title, fontsize=11, weight="bold",
                 color=_INK, va="center")
        header_y = (rows_top + _HEADER / 2) / total
        for key, text, align in (("label", "Outcome · visit", "left"), ("n", f"n {arms[0]} / {arms[1]}", "right"),
                                 ("estimate", "Estimate (95% CI)", "left"), ("p", f"p ({panel.test})", "right")):
            fig.text(_COLUMNS[key], header_y, text, fontsize=8.5, color=_MUTED, weight="bold", ha=align, va="center")
        ticks.append(_draw_panel(fig, ax, panel))
        top -= height
    if not panels:
        _draw_nothing(fig, top / total, heights[0] / total, missing)
    _draw_legend(fig, _LEGEND / 2 / total)
    for path in paths:
        with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, selectable
            fig.savefig(path, dpi=150, facecolor="white", metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)
    return ForestPlot(paths=paths, title=title, arms=arms, panels=panels, left_out=missing, ticks=ticks)


def _draw_nothing(fig, top: float, height: float, missing: list[str]) -> None:
    """The panel shown instead of an empty plot: nothing could be drawn, and why for each comparison."""
    from matplotlib.patches import FancyBboxPatch

    fig.add_artist(FancyBboxPatch((0.012, top - height + 0.02), 0.973, height - 0.04, boxstyle="round,pad=0.005",
                                  transform=fig.transFigure, fc=_BAND, ec=_MUTED, lw=1))
    lines = ["Nothing to draw: no comparison has a finite estimate and 95% CI on its scale."] + missing
    fig.text(0.03, top - 0.04, "\n".join(lines), fontsize=9.5, color=_INK, va="top", linespacing=1.6, wrap=True)


def _draw_legend(fig, y: float) -> None:
    """The squares explained, inside the image."""
    from matplotlib.lines import Line2D

    for x, filled, text in ((0.02, True, "estimate; the 95% CI excludes no difference"),
                            (0.34, False, "estimate; the 95% CI includes no difference"),
                            (0.66, None, "95% CI (dashed line: no difference)")):
        if filled is None:
            fig.add_artist(Line2D([x - 0.008, x + 0.008], [y, y], color=_INK, lw=1.3, transform=fig.transFigure))
        else:
            fig.add_artist(Line2D([x], [y], marker="s", ms=7, color=_ACCENT, mfc=_ACCENT if filled else "white",
                                  mew=1.5, transform=fig.transFigure))
        fig.text(x + 0.014, y, text, fontsize=8.5, color=_MUTED, va="center")


_N_WIDTH = 0.075  # the width kept for the n column, as a fraction of the figure's width


def _fit(fig, text, right: float) -> None:
    """Shrink a label (down to 7 pt), then shorten it with "…", until it ends left of ``right`` (a figure fraction)."""
    renderer = fig.canvas.get_renderer()
    limit = right * fig.bbox.width

    def too_wide() -> bool:
        return text.get_window_extent(renderer).x1 > limit
    while too_wide() and text.get_fontsize() > 7:
        text.set_fontsize(text.get_fontsize() - 0.5)
    while too_wide() and len(text.get_text()) > 2:
        text.set_text(text.get_text()[:-2] + "…")


def _draw_panel(fig, ax, panel: ForestPanel) -> list[float]:
    """Draw one panel's rows into ``ax``; the values labelled on its axis."""
    import matplotlib.ticker
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import blended_transform_factory

    beside = blended_transform_factory(fig.transFigure, ax.transData)
    count = len(panel.rows)
    for index, row in enumerate(panel.rows):
        y = count - 1 - index
        if index % 2 == 0:
            fig.add_artist(Rectangle((0.005, y - 0.5), 0.99, 1, transform=beside, color=_BAND, zorder=0, lw=0))
        excludes_null = row.lower > panel.null or row.upper < panel.null
        ax.plot([row.lower, row.upper], [y, y], color=_INK, lw=1.3, solid_capstyle="butt", zorder=2)
        ax.plot(row.estimate, y, "s", ms=7, color=_ACCENT, mfc=_ACCENT if excludes_null else "white", mew=1.5, zorder=3)
        for key, text, align in (("label", row.label, "left"), ("n", f"{row.n[0]} / {row.n[1]}", "right"),
                                 ("estimate", row.text, "left"), ("p", format_p(row.p), "right")):
            drawn = fig.text(_COLUMNS[key], y, text, transform=beside, fontsize=9, color=_INK, ha=align, va="center")
            if key == "label":
                _fit(fig, drawn, _COLUMNS["n"] - _N_WIDTH)
    ax.axvline(panel.null, color=_MUTED, ls="--", lw=1, zorder=1)
    ax.set_ylim(-0.5, count - 0.5)
    ax.set_yticks([])
    ax.patch.set_alpha(0)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color(_MUTED)
    ax.tick_params(axis="x", labelsize=8, colors=_INK)
    low = min(min(r.lower for r in panel.rows), panel.null)
    high = max(max(r.upper for r in panel.rows), panel.null)
    if panel.log:
        ax.set_xscale("log")
        ax.set_xlim(low / 1.25, high * 1.25)
        ticks = log_ticks(low / 1.25, high * 1.25)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    else:
        margin = 0.08 * (high - low or 1)
        ax.set_xlim(low - margin, high + margin)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5))
        ticks = [t for t in ax.get_xticks() if low - margin <= t <= high + margin]
    ax.set_xlabel(panel.axis, fontsize=8.5, color=_MUTED, labelpad=3)
    for text, shift, align in ((panel.favours[0], -4, "right"), (panel.favours[1], 4, "left")):
        ax.annotate(text, xy=(panel.null, 0), xycoords=("data", "axes fraction"), xytext=(shift, -38),
                    textcoords="offset points", fontsize=8.5, color=_ACCENT, weight="bold", ha=align, va="top",
                    annotation_clip=False)
    return [float(t) for t in ticks]


# --- the HTML report ---------------------------------------------------------------------

def tool_version() -> str:
    try:
        return metadata.version("fhir-msc")
    except metadata.PackageNotFoundError:
        return "unknown"


def write_report(directory: Path, comparisons: list[Comparison], checks: list[Verification], title: str = "", *,
                 study: Study, source: str, now: datetime | None = None,
                 adverse_events: pd.DataFrame | None = None, synthetic: bool = False,
                 document: dict | None = None) -> dict[str, Path]:
    """A self-contained HTML report (the forest plot embedded), and beside it the table as CSV, ``document`` (the
    ``analyze`` JSON) as JSON when given, and the forest plot as PNG and SVG, in ``directory``.

    The report is dated, names the tool version, the input (``source``: a name, never a local path) and the study
    definition by file name with its SHA-256, marks ``synthetic`` data, shows the published results with their
    reproduction, the forest plot at the published results' visits (else at every visit but the baseline one), how
    many comparisons there are and which are baseline balance (:func:`comparisons_summary`), and one table for every
    visit compared, the baseline visit's headed baseline balance; then ``adverse_events`` (the incidence table), if
    given. ``title`` defaults to the study's (:func:`plot_title`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    title = title or plot_title(study, synthetic)
    table = comparison_table(comparisons)
    paths = {"html": directory / "report.html", "csv": directory / "analysis.csv",
             **({"json": directory / "analysis.json"} if document is not None else {}),
             "png": directory / "forest.png", "svg": directory / "forest.svg"}
    paths["csv"].write_text(render(table, "csv"), encoding="utf-8")
    if document is not None:
        paths["json"].write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    published_visits = {check.published.visit or "" for check in checks}  # "": a time-to-event result
    effects = [c for c in comparisons if not c.baseline_balance] or comparisons
    shown = [c for c in comparisons if c.visit in published_visits] or effects
    plot = forest_plot(shown, (paths["png"], paths["svg"]), study=study, synthetic=synthetic)
    image = base64.b64encode(paths["png"].read_bytes()).decode("ascii")
    matched = sum(c.matches for c in checks)
    visits = [v for v in study.visits if any(c.visit == v.code for c in comparisons)]
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    e = html.escape
    facts = [("Study", f"{study.study.title} ({study.study.identifier.value})"), ("Input", source),
             *([("Data", "synthetic (every subject tagged HTEST, test health data)")] if synthetic else []),
             ("Study definition", study.file.name if study.file else "(in memory)"),
             ("SHA-256 of the definition", f"<code>{study.sha256 or '—'}</code>"),
             ("Generated", f"{stamp} by fhir-msc {tool_version()}")]
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{e(title)}</title>"
        f"<style>{_CSS}</style></head><body><main>",
        f"<header><h1>{e(title)}</h1><dl>"
        + "".join(f"<dt>{e(k)}</dt><dd>{v if k.startswith('SHA') else e(v)}</dd>" for k, v in facts) + "</dl></header>",
        f"<section><h2>Published results <span class='badge {'ok' if matched == len(checks) else 'bad'}'>"
        f"{matched}/{len(checks)} reproduced</span></h2>{_html_table(verification_table(checks), status=True)}</section>"
        if checks else "",
        f"<section><h2>Forest plot: {e(', '.join(sorted({c.visit or 'follow-up' for c in shown}, key=_visit_order(study))))}</h2>"
        f"<figure><img alt='forest plot of the between-arm effects' src='data:image/png;base64,{image}'>"
        f"<figcaption>{_plot_caption(plot)}</figcaption></figure></section>",
        "<section><h2>Between-arm comparisons by visit</h2>"
        f"<p class='count'>{e(comparisons_summary(study, comparisons))}</p><nav>"
        + "".join(f"<a href='#visit-{e(v.code)}'>{e(v.code)}</a>" for v in visits) + "</nav>",
    ]
    per_visit = table.drop(columns=["visit", "purpose"], errors="ignore")  # the heading says which is baseline balance
    for visit in visits:
        rows = per_visit[table["visit"] == visit.code]
        balance = study.analysis is not None and visit.code == study.analysis.baseline
        parts.append(f"<h3 id='visit-{e(visit.code)}'>{e(visit.code)} · {e(visit.name)}"
                     + (" · baseline balance" if balance else "")
                     + f" <small>day {visit.day}, {len(rows)} comparison(s)"
                     + (": not treatment effects" if balance else "") + f"</small></h3>{_html_table(rows)}")
    over_follow_up = per_visit[table["visit"] == ""]
    if len(over_follow_up):
        parts.append(f"<h3 id='time-to-event'>Time to event <small>over the whole follow-up</small></h3>"
                     f"{_html_table(over_follow_up)}")
    if adverse_events is not None:
        parts.append(f"</section><section><h2 id='adverse-events'>Adverse events by arm</h2>"
                     f"{_html_table(adverse_events)}")
    parts.append("</section><footer>Effects are treatment vs control; each row's method column names how its effect "
                 "and CI were computed, and the tests column gives Fisher exact and Pearson χ² (binary) or Mann-Whitney "
                 "(continuous) p. "
                 f"Every number here is recomputed from the FHIR data by fhir-msc {e(tool_version())}.</footer>"
                 "</main></body></html>")
    paths["html"].write_text("".join(parts), encoding="utf-8")
    return paths


def _visit_order(study: Study):
    order = {v.code: i for i, v in enumerate(study.visits)}
    return lambda code: order.get(code, len(order))


def _plot_caption(plot: ForestPlot) -> str:
    treatment, control = (html.escape(a) for a in plot.arms)
    tests = ", ".join(dict.fromkeys(panel.test for panel in plot.panels))
    return (f"Each row: {treatment} vs {control}, the estimate (square; filled when the 95% CI excludes no "
            f"difference) and its 95% CI, with n per arm and p (the table's p{': ' + html.escape(tests) if tests else ''}). Each panel has its own scale: odds ratios on a log "
            "axis, differences in the outcome's own unit; the labels under each axis say which arm each side favours."
            + "".join(f" Not drawn: {html.escape(why)}." for why in plot.left_out))


def _html_table(frame: pd.DataFrame, status: bool = False) -> str:
    body = frame.to_html(index=False, border=0, classes="results", na_rep="—", escape=True)
    body = re.sub(r"<td>([^<]{1,16})</td>", r"<td class='short'>\1</td>", body)  # numbers and codes never wrap
    if status:
        body = body.replace("<td>match</td>", "<td class='ok'>match</td>").replace("<td>MISMATCH", "<td class='bad'>MISMATCH")
    return f"<div class='scroll'>{body}</div>"


_CSS = """
:root { --ink: #1f2933; --muted: #6b7785; --accent: #1f5fa8; --line: #dde3ea; --band: #f5f7fa; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f5; color: var(--ink);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 24px auto; background: white; padding: 32px 40px;
       border-radius: 8px; box-shadow: 0 1px 4px rgba(0,0,0,.08); }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 19px; margin: 36px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 28px 0 8px; scroll-margin-top: 12px; }
h3 small { color: var(--muted); font-weight: normal; margin-left: 6px; }
header dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0; font-size: 14px; }
header dt { color: var(--muted); }
header dd { margin: 0; overflow-wrap: anywhere; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.badge { font-size: 13px; font-weight: 600; padding: 2px 10px; border-radius: 12px; margin-left: 8px; vertical-align: 2px; }
.ok { color: #17663a; } .bad { color: #a61b1b; }
.badge.ok { background: #ddf3e4; } .badge.bad { background: #fbe2e2; }
td.ok, td.bad { font-weight: 600; }
figure { margin: 0; } figure img { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
p.count { font-size: 14px; margin: 4px 0 10px; }
nav { display: flex; flex-wrap: wrap; gap: 6px; margin: 4px 0 8px; }
nav a { text-decoration: none; color: var(--accent); border: 1px solid var(--line); border-radius: 14px;
        padding: 1px 12px; font-size: 13px; }
nav a:hover { background: var(--band); }
.scroll { overflow-x: auto; }
table.results { border-collapse: collapse; width: 100%; font-size: 13px; font-variant-numeric: tabular-nums; }
table.results th { text-align: left; color: var(--muted); font-weight: 600; border-bottom: 2px solid var(--line);
                   padding: 6px 8px; white-space: nowrap; }
table.results td { border-bottom: 1px solid var(--line); padding: 5px 8px; vertical-align: top; }
table.results td.short { white-space: nowrap; }
table.results tbody tr:nth-child(even) { background: var(--band); }
footer { margin-top: 36px; padding-top: 12px; border-top: 1px solid var(--line); color: var(--muted); font-size: 13px; }
"""
