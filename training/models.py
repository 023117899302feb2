"""The rankers: V1 (text-only), the V2 cross-attention baseline, and the two-stream models.

Every model scores one (query, candidate) row at a time:

    forward(query (N, D), text_tokens (N, Lt, D), visual_tokens (N, Lv, D) | None)
        -> score (N,), attention (N, H, K)   # softmax over K keys, K = Lt (+ Lv)

and describes itself for the ONNX contract (`input_specs`, `modalities`, `attention_keys`,
`n_heads`). `forward` is plain tensor code with no data-dependent control flow so that
`torch.onnx.export(..., dynamo=True)` can trace it with a dynamic batch axis. What only training
needs (unimodal auxiliary scores, the fused representation the adversary reads) comes from
`train_outputs`, never from `forward`, so it never reaches the exported graph.

Each model keeps modality-specific token encoders (`modality_parameters`) so that per-modality
gradient norms can be measured and OGM-GE can scale one modality's gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fusionguard.errors import InvalidInputError
from fusionguard.training.config import ModelConfig
from fusionguard.training.ranker import InputDims, Ranker, TrainOutputs  # the seam every model implements; re-exported
from fusionguard.training.variants import VARIANTS
from fusionguard.training.variants import spec as variant_spec


def _mlp(d_in: int, d_hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, 1))


def _attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Multi-head attention of one query state per row over that row's keys.

    q (N, H, dh), k and v (N, K, H, dh), key_mask (K,) bool or None -> out (N, H, dh), attn (N, H, K).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = (q.unsqueeze(2) @ k.permute(0, 2, 3, 1)).squeeze(2) * scale  # (N, H, K)
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask, float("-inf"))
    attn = torch.softmax(logits, dim=-1)
    out = (attn.unsqueeze(2) @ v.permute(0, 2, 1, 3)).squeeze(2)  # (N, H, dh)
    return out, attn


@dataclass
class SplitParts:
    """The cross-attention model's fused representation split by modality (training only).

    The attention output is linear in the values, so with the joint softmax weights a,
    o = W_o·(Σ_{k∈text} a_k v_k + Σ_{k∈visual} a_k v_k) + b_o splits exactly into
    text = W_o·Σ_{k∈text} a_k v_k + b_o/2 and visual = W_o·Σ_{k∈visual} a_k v_k + b_o/2 with
    text + visual = o; the bias is shared half/half as in OGM-GE's released code (fc_out.bias / 2).
    """

    qp: Tensor  # (N, dm) query tower output (the text modality's query, context for both shares)
    text: Tensor  # (N, dm) text keys' share of the attention output
    visual: Tensor  # (N, dm) visual keys' share of the attention output
    attention: Tensor  # (N, H, K) joint softmax over text and visual keys


class CrossAttentionRanker(Ranker):
    """V2 baseline (and, with `has_visual=False`, V1): the query attends over all tokens at once.

    q = Wq·φ(query); each modality's tokens get their own key/value projections; H heads attend
    over the K = Lt + Lv keys with one softmax; the score head reads [φ(query), o, φ(query)⊙o].
    `adversary=True` adds the adversarial variant's text-only adversary (its own encoder; it never
    runs in `forward`, so it never reaches an export).
    """

    def __init__(self, dims: InputDims, cfg: ModelConfig, has_visual: bool = True, adversary: bool = False) -> None:
        super().__init__(dims, cfg)
        self.has_visual = has_visual
        self.variant = "baseline" if has_visual else "v1"
        dm, h = cfg.d_model, cfg.n_heads
        self.query_in = nn.Sequential(nn.Linear(dims.d, dm), nn.GELU(), nn.Linear(dm, dm))
        self.wq = nn.Linear(dm, dm)
        self.k_text = nn.Linear(dims.d, dm)
        self.v_text = nn.Linear(dims.d, dm)
        if has_visual:
            self.k_visual = nn.Linear(dims.d, dm)
            self.v_visual = nn.Linear(dims.d, dm)
        self.wo = nn.Linear(dm, dm)
        self.head = _mlp(3 * dm, dm)
        # training-only unimodal auxiliary heads (never called by forward)
        self.aux_text = _mlp(3 * dm, dm)
        self.aux_visual = _mlp(3 * dm, dm) if has_visual else None
        self.adversary = TextAdversary(dims.d, dm) if adversary else None
        self._h = h

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Per-modality key/value projections: what the logged per-modality gradient norms measure."""
        groups = {"text": [*self.k_text.parameters(), *self.v_text.parameters()]}
        if self.has_visual:
            groups["visual"] = [*self.k_visual.parameters(), *self.v_visual.parameters()]
        return groups

    def encoder_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Every parameter that reads only one modality's inputs: text = query tower (query_in, wq)
        + text K/V (the contract's text modality is query + text_tokens); visual = visual K/V.
        The fusion part (wo, score head) and the training-only heads belong to neither."""
        groups = {"text": [*self.query_in.parameters(), *self.wq.parameters(), *self.k_text.parameters(), *self.v_text.parameters()]}
        if self.has_visual:
            groups["visual"] = [*self.k_visual.parameters(), *self.v_visual.parameters()]
        return groups

    def _read(self, head: nn.Module, qp: Tensor, o: Tensor) -> Tensor:
        return head(torch.cat([qp, o, qp * o], dim=-1)).squeeze(-1)

    def head_score(self, qp: Tensor, o: Tensor) -> Tensor:
        """The fused model's own score head on a (N, dm) attention output (or a share of it) -> (N,)."""
        return self._read(self.head, qp, o)

    def split(self, query: Tensor, text_tokens: Tensor, visual_tokens: Tensor) -> SplitParts:
        """The attention output split into its text and visual shares (see SplitParts)."""
        qp, q, k, v = self._qkv(query, text_tokens, self._check_visual(visual_tokens))
        _, attn = _attend(q, k, v)
        lt = self.dims.lt
        share_t = (attn[..., :lt].unsqueeze(2) @ v[:, :lt].permute(0, 2, 1, 3)).squeeze(2)  # (N, H, dh)
        share_v = (attn[..., lt:].unsqueeze(2) @ v[:, lt:].permute(0, 2, 1, 3)).squeeze(2)
        half_bias = self.wo.bias / 2
        text = nn.functional.linear(share_t.flatten(1), self.wo.weight) + half_bias  # (N, dm)
        visual = nn.functional.linear(share_v.flatten(1), self.wo.weight) + half_bias
        return SplitParts(qp, text, visual, attn)

    def _qkv(self, query, text_tokens, visual_tokens):
        qp = self.query_in(query)  # (N, dm)
        q = self.wq(qp).unflatten(-1, (self._h, -1))  # (N, H, dh)
        k = self.k_text(text_tokens).unflatten(-1, (self._h, -1))  # (N, Lt, H, dh)
        v = self.v_text(text_tokens).unflatten(-1, (self._h, -1))
        if self.has_visual:
            k = torch.cat([k, self.k_visual(visual_tokens).unflatten(-1, (self._h, -1))], dim=1)  # (N, K, H, dh)
            v = torch.cat([v, self.v_visual(visual_tokens).unflatten(-1, (self._h, -1))], dim=1)
        return qp, q, k, v

    def train_outputs(self, query, text_tokens, visual_tokens=None, aux=True) -> TrainOutputs:
        if self.has_visual:
            visual_tokens = self._check_visual(visual_tokens)
        qp, q, k, v = self._qkv(query, text_tokens, visual_tokens)
        o, attn = _attend(q, k, v)
        o = self.wo(o.flatten(1))  # (N, dm)
        fused = torch.cat([qp, o, qp * o], dim=-1)
        score = self.head(fused).squeeze(-1)
        text_score = visual_score = None
        if aux:
            lt = self.dims.lt
            text_keys = torch.arange(k.shape[1], device=k.device) < lt  # (K,)
            o_t, _ = _attend(q, k, v, text_keys)
            text_score = self._read(self.aux_text, qp, self.wo(o_t.flatten(1)))
            if self.has_visual:
                o_v, _ = _attend(q, k, v, ~text_keys)
                visual_score = self._read(self.aux_visual, qp, self.wo(o_v.flatten(1)))
        return TrainOutputs(score, attn, fused, text_score, visual_score)


class MLARanker(CrossAttentionRanker):
    """MLA's model: the V2 cross-attention encoder whose one score head is shared by both
    modalities, scoring each modality's share of the attention output on its own, and the
    test-time fusion of the two unimodal scores with uncertainty-based weights:

        s = λ_t·head(φ(q), o_text) + λ_v·head(φ(q), o_visual)    (o_m: `split`'s share of modality m)

    λ (the `fusion_weights` buffer, (text, visual), 0.5/0.5 until training sets them) is
    `losses.mla_fusion_weights` of the modalities' mean listwise entropies on the training split,
    refreshed after every epoch (`fusionguard.training.mitigations.epoch_end`); it is a constant of the
    exported graph. Source: Zhang et al., CVPR 2024 (see `fusionguard.training.mitigations._step_mla`)."""

    def __init__(self, dims: InputDims, cfg: ModelConfig) -> None:
        super().__init__(dims, cfg, has_visual=True)
        self.register_buffer("fusion_weights", torch.full((2,), 0.5))

    def unimodal_scores(self, query: Tensor, text_tokens: Tensor, visual_tokens: Tensor) -> tuple[Tensor, Tensor, SplitParts]:
        """(text score (N,), visual score (N,), the split) through the shared head."""
        parts = self.split(query, text_tokens, visual_tokens)
        return self.head_score(parts.qp, parts.text), self.head_score(parts.qp, parts.visual), parts

    def train_outputs(self, query, text_tokens, visual_tokens=None, aux=True) -> TrainOutputs:
        s_t, s_v, parts = self.unimodal_scores(query, text_tokens, self._check_visual(visual_tokens))
        score = self.fusion_weights[0] * s_t + self.fusion_weights[1] * s_v
        fused = torch.cat([parts.qp, parts.text + parts.visual], dim=-1)
        return TrainOutputs(score, parts.attention, fused, s_t if aux else None, s_v if aux else None)


class TextAdversary(nn.Module):
    """The adversarial variant's adversary: its own text encoder (no parameter shared with the
    ranker) reads only the query and the text tokens and predicts a (N, dm) vector:
    A(query, text) = MLP([query, mean_j text_j, query ⊙ mean_j text_j])."""

    def __init__(self, d: int, dm: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3 * d, dm), nn.GELU(), nn.Linear(dm, dm), nn.GELU(), nn.Linear(dm, dm))

    def forward(self, query: Tensor, text_tokens: Tensor) -> Tensor:
        t = text_tokens.mean(dim=1)  # (N, D)
        return self.net(torch.cat([query, t, query * t], dim=-1))  # (N, dm)


