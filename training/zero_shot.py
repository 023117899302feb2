"""Zero-shot and probe rows for the real-data tracks: the simplest strong baselines a trained model must beat.

Three scorers, defined before any result was read and shared by every real track:
    text      cosine between the query's text embedding and the item text's embedding (no training)
    visual    a ridge probe maps the query's text embedding into the image-feature space, fitted on
              the training split only (closed form, fixed alpha); score = cosine with the item's
              image feature
    sum       text + visual after z-scoring each within its query (scale-free, no weight to tune)
Metrics use the product's one implementation (fusionguard.metrics); paired comparisons over
queries use fusionguard.stats (sign-flip randomization test, paired bootstrap CI).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionguard import stats
from fusionguard.metrics import QueryGroups, mrr, ndcg_at_k

SCORES_FILE = "zero_shot_scores.npz"
SUMMARY_FILE = "zero_shot.json"
METHODS = ("text", "visual", "sum", "late")  # "late": a fitted late fusion, where a track has one


@dataclass(frozen=True)
class Probe:
    """Linear map from query text embeddings (E) to the image-feature space (F)."""

    weight: np.ndarray  # (E + 1, F), the last row is the bias

    def project(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1) @ self.weight

    def score(self, query: np.ndarray, image: np.ndarray) -> np.ndarray:
        """Row-wise cosine between the projected query (N, E) and the item's image feature (N, F)."""
        p = self.project(query.astype(np.float64))
        p /= np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
        im = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
        return np.einsum("nf,nf->n", p, im)


def fit_probe(x: np.ndarray, y: np.ndarray, alpha: float) -> Probe:
    """Ridge regression y ~ [x, 1] W (bias not penalised), closed form in float64."""
    xa = np.concatenate([x.astype(np.float64), np.ones((len(x), 1))], axis=1)  # (N, E + 1)
    reg = alpha * np.eye(xa.shape[1])
    reg[-1, -1] = 0.0
    w = np.linalg.solve(xa.T @ xa + reg, xa.T @ y.astype(np.float64))
    return Probe(w)


def zscore_within(query_id: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(s - mean) / std within each query (0 where a query's scores are all equal)."""
    _, inv = np.unique(query_id, return_inverse=True)
    n = np.bincount(inv).astype(np.float64)
    mean = np.bincount(inv, s) / n
    var = np.bincount(inv, (s - mean[inv]) ** 2) / n
    sd = np.sqrt(var)[inv]
    return np.where(sd > 0, (s - mean[inv]) / np.where(sd > 0, sd, 1.0), 0.0)


@dataclass
class ZeroShot:
    """Zero-shot scores of one split, aligned with its rows."""

    query_id: np.ndarray
    item_id: np.ndarray
    label: np.ndarray
    scores: dict[str, np.ndarray]  # method -> (N,)
    weight: float | None = None  # the late fusion's visual weight, where a track fits one (emoji)

    @classmethod
    def from_features(cls, query_id, item_id, label, text: np.ndarray, visual: np.ndarray) -> ZeroShot:
        total = zscore_within(query_id, text) + zscore_within(query_id, visual)
        return cls(query_id, item_id, label, {"text": text, "visual": visual, "sum": total})


def per_query(query_id, item_id, label, scores: dict[str, np.ndarray], k: int = 10) -> dict[str, dict[str, np.ndarray]]:
    """Per-query NDCG@k and MRR of each scorer, ordered by ascending query id."""
    groups = QueryGroups.from_arrays(query_id, item_id, label)
    return {m: {f"ndcg@{k}": ndcg_at_k(groups, s, k), "mrr": mrr(groups, s)} for m, s in scores.items()}


def random_expectation(query_id, label, k: int = 10) -> dict[str, float]:
    """Expected NDCG@k and MRR of a random ranking, one relevant item per query (exact, per query size)."""
    _, sizes = np.unique(query_id, return_counts=True)
    ndcg, rr = [], []
    for n in sizes:
        ranks = np.arange(1, n + 1)
        ndcg.append(float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1), 0.0))))
        rr.append(float(np.mean(1.0 / ranks)))
    return {f"ndcg@{k}": float(np.mean(ndcg)), "mrr": float(np.mean(rr))}


def paired(a: np.ndarray, b: np.ndarray, n_resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """mean(a - b) over queries, its 95% paired bootstrap CI and the two-sided sign-flip p-value."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    ci = stats.paired_bootstrap_ci(a, b, settings=stats.BootstrapSettings(n_resamples=n_resamples, seed=seed))
    return {"mean_diff": float(np.nanmean(diff)), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "p_value": float(stats.randomization_test(diff, n_resamples=n_resamples, seed=seed)),
            "n_resamples": n_resamples}


def summarise(zs: ZeroShot, k: int = 10, n_resamples: int = 10_000) -> dict:
    pq = per_query(zs.query_id, zs.item_id, zs.label, zs.scores, k)
    out = {m: {name: float(np.nanmean(v)) for name, v in r.items()} for m, r in pq.items()}
    out["random"] = random_expectation(zs.query_id, zs.label, k)
    key = f"ndcg@{k}"
    out["paired"] = {f"sum-{ref}": paired(pq["sum"][key], pq[ref][key], n_resamples) for ref in ("text", "visual")}
    return out


def write_zero_shot(out: Path, splits: dict[str, ZeroShot]) -> dict:
    """Write the per-row scores (npz) and the summary (json) next to the dataset; returns the summary."""
    arrays = {}
    for split, zs in splits.items():
        arrays.update({f"{split}/query_id": zs.query_id, f"{split}/item_id": zs.item_id, f"{split}/label": zs.label})
        arrays.update({f"{split}/{m}": s for m, s in zs.scores.items()})
    np.savez(Path(out) / SCORES_FILE, **arrays)
    summary = {split: summarise(zs) for split, zs in splits.items()}
    (Path(out) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def load_zero_shot(folder: Path, split: str) -> ZeroShot:
    with np.load(Path(folder) / SCORES_FILE) as z:
        return ZeroShot(z[f"{split}/query_id"], z[f"{split}/item_id"], z[f"{split}/label"],
                        {m: z[f"{split}/{m}"] for m in METHODS if f"{split}/{m}" in z})
