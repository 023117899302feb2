"""The one registry of training variant names (no torch here: the CLI and config read it at import).

Every place that lists or checks a variant name reads `VARIANTS`, `ALIASES` and `canonical` from
this module: `fusionguard.training.config` (validation), `fusionguard.training.cli` (`--variant`, a click.Choice works
with `choices()`), `fusionguard.recipes.experiment` (grid rows), `fusionguard.training.models` (architecture) and
`fusionguard.training.trainer` (the variant's loss and gradient treatment). Adding a variant means adding one
`Variant` here and its training step in the trainer.

Aliases keep old names working (`progressive`, `combined`): they resolve to the canonical variant
for the architecture and the training step, while the name a run was started with is what its
checkpoint and exported contract record.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    architecture: str  # "text-only" | "cross-attention" | "two-stream" | "late-fusion"
    summary: str  # one line: what the variant is
    reference: str  # the paper (and released code) it follows, or "this project"
    bridges: bool = True  # two-stream only: False is the separate-softmax control without bridges


_REGISTRY: tuple[Variant, ...] = (
    Variant("v1", "text-only", "text-only ranker: the query attends over the text tokens", "the research plan's V1"),
    Variant("baseline", "cross-attention", "V2: one softmax over text and visual keys, plain listwise loss", "the research plan's V2"),
    Variant("mbl", "cross-attention", "modality-balanced loss: -log attention mass terms + unimodal aux heads",
            "the research plan's MBL"),
    Variant("bridged-two-stream", "two-stream",
            "two streams (own softmax each) exchanging state through linear bridges, per-head gate",
            "this project (not Shankar et al.'s backward-connection progressive fusion)"),
    Variant("separate-softmax", "two-stream",
            "control: the two streams and gate of bridged-two-stream without the bridges",
            "this project (control for bridged-two-stream)", bridges=False),
    Variant("bridged-two-stream-mbl", "two-stream", "the mbl objective on bridged-two-stream", "this project"),
    Variant("adversarial", "cross-attention",
            "a text-only adversary with its own encoder predicts the visual pathway's share; reversed gradient",
            "Ganin & Lempitsky ICML 2015 (GRL); Elazar & Goldberg EMNLP 2018 (adversarial removal)"),
    Variant("ogm-ge", "cross-attention", "OGM-GE as released: split-head coefficient, modulation window, GE noise",
            "Peng et al. CVPR 2022, GeWu-Lab/OGM-GE_CVPR2022"),
    Variant("modality-dropout", "cross-attention", "ModDrop: drop either modality's tokens with probability p each",
            "Neverova et al. TPAMI 2016"),
    Variant("opm", "cross-attention", "dominant-modality feature dropout with a performance-driven probability",
            "Wei, Li & Hu TPAMI 2024 (OPM), GeWu-Lab/BML_TPAMI2024"),
    Variant("agm", "cross-attention", "AGM: Shapley mono-modal responses, gradient scaled per modality",
            "Li et al. ICCV 2023, lihong2303/AGM_ICCV2023"),
    Variant("pmr", "cross-attention", "PMR: prototypical cross-entropy for the weak modality",
            "Fan et al. CVPR 2023, fanyunfeng-bit/Modal-Imbalance-PMR"),
    Variant("mmpareto", "cross-attention", "MMPareto: multimodal + unimodal gradients combined per encoder",
            "Wei & Hu ICML 2024, GeWu-Lab/MMPareto_ICML2024"),
    Variant("mla", "cross-attention", "MLA: alternating unimodal steps through the shared head, projected head gradient, entropy-weighted fusion",
            "Zhang et al. CVPR 2024, Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation"),
    Variant("unimodal-heads", "cross-attention", "uniform baseline: L_fused + L_text head + L_visual head",
            "MMPareto's uniform baseline (Wei & Hu ICML 2024); Wang et al. CVPR 2020"),
    Variant("late-fusion", "late-fusion", "text score + sign-invariant visual score, no attention", "this project"),
)

REGISTRY: dict[str, Variant] = {v.name: v for v in _REGISTRY}
ALIASES: dict[str, str] = {"progressive": "bridged-two-stream", "combined": "bridged-two-stream-mbl"}
VARIANTS: tuple[str, ...] = tuple(REGISTRY) + tuple(ALIASES)  # every name --variant accepts


def canonical(name: str) -> str:
    """The registry name for `name` (an alias resolves; an unknown name comes back unchanged)."""
    return ALIASES.get(name, name)


def spec(name: str) -> Variant | None:
    """The registry entry of `name` or its alias target; None when unknown."""
    return REGISTRY.get(canonical(name))


def choices() -> list[str]:
    """Names for a CLI choice list: canonical names, then the aliases."""
    return list(VARIANTS)
