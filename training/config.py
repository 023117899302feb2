"""Training configuration: one typed, frozen dataclass tree loaded from TOML and validated whole.

Every hyperparameter of a training run lives here. `load_config` collects every problem in the
file (unknown keys with a did-you-mean and wrong types through the core's loader,
`fusionguard.config.build`; out-of-range values and an unknown variant here) and raises one
`ConfigError` listing them all; the trainer adds the data-dependent problems (missing data dir,
data without a visual column) to the same list before any work starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fusionguard.config import build, read_toml  # read_toml re-exported: the CLI and recipes read configs with it
from fusionguard.devices import DEVICES
from fusionguard.errors import ConfigError
from fusionguard.masking import REFERENCE_FREE_STRATEGIES
from fusionguard.training.variants import VARIANTS

MASKS = REFERENCE_FREE_STRATEGIES  # a split is masked on its own: no reference means
OPTIMIZERS = ("adamw", "sgd")
KEEPS = ("best-val", "last")
WARM_START_INITS = ("fresh", "zero-values")
WARM_START_FREEZES = ("none", "text-tower", "loaded")


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 64  # hidden width of every projection
    n_heads: int = 8  # attention heads (the V2 baseline has 8); must divide d_model
    depth: int = 2  # progressive fusion layers (the plan tries 2, 4, 6); ignored by v1/baseline


@dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adamw"  # "adamw" (the recipe) or "sgd" (momentum 0.9: the released OGM-GE, AGM, PMR, MMPareto code)
    lr: float = 3e-3  # learning rate
    weight_decay: float = 0.01  # AdamW: decoupled weight decay; SGD: L2 weight decay
    max_epochs: int = 40
    patience: int = 4  # early stopping: epochs without a better val NDCG@10 before stopping
    min_epochs: int = 0  # early stopping never ends a run before this many epochs (the protocol uses 20)
    min_delta: float = 5e-3  # an epoch counts as better only if val NDCG@10 rises by more than this
    batch_queries: int = 8  # queries per optimisation step (all candidates of a query stay together)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    keep: str = "best-val"  # checkpoint kept: "best-val" (best val NDCG@10) or "last" (the converged model, e.g. a production V1 fitted to its training data)


@dataclass(frozen=True)
class MitigationConfig:
    lambda_visual: float = 0.1  # MBL: weight of -log(visual attention mass)
    lambda_text: float = 0.1  # MBL: weight of -log(text attention mass); with lambda_visual it sets the balance point
    lambda_aux: float = 0.5  # MBL: weight of each unimodal auxiliary head's listwise loss
    lambda_adv: float = 0.1  # adversarial: weight of the adversary's loss (visual-share prediction from text)
    grl_scale: float = 1.0  # adversarial: gradient reversal factor (the backward pass multiplies by -grl_scale)
    ogm_alpha: float = 0.5  # OGM-GE: alpha in k = 1 - tanh(alpha * rho) (released README: 0.1 VGGSound, 0.8 CREMA-D)
    ogm_noise: float = 1.0  # OGM-GE: GE noise std in units of the unmodulated gradient's std (released code: 1); 0 = OGM
    ogm_modulation_starts: int = 0  # OGM-GE: first epoch (0-based, inclusive) that modulates (released: 0)
    ogm_modulation_ends: int = 20  # OGM-GE: last modulated epoch, inclusive (released: 50 of 100 epochs; 20 of 40 here)
    modality_dropout: float = 0.3  # modality dropout: per-query probability of dropping each modality's tokens
    opm_q_base: float = 0.5  # OPM: base drop probability q_base of the dominant modality (released default 0.5)
    opm_lambda: float = 0.5  # OPM: lambda in q = q_base * (1 + lambda * tanh(relu(rho - 1))) (released 0.5)
    opm_p_exe: float = 0.7  # OPM: probability that a batch applies the drop at all (released 0.7)
    opm_warmup_epochs: int = 5  # OPM: no drop while epoch <= this (released: epoch <= 5)
    agm_alpha: float = 1.0  # AGM: alpha in the coefficient exp(alpha * min(ratio_bar - ratio, 10)) (released 1.0)
    agm_modulation_ends: int = 40  # AGM: last modulated epoch, inclusive (released 20 with 10 epochs: the whole run)
    pmr_alpha: float = 1.0  # PMR: weight of the weak modality's prototypical cross-entropy (released 1.0)
    pmr_momentum: float = 0.2  # PMR: prototype momentum, c = (1 - m) * c_epoch + m * c_old (released 0.2)
    pmr_modulation_ends: int = 27  # PMR: last modulated epoch, inclusive (released 100 of 150 epochs; 27 of 40 here)
    mmpareto_gamma: float = 1.5  # MMPareto: magnitude factor gamma on the combined encoder gradient (released 1.5)


@dataclass(frozen=True)
class DiagnosticsConfig:
    mask: str = "permute"  # how ablations mask a modality: "permute" (shuffled across the query's candidates) or "zero"
    ndcg_k: int = 10


@dataclass(frozen=True)
class TrainConfig:
    variant: str = "baseline"  # one of VARIANTS (fusionguard.training.variants: registry names and their aliases)
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when present
    # A checkpoint directory (e.g. the production V1) whose parameters initialise this model where
    # names and shapes match; "" trains from scratch. The loaded names are recorded in result.json.
    warm_start_from: str = ""
    # What the parameters a warm start does not load start from: "fresh" (the model's own random
    # initialisation) or "zero-values" (value projections of the new modality zeroed, so the new
    # tokens add nothing to the attention output until training moves them; ignored without a warm start).
    warm_start_init: str = "fresh"
    # What of a warm start stays frozen: "none"; "text-tower" (the text encoder: query tower and
    # text K/V, `encoder_parameters()["text"]`); "loaded" (every parameter loaded from the source:
    # the production model is frozen and only what it lacks trains). Ignored without a warm start.
    warm_start_freeze: str = "none"
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mitigation: MitigationConfig = field(default_factory=MitigationConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sha256(self) -> str:
        """Hash of the canonical JSON form; recorded in checkpoints and exported contracts."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build and validate a config from parsed TOML/JSON; raises ConfigError listing every problem."""
        problems: list[str] = []
        config = build(cls, data, problems)  # types, unknown keys (did-you-mean); the ranges below
        problems += config_problems(config)
        if problems:
            raise ConfigError(source, problems)
        return config




