"""Per-model measurements shared by the gate and the offline evaluation.

One `Scorer.score_dataset` call per model runs every pass the checks need (full, visual and text
ablations over several seeded permutations, the Shapley passes): the scorer stacks the masked
copies on the batch axis, so each batch of rows is one `session.run`. Everything below is then
numpy over the per-query arrays, through `fusionguard.metrics` and `fusionguard.stats`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fusionguard import metrics, stats
from fusionguard.dataset import Batch
from fusionguard.errors import EvaluationError
from fusionguard.masking import Mask, ShapleyPasses, ablation_masks, shapley_passes
from fusionguard.scorer import Scorer

from fusionguard.gate.policy import Policy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassPlan:
    """The masks of one model's scoring call, grouped by what they are for."""

    full: Mask
    visual: tuple[Mask, ...]  # visual ablation, one per permutation
    text: tuple[Mask, ...]  # text ablation, one per permutation
    shapley: ShapleyPasses  # the four Shapley passes (the core's one definition, shared with the monitor)

    @property
    def masks(self) -> list[Mask]:
        """Every distinct mask, in a fixed order."""
        ordered = [self.full, *self.visual, *self.text, *self.shapley.masks]
        return list(dict.fromkeys(ordered))


def plan_passes(policy: Policy) -> PassPlan:
    """The passes a fusion candidate needs under `policy`."""
    a, s = policy.ablation, policy.shapley
    return PassPlan(
        full=Mask(),
        visual=ablation_masks("visual", a.strategy, policy.seed, a.n_permutations),
        text=ablation_masks("text", a.strategy, policy.seed, a.n_permutations),
        shapley=shapley_passes(s.strategy, policy.seed),
    )


@dataclass
class AttentionSummary:
    """Attention reduced while streaming (gate/streaming.py), in place of the (N, H) arrays."""

    mass_per_query: np.ndarray  # (Q,) mean over a query's rows of the head-mean visual mass
    entropy_per_query: np.ndarray  # (Q,) same for the normalised entropy
    mass_per_head: np.ndarray  # (H,) mean over rows
    entropy_per_head: np.ndarray  # (H,)
    mass_per_row: np.ndarray  # (N,) head-mean visual mass per row (the profile's distribution)


@dataclass
class ModelMeasures:
    """A fusion model's per-query and per-row measures on the eval set (rows in dataset order)."""

    scores: np.ndarray  # (N,) unmasked scores
    ndcg: np.ndarray  # (Q,) NDCG@k, NaN for excluded queries
    ndcg_visual_masked: np.ndarray  # (Q,) mean over the visual-ablation passes
    ndcg_text_masked: np.ndarray  # (Q,)
    visual_drop: np.ndarray  # (Q,) relative NDCG drop with visual masked
    text_drop: np.ndarray  # (Q,)
    phi_text: np.ndarray  # (N,) Shapley value of the text modality
    phi_visual: np.ndarray  # (N,)
    visual_share: np.ndarray  # (N,) |phi_v| / (|phi_t| + |phi_v|), NaN where both are 0
    visual_share_per_query: np.ndarray  # (Q,) mean share over a query's candidates
    attention_mass: np.ndarray | None  # (N, H) visual attention mass
    attention_entropy: np.ndarray | None  # (N, H) normalised entropy
    n_passes: int  # masks scored per row
    provider: str
    attention: AttentionSummary | None = None  # set by streaming, which keeps no (N, H) arrays


