"""The served model: loading, hot reload and the scoring call of one request.

A `ModelService` holds an immutable `ModelState` (scorer, version, profile) behind one reference.
A request reads the reference once and uses that state to the end, so a reload, which builds the
new session completely before it swaps the reference, never drops or mixes a request. Scoring
runs the unmasked pass and, for a telemetry-sampled request, the three masked passes of the
exact two-modality Shapley values in ONE `Scorer.run` (one `session.run`). The passes come from
the core's one definition (`fusionguard.masking.shapley_passes`) with the monitor's strategy
(`ServiceConfig.shapley_strategy`, "zero" as the gate's default); a reference profile measured
with another strategy is refused at load (exit 2 at start, the old model kept on a reload).

Which requests get telemetry is a seeded random draw per request (`Sampler`), not every n-th
request: a client cycling through a fixed list of queries cannot line up with it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionguard.errors import InvalidInputError
from fusionguard.masking import MONITOR_STRATEGIES, ShapleyPasses, shapley_passes
from fusionguard.profile import ReferenceProfile
from fusionguard.registry import Registry, file_sha256
from fusionguard.scorer import InvalidFeedsError, Mask, Outputs, Scorer, feed_problems

logger = logging.getLogger(__name__)

FULL_ONLY = (Mask(),)
TELEMETRY_MASKS = shapley_passes("zero").masks  # the default strategy's four Shapley passes


@dataclass(frozen=True)
class ServiceConfig:
    """What to serve and how."""

    model: Path | None = None  # a model file (exactly one of model / registry)
    registry: Path | None = None  # a registry directory; serves its `current` version
    name: str = "ranker"  # the model name in the OIP URLs and the `model` metric label
    shadow: Path | None = None  # V1 model scoring the same candidates off the request path
    profile: Path | None = None  # reference profile; default: the registry version's profile.json
    telemetry_share: float = 0.05  # share of requests with the masked Shapley passes (see docs/monitor.md)
    telemetry_seed: int | None = None  # seed of the per-request telemetry draw; None: fresh OS entropy
    shapley_strategy: str = "zero"  # masking of the live Shapley passes; a profile must record the same
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    threads: int | None = None  # ONNX Runtime intra-op threads (None: ONNX Runtime decides)

    def problems(self) -> list[str]:
        out = []
        if (self.model is None) == (self.registry is None):
            out.append("give exactly one of --model FILE or --registry DIR")
        if self.registry is not None and not self.registry.is_dir():
            out.append(f"--registry {self.registry} is not a directory; create it (an empty registry starts not-ready)")
        if not 0.0 <= self.telemetry_share <= 1.0:
            out.append(f"--telemetry-share must be in [0, 1], got {self.telemetry_share}")
        if self.shapley_strategy not in MONITOR_STRATEGIES:
            out.append(
                f"Shapley strategy {self.shapley_strategy!r} cannot be computed per request; use one of {list(MONITOR_STRATEGIES)}"
            )
        if self.telemetry_seed is not None and self.telemetry_seed < 0:
            out.append(f"--telemetry-seed must be >= 0, got {self.telemetry_seed}")
        if not self.name or "/" in self.name:
            out.append(f"model name {self.name!r} must be non-empty and contain no '/'")
        return out


@dataclass(frozen=True)
class ModelState:
    """One loaded version. Immutable: a reload builds a new one."""

    scorer: Scorer
    version: str  # registry version id, or the first 12 hex digits of the file's sha256
    profile: ReferenceProfile | None
    loaded_at: float  # time.time()

    @property
    def two_modalities(self) -> bool:
        c = self.scorer.contract
        return c.has_modality("text") and c.has_modality("visual")


@dataclass
class Scored:
    """What one request's scoring produced."""

    state: ModelState  # the version that scored it
    feeds: dict[str, np.ndarray]
    outputs: list[Outputs]  # one per mask of `masks`, in that order (`full` is the real pass)
    telemetry: bool  # outputs holds the four Shapley passes of `passes`
    seconds: float  # wall time of the ONNX Runtime call
    masks: tuple[Mask, ...] = FULL_ONLY  # the pass of each output
    passes: ShapleyPasses | None = None  # the Shapley pass set, when telemetry

    @property
    def full(self) -> Outputs:
        """The real (unmasked) pass's outputs, the ones the response carries."""
        return self.outputs[self.masks.index(Mask())]

    def by_mask(self) -> dict[Mask, np.ndarray]:
        """Scores keyed by the pass (mask) that produced them."""
        return {mask: out.score for mask, out in zip(self.masks, self.outputs)}

    def response_outputs(self) -> dict[str, np.ndarray]:
        c = self.state.scorer.contract
        full = self.full
        out = {c.score_output: full.score}
        if c.attention_output is not None and full.attention is not None:
            out[c.attention_output] = full.attention
        return out


