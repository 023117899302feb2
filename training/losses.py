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

    Behaviour, stated plainly (issue 14): per head, d/dm [λ_v·(−log m) + λ_t·(−log(1 − m))]
    = −λ_v/m + λ_t/(1 − m). At the collapsed baseline's visual mass m ≈ 0.47 with the default
    λ_v = λ_t = 0.1 that is −0.213 + 0.189 ≈ −0.024 (issue 14 measured ≈ −0.03), against a task
    loss of ≈ 2.3: the term can hardly act, because the pair is stationary at
    m = λ_v/(λ_v + λ_t) = 0.5 and the collapsed baseline already sits at 0.46–0.47. Attention mass
    is not what collapses (the collapsed baseline attends to visual keys about half the time and
    still ignores them). The plan's premise — push attention towards visual keys, which spreads it
    (higher entropy) — points the wrong way on this benchmark: runs that escaped the text-only
    plateau have lower normalised attention entropy (0.49–0.75), sharp attention on the object
    patch. Kept as the plan defines it, not as a mitigation that works.
    """
    mass = attention[:, :, keys[0] : keys[1]].sum(-1)  # (N, H)
    return -torch.log(mass + eps).mean()


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Gradient reversal layer: identity forward, gradient multiplied by −scale backward.

    Source: Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation" (ICML 2015).
    """
    return _ScaleGrad.apply(x, -scale)


def standardize_per_query(x: Tensor, group: Tensor, n_groups: int, eps: float = 1e-6) -> Tensor:
    """(x − mean_q) / std_q within each query, per column for a (N, F) x; in the graph, so a scale
    change of x cannot change the result."""
    ones = torch.ones_like(x)
    zeros = torch.zeros((n_groups, *x.shape[1:]), device=x.device, dtype=x.dtype)
    count = zeros.index_add(0, group, ones).clamp_min(1)
    mean = zeros.index_add(0, group, x) / count
    centered = x - mean[group]
    var = zeros.index_add(0, group, centered**2) / count
    return centered / torch.sqrt(var + eps)[group]


def adversarial_residual_loss(visual_share: Tensor, text_prediction: Tensor, group: Tensor, n_groups: int, scale: float) -> Tensor:
    """Adversarial removal of text-predictable structure from the visual pathway.

    z = standardize_per_query(GRL(visual_share)) per column (N, F);  L_adv = mean (A(query, text) − z)².

    `visual_share` is the fused representation's visual-pathway residual (the visual keys' share of
    the attention output, o − text share; `CrossAttentionRanker.split`), `text_prediction` the
    adversary's output from its own text encoder (`TextAdversary`, no parameter shared with the
    ranker). The adversary minimises L_adv; the gradient reversal makes the ranker maximise it,
    but only through the visual share: the score, the text pathway and the task loss get no
    reversed gradient, so worse ranking is never rewarded. The target is standardised within each
    query (ranking uses only within-query differences; a scale change of the share cannot fool
    the adversary), the prediction is not: the adversary can always predict 0 (L_adv = 1), so the
    ranker's best reply is a visual share with no text-predictable part (R² = 0, L_adv = 1), never
    an anti-correlated one (which a free adversary predicts with a sign flip). This differs from
    the earlier construction, which standardised both sides (L = 2(1 − corr), maximised by
    anti-correlation) on the fused *score*, i.e. pushed the ranking away from what text predicts.
    Sources: gradient reversal, Ganin & Lempitsky, "Unsupervised Domain Adaptation by
    Backpropagation" (ICML 2015), the gradient reversal layer R_λ; adversarial removal of
    an attribute from a representation with a GRL adversary, Elazar & Goldberg, "Adversarial
    Removal of Demographic Attributes from Text Data" (EMNLP 2018) (their caveat applies:
    a fresh adversary may still recover some of what the trained one could not). Predicting one
    modality's part from the other and removing it is this project's adaptation to fusion.
    """
    target = standardize_per_query(grad_reverse(visual_share, scale), group, n_groups)
    return ((text_prediction - target) ** 2).mean()


