"""Logged clicks of the production V1: the labels a team has when it retrains on its own logs.

    editorial benchmark (train/val/test, true grades 0..4) + production V1 checkpoint
    -> V1 ranks every train and val query's candidates
    -> a simulated user examines rank r with P = 1 / log2(1 + r) (position bias) and clicks an
       examined candidate with P = click_probability(true grade)
    -> train/val labels become the clicks (1 clicked, 0 not); test keeps the true grades
       (its file is copied byte for byte), so every test metric means what it meant before.

The choices (one impression per query, the click curve, the RNG derivation, clicks on val too)
were fixed before the fourth pilot round ran: training/configs/pilot/README.md, "Implementation
details". Protocol configs select this with `[data] label_source = "v1_clicks"`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard.errors import ConfigError

LABEL_SOURCES = ("editorial", "v1_clicks")  # editorial: the generator's true grades (the default)
GRADE_MAX = 4  # the synthetic benchmark's grades are 0..4
CLICK_STREAM = 0xC11C5  # salt of the click RNG: its stream never meets the generator's
CLICK_SPLITS = ("train", "val")  # logged splits; test keeps the true grades


def examination_probability(rank: np.ndarray) -> np.ndarray:
    """P(the user looks at the candidate at 1-based rank r) = 1 / log2(1 + r): 1 at rank 1."""
    rank = np.asarray(rank, dtype=np.float64)
    return 1.0 / np.log2(1.0 + rank)


def click_probability(grade: np.ndarray, grade_max: int = GRADE_MAX) -> np.ndarray:
    """P(click | examined, true grade g) = 0.05 + 0.9 (2^g - 1) / (2^g_max - 1): 0.05 ... 0.95."""
    g = np.asarray(grade, dtype=np.float64)
    return 0.05 + 0.9 * (np.exp2(g) - 1.0) / (2.0**grade_max - 1.0)


def ranks(query_index: np.ndarray, item_id: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """1-based rank of each row within its query: score descending, ties by item_id descending
    (`fusionguard.metrics.ranks`, the ranking every measure uses). Rows may come in any order."""
    from fusionguard.metrics import QueryGroups
    from fusionguard.metrics import ranks as metric_ranks

    groups = QueryGroups.from_arrays(query_index, item_id, np.zeros(len(query_index)))
    return metric_ranks(groups, scores)


@dataclass
class Clicks:
    """One simulated impression per query, row-aligned with the inputs."""

    clicked: np.ndarray  # (N,) int64 0/1: the logged label
    examined: np.ndarray  # (N,) bool
    rank: np.ndarray  # (N,) int64 1-based rank under V1


def simulate_clicks(query_index: np.ndarray, item_id: np.ndarray, v1_scores: np.ndarray, grade: np.ndarray,
                    rng: np.random.Generator) -> Clicks:
    """One impression per query of V1's ranking; a candidate is clicked iff examined and clicked."""
    r = ranks(query_index, item_id, v1_scores)
    examined = rng.random(r.shape[0]) < examination_probability(r)
    clicked = examined & (rng.random(r.shape[0]) < click_probability(grade))
    return Clicks(clicked=clicked.astype(np.int64), examined=examined, rank=r)


def click_rng(generator_seed: int, split: str) -> np.random.Generator:
    """The click stream of one logged split, deterministic in the generator seed alone."""
    return np.random.default_rng([int(generator_seed), CLICK_STREAM, CLICK_SPLITS.index(split)])


