"""The HTML report and the forest plot: self-contained, named and dated, and the numbers drawn are the estimates."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from fhir_msc.analysis import frame as analysis
from fhir_msc.analysis.report import (
    comparison_table,
    comparisons_summary,
    forest_panels,
    forest_plot,
    format_p,
    render,
    tool_version,
    write_report,
)
from fhir_msc.study.definition import REPO_ROOT


@pytest.fixture(scope="module")
def frame(study, demo_store):
    return analysis.analysis_frame(study, demo_store)


@pytest.fixture(scope="module")
def month36(study, frame):
    return analysis.analyze(study, frame, ["M36"])


def _row(plot_or_panels, outcome):
    panels = plot_or_panels.panels if hasattr(plot_or_panels, "panels") else plot_or_panels
    return next((panel, row) for panel in panels for row in panel.rows if row.outcome == outcome)


def test_report_is_self_contained_dated_and_names_version_input_and_study_hash(study, frame, tmp_path):
    comparisons = analysis.analyze(study, frame, ["M12", "M24", "M36"])
    checks = analysis.verify(study, frame)
    paths = write_report(tmp_path, comparisons, checks, "title", study=study, source="tables X into store Y",
                         now=datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc))
    page = paths["html"].read_text(encoding="utf-8")
    sources = re.findall(r"""\b(?:src|href)\s*=\s*['"]([^'"]*)""", page)
    assert sources and all(s.startswith(("data:image/png;base64,", "#")) for s in sources), sources
    assert "http" not in "".join(sources) and "forest.png" not in page
    assert study.sha256 and len(study.sha256) == 64 and study.sha256 in page
    assert f"fhir-msc {tool_version()}" in page and tool_version() != "unknown"
    assert "2026-01-02 03:04 UTC" in page and "tables X into store Y" in page
    tabulated = {c.visit for c in comparisons}
    assert len(tabulated) == 3
    for visit in tabulated:
        assert f"id='visit-{visit}'" in page and f"href='#visit-{visit}'" in page
    assert "3/3 reproduced" in page


def test_forest_plot_rows_carry_estimate_ci_n_and_p_in_the_outcomes_own_units(study, month36, tmp_path):
    plot = forest_plot(month36, tmp_path / "f.png", study=study)
    assert (tmp_path / "f.png").stat().st_size > 10_000 and plot.arms == ("MSC", "Placebo")
    panel, row = _row(plot, "SF36GH")
    assert (round(row.estimate, 2), round(row.lower, 2), round(row.upper, 2)) == (12.86, 1.44, 24.28)
    assert row.text == "12.86 (1.44 to 24.28)" and row.n == (49, 29) and format_p(row.p) == "0.028"
    assert not panel.log and panel.null == 0 and "points" in panel.axis and "difference of means" in panel.axis
    assert panel.favours == ("← favours Placebo", "favours MSC →")
    assert {r.outcome for r in panel.rows} == {o.code for o in study.outcomes if o.unit == "{score}"} - {"CTTSS"}
    assert sum(len(p.rows) for p in plot.panels) == len(month36)


def test_forest_plot_sides_follow_the_direction_of_benefit(study, month36):
    _, panels = forest_panels(month36, study)
    good, ctnorm = _row(panels, "CTNORM")
    bad, reinf = _row(panels, "REINF")
    assert good.log and bad.log and good is not bad
    assert good.favours == ("← favours Placebo", "favours MSC →")
    assert bad.favours == ("← favours MSC", "favours Placebo →")  # fewer reinfections is better
    assert round(reinf.estimate, 2) == 0.54 and reinf.n == (49, 28)
    unknown, _ = _row(panels, "CEA")  # no direction in the study definition: neutral labels
    assert unknown.favours == ("← lower with MSC", "higher with MSC →")


def test_hodges_lehmann_is_labelled_a_median_difference(study, frame, month36):
    hl = analysis.compare(study, frame, study.outcome_by_code["SF36GH"], "M36", "hodges-lehmann")
    _, alone = forest_panels([hl], study)
    assert alone[0].axis.startswith("median difference (Hodges-Lehmann)")
    mean = next(c for c in month36 if c.outcome == "SF36PF")
    _, mixed = forest_panels([mean, hl], study)
    assert len(mixed) == 1 and mixed[0].axis.startswith("difference, points")
    assert [r.label for r in mixed[0].rows] == ["SF-36 physical functioning · M36 (mean)",
                                                 "SF-36 general health · M36 (median, HL)"]


@pytest.mark.parametrize("effect, label", [("exact-odds-ratio", "odds ratio (exact conditional)"),
                                           ("relative-risk", "relative risk"),
                                           ("risk-difference-newcombe", "risk difference")])