def ogm_coefficients(score_text: float, score_visual: float, alpha: float) -> dict[str, float]:
    """OGM-GE's modulation coefficients, as in the authors' released code.

    ρ_v = s_v / s_t, ρ_t = 1 / ρ_v;  if ρ_v > 1: k_v = 1 − tanh(α·relu(ρ_v)), k_t = 1;
    else: k_t = 1 − tanh(α·relu(ρ_t)), k_v = 1.
    Text takes the released code's first (audio) role, so a tie (ρ = 1) dampens text, as there.
    Source: Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation"
    (CVPR 2022): coefficient Eq. 10 (the released main.py's comment names it so), the discrepancy
    ratio the equation before it (Eq. 9); GeWu-Lab/OGM-GE_CVPR2022 main.py `train_epoch`. s_m is `listwise_confidence` of the split
    head's unimodal scores (see `fusionguard.training.trainer._ogm_ge` for the ranking deviations).
    """
    rho_v = score_visual / max(score_text, 1e-12)
    rho_t = 1.0 / max(rho_v, 1e-12)
    if rho_v > 1:
        k_v, k_t = 1.0 - math.tanh(alpha * max(rho_v, 0.0)), 1.0
    else:
        k_t, k_v = 1.0 - math.tanh(alpha * max(rho_t, 0.0)), 1.0
    return {"rho_text": rho_t, "rho_visual": rho_v, "coef_text": k_t, "coef_visual": k_v}