def click_stats(clicks: Clicks, grade: np.ndarray, query_index: np.ndarray) -> dict[str, Any]:
    """What the log looks like: clicks per query, queries without a click, click rate per true
    grade and per rank band (the position bias a V2 trained on it inherits)."""
    per_query = np.bincount(query_index, weights=clicks.clicked)
    bands = ((1, 1), (2, 5), (6, 10), (11, 20), (21, 10**9))
    rate = lambda mask: float(clicks.clicked[mask].mean()) if mask.any() else None  # noqa: E731
    return {
        "clicks_per_query_mean": float(per_query.mean()),
        "queries_without_click": float(np.mean(per_query == 0)),
        "examined_share": float(clicks.examined.mean()),
        "click_rate_by_grade": {str(g): rate(grade == g) for g in range(GRADE_MAX + 1)},
        "click_rate_by_rank": {f"{lo}-{hi if hi < 10**9 else 'end'}": rate((clicks.rank >= lo) & (clicks.rank <= hi)) for lo, hi in bands},
    }


def write_click_benchmark(editorial: str | Path, v1_dir: str | Path, out: str | Path, generator_seed: int,
                          mask: str = "permute") -> dict[str, Any]:
    """Write OUT: train/val with V1's logged clicks as labels, test copied unchanged.

    Args:
        editorial: a benchmark directory (synth.json, train/val/test.parquet) with the true grades.
        v1_dir: the production V1's checkpoint directory (text only); it ranks the logged splits.
        out: where the click benchmark goes (created).
        generator_seed: seeds the click RNG (`click_rng`).
        mask: the diagnostics mask passed to `score_split` (only its unmasked scores are used).
    Returns:
        The "clicks" entry written into OUT/synth.json (model, V1, per-split log statistics).
    Raises:
        ConfigError: a grade outside 0..GRADE_MAX (the click curve is defined on those).
    """
    import torch

    from fusionguard.dataset import load_dataset, write_dataset
    from fusionguard.training.checkpoint import load_checkpoint
    from fusionguard.training.data import TEXT_INPUTS, VISUAL_INPUT, load_split, read_dims
    from fusionguard.training.diagnostics import score_split
    from fusionguard.training.synth import META_FILE

    editorial, out = Path(editorial), Path(out)
    dims = read_dims(editorial)
    v1 = load_checkpoint(v1_dir).model
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {}
    for split in CLICK_SPLITS:
        path = editorial / f"{split}.parquet"
        batch = load_dataset(path, inputs=[*TEXT_INPUTS, VISUAL_INPUT])
        grade = np.asarray(batch.label, dtype=np.int64)
        if grade.min() < 0 or grade.max() > GRADE_MAX:
            raise ConfigError(str(path), [f"labels span {grade.min()}..{grade.max()}; v1_clicks needs true grades in 0..{GRADE_MAX}"])
        # V1's scores in file row order: load_split groups rows by query (stable), so undo its order
        _, qidx = np.unique(batch.query_id, return_inverse=True)
        qidx = qidx.reshape(-1)
        order = np.argsort(qidx, kind="stable")
        with torch.no_grad():
            grouped = score_split(v1, load_split(path, dims, with_visual=False), mask).full
        v1_scores = np.empty_like(grouped)
        v1_scores[order] = grouped
        clicks = simulate_clicks(qidx, batch.item_id, v1_scores, grade, click_rng(generator_seed, split))
        write_dataset(out / f"{split}.parquet", batch.query_id, batch.item_id, clicks.clicked, batch.feeds)
        stats[split] = click_stats(clicks, grade, qidx)
    shutil.copyfile(editorial / "test.parquet", out / "test.parquet")
    meta = json.loads((editorial / META_FILE).read_text(encoding="utf-8"))
    meta["label_source"] = {"train": "v1_clicks", "val": "v1_clicks", "test": "editorial"}
    meta["clicks"] = {
        "examination": "1 / log2(1 + rank)", "click": "0.05 + 0.9 (2^g - 1) / (2^4 - 1)", "impressions_per_query": 1,
        "rng": f"numpy default_rng([{generator_seed}, {CLICK_STREAM:#x}, split index in {list(CLICK_SPLITS)}])",
        "v1": str(v1_dir), "editorial": str(editorial), "splits": stats,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta["clicks"]
