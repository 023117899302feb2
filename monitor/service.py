"""The served model: loading, hot reload and the scoring call of one request.

A `ModelService` holds an immutable `ModelState` (scorer, version, profile) behind one reference.
A request reads the reference once and uses that state to the end, so a reload, which builds the
new session completely before it swaps the reference, never drops or mixes a request. Scoring
runs the unmasked pass and, for a telemetry-sampled request, the three masked passes of the
exact two-modality Shapley values in ONE `Scorer.run` (one `session.run`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionguard.errors import InvalidInputError
from fusionguard.profile import ReferenceProfile
from fusionguard.registry import Registry, file_sha256
from fusionguard.scorer import InvalidFeedsError, Mask, Outputs, Scorer, feed_problems

logger = logging.getLogger(__name__)

# [full, visual masked, text masked, both masked]: s(t,v), s(t,-), s(-,v), s(-,-) for shapley_values.
TELEMETRY_MASKS = (Mask(), Mask(frozenset({"visual"})), Mask(frozenset({"text"})), Mask(frozenset({"text", "visual"})))
FULL_ONLY = (Mask(),)


@dataclass(frozen=True)
class ServiceConfig:
    """What to serve and how."""

    model: Path | None = None  # a model file (exactly one of model / registry)
    registry: Path | None = None  # a registry directory; serves its `current` version
    name: str = "ranker"  # the model name in the OIP URLs and the `model` metric label
    shadow: Path | None = None  # V1 model scoring the same candidates off the request path
    profile: Path | None = None  # reference profile; default: the registry version's profile.json
    telemetry_share: float = 0.05  # share of requests with the masked Shapley passes (see docs/monitor.md)
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
    outputs: list[Outputs]  # one per mask; [0] is the real pass
    telemetry: bool  # outputs holds the four Shapley passes
    seconds: float  # wall time of the ONNX Runtime call

    def response_outputs(self) -> dict[str, np.ndarray]:
        c = self.state.scorer.contract
        out = {c.score_output: self.outputs[0].score}
        if c.attention_output is not None and self.outputs[0].attention is not None:
            out[c.attention_output] = self.outputs[0].attention
        return out


class Sampler:
    """Deterministic sampling of a share of requests: request i is sampled when
    floor((i + 1) * share) > floor(i * share), so exactly round-down(n * share) of the first n are."""

    def __init__(self, share: float) -> None:
        self.share = share
        self._i = 0
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            i = self._i
            self._i += 1
        return int((i + 1) * self.share) > int(i * self.share)


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
        # None until a model is loaded: a registry with nothing promoted yet, or after unload().
        self._state: ModelState | None = self._load()
        if self._state is None:
            logger.warning("registry %s has no current model yet; not ready until one is promoted and reloaded",
                           config.registry)
        self.sampler = Sampler(config.telemetry_share)

    # ----- loading -------------------------------------------------------------------------
    def _resolve(self) -> tuple[Path, str | None, Path | None] | None:
        """(model path, registry version or None, profile path or None); None: nothing promoted yet."""
        if self.config.model is not None:
            return self.config.model, None, self.config.profile
        registry = Registry(self.config.registry)
        info = registry.current()
        if info is None:
            return None
        return info.model_path, info.version, self.config.profile or info.profile_path

    def _load(self) -> ModelState | None:
        resolved = self._resolve()
        if resolved is None:
            return None
        path, version, profile_path = resolved
        scorer = Scorer(path, device=self.config.device, threads=self.config.threads)
        profile = ReferenceProfile.read(profile_path) if profile_path is not None else None
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
        return state, (TELEMETRY_MASKS if telemetry and state.two_modalities else FULL_ONLY)

    @staticmethod
    def run(state: ModelState, feeds: dict[str, np.ndarray], masks: tuple[Mask, ...]) -> Scored:
        """Score admitted feeds: every pass in one `session.run`.

        Raises:
            EvaluationError: ONNX Runtime failed.
        """
        start = time.perf_counter()
        outputs = state.scorer.run_valid(feeds, masks)
        return Scored(state, feeds, outputs, len(masks) > 1, time.perf_counter() - start)

    def score(self, feeds: dict[str, np.ndarray], telemetry: bool) -> Scored:
        """Validate `feeds` and score them; with `telemetry`, the four Shapley passes in one call.

        Raises:
            InvalidFeedsError: the feeds disagree with the contract (reasons per problem).
            EvaluationError: ONNX Runtime failed.
        """
        state, masks = self.admit(feeds, telemetry)
        return self.run(state, feeds, masks)
