"""PNG plots for the gate report (matplotlib, Agg backend: no display needed in CI)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from gate.runner import GateResult

NDCG_DIFF_PNG = "ndcg_difference.png"
CONTRIBUTION_PNG = "contributions.png"


def write_plots(result: GateResult, out: Path) -> list[Path]:
    """Write the plots the result has data for; remove stale ones it has none for."""
    written: list[Path] = []
    m = result.measures
    k = result.policy.metric.k
    target = out / NDCG_DIFF_PNG
    if m is not None and result.baseline_ndcg is not None:
        diff = m.ndcg - result.baseline_ndcg
        diff = diff[np.isfinite(diff)]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(diff, bins=min(40, max(5, diff.size // 5)), color="#4c72b0")
        ax.axvline(0.0, color="black", lw=1)
        ax.axvline(float(diff.mean()), color="#c44e52", lw=1.5, label=f"mean {diff.mean():+.4f}")
        ax.axvline(-result.policy.quality.margin, color="grey", ls="--", lw=1, label="-margin")
        ax.set_xlabel(f"NDCG@{k} candidate − baseline, per query")
        ax.set_ylabel("queries")
        ax.legend(frameon=False)
        fig.tight_layout()
        fig.savefig(target, dpi=100)
        plt.close(fig)
        written.append(target)
    elif target.exists():
        target.unlink()
    target = out / CONTRIBUTION_PNG
    if m is not None:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        share = m.visual_share[np.isfinite(m.visual_share)]
        left.hist(share, bins=30, range=(0.0, 1.0), color="#55a868")
        left.set_xlabel("visual Shapley share, per candidate")
        left.set_ylabel("candidates")
        drops = [float(np.nanmean(m.visual_drop)), float(np.nanmean(m.text_drop))]
        right.bar(["visual masked", "text masked"], drops, color=["#55a868", "#4c72b0"])
        right.axhline(result.policy.ablation.min_visual_drop, color="grey", ls="--", lw=1, label="min visual drop")
        right.set_ylabel(f"relative NDCG@{k} drop")
        right.legend(frameon=False)
        fig.tight_layout()
        fig.savefig(target, dpi=100)
        plt.close(fig)
        written.append(target)
    elif target.exists():
        target.unlink()
    return written