class Sampler:
    """Random per-request sampling of a share of requests, reproducible with a seed.

    Each call is an independent Bernoulli(share) draw from one seeded generator, so the n-th
    decision is the same for a given seed whatever the traffic; no periodic pattern exists for a
    cyclic client to line up with. `seed=None` draws the seed from the OS.
    """

    def __init__(self, share: float, seed: int | None = None) -> None:
        self.share = share
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        if self.share >= 1.0:
            return True
        if self.share <= 0.0:
            return False
        with self._lock:
            return bool(self._rng.random() < self.share)


class ModelNotLoadedError(InvalidInputError):
    """Scoring was asked of a service with no model loaded (the app answers 503 before this)."""


class ModelService:
    """The served model and its hot reload. Thread-safe."""

    def __init__(self, config: ServiceConfig) -> None:
        problems = config.problems()
        if problems:
            raise InvalidInputError("cannot start the monitor: " + "; ".join(problems))
        self.config = config
        self.name = config.name
        self._reload_lock = threading.Lock()
        self.shadow: Scorer | None = None
        if config.shadow is not None:
            self.shadow = Scorer(config.shadow, device=config.device, threads=config.threads)
        self.sampler = Sampler(config.telemetry_share, config.telemetry_seed)
        self.passes = shapley_passes(config.shapley_strategy, config.telemetry_seed or 0)
        # None until a model is loaded: a registry with nothing promoted yet, or after unload().
        self._state: ModelState | None = self._load()
        if self._state is None:
            logger.warning("registry %s has no current model yet; not ready until one is promoted and reloaded",
                           config.registry)

    # ----- loading -------------------------------------------------------------------------
    def _resolve(self) -> tuple[Path, str | None, Path | None] | None:
        """(model path, registry version or None, profile path or None); None: nothing promoted yet."""
        if self.config.model is not None:
            return self.config.model, None, self.config.profile
        registry = Registry(self.config.registry)
        info = registry.verified()  # the files must still hash to meta.json's manifest
        if info is None:
            return None
        return info.model_path, info.version, self.config.profile or info.profile_path

    def _load(self) -> ModelState | None:
        resolved = self._resolve()
        if resolved is None:
            return None
        path, version, profile_path = resolved
        scorer = Scorer(path, device=self.config.device, threads=self.config.threads)
        if version is not None and scorer.sha256 != Registry(self.config.registry).get(version).sha256:
            raise InvalidInputError(f"registry version {version}: {path} changed while it was being loaded; not served")
        profile = ReferenceProfile.read(profile_path) if profile_path is not None else None
        if profile is not None and profile.shapley_strategy != self.config.shapley_strategy:
            raise InvalidInputError(
                f"reference profile {profile_path} was measured with Shapley strategy {profile.shapley_strategy!r} "
                f"but the monitor computes live shares with {self.config.shapley_strategy!r}: the visual shares "
                "would be different measures. Re-run the gate with the policy's shapley.strategy = "
                f"{self.config.shapley_strategy!r} and promote its profile"
            )
        if profile is not None and profile.model_sha256 != scorer.sha256:
            logger.warning(
                "profile %s describes model %s but the served model is %s; drift compares against it anyway",
                profile_path, profile.model_sha256[:12], scorer.sha256[:12],
            )
        return ModelState(scorer=scorer, version=version or scorer.sha256[:12], profile=profile, loaded_at=time.time())

    @property
    def state(self) -> ModelState | None:
        """The served version; None while no model is loaded (the server answers not-ready)."""
        return self._state

    def reload(self) -> tuple[ModelState | None, bool]:
        """Load the current model (registry `current`, or the file again) and swap it in.

        The new session is built first; the swap is one reference assignment, so requests in
        flight finish on the old state. Returns (state, changed); (None, False) when the registry
        still has nothing promoted and nothing is loaded. Raises when the new model cannot be
        loaded, leaving the old one serving.
        """
        with self._reload_lock:
            resolved = self._resolve()
            old = self._state
            if resolved is None:
                if old is None:
                    return None, False
                raise InvalidInputError(
                    f"registry {self.config.registry} has no current model any more; promote or roll back one"
                )
            path, version, _ = resolved
            if old is not None and (version is None or version == old.version) and file_sha256(path) == old.scorer.sha256:
                return old, False
            new = self._load()
            self._state = new  # atomic reference swap
            logger.info("loaded %s: %s -> %s", self.name, old.version if old else "nothing", new.version if new else "nothing")
            return new, True

    def unload(self) -> ModelState | None:
        """Stop serving (the server answers not-ready until the next reload); returns what was served."""
        with self._reload_lock:
            old, self._state = self._state, None
            return old

    # ----- scoring -------------------------------------------------------------------------
    def admit(self, feeds: dict[str, np.ndarray], telemetry: bool) -> tuple[ModelState, tuple[Mask, ...]]:
        """Validate `feeds` once, against the served version; (that version, the passes to run).

        The passes are the four Shapley passes for a `telemetry` request on a two-modality
        model, else the unmasked pass alone. The scorer does not validate again (`run_valid`).

        Raises:
            ModelNotLoadedError: nothing is loaded.
            InvalidFeedsError: the feeds disagree with the contract (reasons per problem).
        """
        state = self._state  # read once: a concurrent reload does not affect this request
        if state is None:
            raise ModelNotLoadedError(f"model '{self.name}' is not loaded; reload it once one is promoted")
        problems = feed_problems(state.scorer.contract, feeds)
        if problems:
            raise InvalidFeedsError(problems)
        return state, self.masks_for(state, telemetry)

    def masks_for(self, state: ModelState, telemetry: bool) -> tuple[Mask, ...]:
        """The passes admission runs: the Shapley passes for a `telemetry` request on a
        two-modality model, else the unmasked pass alone."""
        return self.passes.masks if telemetry and state.two_modalities else FULL_ONLY

    def run(self, state: ModelState, feeds: dict[str, np.ndarray], masks: tuple[Mask, ...]) -> Scored:
        """Score admitted feeds: every pass in one `session.run`.

        Raises:
            EvaluationError: ONNX Runtime failed.
        """
        start = time.perf_counter()
        outputs = state.scorer.run_valid(feeds, masks)
        return self.scored(state, feeds, outputs, masks, time.perf_counter() - start)

    def scored(self, state: ModelState, feeds: dict[str, np.ndarray], outputs: list[Outputs],
               masks: tuple[Mask, ...], seconds: float) -> Scored:
        """The `Scored` of one request's outputs (also for a merged batch's share of them):
        `masks` are this service's Shapley passes when the request was sampled for telemetry."""
        telemetry = len(masks) > 1 and masks == self.passes.masks
        return Scored(state, feeds, outputs, telemetry, seconds, masks, self.passes if telemetry else None)

    def score(self, feeds: dict[str, np.ndarray], telemetry: bool) -> Scored:
        """Validate `feeds` and score them; with `telemetry`, the four Shapley passes in one call.

        Raises:
            InvalidFeedsError: the feeds disagree with the contract (reasons per problem).
            EvaluationError: ONNX Runtime failed.
        """
        state, masks = self.admit(feeds, telemetry)
        return self.run(state, feeds, masks)