def test_each_binary_effect_is_computed_shown_and_drawn(study, frame, effect, label):
    c = analysis.compare(study, frame, study.outcome_by_code["CTNORM"], "M36", effect)
    assert c.effect.effect == label and c.effect.estimable
    table = comparison_table([c])
    assert table.loc[0, "effect"] == label and table.loc[0, "estimate"] == f"{c.effect.estimate:.2f}"
    assert table.loc[0, "tests p"] == f"Fisher {format_p(c.summary.fisher_p)}; χ² {format_p(c.summary.chi2_p)}"
    _, panels = forest_panels([c], study)
    assert panels[0].log == (effect != "risk-difference-newcombe")
    assert panels[0].title.lower().startswith(label.split(" (")[0])


def test_the_table_shows_the_mann_whitney_p_of_a_continuous_outcome(study, month36):
    gh = next(c for c in month36 if c.outcome == "SF36GH")
    row = comparison_table([gh]).iloc[0]
    assert row["tests p"] == f"Mann-Whitney {format_p(gh.summary.mann_whitney_p)}" and row["p"] == format_p(gh.effect.p_value)


def test_what_cannot_be_drawn_is_named_not_dropped(study, frame, tmp_path):
    from dataclasses import replace

    from fhir_msc.analysis.stats import compare_binary

    c = analysis.compare(study, frame, study.outcome_by_code["CTNORM"], "M36")
    none = compare_binary((0, 0), (5, 4))
    empty = replace(c, visit="M24", summary=none, effect=none.odds_ratio)
    plot = forest_plot([c, empty], tmp_path / "f.png", study=study)
    assert [r.visit for p in plot.panels for r in p.rows] == ["M36"]
    assert plot.left_out == [f"{c.display} · M24: not estimable: no events in either arm"]


def test_p_below_one_thousandth_is_not_zero():
    assert (format_p(0.0000123), format_p(0.0284), format_p(None)) == ("<0.001", "0.028", "—")


def test_an_estimate_is_printed_at_the_precision_of_its_ci(study, month36, tmp_path):
    """27.0 with a CI of 0–57 reads 27.00 | 0.00–57.00 in every table format, the report and the forest plot."""
    from dataclasses import replace

    gh = next(c for c in month36 if c.outcome == "SF36GH")
    whole = replace(gh, effect=replace(gh.effect, estimate=27.0, lower=0.0, upper=57.0))
    table = comparison_table([whole])
    assert (table.iloc[0]["estimate"], table.iloc[0]["ci"]) == ("27.00", "0.00–57.00")
    assert "| 27.00 | 0.00–57.00 |" in render(table, "markdown")
    assert re.search(r"\b27\.00\s+0\.00–57\.00\b", render(table, "table"))
    assert "<td>27.00</td>\n      <td>0.00–57.00</td>" in render(table, "html")
    paths = write_report(tmp_path, [whole], [], "title", study=study, source="store")
    assert "<td class='short'>27.00</td><td class='short'>0.00–57.00</td>" in re.sub(
        r">\s+<", "><", paths["html"].read_text(encoding="utf-8"))
    _, row = _row(forest_panels([whole], study)[1], "SF36GH")
    assert row.text == "27.00 (0.00 to 57.00)"


def test_the_report_says_how_many_comparisons_it_shows_and_which_are_baseline_balance(study, frame, tmp_path):
    """Comparisons at analysis.baseline are labelled baseline balance (heading, CSV, the count) and left out of the
    forest plot of treatment effects."""
    import pandas as pd

    comparisons = analysis.analyze(study, frame)
    balance = [c for c in comparisons if c.visit == study.analysis.baseline]
    assert balance and [c.baseline_balance for c in comparisons] == [c in balance for c in comparisons]
    paths = write_report(tmp_path, comparisons, [], "title", study=study, source="s")
    page = paths["html"].read_text(encoding="utf-8")
    assert (f"{len(comparisons)} between-arm comparison(s): {len(comparisons) - len(balance)} treatment effect(s) and "
            f"{len(balance)} baseline balance at BASELINE") in page
    assert "p is not adjusted for multiple comparisons (the plan names no analysis.multiplicity)" in page
    assert (f"id='visit-BASELINE'>BASELINE · Baseline · baseline balance <small>day 0, {len(balance)} comparison(s): "
            "not treatment effects</small>") in page
    plotted = re.search(r"<h2>Forest plot: ([^<]*)</h2>", page).group(1).split(", ")
    assert "BASELINE" not in plotted and "M36" in plotted  # no published result: every visit but baseline
    readme = " ".join((REPO_ROOT / "README.md").read_text(encoding="utf-8").split())
    assert comparisons_summary(study, comparisons).split(" (")[0] in readme  # the README quotes the cohort's count
    table = pd.read_csv(paths["csv"], keep_default_na=False)
    assert list(table.loc[table["visit"] == "BASELINE", "purpose"]) == ["baseline balance"] * len(balance)
    assert set(table.loc[table["visit"] != "BASELINE", "purpose"]) == {"treatment effect"}


