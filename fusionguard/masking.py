"""Masking: the one definition of "a modality is absent" that the gate, the monitor and training share.

A `Mask` names the modalities to hide in one pass and the strategy that hides them; masking a
modality masks every input the contract (or the training model's `modalities`) lists under it.
Strategies (docs/interfaces.md; the design notes call this the "modality ablation drop"):

- ``zero``: the inputs are replaced by zeros;
- ``mean``: by the per-row mean tensor of a reference set (`Scorer.reference_means`);
- ``permute``: rows are shuffled across candidates, within each query when groups are given,
  with a numpy Generator seeded by `Mask.seed`. All inputs of one modality get the same
  permutation (so a candidate's tokens stay together); each masked modality, in sorted order,
  draws its own from the one generator (`modality_permutations`).

The exact two-modality Shapley values need the scores with both modalities present, text only,
visual only and neither: `shapley_passes` builds that pass set for a strategy and `ShapleyPasses`
reads the scores back by pass name, never by position. The ablation drops use `ablation_masks`.
Everything here is numpy; the scorer (`fusionguard.scorer`) writes the masked copies with
`fill_masked`, and training (`fusionguard.training.diagnostics`) applies the same `modality_permutations` to
its tensors, so a measure of one name means one thing everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fusionguard.errors import InvalidInputError
from fusionguard.metrics import shapley_values

__all__ = [
    "STRATEGIES",
    "REFERENCE_FREE_STRATEGIES",
    "MONITOR_STRATEGIES",
    "Mask",
    "GroupOrder",
    "permutation",
    "modality_permutations",
    "fill_masked",
    "ablation_masks",
    "ShapleyPasses",
    "shapley_passes",
]

STRATEGIES = ("zero", "mean", "permute")
# Strategies that need nothing but the rows being masked: "mean" needs a reference set's mean
# tensors, which neither the monitor (one request) nor the training diagnostics have.
REFERENCE_FREE_STRATEGIES = ("zero", "permute")
MONITOR_STRATEGIES = REFERENCE_FREE_STRATEGIES  # what the monitor can apply to one request


def strategy_problem(strategy: object, allowed: Sequence[str] = STRATEGIES, what: str = "mask strategy") -> str | None:
    """The message for a strategy outside `allowed`, or None when it is one of them."""
    if strategy in allowed:
        return None
    return f"{what} '{strategy}' is unknown; use one of {list(allowed)}"


@dataclass(frozen=True)
class Mask:
    """Which modalities to mask in one pass, and how. Hashable, so it keys result dicts."""

    modalities: frozenset[str] = frozenset()  # empty = the real, unmasked pass
    strategy: str = "zero"  # "zero" | "mean" | "permute"
    seed: int = 0  # for "permute"

    def __post_init__(self) -> None:
        if isinstance(self.modalities, str):  # Mask("visual") would otherwise become {"v", "i", ...}
            object.__setattr__(self, "modalities", frozenset({self.modalities}))
        elif not isinstance(self.modalities, frozenset):
            object.__setattr__(self, "modalities", frozenset(self.modalities))
        problem = strategy_problem(self.strategy)
        if problem:
            raise InvalidInputError(problem)

    @property
    def is_unmasked(self) -> bool:
        return not self.modalities

    def __str__(self) -> str:
        if not self.modalities:
            return "full"
        seed = f"/seed{self.seed}" if self.strategy == "permute" else ""
        return f"-{'+'.join(sorted(self.modalities))}({self.strategy}{seed})"


def ablation_masks(modality: str, strategy: str, seed: int, repeats: int = 1) -> tuple[Mask, ...]:
    """The masks of one modality's ablation: `repeats` seeded permutations (seed, seed + 1, ...)
    for "permute", one mask otherwise (zero and mean draw nothing)."""
    n = repeats if strategy == "permute" else 1
    return tuple(Mask(frozenset({modality}), strategy, seed + i) for i in range(n))


# ----- permutations -------------------------------------------------------------------------------

def permutation(n: int, seed: int | np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """A random permutation of range(n) that maps each row to a row of the same group.

    perm[i] is the row whose values row i receives. Without groups it is rng.permutation(n).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if groups is None:
        return rng.permutation(n)
    return GroupOrder(groups).permutation(rng)


def modality_permutations(mask: Mask, n: int, order: GroupOrder | None = None) -> dict[str, np.ndarray | None]:
    """Masked modality -> the row permutation its inputs get (None for zero and mean).

    One generator seeded by `mask.seed` serves the modalities in sorted order; `order` (the
    batch's query groups) keeps each row inside its query, else rows move across the batch.
    """
    if mask.strategy != "permute":  # zero and mean draw nothing (a generator costs ~25 us to make)
        return {modality: None for modality in sorted(mask.modalities)}
    rng = np.random.default_rng(mask.seed)
    return {modality: order.permutation(rng) if order is not None else rng.permutation(n) for modality in sorted(mask.modalities)}