def listwise_confidence(scores: Tensor, labels: Tensor, group: Tensor, n_groups: int) -> float:
    """Ranking analogue of OGM-GE's s_m = Σ_i softmax(o_m,i)_{y_i}: the softmax probability mass a
    score vector puts on the relevant items, mean over queries with a relevant item.

    s = mean_q Σ_{i∈q} p_i · softmax(s)_i with p the listwise target of `listwise_softmax_ce`.
    (A mean instead of the released sum over the batch: the ratio of two such scores is the same.)
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
    """OGM-GE's update of one modality's encoder gradients, as released:

    g ← k·g + ε,  ε ~ N(0, (noise · (std(g) + 1e-8))²),  std(g) of the *unmodulated* gradient.

    The GE noise is added to every modulated encoder, the undampened one (k = 1) included, with
    noise = 1 in the released code (main.py: `parms.grad * coeff + normal_(0, parms.grad.std() + 1e-8)`).
    The released code modulates only 4-D (convolution) weights of each encoder; the encoders here
    are linear layers, so every parameter with more than one element is modulated (a 1-element
    tensor has no std). Call between backward() and optimizer.step(), inside the window.
    """
    for p in params:
        if p.grad is None or p.grad.numel() < 2:
            continue
        std = float(p.grad.std())
        p.grad.mul_(coef)
        if noise > 0:
            # drawn on the CPU generator (deterministic by seed on any device), then moved
            eps = torch.randn(p.grad.shape, generator=generator, dtype=p.grad.dtype).to(p.grad.device)
            p.grad.add_(noise * (std + 1e-8) * eps)


def in_window(epoch: int, starts: int, ends: int) -> bool:
    """The released modulation window: starts <= epoch <= ends (both inclusive)."""
    return starts <= epoch <= ends


def scale_grad(x: Tensor, scale: float) -> Tensor:
    """Identity forward; the backward pass multiplies the gradient by `scale` (AGM's backward hook)."""
    return _ScaleGrad.apply(x, scale)


def shapley_pair(s_tv: Tensor, s_t: Tensor, s_v: Tensor, s_none: Tensor) -> tuple[Tensor, Tensor]:
    """Exact two-modality Shapley values, differentiable: φ_t = ½[(s_tv − s_v) + (s_t − s_none)],
    φ_v = ½[(s_tv − s_t) + (s_v − s_none)] — the formula of `fusionguard.metrics.shapley_values`
    (the gate's and the monitor's measure; a test checks they agree), in torch so gradients flow."""
    phi_t = 0.5 * ((s_tv - s_v) + (s_t - s_none))
    phi_v = 0.5 * ((s_tv - s_t) + (s_v - s_none))
    return phi_t, phi_v


def agm_coefficients(loss_text: float, loss_visual: float, mean_text: float, mean_visual: float, alpha: float) -> dict[str, float]:
    """AGM's per-modality gradient coefficients, as in the authors' released code.

    r_t = exp(L_v − L_t), r_v = exp(L_t − L_v)   (L_m: loss of modality m's mono-modal response now)
    r̄_t = exp(L̄_v − L̄_t), r̄_v = exp(L̄_t − L̄_v)   (L̄_m: running mean of L_m over all earlier steps)
    c_m = exp(α · min(r̄_m − r_m, 10)).
    A modality whose relative loss improved faster than its history says (r_m > r̄_m) is slowed
    (c_m < 1), the other sped up. Source: Li et al., "Boosting Multi-modal Model Performance with
    Adaptive Gradient Modulation" (ICCV 2023), mono-modal responses from Shapley values and the
    modulation coefficient; lihong2303/AGM_ICCV2023 run/CREMAD_main.py `train` (ratio_a,
    optimal_ratio_a, coeff_a) and model/CREMAD_net.py (the backward hooks that scale the
    mono-modal responses' gradients). The paper's equation numbers could not be checked here (no
    copy of the paper was reachable); the formulas are the released code's.
    """
    r_t, r_v = math.exp(loss_visual - loss_text), math.exp(loss_text - loss_visual)
    bar_t, bar_v = math.exp(mean_visual - mean_text), math.exp(mean_text - mean_visual)
    c_t = math.exp(alpha * min(bar_t - r_t, 10.0))
    c_v = math.exp(alpha * min(bar_v - r_v, 10.0))
    return {"agm_ratio_text": r_t, "agm_ratio_visual": r_v, "coef_text": c_t, "coef_visual": c_v}


def running_mean(mean: float, value: float, iteration: int) -> float:
    """AGM's cumulative mean over iterations 1, 2, ...: m ← m·(i − 1)/i + x/i."""
    return mean * (iteration - 1) / iteration + value / iteration


def prototype_logits(features: Tensor, prototypes: Tensor) -> Tensor:
    """PMR's similarity to each prototype: −‖h_i − c_g‖₂ -> (N, G)."""
    return -torch.cdist(features, prototypes)


def prototypical_ce(features: Tensor, prototypes: Tensor, labels: Tensor) -> Tensor:
    """PMR's prototypical cross-entropy: mean_i −log softmax_g(−‖h_i − c_g‖)_{y_i}.

    Source: Fan et al., "PMR: Prototypical Modal Rebalance for Multimodal Learning" (CVPR 2023),
    the prototypical cross-entropy (PCE: softmax over negative Euclidean distances to the class
    prototypes; the paper's equation numbers could not be checked here);
    fanyunfeng-bit/Modal-Imbalance-PMR main_Prototype_grad.py (`EU_dist`, `criterion(audio_sim, label)`;
    no temperature in that released path). Here the classes are the relevance grades.
    """
    return torch.nn.functional.cross_entropy(prototype_logits(features, prototypes), labels)


def prototype_score(features: Tensor, prototypes: Tensor, labels: Tensor) -> float:
    """PMR's modality score Σ_i softmax(−‖h_i − c_g‖)_{y_i} (its ratio picks the weak modality)."""
    with torch.no_grad():
        prob = torch.softmax(prototype_logits(features, prototypes), dim=-1)
        return float(prob.gather(1, labels[:, None]).sum())


def pmr_weights(score_text: float, score_visual: float, alpha: float) -> dict[str, float]:
    """PMR's released rule: ρ = s_t / s_v from prototype scores; ρ > 1 (text leads): the visual PCE
    gets weight α and text 0; ρ < 1: text gets α; ρ = 1: neither."""
    rho = score_text / max(score_visual, 1e-12)
    if rho > 1:
        return {"pmr_rho": rho, "weight_text": 0.0, "weight_visual": alpha}
    if rho < 1:
        return {"pmr_rho": rho, "weight_text": alpha, "weight_visual": 0.0}
    return {"pmr_rho": rho, "weight_text": 0.0, "weight_visual": 0.0}


def class_prototypes(features: Tensor, labels: Tensor, n_classes: int, old: Tensor | None, momentum: float) -> Tensor:
    """PMR's prototypes: the mean feature of each class, blended with the previous epoch's as
    c = (1 − m)·c_now + m·c_old (released `calculate_prototype`); a class without rows keeps its
    old prototype (zeros the first time)."""
    with torch.no_grad():
        sums = torch.zeros(n_classes, features.shape[1], device=features.device, dtype=features.dtype).index_add(0, labels, features)
        count = torch.zeros(n_classes, device=features.device, dtype=features.dtype).index_add(0, labels, torch.ones_like(labels, dtype=features.dtype))
        now = sums / count.clamp_min(1)[:, None]
        if old is None:
            return now
        now = torch.where((count > 0)[:, None], now, old)
        return (1 - momentum) * now + momentum * old


def min_norm_weights(g1: Tensor, g2: Tensor) -> tuple[float, float]:
    """Min-norm convex combination of two gradients, min_c ‖c·g1 + (1 − c)·g2‖², as MGDA's
    `_min_norm_element_from2` solves it (Sener & Koltun, NeurIPS 2018, Algorithm 1, two vectors),
    including its clamps: c = 0.999 if g1·g2 ≥ g1·g1, c = 0.001 if g1·g2 ≥ g2·g2."""
    v11, v12, v22 = float(g1 @ g1), float(g1 @ g2), float(g2 @ g2)
    if v12 >= v11:
        c = 0.999
    elif v12 >= v22:
        c = 0.001
    else:
        c = -(v12 - v22) / (v11 + v22 - 2 * v12)
    return c, 1.0 - c


def mmpareto_combine(g_mm: list[Tensor], g_uni: list[Tensor], g_total: list[Tensor], gamma: float) -> tuple[list[Tensor], dict[str, float]]:
    """MMPareto's gradient for one modality's encoder, as in the authors' released code.

    cos = cos(g_mm, g_uni) over the whole encoder; weights (w_mm, w_uni) = (½, ½) if cos > 0, else
    the min-norm (Pareto) weights of `min_norm_weights`; per parameter tensor
    g_new = 2·w_mm·g_mm + 2·w_uni·g_uni, and with r = ‖g_total‖ / ‖g_new‖ (g_total: the gradient of
    L_mm + L_text + L_visual on that tensor) the final gradient is γ·r·g_new if r > 1, else γ·g_new.
    Source: Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance"
    (ICML 2024), the MMPareto integration (direction: Pareto weights only under conflict;
    magnitude: enhanced);
    GeWu-Lab/MMPareto_ICML2024 code/MMPareto.py `train_epoch` (cos > 0 -> 0.5/0.5,
    `find_min_norm_element` otherwise, `2*k0*g_mm + 2*k1*g_u`, `diff = three_norm / new_norm`,
    gamma = 1.5). The paper's equation numbers could not be checked here; the formulas are the
    released code's.
    """
    flat_mm = torch.cat([g.flatten() for g in g_mm])
    flat_uni = torch.cat([g.flatten() for g in g_uni])
    cos = float(torch.nn.functional.cosine_similarity(flat_mm, flat_uni, dim=0))
    w_mm, w_uni = (0.5, 0.5) if cos > 0 else min_norm_weights(flat_mm, flat_uni)
    out = []
    for gm, gu, gt in zip(g_mm, g_uni, g_total, strict=True):
        new = 2 * w_mm * gm + 2 * w_uni * gu
        ratio = float(gt.norm()) / max(float(new.norm()), 1e-12)
        out.append(gamma * ratio * new if ratio > 1 else gamma * new)
    return out, {"cos": cos, "weight_mm": w_mm, "weight_uni": w_uni}


def opm_drop_probabilities(score_text: float, score_visual: float, q_base: float, lam: float) -> tuple[float, float]:
    """OPM's drop probability per modality, as in the authors' released code (`calcu_q`):

    q_m = q_base · (1 + λ·tanh(relu(s_m / s_other − 1))) if s_m > s_other, else 0; clipped to [0, 1].
    Only the dominant modality is ever dropped. Source: Wei, Li & Hu, "On-the-fly Modulation for
    Balanced Multimodal Learning" (TPAMI 2024), OPM (On-the-fly Prediction Modulation);
    GeWu-Lab/BML_TPAMI2024 code/models/Classifier.py `calcu_q`, `Modality_drop.execute_drop`.
    The paper's equation numbers could not be checked here; the formulas are the released code's.
    """
    r_t = math.tanh(max(score_text / max(score_visual, 1e-12) - 1.0, 0.0))
    r_v = math.tanh(max(score_visual / max(score_text, 1e-12) - 1.0, 0.0))
    q_t = q_base * (1 + lam * r_t) if r_t > 0 else 0.0
    q_v = q_base * (1 + lam * r_v) if r_v > 0 else 0.0
    return min(max(q_t, 0.0), 1.0), min(max(q_v, 0.0), 1.0)


def opm_feature_scale(q_text: float, q_visual: float, d_text: int, d_visual: int) -> float:
    """The released rescaling of the kept features, 1 / (1 − θ) with θ = Σ d_m q_m / Σ d_m."""
    theta = (d_text * q_text + d_visual * q_visual) / (d_text + d_visual)
    return 1.0 / (1.0 - theta)


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


def mla_alpha(batch_index: int, n_batches: int) -> float:
    """MLA's projector regulariser for the step at `batch_index` of an epoch of `n_batches`:
    α = 0.1^(1 + batch_index / n_batches) (released `GSPlugin.before_update`: lamda, alpha)."""
    return 0.1 ** (1.0 + batch_index / max(n_batches, 1))


def mla_projector_update(projector: Tensor, r: Tensor, alpha: float) -> Tensor:
    """One update of MLA's gradient-modification projector P (F, F) with the mean head input r (F,).

        k = P·r,   P ← P − k·kᵀ / (α + rᵀ·k),   then P ← P / ‖P‖_F   (the released normalisation)

    P shrinks the directions of the head's input space that earlier steps (of either modality)
    used, so that a modality's update of the shared head interferes less with what the other
    modality's updates taught it (the orthogonal-weight-modification projector of Zeng et al.,
    Nature Machine Intelligence 2019, that MLA's "gradient modification" uses). Source: Zhang,
    Yoon, Bansal & Yao, "Multimodal Representation Learning by Alternating Unimodal Adaptation"
    (CVPR 2024), the gradient-modification part of the method; released
    Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation utils/utils.py
    `GSPlugin.before_update`. The paper's equation numbers could not be checked here (no copy of
    the paper was reachable); the formulas are the released code's, including the Frobenius
    normalisation, which the OWM update itself does not have.
    """
    with torch.no_grad():
        r = r.reshape(-1, 1)  # (F, 1)
        k = projector @ r  # (F, 1)
        updated = projector - (k @ k.T) / (alpha + float(r.T @ k))
        return updated / torch.linalg.matrix_norm(updated)


def mla_modified_gradient(grad: Tensor, projector: Tensor) -> Tensor:
    """MLA's modified gradient of the shared head's weight W (out, F): ∇W ← ∇W · Pᵀ (released
    `w.grad.data = torch.mm(w.grad.data, torch.t(self.Pl.data))`)."""
    return grad @ projector.T


def listwise_entropy(scores: Tensor, group: Tensor, n_groups: int) -> Tensor:
    """Entropy of each query's softmax over its candidates' scores, −Σ_i p_i·log p_i -> (G,)."""
    log_p = scores - _segment_logsumexp(scores, group, n_groups)[group]
    return -torch.zeros(n_groups, device=scores.device, dtype=scores.dtype).index_add(0, group, log_p.exp() * log_p)


def mla_fusion_weights(entropies: Tensor) -> Tensor:
    """MLA's test-time uncertainty-based fusion weights from one entropy per modality (M,):

        λ_m = exp(max_j e_j − e_m) / Σ_j exp(max_j e_j − e_j)

    the less uncertain (lower-entropy) modality weighs more; the fused score is Σ_m λ_m·s_m.
    Source: Zhang et al. (CVPR 2024), test-time uncertainty-based model fusion; released main.py
    `calculate_gating_weights` (which computes each entropy over the softmax along the batch axis
    of the whole output, dim=0; see `fusionguard.training.mitigations` for what the ranking setting uses).
    """
    w = torch.exp(entropies.max() - entropies)
    return w / w.sum()
