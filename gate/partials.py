"""One whole-query batch scored and reduced: the step both streaming engines run.

The thread engine (`fusionguard.gate.streaming`) runs `reduce_batch` in worker threads, the Ray engine
(`fusionguard.gate.engine_ray`) in actors; the driver assembles the partials with the same code
(`fusionguard.gate.streaming.assemble`). Keeping the step here lets both engines import it without importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fusionguard import metrics
from fusionguard.dataset import Batch
from fusionguard.masking import Mask
from fusionguard.profile import feature_summaries
from fusionguard.scorer import Scorer

from fusionguard.gate.measures import PassPlan, per_query_mean
from fusionguard.gate.policy import Policy

__all__ = ["RUN_ROWS", "BatchPartial", "chunk_rows", "reduce_batch"]

# Rows per session.run: the policy's batch_rows decides how batches are cut (and so the permute
# masks' shuffles); this bounds the stacked masked copies and ONNX Runtime's activations within a
# batch. Measured on the demo's V2 export: peak RSS 1.77 GB with one 65,536-row session.run per
# batch, 0.96 GB with 8,192-row batches (benchmarks/streaming.py measures the gate with it).
RUN_ROWS = 8192


@dataclass
class BatchPartial:
    """One whole-query batch reduced: small, picklable (Ray actors return it)."""

    query_id: np.ndarray  # (q,) the batch's query ids, ascending (its QueryGroups order)
    item_id: np.ndarray  # (n,) rows in file order
    label: np.ndarray  # (n,)
    row_query_id: np.ndarray  # (n,)
    ndcg: np.ndarray  # (M, q) NDCG@k per mask
    share_per_query: np.ndarray | None  # (q,) fusion models only
    score: np.ndarray  # (n,) float32 unmasked score
    phi_text: np.ndarray | None  # (n,) float64
    phi_visual: np.ndarray | None
    share: np.ndarray | None
    mass_per_query: np.ndarray | None = None  # (q,)
    entropy_per_query: np.ndarray | None = None
    mass_rows: np.ndarray | None = None  # (n, H): folded into per-head sums, then dropped
    entropy_rows: np.ndarray | None = None
    features: dict[str, np.ndarray] = field(default_factory=dict)  # input -> (n,) L2 norms


def reduce_batch(
    scorer: Scorer, batch: Batch, masks: list[Mask], plan: PassPlan | None, policy: Policy, *,
    features: bool = False, means: dict[str, np.ndarray] | None = None,
) -> BatchPartial:
    """Score one whole-query batch under `masks` and reduce it (see the module docstring).

    `plan` None: a baseline (one unmasked pass, scores only). `means`: for "mean" masks."""
    outs = scorer.run(batch.feeds, masks, groups=batch.query_id, means=means, max_rows=RUN_ROWS)
    scores = {m: o.score for m, o in zip(masks, outs)}
    feats = feature_summaries(batch.feeds) if features else {}
    if plan is None:
        return BatchPartial(np.zeros(0), batch.item_id, batch.label, batch.query_id, np.zeros((0, 0)), None,
                            scores[masks[0]], None, None, None, features=feats)
    groups = metrics.QueryGroups.from_arrays(batch.query_id, batch.item_id, batch.label)
    ndcg = metrics.ndcg_at_k(groups, np.stack([scores[m] for m in masks]), k=policy.metric.k, gain=policy.metric.gain)
    phi_t, phi_v, share = plan.shapley.values(scores)
    part = BatchPartial(groups.query_ids, batch.item_id, batch.label, batch.query_id, ndcg,
                        per_query_mean(groups, share), scores[plan.full], phi_t, phi_v, share, features=feats)
    attention = outs[masks.index(plan.full)].attention
    if attention is not None and "visual" in scorer.contract.attention_keys:
        mass = metrics.attention_mass(attention, scorer.contract.attention_keys["visual"])
        entropy = metrics.attention_entropy(attention)
        part.mass_rows, part.entropy_rows = mass, entropy
        part.mass_per_query = per_query_mean(groups, mass.mean(axis=1))
        part.entropy_per_query = per_query_mean(groups, entropy.mean(axis=1))
    return part


def chunk_rows(policy: Policy, masks: list[Mask]) -> int:
    """Dataset rows per batch: `Scorer.score_dataset`'s batch_rows // masks, which fixes the
    permute masks' shuffles. A single unmasked pass (a baseline) draws nothing, so its batches
    are capped at RUN_ROWS rows: its scores do not depend on the batch wherever the model scores
    rows independently, which the equality tests check."""
    rows = max(1, policy.scoring.batch_rows // max(len(masks), 1))
    if len(masks) == 1 and masks[0].is_unmasked:
        rows = min(rows, RUN_ROWS)
    return rows
