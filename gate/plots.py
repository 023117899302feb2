"""PNG plots for the gate report (matplotlib's Agg canvas: no display needed in CI).

Each figure tells the decision at a glance: its title names the candidate and the gate's verdict,
every decision panel shows the CI the check used as a whisker, the policy's threshold as a dashed
line and the decision statistic (the CI bound the rule compares) as a marked, labelled point:

- ndcg_difference.png: per-query NDCG@k differences (candidate - baseline) with the mean's CI; the
  quality rule compares the CI's *lower* bound with -margin.
- integrity.png: mean per-query Spearman and global Pearson between candidate and baseline scores
  with their CIs; the integrity rule compares each CI's *upper* bound with max_correlation.
- contributions.png: the per-candidate visual Shapley share, and the mean relative NDCG drop when
  each modality is masked with its CI; the visual-ablation rule compares the visual drop's *upper*
  bound with min_visual_drop. Each bar carries its value as text and a marker, so a collapsed
  modality's near-zero bar stays visible.

Figures are built with `matplotlib.figure.Figure` directly, not pyplot, so there is no global
figure registry to close. (Rendering them in a worker thread during the CIs was measured and gave
no gain on 2 cores: the rendering holds the GIL.) Rendering is kept cheap: each histogram is
counted with numpy and drawn as one `stairs` artist (not one patch per bin), and the margins are
fixed instead of computed by `tight_layout` (which renders every text to measure it).
`render_plots` makes the PNG bytes; `write_plots` writes them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fusionguard.gate.outcomes import VERDICT_TITLE, GateOutcome, Outcome

if TYPE_CHECKING:
    from fusionguard.gate.checks import CheckResult
    from fusionguard.gate.measures import ModelMeasures
    from fusionguard.gate.policy import Policy
    from fusionguard.gate.result import GateResult

NDCG_DIFF_PNG = "ndcg_difference.png"
CONTRIBUTION_PNG = "contributions.png"
INTEGRITY_PNG = "integrity.png"
DPI = 100  # 640 x 420 and 960 x 420 pixels: legible in a pull-request comment
AXES_BOTTOM, AXES_HEIGHT = 0.3, 0.58  # fixed margins: the legend sits under the x label, clear of the data
VERDICT_COLOR = {GateOutcome.PASSED: "#2e7d32", GateOutcome.BLOCKED: "#c62828"}
OUTCOME_COLOR = {Outcome.PASSED: "#2e7d32", Outcome.FAILED: "#c62828"}  # a check's decision marker
NEUTRAL = "#555555"


@dataclass(frozen=True)
class Title:
    """Who and what the figures are about: the candidate's name and the gate's outcome."""

    model: str  # e.g. "v2.onnx (progressive)"
    outcome: str  # passed | blocked | invalid | unevaluated

    def text(self) -> str:
        return f"{self.model}: gate {VERDICT_TITLE.get(self.outcome, self.outcome)}"


def _figure(width: float, height: float, title: Title | None) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # attaches itself to the figure
    if title is not None:
        fig.suptitle(title.text(), x=0.02, y=0.98, ha="left", va="top", fontsize=11, fontweight="bold",
                     color=VERDICT_COLOR.get(title.outcome, NEUTRAL))
    return fig


def _hist(ax, values: np.ndarray, bins: int, color: str, value_range: tuple[float, float] | None = None) -> int:  # noqa: ANN001
    counts, edges = np.histogram(values, bins=bins, range=value_range)
    ax.stairs(counts, edges, fill=True, color=color, alpha=0.55)
    top = max(1, int(counts.max(initial=0)))
    ax.set_ylim(0, top * 1.25)  # headroom for the CI whisker drawn above the bars
    return top


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _interval(check: CheckResult | None, name: str) -> Any:
    """The Interval a check decided on (or reported), if the check computed it."""
    if check is None:
        return None
    value = check.numbers.get(name)
    return value if all(hasattr(value, a) for a in ("estimate", "low", "high")) else None


def _check_label(check: CheckResult | None) -> str:
    return "" if check is None else f" ({check.name}: {check.outcome})"


def _legend_below(ax) -> None:  # noqa: ANN001
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.17))


def _number(value: float) -> str:
    """A bar's value as text: 4 decimals, or 2 significant digits for values that would print as 0.0000."""
    value = value + 0.0  # no "-0.0000"
    return f"{value:.4f}" if value == 0 or abs(value) >= 5e-5 else f"{value:.1e}"


