"""Task loss and the collapse mitigations, each with its formula and source.

Rows of a batch belong to queries; `group` (N,) int64 holds each row's query index 0..G-1 inside
the batch. All per-query operations are segment operations over `group`, so queries may have
different numbers of candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _segment_logsumexp(x: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """log Σ_{i in g} exp(x_i) per group g -> (G,)."""
    gmax = torch.full((n_groups,), float("-inf"), device=x.device, dtype=x.dtype)
    gmax = gmax.scatter_reduce(0, group, x.detach(), reduce="amax", include_self=True)
    total = torch.zeros(n_groups, device=x.device, dtype=x.dtype).index_add(0, group, torch.exp(x - gmax[group]))
    return torch.log(total) + gmax


def listwise_softmax_ce(scores: Tensor, labels: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """Listwise softmax cross-entropy, the task loss.

    L = (1/G') Σ_q − Σ_{i∈q} p_i · log softmax(s)_i,  p_i = (2^{y_i} − 1) / Σ_{j∈q} (2^{y_j} − 1),

    averaged over the G' queries with at least one relevant item (the others have no target).
    Source: Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach" (ListNet,
    ICML 2007); Bruch et al., "An Analysis of the Softmax Cross Entropy Loss for Learning-to-Rank
    with Binary Relevance" (ICTIR 2019) for the exponential-gain target.
    """
    gain = torch.exp2(labels.to(scores.dtype)) - 1.0  # (N,)
    norm = torch.zeros(n_groups, device=scores.device, dtype=scores.dtype).index_add(0, group, gain)  # (G,)
    log_p = scores - _segment_logsumexp(scores, group, n_groups)[group]  # (N,)
    target = gain / norm.clamp_min(1e-12)[group]
    per_query = -torch.zeros(n_groups, device=scores.device, dtype=scores.dtype).index_add(0, group, target * log_p)
    valid = norm > 0
    return per_query[valid].sum() / valid.sum().clamp_min(1)


def modality_attention_penalty(attention: Tensor, keys: tuple[int, int], eps: float = 1e-6) -> Tensor:
    """Modality-balanced loss term: mean over rows and heads of −log(attention mass on `keys`).

    m_{n,h} = Σ_{k ∈ keys} a_{n,h,k};  L_m = mean_{n,h} −log(m_{n,h} + eps).
    The modality-balanced loss is L = L_task + λ_visual·L_visual + λ_text·L_text (+ aux heads);
    per head, λ_v·(−log m) + λ_t·(−log(1 − m)) is smallest at m = λ_v / (λ_v + λ_t), so the
    text term keeps the visual term from starving text (with λ_text = 0, m → 1 is optimal).
    Source: the research plan's Modality-Balanced Loss (L_total = L_task + λ_visual·L_visual +
    λ_text·L_text, L_visual = −log(visual attention weight)), fusionguard's seed/ document.
    """
    mass = attention[:, :, keys[0] : keys[1]].sum(-1)  # (N, H)
    return -torch.log(mass + eps).mean()


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Gradient reversal layer: identity forward, gradient multiplied by −scale backward.

    Source: Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation" (ICML 2015).
    """
    return _GradientReversal.apply(x, scale)


def standardize_per_query(x: Tensor, group: Tensor, n_groups: int, eps: float = 1e-6) -> Tensor:
    """(x − mean_q) / std_q within each query, so a scale change cannot fool the adversary."""
    ones = torch.ones_like(x)
    count = torch.zeros(n_groups, device=x.device, dtype=x.dtype).index_add(0, group, ones).clamp_min(1)
    mean = torch.zeros(n_groups, device=x.device, dtype=x.dtype).index_add(0, group, x) / count
    centered = x - mean[group]
    var = torch.zeros(n_groups, device=x.device, dtype=x.dtype).index_add(0, group, centered**2) / count
    return centered / torch.sqrt(var + eps)[group]


def adversarial_loss(fused_score: Tensor, text_prediction: Tensor, group: Tensor, n_groups: int, scale: float) -> Tensor:
    """Adversarial fusion: a text-only adversary tries to predict the fused model's score.

    L_adv = mean_i (A(text)_i − GRL(ẑ)_i)², ẑ = the fused score standardised within its query.
    The adversary A (the unimodal text head, fed only text) minimises L_adv; the gradient reversal
    makes the fusion model *maximise* it, i.e. push its ranking away from what text alone
    predicts. Since the score is a deterministic function of (query, text, visual), the only way to
    be unpredictable from text is to depend on visual, so the visual contribution survives.
    Source: gradient reversal from Ganin & Lempitsky (ICML 2015); the text-predictability
    adversary is this project's adaptation to ranking (cf. adversarial modality-specific fusion).
    """
    target = grad_reverse(standardize_per_query(fused_score, group, n_groups), scale)
    pred = standardize_per_query(text_prediction, group, n_groups)
    return ((pred - target) ** 2).mean()


