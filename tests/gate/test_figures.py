"""The gate's figures tell the decision at a glance, and junit.xml carries times."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from matplotlib.collections import LineCollection

from fusionguard.gate.plots import CONTRIBUTION_PNG, INTEGRITY_PNG, NDCG_DIFF_PNG, build_figures, result_title
from fusionguard.gate.runner import run_gate


@pytest.fixture(scope="module")
def runs(toys, tmp_path_factory):
    out = {}
    for name, model in (("fusion", toys.fusion), ("blind", toys.blind)):
        d = tmp_path_factory.mktemp(f"{name}-report")
        out[name] = (run_gate(model, toys.data, d, baseline=toys.v1, policy=toys.policy), d)
    return out


def _figures(result):
    return build_figures(result.measures, result.baseline_ndcg, result.policy,
                         {c.name: c for c in result.checks}, result_title(result))


def _check(result, name):
    return next(c for c in result.checks if c.name == name)


def _marker_at(ax, x, y, marker="D") -> bool:
    return any(line.get_marker() == marker and np.allclose(line.get_xdata(), [x]) and np.allclose(line.get_ydata(), [y])
               for line in ax.lines)


def _hline(ax, y) -> bool:
    return any(len(set(line.get_ydata())) == 1 and np.isclose(line.get_ydata()[0], y) and line.get_linestyle() == "--" for line in ax.lines)


def _vline(ax, x) -> bool:
    return any(len(set(line.get_xdata())) == 1 and np.isclose(line.get_xdata()[0], x) and line.get_linestyle() == "--" for line in ax.lines)


@pytest.mark.parametrize("name, verdict", [("fusion", "PASSED"), ("blind", "BLOCKED")])
def test_every_figure_is_titled_with_the_model_and_the_verdict(runs, name, verdict):
    result, _ = runs[name]
    for figure in _figures(result).values():
        title = figure._suptitle.get_text()
        assert f"{name}.onnx" in title and f"gate {verdict}" in title, title


def test_the_ndcg_plot_marks_the_threshold_the_ci_and_its_lower_bound_as_the_decision(runs):
    result, _ = runs["fusion"]
    ax = _figures(result)[NDCG_DIFF_PNG].axes[0]
    ci = _check(result, "quality").numbers["difference"]
    assert _vline(ax, -result.policy.quality.margin)
    whiskers = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert any(np.allclose(sorted(seg[:, 0]), [ci.low, ci.high]) for c in whiskers for seg in c.get_segments())
    y = next(line.get_ydata()[0] for line in ax.lines if line.get_marker() == "D")
    assert _marker_at(ax, ci.low, y)  # the decision statistic: the CI's lower bound, not the mean
    labels = ax.get_legend_handles_labels()[1]
    assert any("decision: CI lower bound" in label for label in labels)


@pytest.mark.parametrize("name", ["fusion", "blind"])
def test_the_ablation_plot_has_whiskers_threshold_and_the_upper_bound_decision(runs, name):
    result, _ = runs[name]
    ax = _figures(result)[CONTRIBUTION_PNG].axes[1]
    ablation = _check(result, "visual_ablation")
    visual, text = ablation.numbers["visual_drop"], ablation.numbers["text_drop"]
    assert _hline(ax, result.policy.ablation.min_visual_drop)
    segments = [seg for c in ax.collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    for x, ci in ((0, visual), (1, text)):
        assert any(np.allclose(seg[:, 0], x) and np.allclose(sorted(seg[:, 1]), [ci.low, ci.high]) for seg in segments)
    assert _marker_at(ax, 0, visual.high)
    # each bar's value is written on the plot, so a near-zero (collapsed) bar is still readable
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 2 and all(t.strip() for t in texts)
    low, high = ax.get_ylim()
    assert low <= min(0.0, visual.low) and high >= result.policy.ablation.min_visual_drop


def test_the_collapsed_visual_bar_is_visible(runs):
    result, _ = runs["blind"]
    ax = _figures(result)[CONTRIBUTION_PNG].axes[1]
    visual = _check(result, "visual_ablation").numbers["visual_drop"]
    assert abs(visual.estimate) < 1e-6  # the blind model's visual drop is a flat line...
    assert any(line.get_marker() == "_" and np.allclose(line.get_xdata(), [0]) and line.get_markersize() >= 20 for line in ax.lines)
    assert ax.texts[0].get_text() in {"0.0000", f"{visual.estimate + 0.0:.1e}"}  # ...but marked and labelled


@pytest.mark.parametrize("name", ["fusion", "blind"])
def test_the_integrity_plot_marks_both_upper_bounds_against_the_maximum(runs, name):
    result, out = runs[name]
    assert (out / INTEGRITY_PNG).stat().st_size > 0
    ax = _figures(result)[INTEGRITY_PNG].axes[0]
    integrity = _check(result, "integrity")
    assert _vline(ax, integrity.thresholds["max_correlation"])
    for y, key in enumerate(("spearman_mean", "pearson")):
        assert _marker_at(ax, integrity.numbers[key].high, y)


def test_no_baseline_no_baseline_plots(toys, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text(toys.policy.read_text() + "\n[baseline]\nrequired = false\n")
    result = run_gate(toys.fusion, toys.data, tmp_path / "r", policy=policy)
    figures = _figures(result)
    assert figures[NDCG_DIFF_PNG] is None and figures[INTEGRITY_PNG] is None and figures[CONTRIBUTION_PNG] is not None
    assert not (tmp_path / "r" / INTEGRITY_PNG).exists()


@pytest.mark.parametrize("name", ["fusion", "blind"])
def test_junit_has_times(runs, name):
    result, out = runs[name]
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    total = float(suite.get("time"))
    cases = list(suite.iter("testcase"))
    assert len(cases) == 6
    times = [float(case.get("time")) for case in cases]
    assert all(t >= 0 for t in times) and sum(times) <= total + 1e-3
    assert total == pytest.approx(result.timings["total_checks"], abs=1e-4)
    stages = {p.get("name") for p in suite.iter("property")}
    assert {"time.load_models", "time.validate_data", "time.scoring", "time.statistics"} <= stages