def _ndcg_difference(diff: np.ndarray, k: int, margin: float, ci: Any, check: CheckResult | None, title: Title | None) -> Figure:
    fig = _figure(6.4, 4.2, title)
    ax = fig.add_axes((0.1, AXES_BOTTOM, 0.87, AXES_HEIGHT))
    top = _hist(ax, diff, min(40, max(5, diff.size // 5)), "#4c72b0")
    ax.axvline(0.0, color="black", lw=0.8)
    ax.axvline(-margin, color="#c62828", ls="--", lw=1.3, label=f"threshold: -margin = {-margin:g}")
    if ci is not None:
        y = top * 1.15
        ax.errorbar([ci.estimate], [y], xerr=[[ci.estimate - ci.low], [ci.high - ci.estimate]], fmt="o", color="black",
                    capsize=5, lw=1.5, ms=5, label=f"mean {ci.estimate:+.4f}, {ci.confidence:.0%} CI [{ci.low:+.4f}, {ci.high:+.4f}]")
        color = OUTCOME_COLOR.get(check.outcome if check else "", NEUTRAL)
        ax.plot([ci.low], [y], marker="D", ms=9, color=color, zorder=5, label=f"decision: CI lower bound {ci.low:+.4f}")
    ax.set_xlabel(f"NDCG@{k} candidate − baseline, per query")
    ax.set_ylabel("queries")
    ax.set_title(f"quality: non-inferiority of NDCG@{k}{_check_label(check)}", fontsize=9, loc="left")
    _legend_below(ax)
    return fig


def _integrity(cis: Mapping[str, Any], limit: float, check: CheckResult | None, title: Title | None) -> Figure:
    fig = _figure(6.4, 3.2, title)
    ax = fig.add_axes((0.24, 0.4, 0.72, 0.42))
    names = list(cis)
    color = OUTCOME_COLOR.get(check.outcome if check else "", NEUTRAL)
    for y, name in enumerate(names):
        ci = cis[name]
        ax.errorbar([ci.estimate], [y], xerr=[[ci.estimate - ci.low], [ci.high - ci.estimate]], fmt="o", color="black",
                    capsize=5, lw=1.5, label=f"{name.split()[0]} {ci.estimate:.3f}, CI [{ci.low:.3f}, {ci.high:.3f}]")
        ax.plot([ci.high], [y], marker="D", ms=9, color=color, zorder=5, ls="none",
                label="decision: CI upper bounds" if y == 0 else None)
    ax.axvline(limit, color="#c62828", ls="--", lw=1.3, label=f"threshold: max correlation {limit:g}")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    low = min(0.0, *(cis[n].low for n in names))
    ax.set_xlim(low - 0.05, 1.02)
    ax.set_xlabel("correlation of candidate and baseline scores")
    ax.set_title(f"integrity: not the baseline in disguise{_check_label(check)}", fontsize=9, loc="left")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(-0.3, -0.27), ncol=2)
    return fig


def _contributions(share: np.ndarray, drops: Mapping[str, Any], min_drop: float, min_share: float | None, k: int,
                   share_ci: Any, check: CheckResult | None, title: Title | None) -> Figure:
    fig = _figure(9.6, 4.2, title)
    left = fig.add_axes((0.07, AXES_BOTTOM, 0.4, AXES_HEIGHT))
    right = fig.add_axes((0.57, AXES_BOTTOM, 0.41, AXES_HEIGHT))
    top = _hist(left, share, 30, "#55a868", (0.0, 1.0))
    if share_ci is not None:
        left.errorbar([share_ci.estimate], [top * 1.15], xerr=[[share_ci.estimate - share_ci.low], [share_ci.high - share_ci.estimate]],
                      fmt="o", color="black", capsize=5, label=f"mean per query {share_ci.estimate:.3f}, CI [{share_ci.low:.3f}, {share_ci.high:.3f}]")
    if min_share is not None:
        left.axvline(min_share, color="#c62828", ls="--", lw=1.3, label=f"threshold: min share {min_share:g}")
    left.set_xlabel("visual Shapley share, per candidate")
    left.set_ylabel("candidates")
    left.set_title("label-free visual share", fontsize=9, loc="left")
    _legend_below(left)

    names = list(drops)
    colors = {"visual masked": "#55a868", "text masked": "#4c72b0"}
    xs = np.arange(len(names))
    values = [drops[n] for n in names]
    estimates = [float(v.estimate) if hasattr(v, "estimate") else float(v) for v in values]
    right.bar(xs, estimates, width=0.55, color=[colors.get(n, NEUTRAL) for n in names], alpha=0.8)
    for x, name, value, est in zip(xs, names, values, estimates, strict=True):
        if hasattr(value, "low"):
            right.errorbar([x], [est], yerr=[[est - value.low], [value.high - est]], fmt="none", color="black", capsize=6, lw=1.5)
        # the value as text and a marker: a collapsed modality's bar is a flat line, its number is not
        right.plot([x], [est], marker="_", ms=28, mew=2.5, color="black")
        right.annotate(_number(est), (x, est), textcoords="offset points", xytext=(16, 4), fontsize=9)
    right.axhline(min_drop, color="#c62828", ls="--", lw=1.3, label=f"threshold: min visual drop {min_drop:g}")
    visual = drops.get("visual masked")
    if hasattr(visual, "high"):
        color = OUTCOME_COLOR.get(check.outcome if check else "", NEUTRAL)
        right.plot([0], [visual.high], marker="D", ms=9, color=color, zorder=5, ls="none",
                   label=f"decision: visual drop CI upper bound {visual.high:.4f}")
    right.set_xticks(xs, names)
    right.set_xlim(-0.6, len(names) - 0.4)
    low = min([0.0, *(getattr(v, "low", e) for v, e in zip(values, estimates, strict=True))])
    high = max([min_drop, *(getattr(v, "high", e) for v, e in zip(values, estimates, strict=True))])
    right.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.12 * (high - low + 1e-9))
    right.axhline(0.0, color="black", lw=0.8)
    right.set_ylabel(f"relative NDCG@{k} drop (mean, CI)")
    right.set_title(f"modality ablation{_check_label(check)}", fontsize=9, loc="left")
    _legend_below(right)
    return fig


def build_figures(m: ModelMeasures | None, baseline_ndcg: np.ndarray | None, policy: Policy,
                  checks: Mapping[str, CheckResult] | None = None, title: Title | None = None) -> dict[str, Figure | None]:
    """Each plot's figure by file name; None for a plot without data.

    `checks` (by name) supplies the CIs the decisions used; without them the plots show the data,
    thresholds and point estimates only.
    """
    checks = checks or {}
    k = policy.metric.k
    figures: dict[str, Figure | None] = {NDCG_DIFF_PNG: None, INTEGRITY_PNG: None, CONTRIBUTION_PNG: None}
    if m is not None and baseline_ndcg is not None:
        diff = m.ndcg - baseline_ndcg
        quality = checks.get("quality")
        figures[NDCG_DIFF_PNG] = _ndcg_difference(diff[np.isfinite(diff)], k, policy.quality.margin,
                                                  _interval(quality, "difference"), quality, title)
    integrity = checks.get("integrity")
    correlations = {"Spearman\n(per-query mean)": _interval(integrity, "spearman_mean"), "Pearson\n(all rows)": _interval(integrity, "pearson")}
    if all(ci is not None for ci in correlations.values()):
        figures[INTEGRITY_PNG] = _integrity(correlations, integrity.thresholds["max_correlation"], integrity, title)
    if m is not None:
        ablation = checks.get("visual_ablation")
        share = m.visual_share[np.isfinite(m.visual_share)]
        drops = {
            "visual masked": _interval(ablation, "visual_drop") or float(np.nanmean(m.visual_drop)),
            "text masked": _interval(ablation, "text_drop") or float(np.nanmean(m.text_drop)),
        }
        figures[CONTRIBUTION_PNG] = _contributions(share, drops, policy.ablation.min_visual_drop, policy.shapley.min_visual_share,
                                                   k, _interval(ablation, "visual_share"), ablation, title)
    return figures


def render_plots(m: ModelMeasures | None, baseline_ndcg: np.ndarray | None, policy: Policy,
                 checks: Mapping[str, CheckResult] | None = None, title: Title | None = None) -> dict[str, bytes | None]:
    """The PNG bytes of each plot by file name; None for a plot without data (touches no file)."""
    figures = build_figures(m, baseline_ndcg, policy, checks, title)
    return {name: None if fig is None else _png(fig) for name, fig in figures.items()}


def result_title(result: GateResult) -> Title:
    """The figures' title for a gate result: the candidate file (and its variant) and the verdict."""
    candidate = result.candidate
    return Title(Path(candidate.path).name + (f" ({candidate.variant})" if candidate.variant else ""), result.outcome)


def write_plots(result: GateResult, out: Path) -> list[Path]:
    """Write the plots the result has data for; remove stale ones it has none for."""
    pngs = render_plots(result.measures, result.baseline_ndcg, result.policy,
                        checks={c.name: c for c in result.checks}, title=result_title(result))
    written: list[Path] = []
    for name, png in pngs.items():
        target = out / name
        if png is not None:
            target.write_bytes(png)
            written.append(target)
        elif target.exists():
            target.unlink()
    return written
