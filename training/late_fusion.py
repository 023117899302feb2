"""A lightweight late-fusion ranker for production latency (training variant `late-fusion`).

Each modality is scored on its own and the two scores are added; nothing attends across
modalities, so the model is a handful of matrix products (no softmax over keys):

    s_text   = w_t · (P_q query ⊙ mean_j P_t text_j)                 # (N,) per-channel agreement
    s_visual = w_v · max_j (U_q query ⊙ P_v visual_j)²               # (N,) sign-invariant patch match
    score    = s_text + s_visual + b

The squared, max-pooled visual term reads an object patch whatever its sign (the synthetic
benchmark's visual signal cancels under mean pooling). The model follows the training seam of
docs/interfaces.md (`forward`, `input_specs`, `modalities`, `attention_keys`, `n_heads`) and has
no attention output (`n_heads` None, `attention_keys` empty), so `fusionguard.export.pipeline.export_model`
exports it as it is.

It is an ordinary training variant: `fusionguard.training.models.build_model("late-fusion", ...)` builds it,
`fusionguard.training.trainer.train` trains it with the plain listwise loss (same recipe as the baseline),
and `fusionguard.training.checkpoint.load_checkpoint` reloads it. `fusionguard.training.trainer.train_late_fusion` is
kept for callers that want the trained model and its export meta in one call.
"""

from __future__ import annotations


from torch import Tensor, nn

from fusionguard.contract import TensorSpec
from fusionguard.errors import InvalidInputError
from fusionguard.training.config import ModelConfig
from fusionguard.training.ranker import InputDims, Ranker, TrainOutputs

VARIANT = "late-fusion"


class LateFusionRanker(Ranker):
    """score = text head + visual head; see the module docstring."""

    variant = VARIANT
    has_visual = True

    def __init__(self, dims: InputDims, cfg: ModelConfig) -> None:
        super().__init__(dims, cfg)
        r = cfg.d_model
        self.q_text = nn.Linear(dims.d, r)
        self.p_text = nn.Linear(dims.d, r)
        self.q_visual = nn.Linear(dims.d, r)
        self.p_visual = nn.Linear(dims.d, r)
        self.w_text = nn.Linear(r, 1)
        self.w_visual = nn.Linear(r, 1)

    @property
    def n_heads(self) -> None:  # type: ignore[override]
        return None  # no attention output

    @property
    def attention_keys(self) -> dict[str, tuple[int, int]]:
        return {}

    @property
    def modalities(self) -> dict[str, tuple[str, ...]]:
        return {"text": ("query", "text_tokens"), "visual": ("visual_tokens",)}

    def input_specs(self) -> tuple[TensorSpec, ...]:
        d = self.dims
        return (TensorSpec("query", "float32", (d.d,)), TensorSpec("text_tokens", "float32", (d.lt, d.d)),
                TensorSpec("visual_tokens", "float32", (d.lv, d.d)))

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"text": [*self.p_text.parameters()], "visual": [*self.p_visual.parameters()]}

    def unimodal(self, query: Tensor, text_tokens: Tensor, visual_tokens: Tensor) -> tuple[Tensor, Tensor]:
        s_text = self.w_text(self.q_text(query) * self.p_text(text_tokens).mean(dim=1)).squeeze(-1)  # (N,)
        match = self.q_visual(query).unsqueeze(1) * self.p_visual(visual_tokens)  # (N, Lv, r)
        s_visual = self.w_visual(match.square().amax(dim=1)).squeeze(-1)  # (N,)
        return s_text, s_visual

    def train_outputs(self, query: Tensor, text_tokens: Tensor, visual_tokens: Tensor | None = None, aux: bool = True) -> TrainOutputs:
        """Training outputs in the trainer's shape; the two unimodal scores double as aux heads."""
        if visual_tokens is None:
            raise InvalidInputError("the late-fusion model needs visual_tokens; pass a (N, Lv, D) tensor")
        s_text, s_visual = self.unimodal(query, text_tokens, visual_tokens)
        score = s_text + s_visual
        fused = score.unsqueeze(-1)  # the representation the score reads is the sum itself
        return TrainOutputs(score, None, fused, s_text if aux else None, s_visual if aux else None)

    def forward(self, query: Tensor, text_tokens: Tensor, visual_tokens: Tensor | None = None):
        return self.train_outputs(query, text_tokens, visual_tokens, aux=False).score, None
