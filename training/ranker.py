"""The training seam every ranker implements: input shapes, training outputs, contract plumbing.

`Ranker` is what the trainer, the diagnostics and the exporter rely on (`forward`,
`train_outputs`, `input_specs`, `modalities`, `attention_keys`, `n_heads`; docs/interfaces.md).
The concrete models (`fusionguard.training.models`, `fusionguard.training.late_fusion`) subclass it; keeping it in its own
module lets them do so without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from fusionguard.contract import TensorSpec
from fusionguard.errors import InvalidInputError
from fusionguard.training.config import ModelConfig

__all__ = ["InputDims", "Ranker", "TrainOutputs"]


@dataclass(frozen=True)
class InputDims:
    """Per-row input shapes, read from the dataset."""

    d: int  # embedding width D of query and tokens
    lt: int  # text tokens per candidate
    lv: int  # visual tokens per candidate


@dataclass
class TrainOutputs:
    """What the losses need beyond `forward`'s outputs (training only)."""

    score: Tensor  # (N,)
    attention: Tensor | None  # (N, H, K); None for a model without attention (late fusion)
    fused: Tensor  # (N, F) representation the score head reads
    text_score: Tensor | None  # (N,) unimodal auxiliary head on the text-only representation
    visual_score: Tensor | None  # (N,) unimodal auxiliary head on the visual-only representation


class Ranker(nn.Module):
    """Shared contract plumbing. Subclasses set `variant` and `has_visual` and define
    `train_outputs(query, text_tokens, visual_tokens, aux) -> TrainOutputs` and
    `modality_parameters() -> {modality: [parameters that read only that modality's tokens]}`."""

    variant: str = "ranker"
    has_visual: bool = True

    def __init__(self, dims: InputDims, cfg: ModelConfig) -> None:
        super().__init__()
        self.dims = dims
        self.cfg = cfg

    @property
    def n_heads(self) -> int:
        return self.cfg.n_heads

    @property
    def modalities(self) -> dict[str, tuple[str, ...]]:
        mods = {"text": ("query", "text_tokens")}
        if self.has_visual:
            mods["visual"] = ("visual_tokens",)
        return mods

    @property
    def attention_keys(self) -> dict[str, tuple[int, int]]:
        keys = {"text": (0, self.dims.lt)}
        if self.has_visual:
            keys["visual"] = (self.dims.lt, self.dims.lt + self.dims.lv)
        return keys

    def input_specs(self) -> tuple[TensorSpec, ...]:
        d = self.dims
        specs = [TensorSpec("query", "float32", (d.d,)), TensorSpec("text_tokens", "float32", (d.lt, d.d))]
        if self.has_visual:
            specs.append(TensorSpec("visual_tokens", "float32", (d.lv, d.d)))
        return tuple(specs)

    def _check_visual(self, visual_tokens: Tensor | None) -> Tensor:
        if visual_tokens is None:
            raise InvalidInputError(f"the {self.variant} model needs visual_tokens; pass a (N, {self.dims.lv}, {self.dims.d}) tensor")
        return visual_tokens

    def forward(self, query: Tensor, text_tokens: Tensor, visual_tokens: Tensor | None = None):
        out = self.train_outputs(query, text_tokens, visual_tokens, aux=False)
        return out.score, out.attention
