"""Training-time diagnostics: ablation drops, attention statistics, per-modality gradient norms.

The measures themselves come from `fusionguard.metrics` (one implementation of each); this module
only produces the torch-side inputs: scores with a modality masked, the attention tensor, and
gradient norms, which need torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fusionguard.masking import GroupOrder, Mask, ablation_masks, modality_permutations
from fusionguard.metrics import ablation_drop, attention_entropy, attention_mass, ndcg_at_k
from fusionguard.training.data import Split
from fusionguard.training.models import Ranker


@dataclass
class SplitScores:
    """Scores of one split under the unmasked pass and each single-modality mask."""

    full: np.ndarray  # (N,)
    visual_masked: np.ndarray | None  # (N,) visual_tokens masked
    text_masked: np.ndarray  # (N,) query and text_tokens masked (the contract's text modality)
    attention: np.ndarray | None  # (N, H, K) unmasked pass; None for a model without attention


def masked_inputs(model: Ranker, split: Split, mask: Mask) -> dict[str, torch.Tensor | None]:
    """The split's inputs with `mask` applied, by the core's one definition of masking
    (`fusionguard.masking`): every input of a masked modality (the model's `modalities`, the same
    map the exported contract carries) is zeroed, or permuted within each query, all inputs of a
    modality with the same permutation, drawn exactly as the scorer draws it for these rows."""
    inputs: dict[str, torch.Tensor | None] = {
        "query": split.query, "text_tokens": split.text_tokens,
        "visual_tokens": split.visual_tokens if model.has_visual else None,
    }
    order = GroupOrder(split.group.cpu().numpy()) if mask.strategy == "permute" else None
    for modality, perm in modality_permutations(mask, split.n_rows, order).items():
        for name in model.modalities[modality]:
            x = inputs[name]
            if x is None:
                continue
            inputs[name] = torch.zeros_like(x) if perm is None else x[torch.from_numpy(perm).to(x.device)]
    return inputs


@torch.no_grad()
def score_split(model: Ranker, split: Split, mask: str = "zero", seed: int = 0, chunk_rows: int = 8192) -> SplitScores:
    """Run the model on a split three times (unmasked, visual masked, text masked) in eval mode.

    `mask` is the strategy ("zero" or "permute") and `seed` the permutation seed of both
    ablations, as in the gate's first ablation pass (`fusionguard.gate.measures.plan_passes`).
    """
    was_training = model.training
    model.eval()

    def run(q, t, v):
        scores, atts = [], []
        for start in range(0, q.shape[0], chunk_rows):
            sl = slice(start, start + chunk_rows)
            s, a = model(q[sl], t[sl], None if v is None else v[sl])
            scores.append(s.float().cpu())
            if a is not None:  # a model without attention (late fusion) returns None
                atts.append(a.float().cpu())
        return torch.cat(scores).numpy(), (torch.cat(atts).numpy() if atts else None)

    def scores(m: Mask):
        x = masked_inputs(model, split, m)
        return run(x["query"], x["text_tokens"], x["visual_tokens"])

    full, att = scores(Mask())
    # One ablation mask per modality with the gate's definition (fusionguard.masking.ablation_masks).
    visual_masked = scores(ablation_masks("visual", mask, seed)[0])[0] if model.has_visual else None
    text_masked = scores(ablation_masks("text", mask, seed)[0])[0]
    model.train(was_training)
    return SplitScores(full, visual_masked, text_masked, att)


def summarize(model: Ranker, split: Split, scores: SplitScores, k: int = 10) -> dict[str, float | None]:
    """Mean NDCG@k, visual/text ablation drop (mean over queries of (full − masked)/full),
    visual attention mass and normalised entropy (mean over rows and heads; None without attention)."""
    stacked = [scores.full, scores.text_masked] + ([scores.visual_masked] if scores.visual_masked is not None else [])
    ndcg = ndcg_at_k(split.groups, np.stack(stacked), k=k)  # (M, Q)
    out: dict[str, float | None] = {
        "ndcg": float(np.nanmean(ndcg[0])),
        "text_drop": float(np.nanmean(ablation_drop(ndcg[0], ndcg[1]))),
        "visual_drop": None,
        "visual_attention_mass": None,
        "attention_entropy": None if scores.attention is None else float(np.mean(attention_entropy(scores.attention))),
    }
    if scores.visual_masked is not None:
        out["visual_drop"] = float(np.nanmean(ablation_drop(ndcg[0], ndcg[2])))
    if scores.visual_masked is not None and scores.attention is not None:
        out["visual_attention_mass"] = float(np.mean(attention_mass(scores.attention, model.attention_keys["visual"])))
    return out


def head_attention(model: Ranker, scores: SplitScores) -> dict[str, list[float]]:
    """Per-head means over rows of the visual attention mass and the normalised attention entropy
    (empty when the model has no attention or no visual keys), so that a collapse of attention
    itself (mass near 0 or 1, entropy near 0) can be told apart from a uniform, untrained one."""
    if scores.attention is None:
        return {}
    out = {"attention_entropy_per_head": attention_entropy(scores.attention).mean(axis=0).tolist()}
    if "visual" in model.attention_keys:
        out["visual_attention_mass_per_head"] = attention_mass(scores.attention, model.attention_keys["visual"]).mean(axis=0).tolist()
    return out


def modality_grad_norms(model: Ranker) -> dict[str, float]:
    """L2 norm of the current gradients of each modality's own parameters (call after backward)."""
    norms = {}
    for modality, params in model.modality_parameters().items():
        sq = sum(float(p.grad.detach().pow(2).sum()) for p in params if p.grad is not None)
        norms[modality] = sq**0.5
    return norms
