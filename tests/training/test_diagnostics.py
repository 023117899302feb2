"""Training's ablation drops mask by the core's definition: the masked tensors equal the copies
the scorer writes (fusionguard.masking.fill_masked) for the same rows, mask and seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionguard.masking import Mask, ablation_masks, fill_masked
from fusionguard.training.data import load_split, read_dims
from fusionguard.training.diagnostics import masked_inputs, score_split
from fusionguard.training.models import build_model

from .conftest import tiny_config


@pytest.fixture(scope="module")
def split_and_model(tiny_bench):
    dims = read_dims(tiny_bench)
    split = load_split(tiny_bench / "val.parquet", dims, with_visual=True)
    torch.manual_seed(0)
    return split, build_model("baseline", dims, tiny_config().model).eval()


@pytest.mark.parametrize("strategy", ["zero", "permute"])
@pytest.mark.parametrize("modality", ["text", "visual"])
def test_training_masks_are_the_scorer_s_masks(split_and_model, strategy, modality):
    split, model = split_and_model
    mask = ablation_masks(modality, strategy, seed=5)[0]
    got = masked_inputs(model, split, mask)
    feeds = {"query": split.query.numpy(), "text_tokens": split.text_tokens.numpy(), "visual_tokens": split.visual_tokens.numpy()}
    n = split.n_rows
    stacked = {k: np.empty_like(v) for k, v in feeds.items()}
    fill_masked(stacked, 0, feeds, [mask], n, model.modalities, split.group.numpy())
    for name in feeds:
        np.testing.assert_array_equal(got[name].numpy(), stacked[name], err_msg=name)
    # only the masked modality's inputs change (a query's vector is the same on all its rows,
    # so a within-query permutation leaves `query` as it was)
    changed = {name for name in feeds if not np.array_equal(got[name].numpy(), feeds[name])}
    assert changed and changed <= set(model.modalities[modality])


def test_score_split_text_drop_uses_the_gate_s_text_mask(split_and_model):
    split, model = split_and_model
    scores = score_split(model, split, "permute", seed=2)
    x = masked_inputs(model, split, Mask(frozenset({"text"}), "permute", 2))
    with torch.no_grad():
        want = model(x["query"], x["text_tokens"], x["visual_tokens"])[0].float().numpy()
    np.testing.assert_allclose(scores.text_masked, want, rtol=1e-6, atol=1e-6)