def per_query_mean(groups: metrics.QueryGroups, values: np.ndarray) -> np.ndarray:
    """(N,) per-row values in caller order -> (Q,) mean of each query's finite values (NaN if none)."""
    v = groups.sort(np.asarray(values, dtype=np.float64))
    finite = np.isfinite(v)
    total = groups.per_query_sum(np.where(finite, v, 0.0))
    count = groups.per_query_sum(finite.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def score_baseline(scorer: Scorer, batch: Batch, policy: Policy) -> np.ndarray:
    """(N,) unmasked scores of a baseline (one pass)."""
    feeds = {name: batch.feeds[name] for name in scorer.contract.input_names}
    sub = Batch(batch.query_id, batch.item_id, batch.label, feeds)
    result = scorer.score_dataset(sub, [Mask()], batch_rows=policy.scoring.batch_rows, keep_attention=False)
    return result.scores[Mask()]


def measure_model(
    scorer: Scorer, batch: Batch, groups: metrics.QueryGroups, policy: Policy, *, progress: bool = False
) -> ModelMeasures:
    """Score every pass of a fusion model in one batched call and derive its measures.

    Raises:
        EvaluationError: ONNX Runtime failed or the outputs are unusable.
    """
    plan = plan_passes(policy)
    masks = plan.masks
    feeds = {name: batch.feeds[name] for name in scorer.contract.input_names}
    sub = Batch(batch.query_id, batch.item_id, batch.label, feeds)
    result = scorer.score_dataset(sub, masks, batch_rows=policy.scoring.batch_rows, progress=progress)
    s = result.scores
    k, gain = policy.metric.k, policy.metric.gain
    # All NDCG vectors in one call: (M, Q).
    ndcg_all = metrics.ndcg_at_k(groups, np.stack([s[m] for m in masks]), k=k, gain=gain)
    by_mask = dict(zip(masks, ndcg_all))
    ndcg = by_mask[plan.full]
    ndcg_v = np.mean([by_mask[m] for m in plan.visual], axis=0)
    ndcg_t = np.mean([by_mask[m] for m in plan.text], axis=0)
    phi_t, phi_v, share = plan.shapley.values(s)
    mass = entropy = None
    if result.attention is not None and "visual" in scorer.contract.attention_keys:
        mass = metrics.attention_mass(result.attention, scorer.contract.attention_keys["visual"])
        entropy = metrics.attention_entropy(result.attention)
    return ModelMeasures(
        scores=s[plan.full].astype(np.float64),
        ndcg=ndcg,
        ndcg_visual_masked=ndcg_v,
        ndcg_text_masked=ndcg_t,
        visual_drop=metrics.ablation_drop(ndcg, ndcg_v),
        text_drop=metrics.ablation_drop(ndcg, ndcg_t),
        phi_text=phi_t,
        phi_visual=phi_v,
        visual_share=share,
        visual_share_per_query=per_query_mean(groups, share),
        attention_mass=mass,
        attention_entropy=entropy,
        n_passes=len(masks),
        provider=scorer.provider,
    )


# ----- intervals ----------------------------------------------------------------------------------

def bootstrap_settings(policy: Policy) -> stats.BootstrapSettings:
    """The policy's [bootstrap] section and its seed, as the stats functions take them."""
    b = policy.bootstrap
    return stats.BootstrapSettings(n_resamples=b.n_resamples, confidence=b.confidence, seed=policy.seed, method=b.method)


def interval(values: np.ndarray, policy: Policy) -> stats.Interval:
    """Bootstrap CI of the mean over queries (NaN dropped) under the policy's settings."""
    return stats.bootstrap_ci(values, "mean", settings=bootstrap_settings(policy))


def intervals(
    vectors: Mapping[str, np.ndarray],
    policy: Policy,
    count_statistics: Mapping[str, tuple[int, stats.CountStatistic]] | None = None,
) -> dict[str, stats.Interval]:
    """`interval` of several per-query vectors at once, over one shared resample-index matrix
    per length (`stats.bootstrap_cis`): each result equals `interval(vectors[name], policy)` (to
    BLAS rounding). `count_statistics` (name -> (n, f)) share those resamples too, each equal to
    `stats.count_bootstrap_ci(n, f, ...)` under the policy's settings."""
    names = list(vectors)
    extra = dict(count_statistics or {})
    cis = stats.bootstrap_cis(
        [vectors[name] for name in names], "mean", settings=bootstrap_settings(policy), names=names,
        count_statistics=list(extra.values()),
    )
    return dict(zip([*names, *extra], cis))


def paired_interval(a: np.ndarray, b: np.ndarray, policy: Policy) -> stats.Interval:
    """Paired bootstrap CI of mean(a - b) over queries."""
    return stats.paired_bootstrap_ci(a, b, settings=bootstrap_settings(policy))


def pearson_statistic(groups: metrics.QueryGroups, a: np.ndarray, b: np.ndarray) -> stats.CountStatistic:
    """Global Pearson of a and b over the rows of resampled whole queries, as a statistic of the
    (c, Q) query counts (`stats.count_bootstrap_ci`).

    Rows of one query are not independent, so whole queries are resampled (a cluster bootstrap).
    The statistic is computed from per-query sums (n, Σa, Σb, Σa², Σb², Σab): a resample is its
    query counts times those sums, one matrix product per chunk, not a copy of rows.
    """
    x = groups.sort(np.asarray(a, dtype=np.float64))
    y = groups.sort(np.asarray(b, dtype=np.float64))
    x = x - x.mean()  # centring keeps the sums-of-squares formula well conditioned
    y = y - y.mean()
    sums = np.stack(
        [groups.sizes.astype(np.float64)]
        + [groups.per_query_sum(v) for v in (x, y, x * x, y * y, x * y)]
    )  # (6, Q)

    def statistic(counts: np.ndarray) -> np.ndarray:
        n, sx, sy, sxx, syy, sxy = (counts @ sums.T).T  # each (c,)
        cov = sxy - sx * sy / n
        var = (sxx - sx * sx / n) * (syy - sy * sy / n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(var > 0, np.clip(cov / np.sqrt(np.maximum(var, 0.0)), -1.0, 1.0), np.nan)

    return statistic


def pearson_interval(
    groups: metrics.QueryGroups, a: np.ndarray, b: np.ndarray, policy: Policy, *, resampled: stats.Interval | None = None
) -> stats.Interval:
    """Global Pearson correlation of a and b with a CI from a cluster bootstrap over queries
    (`pearson_statistic`). The point estimate is `fusionguard.metrics.pearson` on the observed
    rows. `resampled`: the bootstrap of `pearson_statistic` already computed with the policy's
    settings (e.g. by `intervals`, sharing the resamples of the other CIs); computed here when None.
    """
    estimate = metrics.pearson(a, b)
    if not np.isfinite(estimate):
        raise EvaluationError("the Pearson correlation is undefined: one model gives every row the same score")
    ci = resampled
    if ci is None:
        ci = stats.count_bootstrap_ci(groups.n_queries, pearson_statistic(groups, a, b), settings=bootstrap_settings(policy))
    return stats.Interval(estimate, ci.low, ci.high, ci.confidence, ci.n_resamples, ci.method, groups.n_queries)


def head_means(values: np.ndarray | None) -> list[float] | None:
    """(N, H) -> per-head mean over rows."""
    if values is None:
        return None
    return [float(v) for v in values.mean(axis=0)]
