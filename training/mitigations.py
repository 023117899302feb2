"""Each variant's training step: its loss, and what it does to the gradients after backward().

The trainer calls, per batch,

    loss, extra, after_backward = step_loss(model, config, batch, epoch, state, gen)
    loss.backward(); ...; extra |= after_backward()   # OGM-GE, MMPareto rewrite gradients here
    clip, optimizer.step()

and, per epoch, `epoch_start(model, config, split, epoch, state)` (PMR's prototypes). `state` is
a plain dict of floats and tensors that the trainer keeps in resume.pt, so a resumed run continues
AGM's running means and PMR's prototypes. The formulas and their sources are in
`fusionguard.training.losses`; this module wires them to the models and lists, per variant, what the ranking
setting forces to differ from the paper (the docstrings of the `_step_*` functions).

Ranking setting, common to the split-head methods (OGM-GE, OPM, PMR): the papers classify one
sample with a linear head over concatenated unimodal features, out = W_a·a + W_v·v + b, so a
modality's prediction is its half of the head, W_m·m + b/2. The ranker scores a (query,
candidate) row with an MLP head over [φ(q), o, φ(q)⊙o], and o, the attention output, splits
exactly into a text share and a visual share (`CrossAttentionRanker.split`, bias halved as in
the released code). A modality's unimodal score is the fused model's own head applied to its
share, head([φ(q), o_m, φ(q)⊙o_m]). Deviations this forces: (1) the head is nonlinear, so the
two unimodal scores do not add up to the fused score as they do in the papers; (2) both shares
are read with the query φ(q), which belongs to the text modality in the contract — without it a
candidate cannot be ranked at all; (3) the shares come from one joint softmax, so each is scaled
by its modality's attention mass; (4) the per-sample "probability of the true class" becomes the
listwise probability mass on the relevant candidates (`losses.listwise_confidence`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fusionguard.training import losses
from fusionguard.training.config import TrainConfig
from fusionguard.training.models import CrossAttentionRanker, MLARanker, Ranker
from fusionguard.training.variants import canonical

AfterBackward = Callable[[], dict[str, float]]
MBL_VARIANTS = ("mbl", "bridged-two-stream-mbl")


def _nothing() -> dict[str, float]:
    return {}


def _cross(model: Ranker, variant: str) -> CrossAttentionRanker:
    if not isinstance(model, CrossAttentionRanker):  # the registry pairs these variants with cross-attention
        raise TypeError(f"variant {variant} needs the cross-attention model, got {type(model).__name__}")
    return model


def epoch_start(model: Ranker, config: TrainConfig, split: Any, epoch: int, state: dict[str, Any]) -> None:
    """Per-epoch work before the first step: PMR's class (grade) prototypes over the train split;
    MLA's step counter within the epoch (its projector's α follows it)."""
    if canonical(config.variant) == "mla":
        state["mla_batch"] = 0
        state["mla_n_batches"] = -(-split.n_queries // config.optim.batch_queries)
        return
    if canonical(config.variant) != "pmr":
        return
    cross = _cross(model, "pmr")
    feats_t, feats_v = [], []
    with torch.no_grad():
        for start in range(0, split.query.shape[0], 8192):
            sl = slice(start, start + 8192)
            parts = cross.split(split.query[sl], split.text_tokens[sl], split.visual_tokens[sl])
            feats_t.append(parts.text)
            feats_v.append(parts.visual)
    labels = split.label.long()
    n_classes = int(labels.max()) + 1
    m = config.mitigation.pmr_momentum
    state["pmr_proto_text"] = losses.class_prototypes(torch.cat(feats_t), labels, n_classes, state.get("pmr_proto_text"), m)
    state["pmr_proto_visual"] = losses.class_prototypes(torch.cat(feats_v), labels, n_classes, state.get("pmr_proto_visual"), m)


def epoch_end(model: Ranker, config: TrainConfig, split: Any, epoch: int, state: dict[str, Any]) -> None:
    """Per-epoch work after the last step, before the diagnostics: MLA's fusion weights."""
    if canonical(config.variant) != "mla":
        return
    mla = _mla(model)
    entropies = torch.zeros(2)
    with torch.no_grad():
        for start in range(0, split.n_queries, 256):  # whole queries per chunk: the entropy is per query
            stop = min(start + 256, split.n_queries)
            rows = slice(int(split.offsets[start]), int(split.offsets[stop]))
            sizes = torch.from_numpy(np.diff(split.offsets[start : stop + 1]))
            group = torch.repeat_interleave(torch.arange(stop - start), sizes).to(split.query.device)
            s_t, s_v, _ = mla.unimodal_scores(split.query[rows], split.text_tokens[rows], split.visual_tokens[rows])
            for m, scores in enumerate((s_t, s_v)):
                entropies[m] += float(losses.listwise_entropy(scores, group, stop - start).sum())
        weights = losses.mla_fusion_weights(entropies / split.n_queries)
        mla.fusion_weights.copy_(weights.to(mla.fusion_weights.device))
    state["mla_fusion_text"], state["mla_fusion_visual"] = float(weights[0]), float(weights[1])


