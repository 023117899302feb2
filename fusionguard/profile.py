"""The reference profile: how a promoted model's contributions and inputs look on the eval set.

The gate writes it (`profile.json` next to the report); the monitor reads it and compares live
traffic with it (drift of the visual share, of attention mass, of input feature norms). Both
summarise inputs the same way, through `feature_summaries` and `request_means`.

The unit is the request (one query and its candidates), not the row: the rows of a request share
its query vector and are ranked together, so they are not independent, and a drift statistic over
rows sees ~50 copies of one query value per request (issue 16). Every per-row value (visual share,
attention mass, input norm) is reduced to ONE value per request, the mean over the request's
candidates (`request_means`); a request-constant input such as the query vector thus counts once.
The profile summarises those per-query values of the eval set; the monitor's drift windows hold
the same per-request values of live traffic.

Schema (`profile_version` 2)::

    {"profile_version": 2, "model_sha256": "...", "n_rows": N, "n_requests": Q,
     "unit": "request", "shapley_strategy": "zero" | "mean" | "permute",
     "visual_share": S, "attention_mass": S | null, "features": {"<input>": S}}

where every S is a `Summary` of Q per-request values::

    {"mean", "std", "quantiles": {"0.01": q, ..., "0.99": q}, "edges": [...], "counts": [...],
     "sample": [<= 2000 values]}

`edges` are quantile edges of the reference values (deduplicated, strictly increasing; the first
is the minimum and the last the maximum), `counts` the reference histogram over them (values
equal to the last edge fall in the last bin). A consumer computing PSI should put live values
below the first edge into the first bin and above the last edge into the last bin. `sample` is a
seeded random subsample for two-sample tests (Kolmogorov–Smirnov). `shapley_strategy` is the
masking of the Shapley passes the visual share was measured with (`fusionguard.masking`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard import jsonio
from fusionguard.errors import EvaluationError, InvalidInputError, ProblemsError
from fusionguard.masking import STRATEGIES

PROFILE_VERSION = 2
UNIT = "request"  # what one summarised value stands for (see the module docstring)
QUANTILE_LEVELS = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
DEFAULT_BINS = 10  # quantile bins: deciles of the reference, the usual choice for PSI
DEFAULT_SAMPLE = 2000  # values kept for two-sample tests


def _level_key(level: float) -> str:
    return f"{level:g}"


@dataclass(frozen=True)
class Summary:
    """The distribution of one scalar per row (finite values only)."""

    mean: float
    std: float  # population standard deviation (ddof=0)
    quantiles: Mapping[str, float]  # "0.01" -> value, levels QUANTILE_LEVELS
    edges: tuple[float, ...]  # strictly increasing histogram edges, len(counts) + 1
    counts: tuple[int, ...]  # reference rows per bin
    sample: tuple[float, ...] = ()  # seeded subsample of at most DEFAULT_SAMPLE values

    @classmethod
    def of(
        cls, values: np.ndarray, *, bins: int = DEFAULT_BINS, sample_size: int = DEFAULT_SAMPLE, seed: int = 0
    ) -> Summary:
        """Summarise `values`, ignoring NaN/inf.

        Raises:
            EvaluationError: no finite value to summarise.
        """
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            raise EvaluationError("cannot summarise a distribution with no finite values")
        qs = np.quantile(v, QUANTILE_LEVELS)
        edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1)))
        if edges.size < 2:  # constant values: one bin around them
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
        counts, _ = np.histogram(v, bins=edges)
        if v.size > sample_size:
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(v, size=sample_size, replace=False))
        else:
            sample = np.sort(v)
        return cls(
            mean=float(v.mean()),
            std=float(v.std()),
            quantiles={_level_key(level): float(q) for level, q in zip(QUANTILE_LEVELS, qs)},
            edges=tuple(float(e) for e in edges),
            counts=tuple(int(c) for c in counts),
            sample=tuple(float(s) for s in sample),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "quantiles": dict(self.quantiles),
            "edges": list(self.edges),
            "counts": list(self.counts),
            "sample": list(self.sample),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> tuple[Summary | None, list[str]]:
        """Parse a summary, returning it and the problems found (so callers list them all)."""
        problems: list[str] = []
        if not isinstance(data, Mapping):
            return None, [f"{where} must be an object with mean, std, quantiles, edges, counts, sample"]
        for key in ("mean", "std", "quantiles", "edges", "counts"):
            if key not in data:
                problems.append(f"{where}.{key} is missing")
        if problems:
            return None, problems
        try:
            summary = cls(
                mean=float(data["mean"]),
                std=float(data["std"]),
                quantiles={str(k): float(v) for k, v in dict(data["quantiles"]).items()},
                edges=tuple(float(e) for e in data["edges"]),
                counts=tuple(int(c) for c in data["counts"]),
                sample=tuple(float(s) for s in data.get("sample", ())),
            )
        except (TypeError, ValueError) as err:
            return None, [f"{where} has a value of the wrong type ({err})"]
        if len(summary.edges) != len(summary.counts) + 1:
            problems.append(f"{where}: {len(summary.edges)} edges for {len(summary.counts)} counts; need counts + 1")
        if any(b <= a for a, b in zip(summary.edges, summary.edges[1:])):
            problems.append(f"{where}.edges must be strictly increasing")
        return summary, problems


@dataclass(frozen=True)
class ReferenceProfile:
    """A model's contribution and input distributions on the eval set (see the module docstring)."""

    model_sha256: str
    n_rows: int
    n_requests: int  # queries of the eval set = values in each summary (before NaN removal)
    shapley_strategy: str  # masking of the Shapley passes behind visual_share (fusionguard.masking)
    visual_share: Summary  # per-request mean of the per-candidate Shapley visual share
    attention_mass: Summary | None  # per-request mean visual attention mass (heads averaged); None without attention
    features: Mapping[str, Summary] = field(default_factory=dict)  # input -> per-request mean of per-row L2 norms
    profile_version: int = PROFILE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile_version": self.profile_version,
            "model_sha256": self.model_sha256,
            "n_rows": self.n_rows,
            "n_requests": self.n_requests,
            "unit": UNIT,
            "shapley_strategy": self.shapley_strategy,
            "visual_share": self.visual_share.to_dict(),
            "attention_mass": None if self.attention_mass is None else self.attention_mass.to_dict(),
            "features": {name: s.to_dict() for name, s in sorted(self.features.items())},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "profile.json") -> ReferenceProfile:
        """Parse and check a profile; every problem is reported at once.

        Raises:
            ProblemsError: malformed JSON or schema problems (exit 2).
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProblemsError(f"reference profile {source} is unreadable", [f"not valid JSON ({err})"]) from None
        except RecursionError:
            raise ProblemsError(f"reference profile {source} is unreadable", ["nested too deeply to be a profile"]) from None
        if jsonio.depth(data) > jsonio.MAX_DEPTH:
            raise ProblemsError(f"reference profile {source} is unreadable", ["nested too deeply to be a profile"])
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "profile.json") -> ReferenceProfile:
        if not isinstance(data, Mapping):
            raise ProblemsError(f"reference profile {source} is invalid", ["the top level must be a JSON object"])
        problems: list[str] = []
        version = data.get("profile_version")
        if version != PROFILE_VERSION:
            hint = " (version 1 summarised rows, not requests: re-run the gate to write a new profile)" if version == 1 else ""
            problems.append(f"profile_version is {version!r}; this fusionguard reads version {PROFILE_VERSION}{hint}")
        if version == PROFILE_VERSION and data.get("unit") != UNIT:
            problems.append(f"unit is {data.get('unit')!r}; version {PROFILE_VERSION} profiles summarise per-{UNIT} values")
        strategy = data.get("shapley_strategy")
        if strategy not in STRATEGIES:
            problems.append(f"shapley_strategy is {strategy!r}; expected one of {list(STRATEGIES)}")
        sha = data.get("model_sha256")
        if not isinstance(sha, str) or not sha:
            problems.append("model_sha256 is missing or not a string")
        n_rows = data.get("n_rows")
        if not isinstance(n_rows, int) or n_rows < 0:
            problems.append(f"n_rows must be a non-negative integer, got {n_rows!r}")
        n_requests = data.get("n_requests")
        if not isinstance(n_requests, int) or n_requests < 0:
            problems.append(f"n_requests must be a non-negative integer, got {n_requests!r}")
        share, found = Summary.from_dict(data.get("visual_share"), "visual_share")
        problems += found
        mass = None
        if data.get("attention_mass") is not None:
            mass, found = Summary.from_dict(data["attention_mass"], "attention_mass")
            problems += found
        features: dict[str, Summary] = {}
        raw_features = data.get("features", {})
        if not isinstance(raw_features, Mapping):
            problems.append("features must be an object mapping input name to a summary")
        else:
            for name, raw in raw_features.items():
                summary, found = Summary.from_dict(raw, f"features.{name}")
                problems += found
                if summary is not None:
                    features[str(name)] = summary
        if problems:
            raise ProblemsError(f"reference profile {source} is invalid", problems)
        return cls(
            model_sha256=str(sha),
            n_rows=int(n_rows),
            n_requests=int(n_requests),  # type: ignore[arg-type]  # checked above
            shapley_strategy=str(strategy),
            visual_share=share,  # type: ignore[arg-type]  # checked above
            attention_mass=mass,
            features=features,
            profile_version=PROFILE_VERSION,
        )

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | Path) -> ReferenceProfile:
        path = Path(path)
        if path.is_symlink():
            raise InvalidInputError(f"reference profile {path} is a symbolic link; fusionguard reads only a regular profile.json")
        if not path.is_file():
            raise InvalidInputError(f"reference profile {path} does not exist; the gate writes it as profile.json")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidInputError(f"reference profile {path} is unreadable ({err})") from None
        return cls.from_json(text, source=str(path))


def feature_summaries(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-row L2 norm of each input: input name -> (n,) float64.

    Axis 0 is the candidate row; all other axes are flattened. This is the one way the gate and
    the monitor reduce an input tensor to a scalar per row for drift detection.
    """
    out: dict[str, np.ndarray] = {}
    for name, array in feeds.items():
        a = np.asarray(array)
        if a.ndim == 0:
            raise InvalidInputError(f"input '{name}' is a scalar; feeds need the candidate row on axis 0")
        flat = a.reshape(a.shape[0], -1).astype(np.float64, copy=False)
        out[name] = np.sqrt(np.einsum("ij,ij->i", flat, flat))
    return out