class GroupOrder:
    """The query-group structure of a batch, computed once and reused by every permuted mask.

    `permutation(rng)` is, for a given generator state, the same permutation whatever integer
    labels the groups get: within each group the k-th row (in row order) receives the row of
    that group with the k-th smallest random key, so only the partition into groups matters.
    """

    def __init__(self, groups: np.ndarray) -> None:
        self.codes = _group_codes(np.asarray(groups))
        self.n = int(self.codes.shape[0])
        # Rows sorted by group; None when the groups are already contiguous and in label order.
        self.by_group = None if bool(np.all(self.codes[1:] >= self.codes[:-1])) else np.argsort(self.codes, kind="stable")
        # Whether a group label fits above the 53 random bits of a uint64 sort key.
        self.packable = self.n == 0 or int(self.codes.max()) < 2**11

    def permutation(self, rng: np.random.Generator) -> np.ndarray:
        keys = rng.random(self.n)
        if self.packable:
            # rng.random returns k * 2^-53 for an integer k < 2^53, so (code << 53) | k orders rows
            # exactly as lexsort((keys, codes)) does, ties included (both stable), in one integer sort.
            packed = (self.codes.astype(np.uint64) << np.uint64(53)) | (keys * 2.0**53).astype(np.uint64)
            shuffled = np.argsort(packed, kind="stable")
        else:
            shuffled = np.lexsort((keys, self.codes))  # rows sorted by group, random inside each group
        if self.by_group is None:
            return shuffled
        perm = np.empty(self.n, dtype=np.int64)
        perm[self.by_group] = shuffled  # the k-th row of a group receives the k-th shuffled row of that group
        return perm


def _group_codes(groups: np.ndarray) -> np.ndarray:
    """(n,) int64 labels, equal exactly for rows of the same group.

    Queries usually arrive as contiguous runs of rows: then the run index is the label, found with
    one vectorised comparison of neighbours (no sort of, say, string ids). A group split over
    several runs falls back to `np.unique`.
    """
    g = groups.reshape(-1)
    if g.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if g.dtype.kind in "iubUSO":
        change = np.asarray(g[1:] != g[:-1], dtype=bool)
        starts = g[np.concatenate(([0], np.flatnonzero(change) + 1))]
        if len(set(starts.tolist())) == starts.shape[0]:  # every group is one run
            codes = np.empty(g.shape[0], dtype=np.int64)
            codes[0] = 0
            np.cumsum(change, out=codes[1:])
            return codes
    _, codes = np.unique(g, return_inverse=True)
    return codes.reshape(-1).astype(np.int64, copy=False)


# ----- masked copies ------------------------------------------------------------------------------

def fill_masked(
    stacked: dict[str, np.ndarray],
    start: int,
    feeds: Mapping[str, np.ndarray],
    masks: Sequence[Mask],
    n: int,
    modalities: Mapping[str, Sequence[str]],
    groups: np.ndarray | None = None,
    means: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write the masked copies of `feeds` into rows [start, start + len(masks) * n) of `stacked`.

    Rows [start + i*n, start + (i+1)*n) of every input of `stacked` receive mask i's copy.

    Args:
        stacked: input name -> preallocated array, written in place (no per-mask temporaries).
        feeds: input name -> (n, ...) array; every key of `stacked` must be here.
        modalities: modality -> the input names it covers (the contract's `modalities`).
        groups: (n,) query ids; "permute" then shuffles only within a query.
        means: input name -> per-row mean tensor, for "mean" masks (checked by the caller).
    """
    # Group labels once per batch, shared by every permuted mask and modality.
    order = GroupOrder(groups) if groups is not None and any(m.strategy == "permute" for m in masks) else None
    for i, mask in enumerate(masks):
        masked: dict[str, np.ndarray | None] = {}  # input -> row permutation (None for zero/mean)
        for modality, perm in modality_permutations(mask, n, order).items():
            for name in modalities[modality]:
                masked[name] = perm
        for name, block_all in stacked.items():
            x = feeds[name]
            block = block_all[start + i * n:start + (i + 1) * n]
            if name not in masked:
                block[...] = x
            elif mask.strategy == "zero":
                block.fill(0)
            elif mask.strategy == "mean":
                block[...] = np.asarray(means[name], dtype=x.dtype)  # type: ignore[index]
            else:
                np.take(x, masked[name], axis=0, out=block)


# ----- the Shapley pass set -----------------------------------------------------------------------

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
    problem = strategy_problem(strategy, what="Shapley strategy")
    if problem:
        raise InvalidInputError(problem)
    return ShapleyPasses(
        strategy=strategy,
        full=Mask(),
        text_only=Mask(frozenset({"visual"}), strategy, seed),
        visual_only=Mask(frozenset({"text"}), strategy, seed),
        none=Mask(frozenset({"text", "visual"}), strategy, seed),
    )
