"""PNG plots for the gate report (matplotlib's Agg canvas: no display needed in CI).

Figures are built with `matplotlib.figure.Figure` directly, not pyplot, so there is no global
figure registry to close. (Rendering them in a worker thread during the CIs was measured and gave
no gain on 2 cores: the rendering holds the GIL.) Rendering is kept cheap: each histogram is
counted with numpy and drawn as one `stairs` artist (not one patch per bin), and the margins are
fixed instead of computed by `tight_layout` (which renders every text to measure it). `render_plots` makes the PNG bytes; `write_plots` writes them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from gate.measures import ModelMeasures
    from gate.policy import Policy
    from gate.runner import GateResult

NDCG_DIFF_PNG = "ndcg_difference.png"
CONTRIBUTION_PNG = "contributions.png"
DPI = 100  # 600 x 350 and 900 x 350 pixels: legible in a pull-request comment


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)  # attaches itself to the figure
    return fig


def _hist(ax, values: np.ndarray, bins: int, color: str, value_range: tuple[float, float] | None = None) -> None:  # noqa: ANN001
    counts, edges = np.histogram(values, bins=bins, range=value_range)
    ax.stairs(counts, edges, fill=True, color=color)
    ax.set_ylim(0, max(1, int(counts.max(initial=0))) * 1.05)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _ndcg_difference(diff: np.ndarray, k: int, margin: float) -> bytes:
    fig = _figure(6, 3.5)
    ax = fig.add_axes((0.11, 0.15, 0.86, 0.8))
    _hist(ax, diff, min(40, max(5, diff.size // 5)), "#4c72b0")
    mean = float(diff.mean()) if diff.size else float("nan")
    ax.axvline(0.0, color="black", lw=1)
    ax.axvline(mean, color="#c44e52", lw=1.5, label=f"mean {mean:+.4f}")
    ax.axvline(-margin, color="grey", ls="--", lw=1, label="-margin")
    ax.set_xlabel(f"NDCG@{k} candidate − baseline, per query")
    ax.set_ylabel("queries")
    ax.legend(frameon=False)
    return _png(fig)


def _contributions(share: np.ndarray, drops: list[float], min_drop: float, k: int) -> bytes:
    fig = _figure(9, 3.5)
    left = fig.add_axes((0.08, 0.15, 0.4, 0.8))
    right = fig.add_axes((0.58, 0.15, 0.4, 0.8))
    _hist(left, share, 30, "#55a868", (0.0, 1.0))
    left.set_xlabel("visual Shapley share, per candidate")
    left.set_ylabel("candidates")
    right.bar(["visual masked", "text masked"], drops, color=["#55a868", "#4c72b0"])
    right.axhline(min_drop, color="grey", ls="--", lw=1, label="min visual drop")
    right.set_ylabel(f"relative NDCG@{k} drop")
    right.legend(frameon=False)
    return _png(fig)


def render_plots(m: ModelMeasures | None, baseline_ndcg: np.ndarray | None, policy: Policy) -> dict[str, bytes | None]:
    """The PNG bytes of each plot by file name; None for a plot without data (touches no file)."""
    k = policy.metric.k
    pngs: dict[str, bytes | None] = {NDCG_DIFF_PNG: None, CONTRIBUTION_PNG: None}
    if m is not None and baseline_ndcg is not None:
        diff = m.ndcg - baseline_ndcg
        pngs[NDCG_DIFF_PNG] = _ndcg_difference(diff[np.isfinite(diff)], k, policy.quality.margin)
    if m is not None:
        share = m.visual_share[np.isfinite(m.visual_share)]
        drops = [float(np.nanmean(m.visual_drop)), float(np.nanmean(m.text_drop))]
        pngs[CONTRIBUTION_PNG] = _contributions(share, drops, policy.ablation.min_visual_drop, k)
    return pngs


def write_plots(result: GateResult, out: Path) -> list[Path]:
    """Write the plots the result has data for; remove stale ones it has none for."""
    pngs = render_plots(result.measures, result.baseline_ndcg, result.policy)
    written: list[Path] = []
    for name, png in pngs.items():
        target = out / name
        if png is not None:
            target.write_bytes(png)
            written.append(target)
        elif target.exists():
            target.unlink()
    return written
