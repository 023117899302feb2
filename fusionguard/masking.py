"""The Shapley pass set: one definition of the four masked passes both the gate and the monitor run.

The exact two-modality Shapley values (DESIGN.md, "Modality Shapley share") need the scores with
both modalities present, text only, visual only and neither. Which masks realise "absent" is the
masking strategy (`fusionguard.scorer.Mask`); the gate measures the reference visual share with
the policy's `shapley.strategy`, the reference profile records it, and the monitor measures live
shares with the same passes (`monitor.service` refuses a profile measured another way). Both call
`shapley_passes` and read the scores by pass name, never by position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fusionguard.errors import InvalidInputError
from fusionguard.metrics import shapley_values
from fusionguard.scorer import STRATEGIES, Mask

__all__ = ["ShapleyPasses", "shapley_passes", "MONITOR_STRATEGIES"]

# Strategies the monitor can apply to one request on its own: "mean" needs the eval set's mean
# tensors, which the monitor does not have.
MONITOR_STRATEGIES = ("zero", "permute")


@dataclass(frozen=True)
class ShapleyPasses:
    """The four passes, by name. `masks` is their fixed order for one `Scorer.run` call."""

    strategy: str  # how an absent modality is replaced: zero | mean | permute
    full: Mask  # s(t, v): both present
    text_only: Mask  # s(t, -): visual masked
    visual_only: Mask  # s(-, v): text masked
    none: Mask  # s(-, -): both masked

    @property
    def masks(self) -> tuple[Mask, Mask, Mask, Mask]:
        return (self.full, self.text_only, self.visual_only, self.none)

    def values(self, scores: Mapping[Mask, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(phi_text, phi_visual, visual_share) per row from scores keyed by mask.

        Raises:
            InvalidInputError: a pass is missing from `scores`.
        """
        missing = [str(m) for m in self.masks if m not in scores]
        if missing:
            raise InvalidInputError(f"the Shapley passes {missing} were not scored; score every mask of `masks`")
        return shapley_values(scores[self.full], scores[self.text_only], scores[self.visual_only], scores[self.none])


def shapley_passes(strategy: str = "zero", seed: int = 0) -> ShapleyPasses:
    """The Shapley pass set for `strategy` ("permute" draws its permutations from `seed`).

    Raises:
        InvalidInputError: an unknown strategy.
    """
    if strategy not in STRATEGIES:
        raise InvalidInputError(f"Shapley strategy '{strategy}' is unknown; use one of {list(STRATEGIES)}")
    return ShapleyPasses(
        strategy=strategy,
        full=Mask(),
        text_only=Mask(frozenset({"visual"}), strategy, seed),
        visual_only=Mask(frozenset({"text"}), strategy, seed),
        none=Mask(frozenset({"text", "visual"}), strategy, seed),
    )