def _svg_text(path) -> str:
    """The text an SVG forest plot shows (its text is kept as text)."""
    import html as html_module

    return html_module.unescape(" ".join(re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text(encoding="utf-8"))))


def _ink(png) -> float:
    """The share of pixels that are not (near) white: 0 for a blank image."""
    from matplotlib.image import imread

    return float((imread(png)[..., :3].mean(axis=2) < 0.9).mean())


@pytest.mark.parametrize("synthetic", [True, False])
def test_the_plot_is_titled_with_the_study_and_marks_synthetic_data(study, month36, tmp_path, synthetic):
    plot = forest_plot(month36, (tmp_path / "f.png", tmp_path / "f.svg"), study=study, synthetic=synthetic)
    text = _svg_text(tmp_path / "f.svg")
    assert plot.title == "NCT04288102: between-arm effects" + (" (synthetic data)" if synthetic else "")
    assert plot.title in text and ("SYNTHETIC DATA (tagged HTEST)" in text) == synthetic
    assert _ink(tmp_path / "f.png") > 0.02


def test_the_p_column_names_its_test_and_shows_the_tables_p(study, frame, month36, tmp_path):
    exact = analysis.compare(study, frame, study.outcome_by_code["CTNORM"], "M36", "exact-odds-ratio")
    plot = forest_plot([*month36, replace(exact, outcome="CTNORM-exact")], tmp_path / "f.svg", study=study)
    tests = {row.outcome: panel.test for panel in plot.panels for row in panel.rows}
    assert (tests["CTNORM"], tests["SF36GH"], tests["CTNORM-exact"]) == ("Wald z", "t", "Fisher exact")
    text = _svg_text(tmp_path / "f.svg")
    assert "p (Wald z)" in text and "p (t)" in text and "p (Fisher exact)" in text
    table = comparison_table(month36).set_index("outcome")
    for panel in plot.panels:
        for row in panel.rows:
            if row.outcome in table.index:
                assert format_p(row.p) == table.loc[row.outcome, "p"]  # the plot's p is the table's p
    assert format_p(_row(plot, "CTNORM-exact")[1].p) == format_p(exact.summary.fisher_p)


def test_the_legend_is_inside_the_image(study, month36, tmp_path):
    forest_plot(month36, tmp_path / "f.svg", study=study)
    text = _svg_text(tmp_path / "f.svg")
    assert "estimate; the 95% CI excludes no difference" in text and "estimate; the 95% CI includes no difference" in text


def test_nothing_to_draw_is_a_message_not_a_blank_image(study, frame, tmp_path):
    from fhir_msc.analysis.stats import compare_binary

    c = analysis.compare(study, frame, study.outcome_by_code["CTNORM"], "M36")
    none = compare_binary((0, 0), (5, 4))
    plot = forest_plot([replace(c, summary=none, effect=none.odds_ratio)], (tmp_path / "f.png", tmp_path / "f.svg"),
                       study=study)
    assert plot.panels == [] and _ink(tmp_path / "f.png") > 0.02
    text = _svg_text(tmp_path / "f.svg")
    assert "Nothing to draw" in text and f"{c.display} · M36: not estimable: no events in either arm" in text


@pytest.mark.parametrize("lower, upper", [(0.06, 2.5), (0.4, 3.2), (0.9, 1.6), (0.004, 150.0), (1.2, 40.0)])
def test_log_axis_tick_labels_never_collide(study, month36, tmp_path, lower, upper):
    """Labelled ticks are at least 16% of the axis apart (the widest label, "0.005" at 8 pt, is under 10%)."""
    c = next(c for c in month36 if c.outcome == "CTNORM")
    wide = replace(c, effect=replace(c.effect, estimate=(lower * upper) ** 0.5, lower=lower, upper=upper))
    plot = forest_plot([wide], tmp_path / "f.png", study=study)
    (ticks,) = plot.ticks
    low, high = min(lower, 1) / 1.25, max(upper, 1) * 1.25
    gaps = [math.log(b / a) / math.log(high / low) for a, b in zip(ticks, ticks[1:])]
    assert 1 in ticks and len(ticks) >= 2 and min(gaps) >= 0.16, ticks
