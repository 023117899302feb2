"""The gate policy: every threshold of the release checks, loaded from TOML and validated whole.

Unknown sections or keys, wrong types and out-of-range values are all collected and raised as
one `ConfigError`. Every field has a default (docs/gate.md lists them with their rationale), so
an empty file, or no file at all, is the default policy.

Example `gate.toml`::

    seed = 0
    [ablation]
    min_visual_drop = 0.10
    [integrity]
    max_correlation = 0.99
    [baseline]
    required = true
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fusionguard.devices import DEVICES
from fusionguard.config import Rule, build, read_toml
from fusionguard.errors import ConfigError, InvalidInputError
from fusionguard.masking import STRATEGIES
from fusionguard.metrics import MAX_EXPONENTIAL_LABEL

MAX_RESAMPLES = 1_000_000  # the resample matrix is (n_resamples, n_queries): 1e6 x 1e4 queries is ~80 GB already


@dataclass(frozen=True)
class DataPolicy:
    min_queries: int = 20  # fewer evaluable queries than this make the eval set invalid (exit 2)
    max_label: int | None = None  # largest allowed label; None = no upper bound


@dataclass(frozen=True)
class MetricPolicy:
    k: int = 10  # NDCG cutoff
    gain: str = "linear"  # "linear" (trec_eval ndcg_cut) or "exponential" (2^rel - 1)


@dataclass(frozen=True)
class BootstrapPolicy:
    n_resamples: int = 10_000  # bootstrap resamples and sign-flip resamples
    confidence: float = 0.95  # two-sided level of every CI
    method: str = "percentile"  # "percentile" or "bca"


@dataclass(frozen=True)
class BaselinePolicy:
    required: bool = True  # no --baseline is an error (exit 2) unless this is false


@dataclass(frozen=True)
class AblationPolicy:
    strategy: str = "permute"  # how the masked modality is replaced: zero | mean | permute
    n_permutations: int = 5  # seeded permutations averaged per query (strategy "permute" only)
    min_visual_drop: float = 0.10  # fail when the CI's upper bound of the visual drop is below this
    min_text_drop: float | None = None  # optional: same rule for the text drop; None = report only


@dataclass(frozen=True)
class ShapleyPolicy:
    strategy: str = "zero"  # masking used for the four Shapley passes (the monitor's label-free view)
    min_visual_share: float | None = None  # optional: fail when the share CI's upper bound is below


@dataclass(frozen=True)
class IntegrityPolicy:
    # Fail when the CI's *upper* bound of mean per-query Spearman or of global Pearson between
    # candidate and baseline scores reaches this (fail-closed: the candidate must show it differs).
    max_correlation: float = 0.99


@dataclass(frozen=True)
class QualityPolicy:
    # Non-inferiority margin in absolute NDCG@k: fail when the CI's lower bound of
    # mean(candidate - baseline) is below -margin.
    margin: float = 0.01


@dataclass(frozen=True)
class AttentionPolicy:
    min_visual_mass: float | None = None  # optional: fail when the mean visual mass CI's upper bound is below
    min_entropy: float | None = None  # optional: fail when a head's mean normalised entropy is below
    max_entropy: float | None = None  # optional: fail when a head's mean normalised entropy is above


@dataclass(frozen=True)
class ScoringPolicy:
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    batch_rows: int = 65_536  # rows per session.run, counting every masked copy
    threads: int | None = None  # ONNX Runtime intra-op threads; None = ONNX Runtime's default


@dataclass(frozen=True)
class Policy:
    """The whole gate policy (see the module docstring and docs/gate.md)."""

    seed: int = 0  # seeds the permutations, the bootstrap and the sign-flip test
    data: DataPolicy = field(default_factory=DataPolicy)
    metric: MetricPolicy = field(default_factory=MetricPolicy)
    bootstrap: BootstrapPolicy = field(default_factory=BootstrapPolicy)
    baseline: BaselinePolicy = field(default_factory=BaselinePolicy)
    ablation: AblationPolicy = field(default_factory=AblationPolicy)
    shapley: ShapleyPolicy = field(default_factory=ShapleyPolicy)
    integrity: IntegrityPolicy = field(default_factory=IntegrityPolicy)
    quality: QualityPolicy = field(default_factory=QualityPolicy)
    attention: AttentionPolicy = field(default_factory=AttentionPolicy)
    scoring: ScoringPolicy = field(default_factory=ScoringPolicy)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label_limit(self) -> int | None:
        """The largest label the eval set may hold: data.max_label, capped for exponential gain."""
        if self.metric.gain != "exponential":
            return self.data.max_label
        return min(self.data.max_label if self.data.max_label is not None else MAX_EXPONENTIAL_LABEL, MAX_EXPONENTIAL_LABEL)


# ----- validation rules beyond types (field path -> (predicate, what is allowed)) ---------------

def _unit(x: float) -> bool:
    return 0.0 <= x <= 1.0


_RULES: dict[str, Rule] = {
    "seed": (lambda x: x >= 0, "an integer >= 0"),
    "data.min_queries": (lambda x: x >= 2, "an integer >= 2 (a CI needs several queries)"),
    "data.max_label": (lambda x: x >= 0, "an integer >= 0"),
    "metric.k": (lambda x: x >= 1, "an integer >= 1"),
    "metric.gain": (lambda x: x in ("linear", "exponential"), "'linear' or 'exponential'"),
    "bootstrap.n_resamples": (lambda x: 100 <= x <= MAX_RESAMPLES, f"an integer in [100, {MAX_RESAMPLES:,}]"),
    "bootstrap.confidence": (lambda x: 0.5 <= x < 1.0, "a number in [0.5, 1)"),
    "bootstrap.method": (lambda x: x in ("percentile", "bca"), "'percentile' or 'bca'"),
    "ablation.strategy": (lambda x: x in STRATEGIES, f"one of {list(STRATEGIES)}"),
    "ablation.n_permutations": (lambda x: 1 <= x <= 100, "an integer in [1, 100]"),
    "ablation.min_visual_drop": (lambda x: -1.0 <= x <= 1.0, "a number in [-1, 1]"),
    "ablation.min_text_drop": (lambda x: -1.0 <= x <= 1.0, "a number in [-1, 1]"),
    "shapley.strategy": (lambda x: x in STRATEGIES, f"one of {list(STRATEGIES)}"),
    "shapley.min_visual_share": (_unit, "a number in [0, 1]"),
    "integrity.max_correlation": (lambda x: -1.0 < x <= 1.0, "a number in (-1, 1]"),
    "quality.margin": (lambda x: 0.0 <= x < 1.0, "a number in [0, 1) (absolute NDCG; 1 or more disables the check)"),
    "attention.min_visual_mass": (_unit, "a number in [0, 1]"),
    "attention.min_entropy": (_unit, "a number in [0, 1]"),
    "attention.max_entropy": (_unit, "a number in [0, 1]"),
    "scoring.device": (lambda x: x in DEVICES, ", ".join(repr(d) for d in DEVICES[:-1]) + f" or {DEVICES[-1]!r}"),
    "scoring.batch_rows": (lambda x: x >= 1, "an integer >= 1"),
    "scoring.threads": (lambda x: 1 <= x <= 1024, "an integer in [1, 1024]"),
}


def policy_from_dict(data: Mapping[str, Any], source: str = "<policy>") -> Policy:
    """Build a Policy from parsed TOML, listing every problem at once.

    Raises:
        ConfigError: unknown keys, wrong types, out-of-range or inconsistent values (exit 2).
    """
    problems: list[str] = []
    policy = build(Policy, data, problems, _RULES)
    a = policy.attention
    if a.min_entropy is not None and a.max_entropy is not None and a.min_entropy > a.max_entropy:
        problems.append(f"'attention.min_entropy' ({a.min_entropy}) is above 'attention.max_entropy' ({a.max_entropy})")
    m, d = policy.metric, policy.data
    if m.gain == "exponential" and d.max_label is not None and d.max_label > MAX_EXPONENTIAL_LABEL:
        problems.append(
            f"'data.max_label' ({d.max_label}) is above {MAX_EXPONENTIAL_LABEL}, the largest label exponential gain "
            "(2^rel - 1) handles; use linear gain or labels <= 30"
        )
    if problems:
        raise ConfigError(source, problems)
    return policy


def load_policy(path: str | Path | None) -> Policy:
    """The policy in a TOML file, or the default policy when `path` is None.

    Raises:
        InvalidInputError: the file is missing or unreadable.
        ConfigError: the TOML is malformed or fails validation (every problem listed).
    """
    if path is None:
        return Policy()
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"policy file {path} does not exist; check the path or omit --policy for the defaults")
    try:
        path.read_bytes()
    except OSError as err:
        raise InvalidInputError(f"policy file {path} is unreadable ({err})") from None
    return policy_from_dict(read_toml(path, "policy file"), str(path))


def with_overrides(policy: Policy, **sections: Mapping[str, Any]) -> Policy:
    """A copy of `policy` with some fields of some sections replaced (used by tests and eval)."""
    return replace(policy, **{name: replace(getattr(policy, name), **values) for name, values in sections.items()})