def step_loss(model: Ranker, config: TrainConfig, q: Tensor, t: Tensor, v: Tensor | None, label: Tensor, group: Tensor,
              n_groups: int, epoch: int, state: dict[str, Any], gen: torch.Generator) -> tuple[Tensor, dict[str, float], AfterBackward]:
    """The variant's loss for one batch, its logged quantities, and its after-backward step."""
    variant = canonical(config.variant)
    fn = _STEPS.get(variant, _step_plain)
    return fn(model, config, q, t, v, label, group, n_groups, epoch, state, gen)


def _task(scores: Tensor, label: Tensor, group: Tensor, n_groups: int) -> Tensor:
    return losses.listwise_softmax_ce(scores, label, group, n_groups)


def _step_plain(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """v1, baseline, the two-stream models, late fusion: the listwise task loss alone."""
    task = _task(model.train_outputs(q, t, v, aux=False).score, label, group, n_groups)
    return task, {"task_loss": float(task.detach())}, _nothing


def _step_mbl(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """mbl / bridged-two-stream-mbl: the research plan's modality-balanced loss
    (`losses.modality_attention_penalty`) plus both unimodal auxiliary heads."""
    mit = config.mitigation
    out = model.train_outputs(q, t, v, aux=True)
    task = _task(out.score, label, group, n_groups)
    pen_v = losses.modality_attention_penalty(out.attention, model.attention_keys["visual"])
    pen_t = losses.modality_attention_penalty(out.attention, model.attention_keys["text"])
    aux = _task(out.text_score, label, group, n_groups) + _task(out.visual_score, label, group, n_groups)
    loss = task + mit.lambda_visual * pen_v + mit.lambda_text * pen_t + mit.lambda_aux * aux
    extra = {"task_loss": float(task.detach()), "visual_penalty": float(pen_v.detach()),
             "text_penalty": float(pen_t.detach()), "aux_loss": float(aux.detach())}
    return loss, extra, _nothing


def _step_dropout(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """modality-dropout: ModDrop's symmetric token dropout (`losses.modality_dropout_plan`)."""
    plan = losses.modality_dropout_plan(n_groups, config.mitigation.modality_dropout, gen, q.device)
    t, v = losses.apply_dropout(t, v, plan, group)
    task = _task(model.train_outputs(q, t, v, aux=False).score, label, group, n_groups)
    extra = {"task_loss": float(task.detach()), "dropped_text": float(plan.text.float().mean()),
             "dropped_visual": float(plan.visual.float().mean())}
    return task, extra, _nothing


def _step_adversarial(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """adversarial: task + λ_adv · `losses.adversarial_residual_loss` on the visual share of the
    split, with the adversary's own text encoder (`TextAdversary`). The adversary's loss reaches
    the ranker only through the reversed gradient on the visual share."""
    cross = _cross(model, "adversarial")
    mit = config.mitigation
    parts = cross.split(q, t, v)
    task = _task(cross.head_score(parts.qp, parts.text + parts.visual), label, group, n_groups)
    adv = losses.adversarial_residual_loss(parts.visual, cross.adversary(q, t), group, n_groups, mit.grl_scale)
    loss = task + mit.lambda_adv * adv
    return loss, {"task_loss": float(task.detach()), "adversary_mse": float(adv.detach())}, _nothing


def _unimodal_split_scores(cross: CrossAttentionRanker, parts) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return cross.head_score(parts.qp, parts.text), cross.head_score(parts.qp, parts.visual)


def _step_ogm(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """ogm-ge: OGM-GE as released (`losses.ogm_coefficients`, `losses.modulate_gradients`).

    Unimodal scores come from the fused model's own split head (module docstring), not from
    masked passes. Inside the window [ogm_modulation_starts, ogm_modulation_ends] (inclusive, as
    released) every parameter of each modality's encoder (`encoder_parameters`: text = query
    tower + text K/V, visual = visual K/V) gets g ← k_m·g + N(0, (ogm_noise·std(g))²); the
    undampened modality gets the GE noise too, as released. Deviations: the query tower reads
    the text modality's input but also forms the query state that attends to visual keys, so
    damping text slows that part of the visual path too; the recipe's global gradient clipping
    (every variant's) runs after the modulation, the released code has none; modulation per step
    on the batch's queries, as released per batch. The released code trains with SGD (momentum
    0.9); under the recipe's AdamW a k that stays roughly constant is largely normalised away by
    Adam's running RMS — `optim.optimizer = "sgd"` runs it as released (`trainer.make_optimizer`).
    """
    cross = _cross(model, "ogm-ge")
    mit = config.mitigation
    parts = cross.split(q, t, v)
    task = _task(cross.head_score(parts.qp, parts.text + parts.visual), label, group, n_groups)
    s_t, s_v = _unimodal_split_scores(cross, parts)
    coefs = losses.ogm_coefficients(losses.listwise_confidence(s_t, label, group, n_groups),
                                    losses.listwise_confidence(s_v, label, group, n_groups), mit.ogm_alpha)
    active = losses.in_window(epoch, mit.ogm_modulation_starts, mit.ogm_modulation_ends)

    def after_backward() -> dict[str, float]:
        if active:
            enc = cross.encoder_parameters()
            losses.modulate_gradients(enc["text"], coefs["coef_text"], mit.ogm_noise, gen)
            losses.modulate_gradients(enc["visual"], coefs["coef_visual"], mit.ogm_noise, gen)
        return {**coefs, "ogm_active": float(active)}

    return task, {"task_loss": float(task.detach())}, after_backward


def _step_opm(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """opm: OPM's dominant-modality feature dropout as released (`losses.opm_drop_probabilities`).

    After the warm-up (epoch > opm_warmup_epochs, as released `warm_up = epoch <= 5`), with
    probability p_exe per batch, each query drops the dominant modality's share of the attention
    output (the feature the split head reads) with probability q_m; kept features are scaled by
    1/(1 − θ). Deviations: dropped per query, not per row (all candidates of a query are ranked
    against each other, so they must see the same modalities); a query that loses both shares is
    left out of the loss, as released drops such samples (with only the dominant modality ever
    dropped this cannot happen). The dominance test uses the split-head scores before the drop, as
    released (`performance_1/2` from the detached head on undropped features).
    """
    cross = _cross(model, "opm")
    mit = config.mitigation
    parts = cross.split(q, t, v)
    s_t, s_v = _unimodal_split_scores(cross, parts)
    q_t, q_v = losses.opm_drop_probabilities(losses.listwise_confidence(s_t, label, group, n_groups),
                                             losses.listwise_confidence(s_v, label, group, n_groups), mit.opm_q_base, mit.opm_lambda)
    execute = epoch > mit.opm_warmup_epochs and float(torch.rand(1, generator=gen)) < mit.opm_p_exe
    o, lab = parts.text + parts.visual, label
    dropped_t = dropped_v = 0.0
    if execute:
        keep_t = (torch.rand(n_groups, generator=gen) >= q_t).to(q.device)  # (G,) Bernoulli(1 - q_t)
        keep_v = (torch.rand(n_groups, generator=gen) >= q_v).to(q.device)
        scale = losses.opm_feature_scale(q_t, q_v, parts.text.shape[1], parts.visual.shape[1])
        o = scale * (parts.text * keep_t[group, None].to(o.dtype) + parts.visual * keep_v[group, None].to(o.dtype))
        lab = label * (keep_t | keep_v)[group].to(label.dtype)  # a query with nothing left has no target
        dropped_t, dropped_v = float((~keep_t).float().mean()), float((~keep_v).float().mean())
    task = _task(cross.head_score(parts.qp, o), lab, group, n_groups)
    extra = {"task_loss": float(task.detach()), "opm_q_text": q_t, "opm_q_visual": q_v, "opm_executed": float(execute),
             "dropped_text": dropped_t, "dropped_visual": dropped_v}
    return task, extra, _nothing


def _step_agm(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """agm: AGM as released (`losses.agm_coefficients`, `losses.scale_grad`).

    Mono-modal responses are the exact two-modality Shapley values of the fused score
    (`losses.shapley_pair`, the formula of `fusionguard.metrics.shapley_values`) from four passes
    with zero masking of each modality's contract inputs (text = query + text tokens, as in the
    gate's passes); the model is trained on φ_t^{c_t} + φ_v^{c_v} where the superscript scales only
    the gradient. Zero-masking everything gives one constant s(∅,∅) for every row, so
    φ_t + φ_v = s(t,v) − s(∅,∅) ranks exactly like s(t,v) and the listwise loss is unchanged; the
    released code drops s(∅,∅) from its responses, which differs by that constant only. L_m is the
    listwise loss of φ_m (the released code: cross-entropy of the mono-modal response); running
    means over all steps of the run, updated after the coefficient, as released. Outside the
    window the coefficients are 1 (the released hooks keep their last value instead).
    """
    mit = config.mitigation
    zq, zt, zv = torch.zeros_like(q), torch.zeros_like(t), torch.zeros_like(v)
    s_tv = model.train_outputs(q, t, v, aux=False).score
    s_t = model.train_outputs(q, t, zv, aux=False).score
    s_v = model.train_outputs(zq, zt, v, aux=False).score
    s_none = model.train_outputs(zq, zt, zv, aux=False).score
    phi_t, phi_v = losses.shapley_pair(s_tv, s_t, s_v, s_none)
    with torch.no_grad():
        l_t, l_v = float(_task(phi_t, label, group, n_groups)), float(_task(phi_v, label, group, n_groups))
    it = int(state.get("agm_iteration", 0)) + 1
    mean_t, mean_v = float(state.get("agm_mean_text", 0.0)), float(state.get("agm_mean_visual", 0.0))
    coefs = losses.agm_coefficients(l_t, l_v, mean_t, mean_v, mit.agm_alpha)
    if not losses.in_window(epoch, 0, mit.agm_modulation_ends):
        coefs.update(coef_text=1.0, coef_visual=1.0)
    state["agm_iteration"] = it
    state["agm_mean_text"] = losses.running_mean(mean_t, l_t, it)
    state["agm_mean_visual"] = losses.running_mean(mean_v, l_v, it)
    score = losses.scale_grad(phi_t, coefs["coef_text"]) + losses.scale_grad(phi_v, coefs["coef_visual"])
    task = _task(score, label, group, n_groups)
    extra = {"task_loss": float(task.detach()), "agm_loss_text": l_t, "agm_loss_visual": l_v, **coefs}
    return task, extra, _nothing


def _step_pmr(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """pmr: PMR as released (`losses.prototypical_ce`, `losses.pmr_weights`).

    Features: each modality's share of the attention output (module docstring). Classes: the
    relevance grades (0..max label); prototypes are their mean features over the train split,
    recomputed before every epoch with momentum (`epoch_start`, as released before each epoch).
    Inside [0, pmr_modulation_ends] the weak modality's PCE (by the prototype-score ratio) is added
    with weight α. Deviations: grades stand in for classes, although a grade is relative to its
    query (a candidate's features are query-conditioned through the attention, which is what makes
    a grade prototype meaningful at all); the released code's prototype-entropy regulariser (PER,
    in the paper) is not in its released training path and is not used here either.
    """
    cross = _cross(model, "pmr")
    mit = config.mitigation
    parts = cross.split(q, t, v)
    task = _task(cross.head_score(parts.qp, parts.text + parts.visual), label, group, n_groups)
    proto_t, proto_v = state["pmr_proto_text"], state["pmr_proto_visual"]
    lab = label.long().clamp_max(proto_t.shape[0] - 1)
    pce_t = losses.prototypical_ce(parts.text, proto_t, lab)
    pce_v = losses.prototypical_ce(parts.visual, proto_v, lab)
    weights = losses.pmr_weights(losses.prototype_score(parts.text, proto_t, lab), losses.prototype_score(parts.visual, proto_v, lab),
                                 mit.pmr_alpha)
    if not losses.in_window(epoch, 0, mit.pmr_modulation_ends):
        weights.update(weight_text=0.0, weight_visual=0.0)
    loss = task + weights["weight_text"] * pce_t + weights["weight_visual"] * pce_v
    extra = {"task_loss": float(task.detach()), "pce_text": float(pce_t.detach()), "pce_visual": float(pce_v.detach()), **weights}
    return loss, extra, _nothing


def _unimodal_losses(model, q, t, v, label, group, n_groups):
    out = model.train_outputs(q, t, v, aux=True)
    return (_task(out.score, label, group, n_groups), _task(out.text_score, label, group, n_groups),
            _task(out.visual_score, label, group, n_groups))


def _step_unimodal_heads(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """unimodal-heads: L = L_fused + L_text + L_visual with a separate head per modality (the
    aux heads on the per-modality attention), equal weights — MMPareto's "uniform baseline"
    (GeWu-Lab/MMPareto_ICML2024 code/uniform_baseline.py; Wei & Hu, ICML 2024) and the
    unimodal-head setting of Wang et al., "What Makes Training Multi-Modal Classification Networks
    Hard?" (CVPR 2020) without their blending weights. Only the fused head is exported."""
    l_mm, l_t, l_v = _unimodal_losses(model, q, t, v, label, group, n_groups)
    loss = l_mm + l_t + l_v
    return loss, {"task_loss": float(l_mm.detach()), "loss_text_head": float(l_t.detach()), "loss_visual_head": float(l_v.detach())}, _nothing


def _step_mmpareto(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """mmpareto: the unimodal-heads losses, with each modality encoder's gradient replaced by
    `losses.mmpareto_combine` of its multimodal and its own unimodal gradient.

    Encoders: the per-modality K/V projections (`modality_parameters`), the only parameters that
    only one unimodal loss reaches, as each encoder in the paper; the shared query tower, W_o and
    the heads keep the plain gradient of the summed loss, as the released code leaves 'head'
    parameters alone. Deviation: in the paper's models everything but the heads is a unimodal
    encoder; here the query tower is shared by both paths, so it is treated like a head.
    """
    mit = config.mitigation
    l_mm, l_t, l_v = _unimodal_losses(model, q, t, v, label, group, n_groups)
    groups = model.modality_parameters()
    grads: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
    groups = {m: [p for p in ps if p.requires_grad] for m, ps in groups.items()}  # a frozen warm-started tower has no gradient
    for modality, uni in (("text", l_t), ("visual", l_v)):
        params = groups[modality]
        if not params:
            continue
        g_mm = torch.autograd.grad(l_mm, params, retain_graph=True, allow_unused=True)
        g_uni = torch.autograd.grad(uni, params, retain_graph=True, allow_unused=True)
        grads[modality] = ([torch.zeros_like(p) if g is None else g for p, g in zip(params, g_mm, strict=True)],
                           [torch.zeros_like(p) if g is None else g for p, g in zip(params, g_uni, strict=True)])
    loss = l_mm + l_t + l_v

    def after_backward() -> dict[str, float]:
        info: dict[str, float] = {}
        for modality, (g_mm, g_uni) in grads.items():
            params = groups[modality]
            total = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            new, stats = losses.mmpareto_combine(g_mm, g_uni, total, mit.mmpareto_gamma)
            for p, g in zip(params, new, strict=True):
                p.grad = g
            info.update({f"pareto_{k}_{modality}": val for k, val in stats.items()})
        return info

    extra = {"task_loss": float(l_mm.detach()), "loss_text_head": float(l_t.detach()), "loss_visual_head": float(l_v.detach())}
    return loss, extra, after_backward


def _mla(model: Ranker) -> MLARanker:
    if not isinstance(model, MLARanker):  # the registry pairs mla with its own model
        raise TypeError(f"variant mla needs the MLA model, got {type(model).__name__}")
    return model


def _step_mla(model, config, q, t, v, label, group, n_groups, epoch, state, gen):
    """mla: Multimodal Learning with Alternating Unimodal Adaptation (Zhang, Yoon, Bansal & Yao,
    "Multimodal Representation Learning by Alternating Unimodal Adaptation", CVPR 2024; released
    Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation, main.py `train_epoch`
    with `--gs_flag`, utils/utils.py `GSPlugin`).

    The method, as released: (1) alternating unimodal adaptation — each optimisation step trains
    ONE modality's encoder through the head shared by all modalities, on that modality's loss
    alone (no fused loss is ever trained); (2) gradient modification — before each step after the
    first, the shared head's weight gradient is right-multiplied by the projector P
    (`losses.mla_projector_update` with the step's mean head input and
    α = `losses.mla_alpha`; `losses.mla_modified_gradient`), so one modality's step interferes
    less with what the other's taught the head; (3) test-time uncertainty-based fusion — the
    score is Σ_m λ_m·s_m with λ from the modalities' entropies (`losses.mla_fusion_weights`,
    `models.MLARanker`). The paper's equation numbers could not be checked here (no copy of the
    paper was reachable); the formulas are the released code's.

    Ranking setting, what differs: (a) the released code runs a text step and then a visual step
    on the same batch (two optimizer steps per batch); the trainer makes one step per batch, so
    the modalities alternate batch by batch (text, visual, text, ...) and each sees every other
    batch; (b) a modality's unimodal score is the shared head on its share of the attention output
    (module docstring), and the query tower φ(q), which the contract counts as text, feeds both;
    (c) the head is an MLP, so the projector acts on its first layer, the one that reads the
    modality features (the released head is one linear layer); (d) "entropy" is the listwise
    entropy of each query's softmax over its candidates, averaged over the training split's
    queries after each epoch, so λ is one pair per model (the released `calculate_entropy` takes a
    softmax along the batch axis, which also yields one value per batch, not per sample); (e) the
    recipe's global gradient clipping runs after the projection, the released code has none.
    """
    mla = _mla(model)
    turn = int(state.get("mla_turn", 0))  # 0: text step, 1: visual step
    parts = mla.split(q, t, v)
    share = parts.text if turn == 0 else parts.visual
    head_in = torch.cat([parts.qp, share, parts.qp * share], dim=-1)  # (N, 3·dm): what the shared head reads
    loss = _task(mla.head(head_in).squeeze(-1), label, group, n_groups)
    r = head_in.detach().mean(dim=0)  # (3·dm,)

    def after_backward() -> dict[str, float]:
        weight = mla.head[0].weight
        count = int(state.get("mla_count", 0))
        if count > 0 and weight.grad is not None:  # released: no modification on the very first step
            alpha = losses.mla_alpha(int(state.get("mla_batch", 0)), int(state.get("mla_n_batches", 1)))
            proj = state.get("mla_projector")
            if proj is None:
                proj = torch.eye(r.shape[0], device=r.device, dtype=r.dtype)
            proj = losses.mla_projector_update(proj, r, alpha)
            state["mla_projector"] = proj
            weight.grad = losses.mla_modified_gradient(weight.grad, proj)
        state["mla_count"] = count + 1
        state["mla_turn"] = 1 - turn
        state["mla_batch"] = int(state.get("mla_batch", 0)) + 1
        return {}

    # task_loss is the step's unimodal loss (text and visual steps alternate; MLA trains no fused loss)
    return loss, {"task_loss": float(loss.detach())}, after_backward


_STEPS = {
    "mla": _step_mla,
    "mbl": _step_mbl,
    "bridged-two-stream-mbl": _step_mbl,
    "modality-dropout": _step_dropout,
    "adversarial": _step_adversarial,
    "ogm-ge": _step_ogm,
    "opm": _step_opm,
    "agm": _step_agm,
    "pmr": _step_pmr,
    "unimodal-heads": _step_unimodal_heads,
    "mmpareto": _step_mmpareto,
}
