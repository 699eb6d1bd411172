"""Formatting of analysis results: tables in five formats, a forest plot, the verify table."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pandas as pd

from .frame import Comparison, Verification
from .stats import ContinuousSummary

FORMATS = ("table", "csv", "json", "markdown", "html")


def comparison_table(comparisons: list[Comparison]) -> pd.DataFrame:
    """Outcome, visit, n and summary per arm, effect, 95% CI, p, method: one row per comparison."""
    rows = []
    for c in comparisons:
        treatment, control = c.arms
        rows.append({
            "outcome": c.outcome, "visit": c.visit, f"n {treatment}": c.n[0], f"n {control}": c.n[1],
            treatment: c.arm_summary(0), control: c.arm_summary(1), "effect": c.effect.effect,
            "estimate": round(c.effect.estimate, 2), "ci": f"{c.effect.lower:.2f}–{c.effect.upper:.2f}",
            "p": format_p(c.effect.p_value),
            "method": c.effect.method + (f"; {c.effect.note}" if c.effect.note else ""),
        })
    return pd.DataFrame(rows)


def format_p(p: float | None) -> str:
    """A p-value for people: three decimals, ``<0.001`` below that (never ``0.0``), ``—`` if none."""
    if p is None or math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def verification_table(checks: list[Verification]) -> pd.DataFrame:
    rows = []
    for check in checks:
        target, got = check.published, check.reproduced
        reproduced = (f"{got.effect.estimate:.{target.decimals}f} ({got.effect.lower:.{target.decimals}f}–"
                      f"{got.effect.upper:.{target.decimals}f})") if got else "—"
        rows.append({"outcome": target.outcome, "visit": target.visit, "effect": target.effect,
                     "published": f"{target.estimate:.{target.decimals}f} ({target.lower:.{target.decimals}f}–"
                                  f"{target.upper:.{target.decimals}f})",
                     "reproduced": reproduced, "status": "match" if check.matches else "MISMATCH: " + "; ".join(check.mismatches)})
    return pd.DataFrame(rows)


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


def forest_plot(comparisons: list[Comparison], path: Path, title: str = "") -> Path:
    """PNG forest plot: odds ratios on a log axis; differences of means in pooled-SD units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    binary = [c for c in comparisons if c.kind == "binary" and c.effect.effect.startswith("odds ratio")]
    continuous = [c for c in comparisons if c.kind == "continuous"]
    panels = [(binary, "odds ratio (log scale), 95% CI", 1.0, True), (continuous, "difference of means / pooled SD, 95% CI", 0.0, False)]
    panels = [p for p in panels if p[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 0.35 * max(len(p[0]) for p in panels) + 1.6),
                             squeeze=False)
    for ax, (rows, label, null, log) in zip(axes[0], panels):
        points = [_scaled(c) for c in rows]
        ys = list(range(len(rows)))[::-1]
        for y, (est, low, high) in zip(ys, points):
            ax.plot([low, high], [y, y], color="black", lw=1)
            ax.plot(est, y, "s", color="tab:blue")
        ax.axvline(null, color="grey", ls="--", lw=1)
        ax.set_yticks(ys, [f"{c.display} ({c.visit})" for c in rows], fontsize=8)
        ax.set_xlabel(label)
        if log:
            ax.set_xscale("log")
            low, high = min(p[1] for p in points), max(p[2] for p in points)
            ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if low / 2 <= t <= high * 2]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.96 if title else 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _scaled(c: Comparison) -> tuple[float, float, float]:
    if isinstance(c.summary, ContinuousSummary):
        n1, n2 = c.summary.n
        sd = math.sqrt(((n1 - 1) * c.summary.sd[0] ** 2 + (n2 - 1) * c.summary.sd[1] ** 2) / (n1 + n2 - 2)) or 1.0
        return c.effect.estimate / sd, c.effect.lower / sd, c.effect.upper / sd
    return c.effect.estimate, c.effect.lower, c.effect.upper


def write_report(directory: Path, comparisons: list[Comparison], checks: list[Verification], title: str) -> dict[str, Path]:
    """HTML report, CSV table and forest-plot PNG (at the published results' visits) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    table = comparison_table(comparisons)
    paths = {"csv": directory / "analysis.csv", "png": directory / "forest.png", "html": directory / "report.html"}
    paths["csv"].write_text(render(table, "csv"), encoding="utf-8")
    published_visits = {check.published.visit for check in checks}
    forest_plot([c for c in comparisons if c.visit in published_visits] or comparisons, paths["png"], title)
    matched = sum(c.matches for c in checks)
    paths["html"].write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><h2>Published results: {matched}/{len(checks)} reproduced</h2>"
        f"{render(verification_table(checks), 'html')}<h2>Between-arm comparisons</h2>"
        f"<img src='forest.png' alt='forest plot'>{render(table, 'html')}", encoding="utf-8")
    return paths
