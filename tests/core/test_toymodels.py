"""Toy models: valid ONNX, the contract they carry, and the behaviour each is built to have."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from scipy import stats

from fusionguard import toymodels
from fusionguard.contract import embedded_contract, load_contract
from fusionguard.errors import InvalidInputError
from fusionguard.metrics import QueryGroups, ndcg_at_k

DIM, LT, LV, H = 8, 3, 5, 4

BUILDERS = {
    "text": lambda: toymodels.build_text_model(dim=DIM, n_text=LT),
    "fusion": lambda: toymodels.build_fusion_model(0.7, dim=DIM, n_text=LT, n_visual=LV, n_heads=H),
    "blind": lambda: toymodels.build_visual_blind_model(dim=DIM, n_text=LT, n_visual=LV, n_heads=H),
    "affine": lambda: toymodels.build_monotone_of_text_model("affine", DIM, LT, LV, H),
    "cubic": lambda: toymodels.build_monotone_of_text_model("cubic", DIM, LT, LV, H),
    "tanh": lambda: toymodels.build_monotone_of_text_model("tanh", DIM, LT, LV, H),
}


@pytest.fixture(scope="module")
def data():
    return toymodels.make_toy_dataset(n_queries=12, n_candidates=6, dim=DIM, n_text=LT, n_visual=LV, seed=3)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in names})


# plain references for the two signals (module docstring of toymodels)
def _text_ref(feeds):
    return math.sqrt(LT) * np.einsum("nd,nd->n", feeds["query"].astype(np.float64), feeds["text_tokens"].mean(1))


def _visual_ref(feeds):
    return math.sqrt(LV) * feeds["visual_tokens"].mean(1).astype(np.float64) @ toymodels.visual_direction(DIM)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_checker_strict_shape_inference_and_contract(name):
    model = BUILDERS[name]()
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    contract = load_contract(model)
    assert contract == embedded_contract(model)
    for vi in list(inferred.graph.input) + list(inferred.graph.output):
        assert vi.type.tensor_type.shape.dim[0].dim_param == "N"  # dynamic batch axis
    if name == "text":
        assert dict(contract.modalities) == {"text": ("query", "text_tokens")}
        assert contract.attention_output is None
    else:
        assert contract.modalities["visual"] == ("visual_tokens",)
        assert dict(contract.attention_keys) == {"text": (0, LT), "visual": (LT, LT + LV)}
        assert contract.attention_heads == H


@pytest.mark.parametrize("name", sorted(BUILDERS))
@pytest.mark.parametrize("n", [1, 7])
def test_any_batch_size_and_output_shapes(name, n, data):
    feeds = {k: v[:n] for k, v in data.feeds.items()}
    outs = _run(BUILDERS[name](), feeds)
    assert outs[0].shape == (n,) and outs[0].dtype == np.float32
    if name != "text":
        assert outs[1].shape == (n, H, LT + LV)
        np.testing.assert_allclose(outs[1].sum(-1), 1.0, rtol=1e-5)


def test_scores_match_plain_formulas(data):
    t, v = _text_ref(data.feeds), _visual_ref(data.feeds)
    np.testing.assert_allclose(_run(BUILDERS["text"](), data.feeds)[0], t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_run(BUILDERS["fusion"](), data.feeds)[0], t + 0.7 * v, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_run(BUILDERS["blind"](), data.feeds)[0], t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_run(BUILDERS["affine"](), data.feeds)[0], 2 * t + 1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_run(BUILDERS["cubic"](), data.feeds)[0], t**3 + t, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_run(BUILDERS["tanh"](), data.feeds)[0], np.tanh(t / 4), rtol=1e-4, atol=1e-5)


def test_attention_matches_plain_formula(data):
    w = 0.7
    feeds = data.feeds
    keys = np.concatenate([feeds["text_tokens"], feeds["visual_tokens"]], axis=1).astype(np.float64)
    dots = np.einsum("nkd,nd->nk", keys, feeds["query"])
    a = np.arange(H) / (H - 1)
    bias = np.r_[np.zeros(LT), np.full(LV, math.log(w + 1e-6))]
    logits = a[None, :, None] * dots[:, None, :] + bias
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(_run(BUILDERS["fusion"](), feeds)[1], expected, rtol=1e-4, atol=1e-6)


def test_visual_blind_ignores_visual(data):
    model = BUILDERS["blind"]()
    full, attention = _run(model, data.feeds)
    for visual in (np.zeros_like(data.feeds["visual_tokens"]), data.feeds["visual_tokens"][::-1].copy()):
        masked = _run(model, {**data.feeds, "visual_tokens": visual})[0]
        np.testing.assert_array_equal(masked, full)
    assert attention[..., LT:].sum(-1).max() < 1e-4  # visual attention mass ~ 0


def test_fusion_score_depends_on_visual(data):
    model = BUILDERS["fusion"]()
    full = _run(model, data.feeds)[0]
    masked = _run(model, {**data.feeds, "visual_tokens": np.zeros_like(data.feeds["visual_tokens"])})[0]
    assert np.abs(full - masked).mean() > 0.1


@pytest.mark.parametrize("transform", toymodels.MONOTONE_TRANSFORMS)
def test_monotone_model_ranks_exactly_like_v1(transform, data):
    v1 = _run(BUILDERS["text"](), data.feeds)[0]
    disguised = _run(toymodels.build_monotone_of_text_model(transform, DIM, LT, LV, H), data.feeds)
    assert stats.spearmanr(v1, disguised[0]).statistic == pytest.approx(1.0, abs=1e-12)
    # its attention looks healthy: visual mass near the uniform share Lv / K in the content-blind head
    assert disguised[1][:, 0, LT:].sum(-1).mean() == pytest.approx(LV / (LT + LV), rel=1e-3)


def test_visual_attention_mass_grows_with_visual_weight(data):
    masses = [
        _run(toymodels.build_fusion_model(w, DIM, LT, LV, H), data.feeds)[1][..., LT:].sum(-1).mean()
        for w in (0.0, 0.01, 0.1, 1.0, 3.0)
    ]
    assert masses[0] < 1e-4
    assert all(b > a for a, b in zip(masses, masses[1:]))


def test_toy_dataset_labels_reward_both_modalities(data):
    assert data.label.min() >= 0 and data.label.max() <= 4
    assert len(data) == 12 * 6
    groups = QueryGroups.from_arrays(data.query_id, data.item_id, data.label)
    big = toymodels.make_toy_dataset(n_queries=60, n_candidates=8, dim=DIM, n_text=LT, n_visual=LV, seed=1)
    big_groups = QueryGroups.from_arrays(big.query_id, big.item_id, big.label)
    assert not np.isnan(ndcg_at_k(groups, _text_ref(data.feeds))).any()  # every query has a relevant item
    text_ndcg = np.mean(ndcg_at_k(big_groups, _run(BUILDERS["text"](), big.feeds)[0]))
    fusion_ndcg = np.mean(ndcg_at_k(big_groups, _run(toymodels.build_fusion_model(1.0, DIM, LT, LV, H), big.feeds)[0]))
    assert fusion_ndcg > text_ndcg + 0.05


def test_toy_dataset_is_seeded_and_typed():
    a = toymodels.make_toy_dataset(3, 4, dim=DIM, seed=5)
    b = toymodels.make_toy_dataset(3, 4, dim=DIM, seed=5)
    c = toymodels.make_toy_dataset(3, 4, dim=DIM, seed=6)
    np.testing.assert_array_equal(a.feeds["visual_tokens"], b.feeds["visual_tokens"])
    assert not np.array_equal(a.feeds["visual_tokens"], c.feeds["visual_tokens"])
    assert all(v.dtype == np.float32 for v in a.feeds.values())
    assert a.label.dtype == np.int64 and a.item_id.dtype == np.int64


def test_save_roundtrip(tmp_path):
    path = toymodels.save(BUILDERS["fusion"](), tmp_path / "sub" / "fusion.onnx")
    assert load_contract(path).variant == "toy-fusion-w0.7"


@pytest.mark.parametrize(
    "call",
    [
        lambda: toymodels.build_fusion_model(-1.0),
        lambda: toymodels.build_fusion_model(float("nan")),
        lambda: toymodels.build_text_model(dim=0),
        lambda: toymodels.build_monotone_of_text_model("square"),
        lambda: toymodels.make_toy_dataset(n_candidates=1),
    ],
)
def test_bad_arguments_are_invalid_input(call):
    with pytest.raises(InvalidInputError):
        call()