def ogm_coefficients(perf_text: float, perf_visual: float, alpha: float) -> dict[str, float]:
    """OGM-GE gradient coefficients for the two modalities.

    ρ_t = s_t / s_v, ρ_v = 1/ρ_t, where s_m is modality m's unimodal performance; the dominant
    modality u (ρ_u > 1) gets k_u = 1 − tanh(α·ρ_u), the other keeps k = 1.
    Source: Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation"
    (CVPR 2022), Eq. 9-10. Here s_m is a ranking performance (see `listwise_confidence`).
    """
    rho_t = perf_text / max(perf_visual, 1e-12)
    rho_v = perf_visual / max(perf_text, 1e-12)
    k_t = 1.0 - math.tanh(alpha * rho_t) if rho_t > 1 else 1.0
    k_v = 1.0 - math.tanh(alpha * rho_v) if rho_v > 1 else 1.0
    return {"rho_text": rho_t, "rho_visual": rho_v, "coef_text": k_t, "coef_visual": k_v}


def listwise_confidence(scores: Tensor, labels: Tensor, group: Tensor, n_groups: int) -> float:
    """Ranking analogue of OGM-GE's s_m = Σ softmax(o_m)_y: the softmax probability mass a score
    vector puts on the relevant items, mean over queries with a relevant item.

    s = mean_q Σ_{i∈q} p_i · softmax(s)_i with p the listwise target of `listwise_softmax_ce`.
    """
    with torch.no_grad():
        gain = torch.exp2(labels.to(scores.dtype)) - 1.0
        norm = torch.zeros(n_groups, device=scores.device, dtype=scores.dtype).index_add(0, group, gain)
        prob = torch.exp(scores - _segment_logsumexp(scores, group, n_groups)[group])
        target = gain / norm.clamp_min(1e-12)[group]
        per_query = torch.zeros(n_groups, device=scores.device, dtype=scores.dtype).index_add(0, group, target * prob)
        valid = norm > 0
        return float(per_query[valid].sum() / valid.sum().clamp_min(1))


def modulate_gradients(params: list[torch.nn.Parameter], coef: float, noise: float, generator: torch.Generator | None = None) -> None:
    """OGM-GE's update on one modality's parameters: g ← k·g + N(0, (noise·std(g))²).

    The Gaussian noise is the GE ("generalization enhancement") part of OGM-GE, applied only when
    the modality is dampened (k < 1). Call between backward() and optimizer.step().
    """
    if coef >= 1.0:
        return
    for p in params:
        if p.grad is None:
            continue
        p.grad.mul_(coef)
        if noise > 0 and p.grad.numel() > 1:
            std = p.grad.std()
            # drawn on the CPU generator (deterministic by seed on any device), then moved
            eps = torch.randn(p.grad.shape, generator=generator, dtype=p.grad.dtype).to(p.grad.device)
            p.grad.add_(noise * std * eps)


@dataclass(frozen=True)
class DropPlan:
    """Which queries of a batch lose which modality's tokens (modality dropout)."""

    text: Tensor  # (G,) bool: drop text_tokens for this query
    visual: Tensor  # (G,) bool: drop visual_tokens for this query


def modality_dropout_plan(n_groups: int, p: float, generator: torch.Generator, device) -> DropPlan:
    """Modality dropout: each query independently loses its text tokens with probability p, or its
    visual tokens with probability p, never both; the query embedding is always kept (without it
    there is nothing to rank against). Dropped tokens are zeroed for every candidate of the query.
    Source: Neverova et al., "ModDrop: Adaptive Multi-modal Gesture Recognition" (TPAMI 2016).
    """
    u = torch.rand(n_groups, generator=generator).to(device)
    return DropPlan(text=u < p, visual=(u >= p) & (u < 2 * p))


def apply_dropout(text_tokens: Tensor, visual_tokens: Tensor, plan: DropPlan, group: Tensor) -> tuple[Tensor, Tensor]:
    keep_t = (~plan.text[group]).to(text_tokens.dtype)[:, None, None]
    keep_v = (~plan.visual[group]).to(visual_tokens.dtype)[:, None, None]
    return text_tokens * keep_t, visual_tokens * keep_v