def config_problems(config: TrainConfig) -> list[str]:
    """Range and consistency problems of an already typed config."""
    p: list[str] = []
    if config.variant not in VARIANTS:
        p.append(f"unknown variant '{config.variant}'; choose one of {list(VARIANTS)}")
    if config.device not in DEVICES:
        p.append(f"device = '{config.device}' must be one of {list(DEVICES)}")
    if config.warm_start_init not in WARM_START_INITS:
        p.append(f"warm_start_init = '{config.warm_start_init}' must be one of {list(WARM_START_INITS)}")
    if config.warm_start_freeze not in WARM_START_FREEZES:
        p.append(f"warm_start_freeze = '{config.warm_start_freeze}' must be one of {list(WARM_START_FREEZES)}")
    if config.seed < 0:
        p.append(f"seed = {config.seed} must be >= 0")
    m = config.model
    if m.d_model <= 0 or m.n_heads <= 0:
        p.append(f"model.d_model ({m.d_model}) and model.n_heads ({m.n_heads}) must be positive")
    elif m.d_model % m.n_heads:
        p.append(f"model.d_model = {m.d_model} must be divisible by model.n_heads = {m.n_heads}")
    if m.depth < 1:
        p.append(f"model.depth = {m.depth} must be >= 1 (the plan uses 2, 4 or 6)")
    o = config.optim
    if o.optimizer not in OPTIMIZERS:
        p.append(f"optim.optimizer = '{o.optimizer}' must be one of {list(OPTIMIZERS)}")
    if o.keep not in KEEPS:
        p.append(f"optim.keep = '{o.keep}' must be one of {list(KEEPS)}")
    if o.lr <= 0:
        p.append(f"optim.lr = {o.lr} must be > 0")
    for name in ("weight_decay", "min_delta", "grad_clip"):
        if getattr(o, name) < 0:
            p.append(f"optim.{name} = {getattr(o, name)} must be >= 0")
    for name in ("max_epochs", "patience", "batch_queries"):
        if getattr(o, name) < 1:
            p.append(f"optim.{name} = {getattr(o, name)} must be >= 1")
    if not 0 <= o.min_epochs <= o.max_epochs:
        p.append(f"optim.min_epochs = {o.min_epochs} must be in [0, optim.max_epochs = {o.max_epochs}]")
    mi = config.mitigation
    for name in ("lambda_visual", "lambda_text", "lambda_aux", "lambda_adv", "grl_scale", "ogm_alpha", "ogm_noise", "opm_lambda",
                 "agm_alpha", "pmr_alpha", "mmpareto_gamma", "ogm_modulation_starts", "opm_warmup_epochs"):
        if getattr(mi, name) < 0:
            p.append(f"mitigation.{name} = {getattr(mi, name)} must be >= 0 (a negative weight rewards the opposite)")
    if not 0 <= mi.modality_dropout < 0.5:
        p.append(f"mitigation.modality_dropout = {mi.modality_dropout} must be in [0, 0.5) (it is drawn per modality)")
    if mi.ogm_modulation_ends < mi.ogm_modulation_starts:
        p.append(f"mitigation.ogm_modulation_ends = {mi.ogm_modulation_ends} must be >= ogm_modulation_starts = {mi.ogm_modulation_starts}")
    for name in ("opm_q_base", "opm_p_exe", "pmr_momentum"):
        if not 0 <= getattr(mi, name) <= 1:
            p.append(f"mitigation.{name} = {getattr(mi, name)} must be in [0, 1] (it is a probability or a momentum)")
    d = config.diagnostics
    if d.mask not in MASKS:
        p.append(f"diagnostics.mask = '{d.mask}' must be one of {list(MASKS)}")
    if d.ndcg_k < 1:
        p.append(f"diagnostics.ndcg_k = {d.ndcg_k} must be >= 1")
    return p


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """The training config from `path` (defaults when None), with top-level `overrides`
    (variant, seed, device; None values are ignored) applied before validation."""
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data, source=str(path) if path is not None else "<defaults>")


def with_variant(config: TrainConfig, variant: str) -> TrainConfig:
    """A copy of `config` for another variant (used by the benchmark)."""
    return replace(config, variant=variant)