def request_means(per_row: Mapping[str, np.ndarray], requests: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One value per request: the mean of each feature's finite per-row values within a request.

    This is the one reduction from rows to independent units, used by the gate (over the eval
    set's queries) and the monitor (over one live request). A request-constant input (the query
    vector, repeated on every candidate row) yields its value once per request.

    Args:
        per_row: feature -> (N,) per-row values, or (N, H) (averaged over axis 1 first, e.g.
            attention mass per head).
        requests: (N,) request (query) id per row; None when all rows are one request. Requests
            come out in order of first appearance.
    Returns:
        feature -> (R,) float64 per-request means, NaN for a request without a finite value.
    """
    codes: np.ndarray | None = None
    n_requests = 1
    if requests is not None:
        ids = np.asarray(requests)
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # unique() sorts ids; renumber by first appearance
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        codes = rank[inverse.ravel()]
        n_requests = order.size
    out: dict[str, np.ndarray] = {}
    for name, values in per_row.items():
        v = np.asarray(values, dtype=np.float64)
        if v.ndim == 2:
            v = v.mean(axis=1)
        v = v.ravel()
        finite = np.isfinite(v)
        if codes is None:
            out[name] = np.array([v[finite].mean() if finite.any() else np.nan])
            continue
        if codes.size != v.size:
            raise InvalidInputError(f"feature '{name}' has {v.size} rows but {codes.size} request ids were given")
        total = np.bincount(codes, weights=np.where(finite, v, 0.0), minlength=n_requests)
        count = np.bincount(codes, weights=finite.astype(np.float64), minlength=n_requests)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(count > 0, total / count, np.nan)
    return out


def build_profile(
    model_sha256: str,
    visual_share: np.ndarray,
    features: Mapping[str, np.ndarray],
    attention_mass: np.ndarray | None = None,
    *,
    requests: np.ndarray,
    shapley_strategy: str,
    bins: int = DEFAULT_BINS,
    sample_size: int = DEFAULT_SAMPLE,
    seed: int = 0,
) -> ReferenceProfile:
    """Build a profile from per-row values, summarised per request (`request_means`).

    Args:
        model_sha256: sha256 of the model file the profile describes.
        visual_share: (n,) Shapley visual share per candidate (NaN rows, where both contributions
            are zero, are ignored).
        features: input name -> (n,) per-row L2 norms, from `feature_summaries(feeds)`.
        attention_mass: (n,) or (n, H) visual attention mass; averaged over heads per row.
        requests: (n,) query id of each row: a query's rows are one request.
        shapley_strategy: masking of the Shapley passes `visual_share` comes from.
        bins: number of quantile bins for the histograms.
        sample_size: at most this many values kept per distribution for two-sample tests.
        seed: seed of the subsampling.
    Raises:
        EvaluationError: the visual share has no finite value.
        InvalidInputError: an unknown strategy, or arrays that do not match `requests`.
    """
    if shapley_strategy not in STRATEGIES:
        raise InvalidInputError(f"Shapley strategy '{shapley_strategy}' is unknown; use one of {list(STRATEGIES)}")
    per_row: dict[str, np.ndarray] = {"visual_share": np.asarray(visual_share, dtype=np.float64)}
    if attention_mass is not None:
        per_row["attention_mass"] = np.asarray(attention_mass, dtype=np.float64)
    per_request = request_means(per_row, requests)
    per_feature = request_means(features, requests)
    mass_summary = None
    if attention_mass is not None:
        mass_summary = Summary.of(per_request["attention_mass"], bins=bins, sample_size=sample_size, seed=seed)
    try:
        share_summary = Summary.of(per_request["visual_share"], bins=bins, sample_size=sample_size, seed=seed)
    except EvaluationError:
        raise EvaluationError(
            "the visual share is undefined for every candidate (both modality contributions are zero): "
            "the model's score does not depend on its inputs"
        ) from None
    return ReferenceProfile(
        model_sha256=model_sha256,
        n_rows=int(np.asarray(visual_share).size),
        n_requests=int(per_request["visual_share"].size),
        shapley_strategy=shapley_strategy,
        visual_share=share_summary,
        attention_mass=mass_summary,
        features={name: Summary.of(v, bins=bins, sample_size=sample_size, seed=seed) for name, v in per_feature.items()},
    )