class _StreamAttention(nn.Module):
    """One stream's cross-attention: its query state attends over its own modality's tokens."""

    def __init__(self, dm: int, h: int) -> None:
        super().__init__()
        self.h = h
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dm, dm) for _ in range(4))

    def forward(self, state: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        q = self.wq(state).unflatten(-1, (self.h, -1))  # (N, H, dh)
        k = self.wk(tokens).unflatten(-1, (self.h, -1))  # (N, L, H, dh)
        v = self.wv(tokens).unflatten(-1, (self.h, -1))
        out, attn = _attend(q, k, v)
        return self.wo(out.flatten(1)), attn  # (N, dm), (N, H, L)


class ProgressiveLayer(nn.Module):
    """One exchange step: each stream attends over its own tokens (its own softmax), then the
    streams swap information through a linear bridge; residual (skip) connections keep each
    stream's own path. `bridges=False` (the separate-softmax control) leaves the bridges out, so
    the streams meet only in the final gate."""

    def __init__(self, dm: int, h: int, bridges: bool = True) -> None:
        super().__init__()
        self.attn_text = _StreamAttention(dm, h)
        self.attn_visual = _StreamAttention(dm, h)
        self.bridge_to_text = nn.Linear(dm, dm) if bridges else None  # visual state -> text stream
        self.bridge_to_visual = nn.Linear(dm, dm) if bridges else None  # text state -> visual stream
        self.norm_text = nn.LayerNorm(dm)
        self.norm_visual = nn.LayerNorm(dm)

    def forward(self, h_t: Tensor, h_v: Tensor, x_t: Tensor, x_v: Tensor):
        a_t, w_t = self.attn_text(h_t, x_t)
        a_v, w_v = self.attn_visual(h_v, x_v)
        if self.bridge_to_text is None or self.bridge_to_visual is None:
            return self.norm_text(h_t + a_t), self.norm_visual(h_v + a_v), w_t, w_v
        new_t = self.norm_text(h_t + a_t + self.bridge_to_text(h_v))
        new_v = self.norm_visual(h_v + a_v + self.bridge_to_visual(h_t))
        return new_t, new_v, w_t, w_v


class ProgressiveFusionRanker(Ranker):
    """Two-stream model (variants `bridged-two-stream`, alias `progressive`; `separate-softmax`
    with `bridges=False`): a text stream and a visual stream, `depth` layers in which each stream
    attends over its own tokens with its own softmax (and, with bridges, exchanges state through
    linear bridges), then a per-head modality gate g (softmax over {text, visual}) mixes the streams.

    This is not Shankar et al.'s progressive fusion ("Progressive Fusion for Multimodal
    Integration", 2022: backward connections that feed the fused representation back into the
    unimodal encoders); it is this project's two-stream construction. Its visual keys never compete
    with text keys in one softmax; `separate-softmax` keeps that property and drops the bridges, so
    comparing the two tells the bridges' effect apart from the separate softmax's.

    Reported attention over the K keys is the last layer's per-stream attention weighted by the
    gate, cat(g_t·a_t, g_v·a_v), so it sums to 1 over K and its visual mass is the gate's share.
    """

    variant = "bridged-two-stream"

    def __init__(self, dims: InputDims, cfg: ModelConfig, bridges: bool = True) -> None:
        super().__init__(dims, cfg)
        dm, h = cfg.d_model, cfg.n_heads
        self._h = h
        self.query_in = nn.Sequential(nn.Linear(dims.d, dm), nn.GELU(), nn.Linear(dm, dm))
        self.enc_text = nn.Linear(dims.d, dm)
        self.enc_visual = nn.Linear(dims.d, dm)
        self.layers = nn.ModuleList(ProgressiveLayer(dm, h, bridges) for _ in range(cfg.depth))
        self.gate = nn.Linear(2 * (dm // h), 2)  # per head: [text part, visual part] -> 2 logits
        self.head = _mlp(3 * dm, dm)
        self.aux_text = _mlp(2 * dm, dm)
        self.aux_visual = _mlp(2 * dm, dm)

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        text = [*self.enc_text.parameters()] + [p for layer in self.layers for p in layer.attn_text.parameters()]
        visual = [*self.enc_visual.parameters()] + [p for layer in self.layers for p in layer.attn_visual.parameters()]
        return {"text": text, "visual": visual}

    def encoder_parameters(self) -> dict[str, list[nn.Parameter]]:
        return self.modality_parameters()

    def train_outputs(self, query, text_tokens, visual_tokens=None, aux=True) -> TrainOutputs:
        visual_tokens = self._check_visual(visual_tokens)
        qp = self.query_in(query)  # (N, dm)
        x_t, x_v = self.enc_text(text_tokens), self.enc_visual(visual_tokens)  # (N, Lt, dm), (N, Lv, dm)
        h_t, h_v = qp, qp
        w_t = w_v = None
        for layer in self.layers:
            h_t, h_v, w_t, w_v = layer(h_t, h_v, x_t, x_v)
        ht_heads = h_t.unflatten(-1, (self._h, -1))  # (N, H, dh)
        hv_heads = h_v.unflatten(-1, (self._h, -1))
        g = torch.softmax(self.gate(torch.cat([ht_heads, hv_heads], dim=-1)), dim=-1)  # (N, H, 2)
        mixed = (g[..., :1] * ht_heads + g[..., 1:] * hv_heads).flatten(1)  # (N, dm)
        attn = torch.cat([g[..., :1] * w_t, g[..., 1:] * w_v], dim=-1)  # (N, H, Lt + Lv)
        fused = torch.cat([qp, mixed, qp * mixed], dim=-1)
        score = self.head(fused).squeeze(-1)
        text_score = visual_score = None
        if aux:
            text_score = self.aux_text(torch.cat([qp, h_t], dim=-1)).squeeze(-1)
            visual_score = self.aux_visual(torch.cat([qp, h_v], dim=-1)).squeeze(-1)
        return TrainOutputs(score, attn, fused, text_score, visual_score)


def build_model(variant: str, dims: InputDims, cfg: ModelConfig) -> Ranker:
    """The untrained model for `variant` (its architecture comes from fusionguard.training.variants; an alias
    builds its target's model); `variant`, as given, is recorded on the model."""
    entry = variant_spec(variant)
    if entry is None:
        raise InvalidInputError(f"unknown variant '{variant}'; choose one of {list(VARIANTS)}")
    arch = entry.architecture
    if arch == "text-only":
        model: Ranker = CrossAttentionRanker(dims, cfg, has_visual=False)
    elif arch == "cross-attention" and entry.name == "mla":
        model = MLARanker(dims, cfg)
    elif arch == "cross-attention":
        model = CrossAttentionRanker(dims, cfg, has_visual=True, adversary=entry.name == "adversarial")
    elif arch == "late-fusion":
        from fusionguard.training.late_fusion import LateFusionRanker  # on use: the other variants never need it

        model = LateFusionRanker(dims, cfg)
    else:
        model = ProgressiveFusionRanker(dims, cfg, bridges=entry.bridges)
    model.variant = variant
    return model
