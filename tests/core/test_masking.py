"""The one definition of masking (fusionguard.masking): the ablation and Shapley pass sets, and
the masked copies checked against a plain reference written out here."""

from __future__ import annotations

import numpy as np
import pytest

from fusionguard.errors import InvalidInputError
from fusionguard.masking import (
    REFERENCE_FREE_STRATEGIES,
    STRATEGIES,
    Mask,
    ablation_masks,
    fill_masked,
    modality_permutations,
    shapley_passes,
)

MODALITIES = {"text": ("query", "text_tokens"), "visual": ("visual_tokens",)}


def _feeds(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "query": rng.normal(size=(n, 3)).astype(np.float32),
        "text_tokens": rng.normal(size=(n, 2, 3)).astype(np.float32),
        "visual_tokens": rng.normal(size=(n, 4, 3)).astype(np.float32),
    }


def _reference(feeds, mask: Mask, groups: np.ndarray) -> dict[str, np.ndarray]:
    """Plain reference: one generator per mask, one within-query shuffle per masked modality in
    sorted order (a stable sort of (group, random key)), shared by the modality's inputs."""
    rng = np.random.default_rng(mask.seed)
    out = {k: v.copy() for k, v in feeds.items()}
    for modality in sorted(mask.modalities):
        if mask.strategy == "zero":
            for name in MODALITIES[modality]:
                out[name] = np.zeros_like(feeds[name])
            continue
        keys = rng.random(groups.shape[0])
        perm = np.lexsort((keys, groups))  # groups are contiguous and sorted here
        for name in MODALITIES[modality]:
            out[name] = feeds[name][perm]
    return out


@pytest.mark.parametrize("strategy", REFERENCE_FREE_STRATEGIES)
@pytest.mark.parametrize("modalities", [frozenset(), frozenset({"text"}), frozenset({"visual"}), frozenset({"text", "visual"})])
def test_fill_masked_matches_the_plain_reference(strategy, modalities):
    n = 12
    groups = np.repeat(np.arange(3), 4)
    feeds = _feeds(n)
    masks = [Mask(), Mask(modalities, strategy, 7)]
    stacked = {k: np.empty((len(masks) * n, *v.shape[1:]), v.dtype) for k, v in feeds.items()}
    fill_masked(stacked, 0, feeds, masks, n, MODALITIES, groups)
    for i, mask in enumerate(masks):
        want = _reference(feeds, mask, groups)
        for name in feeds:
            np.testing.assert_array_equal(stacked[name][i * n:(i + 1) * n], want[name])


def test_a_modality_s_inputs_share_one_permutation_and_modalities_draw_their_own():
    perms = modality_permutations(Mask(frozenset({"text", "visual"}), "permute", 3), 50)
    assert set(perms) == {"text", "visual"}
    assert not np.array_equal(perms["text"], perms["visual"])
    assert modality_permutations(Mask(frozenset({"text"}), "zero", 3), 50) == {"text": None}


def test_ablation_masks_repeat_only_permutations():
    assert ablation_masks("visual", "permute", 10, 3) == tuple(Mask(frozenset({"visual"}), "permute", s) for s in (10, 11, 12))
    assert ablation_masks("text", "zero", 10, 3) == (Mask(frozenset({"text"}), "zero", 10),)


def test_shapley_passes_are_addressed_by_name():
    passes = shapley_passes("permute", seed=4)
    assert passes.masks == (passes.full, passes.text_only, passes.visual_only, passes.none)
    assert passes.text_only.modalities == {"visual"} and passes.visual_only.modalities == {"text"}
    scores = {passes.full: np.array([3.0]), passes.text_only: np.array([2.0]),
              passes.visual_only: np.array([1.0]), passes.none: np.array([0.0])}
    phi_t, phi_v, share = passes.values(dict(reversed(list(scores.items()))))  # order of the dict does not matter
    np.testing.assert_allclose([phi_t[0], phi_v[0], share[0]], [2.0, 1.0, 1 / 3])
    with pytest.raises(InvalidInputError, match="were not scored"):
        passes.values({passes.full: np.array([1.0])})


@pytest.mark.parametrize("bad", ["shuffle", "Zero", ""])
def test_unknown_strategies_are_refused_everywhere(bad):
    assert bad not in STRATEGIES
    with pytest.raises(InvalidInputError, match="unknown"):
        Mask(frozenset({"text"}), bad)
    with pytest.raises(InvalidInputError, match="Shapley strategy"):
        shapley_passes(bad)


def test_the_policy_and_the_training_config_take_their_strategies_from_the_core():
    from fusionguard.gate import policy
    from fusionguard.training import config

    assert policy.STRATEGIES is STRATEGIES
    assert config.MASKS is REFERENCE_FREE_STRATEGIES
