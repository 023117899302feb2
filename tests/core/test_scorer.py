"""The scorer: providers, masking against plain references, one session.run, validation, datasets."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from fusionguard import session as session_mod
from fusionguard import toymodels
from fusionguard.contract import METADATA_KEY, ModelContract, TensorSpec, load_contract
from fusionguard.dataset import Batch, write_dataset
from fusionguard.errors import ContractError, EvaluationError, InvalidInputError, ProblemsError
from fusionguard.scorer import (
    CPU,
    CUDA,
    InvalidFeedsError,
    Mask,
    Scorer,
    check_feeds,
    feed_problems,
    permutation,
    select_providers,
)

DIM, LT, LV, H = 6, 2, 3, 4
VISUAL = frozenset({"visual"})
TEXT = frozenset({"text"})


# built once at import for the Hypothesis test (fixtures do not mix with @given)
_FUSION_SMALL = toymodels.build_fusion_model(0.5, dim=DIM, n_text=LT, n_visual=LV, n_heads=H)
_SMALL_DATA = toymodels.make_toy_dataset(n_queries=3, n_candidates=4, dim=DIM, n_text=LT, n_visual=LV, seed=2)


@pytest.fixture(scope="module")
def data() -> Batch:
    return toymodels.make_toy_dataset(n_queries=8, n_candidates=5, dim=DIM, n_text=LT, n_visual=LV, seed=11)


@pytest.fixture(scope="module")
def fusion() -> onnx.ModelProto:
    return toymodels.build_fusion_model(1.0, dim=DIM, n_text=LT, n_visual=LV, n_heads=H)


@pytest.fixture()
def scorer(fusion) -> Scorer:
    return Scorer(fusion, device="cpu", threads=1)


class Spy:
    """Wraps an ORT session, recording every run call's feeds."""

    def __init__(self, session):
        self.session = session
        self.calls: list[dict[str, np.ndarray]] = []

    def run(self, output_names, feeds):
        self.calls.append({k: np.array(v) for k, v in feeds.items()})
        return self.session.run(output_names, feeds)

    def get_providers(self):
        return self.session.get_providers()


def spy_on(scorer: Scorer) -> Spy:
    spy = Spy(scorer._session)
    scorer._session = spy
    return spy


# ----- providers --------------------------------------------------------------------------------

def test_select_providers_cpu_here(monkeypatch):
    monkeypatch.setattr(session_mod.ort, "get_available_providers", lambda: ["AzureExecutionProvider", CPU])
    assert select_providers("cpu") == [CPU]
    assert select_providers("auto") == [CPU]
    with pytest.raises(InvalidInputError, match="onnxruntime-gpu"):
        select_providers("cuda")
    with pytest.raises(InvalidInputError, match="unknown"):
        select_providers("tpu")


def test_select_providers_with_cuda_installed(monkeypatch):
    monkeypatch.setattr(session_mod.ort, "get_available_providers", lambda: [CUDA, CPU])
    assert select_providers("auto") == [CUDA, CPU]
    assert select_providers("cuda") == [CUDA, CPU]
    assert select_providers("cpu") == [CPU]


class FakeSession:
    """Stands in for ort.InferenceSession: records what it was asked for, reports `got`."""

    got: list[str] = [CPU]
    fail_with_cuda = False
    created: list[list[str]] = []

    def __init__(self, model, sess_options=None, providers=None):
        FakeSession.created.append(list(providers))
        if FakeSession.fail_with_cuda and CUDA in providers:
            raise session_mod._ort_state.Fail("CUDA libraries not found")
        self.options = sess_options
        self._got = [p for p in FakeSession.got if p in providers] or [CPU]

    def get_providers(self):
        return self._got


@pytest.fixture()
def fake_cuda(monkeypatch):
    monkeypatch.setattr(session_mod.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(session_mod.ort, "InferenceSession", FakeSession)
    FakeSession.created = []
    FakeSession.fail_with_cuda = False
    return FakeSession


def test_auto_gets_cuda_when_usable(fake_cuda, fusion):
    fake_cuda.got = [CUDA, CPU]
    s = Scorer(fusion, device="auto", threads=3)
    assert s.provider == CUDA
    assert fake_cuda.created == [[CUDA, CPU]]
    assert s._session.options.intra_op_num_threads == 3


def test_auto_falls_back_to_cpu_with_a_warning(fake_cuda, fusion, caplog):
    fake_cuda.got = [CPU]
    with caplog.at_level(logging.WARNING, logger="fusionguard.scorer"):
        s = Scorer(fusion, device="auto")
    assert s.provider == CPU
    assert "unusable" in caplog.text


def test_auto_falls_back_when_cuda_session_creation_fails(fake_cuda, fusion, caplog):
    fake_cuda.fail_with_cuda = True
    with caplog.at_level(logging.WARNING, logger="fusionguard.scorer"):
        s = Scorer(fusion, device="auto")
    assert s.provider == CPU
    assert fake_cuda.created == [[CUDA, CPU], [CPU]]
    assert "falling back" in caplog.text


@pytest.mark.parametrize("fail", [False, True])
def test_cuda_required_but_unusable_is_invalid_input(fake_cuda, fusion, fail):
    fake_cuda.got = [CPU]
    fake_cuda.fail_with_cuda = fail
    with pytest.raises(InvalidInputError, match="cuda"):
        Scorer(fusion, device="cuda")


def test_real_cpu_session(scorer):
    assert scorer.provider == CPU
    with pytest.raises(InvalidInputError, match="threads"):
        Scorer(toymodels.build_text_model(), threads=0)


# ----- model, contract, sha256 ------------------------------------------------------------------

def test_sha256_path_and_sidecar(tmp_path, fusion):
    path = toymodels.save(fusion, tmp_path / "m.onnx")
    s = Scorer(path, device="cpu")
    assert s.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert s.path == path and s.contract == load_contract(path)

    bare = onnx.load(str(path))
    contract_json = next(p.value for p in bare.metadata_props if p.key == METADATA_KEY)
    del bare.metadata_props[:]
    bare_path = tmp_path / "bare.onnx"
    onnx.save(bare, str(bare_path))
    with pytest.raises(ContractError):
        Scorer(bare_path, device="cpu")
    sidecar = tmp_path / "contract.json"
    sidecar.write_text(contract_json)
    assert Scorer(bare_path, sidecar=sidecar, device="cpu").contract == s.contract
    assert Scorer(bare_path, s.contract, device="cpu").contract == s.contract
    with pytest.raises(InvalidInputError, match="does not exist"):
        Scorer(tmp_path / "missing.onnx")


# ----- masking against plain references ---------------------------------------------------------

def test_unmasked_run_is_one_plain_call(scorer, data):
    spy = spy_on(scorer)
    (out,) = scorer.run(data.feeds)
    assert len(spy.calls) == 1 and spy.calls[0]["query"].shape[0] == len(data)
    t = np.sqrt(LT) * np.einsum("nd,nd->n", data.feeds["query"], data.feeds["text_tokens"].mean(1))
    v = np.sqrt(LV) * data.feeds["visual_tokens"].mean(1) @ toymodels.visual_direction(DIM)
    np.testing.assert_allclose(out.score, t + v, rtol=1e-4, atol=1e-5)
    assert out.score.dtype == np.float32 and out.attention.shape == (len(data), H, LT + LV)


def test_several_masks_make_exactly_one_session_run_with_stacked_copies(scorer, data):
    means = scorer.reference_means(data)
    masks = [Mask(), Mask(VISUAL), Mask(TEXT, "mean"), Mask(VISUAL, "permute", seed=4), Mask(TEXT | VISUAL)]
    spy = spy_on(scorer)
    outs = scorer.run(data.feeds, masks, groups=data.query_id, means=means)
    assert len(spy.calls) == 1
    n = len(data)
    fed = spy.calls[0]
    assert {k: v.shape[0] for k, v in fed.items()} == {k: n * len(masks) for k in data.feeds}
    copy = {name: [fed[name][i * n:(i + 1) * n] for i in range(len(masks))] for name in fed}
    q, tt, vt = data.feeds["query"], data.feeds["text_tokens"], data.feeds["visual_tokens"]
    # 0: unmasked
    for name in fed:
        np.testing.assert_array_equal(copy[name][0], data.feeds[name])
    # 1: visual zeroed, text untouched
    np.testing.assert_array_equal(copy["visual_tokens"][1], np.zeros_like(vt))
    np.testing.assert_array_equal(copy["query"][1], q)
    np.testing.assert_array_equal(copy["text_tokens"][1], tt)
    # 2: every text input replaced by its reference mean (plain mean over rows)
    np.testing.assert_allclose(copy["query"][2], np.broadcast_to(q.mean(0, dtype=np.float64), q.shape), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(copy["text_tokens"][2], np.broadcast_to(tt.mean(0, dtype=np.float64), tt.shape), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(copy["visual_tokens"][2], vt)
    # 3: visual rows permuted within queries
    perm = _matching_rows(copy["visual_tokens"][3], vt)
    assert sorted(perm) == list(range(n))
    np.testing.assert_array_equal(data.query_id[perm], data.query_id)
    # 4: both modalities zeroed
    for name in fed:
        assert not copy[name][4].any()
    # outputs come back per mask, each equal to that mask run alone
    for mask, out in zip(masks, outs):
        (alone,) = scorer.run(data.feeds, [mask], groups=data.query_id, means=means)
        np.testing.assert_allclose(out.score, alone.score, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.attention, alone.attention, rtol=1e-5, atol=1e-7)


def _matching_rows(permuted: np.ndarray, original: np.ndarray) -> np.ndarray:
    """For each permuted row, the index of the original row it equals (plain search)."""
    flat_p, flat_o = permuted.reshape(len(permuted), -1), original.reshape(len(original), -1)
    return np.array([int(np.flatnonzero((flat_o == row).all(1))[0]) for row in flat_p])


def test_permute_moves_all_inputs_of_a_modality_together(scorer, data):
    spy = spy_on(scorer)
    scorer.run(data.feeds, [Mask(TEXT, "permute", seed=9)])  # no groups: across the whole batch
    fed = spy.calls[0]
    perm = _matching_rows(fed["text_tokens"], data.feeds["text_tokens"])
    assert not np.array_equal(perm, np.arange(len(data)))
    np.testing.assert_array_equal(fed["query"], data.feeds["query"][perm])  # same rows as text_tokens
    np.testing.assert_array_equal(fed["visual_tokens"], data.feeds["visual_tokens"])


def test_permute_is_seeded(scorer, data):
    def scores(seed):
        return scorer.run(data.feeds, [Mask(VISUAL, "permute", seed)], groups=data.query_id)[0].score

    np.testing.assert_array_equal(scores(1), scores(1))
    assert not np.array_equal(scores(1), scores(2))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.integers(0, 2**32 - 1))
def test_permutation_stays_within_groups(groups, seed):
    groups = np.array(groups)
    perm = permutation(len(groups), seed, groups)
    assert sorted(perm.tolist()) == list(range(len(groups)))
    np.testing.assert_array_equal(groups[perm], groups)
    np.testing.assert_array_equal(perm, permutation(len(groups), seed, groups))


@settings(max_examples=25, deadline=None)
@given(st.permutations(list(range(12))), st.sampled_from(["zero", "mean"]))
def test_row_wise_masks_are_equivariant_to_row_order(order, strategy):
    s = Scorer(_FUSION_SMALL, device="cpu", threads=1)
    feeds = {k: v[:12] for k, v in _SMALL_DATA.feeds.items()}
    means = s.reference_means(_SMALL_DATA)
    masks = [Mask(), Mask(VISUAL, strategy), Mask(TEXT, strategy)]
    base = s.run(feeds, masks, means=means)
    moved = s.run({k: v[list(order)] for k, v in feeds.items()}, masks, means=means)
    for a, b in zip(base, moved):
        np.testing.assert_allclose(b.score, a.score[list(order)], rtol=1e-5, atol=1e-6)


def ref_permutation(n, rng, groups):
    """The plain reference: np.unique labels, rows sorted by group with random keys inside each group."""
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    codes = codes.reshape(-1)
    perm = np.empty(n, dtype=np.int64)
    perm[np.argsort(codes, kind="stable")] = np.lexsort((rng.random(n), codes))
    return perm


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(0, 5), min_size=1, max_size=40),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["int", "str", "sorted-int", "sorted-str"]),
)
def test_permutation_is_bit_identical_to_the_plain_reference(labels, seed, kind):
    # contiguous runs (the usual case, labelled by run) and scattered groups (labelled by np.unique)
    labels = sorted(labels) if kind.startswith("sorted") else labels
    groups = np.array([f"q{v}" for v in labels], dtype=object) if kind.endswith("str") else np.array(labels)
    want = ref_permutation(len(groups), np.random.default_rng(seed), groups)
    np.testing.assert_array_equal(permutation(len(groups), seed, groups), want)


@pytest.mark.parametrize("n_groups", [2047, 2048, 3000])  # group labels above 2^11 take the lexsort path
def test_permutation_with_many_groups_matches_the_reference(n_groups):
    groups = np.repeat(np.arange(n_groups), 2)[::-1].copy()  # contiguous, labels in descending order
    for seed in (0, 1):
        want = ref_permutation(len(groups), np.random.default_rng(seed), groups)
        np.testing.assert_array_equal(permutation(len(groups), seed, groups), want)
    scattered = np.random.default_rng(2).permutation(groups)
    want = ref_permutation(len(groups), np.random.default_rng(4), scattered)
    np.testing.assert_array_equal(permutation(len(groups), 4, scattered), want)


def test_stacked_permute_masks_equal_the_reference_permutations(scorer, data):
    """Group labels computed once per batch give the same rows as one np.unique per mask and modality."""
    masks = [Mask(VISUAL, "permute", seed=s) for s in (0, 1, 2)] + [Mask(TEXT | VISUAL, "permute", seed=5), Mask()]
    spy = spy_on(scorer)
    scorer.run(data.feeds, masks, groups=data.query_id)
    fed, n = spy.calls[0], len(data)
    for i, mask in enumerate(masks):
        rng = np.random.default_rng(mask.seed)
        perms = {m: ref_permutation(n, rng, data.query_id) for m in sorted(mask.modalities)}
        for name, x in data.feeds.items():
            modality = next((m for m in perms if name in scorer.contract.modalities[m]), None)
            want = x if modality is None else x[perms[modality]]
            np.testing.assert_array_equal(fed[name][i * n:(i + 1) * n], want)


def test_permutation_without_groups_is_rng_permutation():
    np.testing.assert_array_equal(permutation(10, 3), np.random.default_rng(3).permutation(10))


def test_score_of_shape_n_by_1_is_flattened():
    g = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["score"], keepdims=1)],
        "n1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    contract = ModelContract(inputs=(TensorSpec("x", "float32", (3,)),), modalities={"text": ("x",)})
    s = Scorer(model, contract, device="cpu")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (out,) = s.run({"x": x}, [Mask()])
    np.testing.assert_array_equal(out.score, [3.0, 12.0])
    assert out.attention is None


# ----- validation -------------------------------------------------------------------------------

def _bad(feeds, **changes):
    out = dict(feeds)
    for name, value in changes.items():
        if value is None:
            out.pop(name)
        else:
            out[name] = value
    return out


@pytest.mark.parametrize(
    ("change", "reason", "needle"),
    [
        (lambda f: _bad(f, visual_tokens=None), "missing_input", "'visual_tokens' is missing"),
        (lambda f: _bad(f, image=f["query"]), "unexpected_input", "'image' is not a model input"),
        (lambda f: _bad(f, query=f["query"].astype(np.float64)), "wrong_dtype", "'query' has dtype float64"),
        (lambda f: _bad(f, text_tokens=f["text_tokens"][:, :1]), "wrong_shape", "'text_tokens' has shape"),
        (lambda f: _bad(f, query=f["query"][:, None]), "wrong_shape", "'query' has shape"),
        (lambda f: _bad(f, query=f["query"].tolist()), "not_an_array", "'query' is a list"),
        (lambda f: _bad(f, visual_tokens=f["visual_tokens"][:3]), "row_mismatch", "number of rows"),
        (lambda f: {k: v[:0] for k, v in f.items()}, "empty", "0 rows"),
    ],
)
def test_feed_problems_name_the_tensor(scorer, data, change, reason, needle):
    feeds = change(data.feeds)
    with pytest.raises(InvalidFeedsError) as err:
        scorer.run(feeds)
    assert reason in err.value.reasons
    assert needle in str(err.value)
    assert err.value.exit_code == 2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected_with_their_row(scorer, data, bad):
    visual = data.feeds["visual_tokens"].copy()
    visual[7, 1, 2] = bad
    with pytest.raises(InvalidFeedsError, match=r"'visual_tokens' holds 1 NaN/inf values \(first in row 7\)"):
        check_feeds(scorer.contract, {**data.feeds, "visual_tokens": visual})


def test_huge_finite_values_are_valid(scorer, data):
    visual = data.feeds["visual_tokens"].copy()
    visual[:2] = np.finfo(np.float32).max  # their sum overflows, the values are still finite
    visual[2:4] = -np.finfo(np.float32).max
    assert check_feeds(scorer.contract, {**data.feeds, "visual_tokens": visual}) == len(data)
    visual[5, 0, 0] = np.inf
    visual[6, 0, 0] = -np.inf
    with pytest.raises(InvalidFeedsError, match=r"2 NaN/inf values \(first in row 5\)"):
        check_feeds(scorer.contract, {**data.feeds, "visual_tokens": visual})


def test_every_feed_problem_is_reported_at_once(scorer, data):
    feeds = {"query": data.feeds["query"].astype(np.float16), "extra": data.feeds["query"]}
    reasons = [r for r, _ in feed_problems(scorer.contract, feeds)]
    assert sorted(reasons) == ["missing_input", "missing_input", "unexpected_input", "wrong_dtype"]
    assert check_feeds(scorer.contract, data.feeds) == len(data)


def test_mask_and_request_problems(scorer, data):
    with pytest.raises(InvalidInputError, match="strategy 'shuffle'"):
        Mask(VISUAL, "shuffle")
    assert Mask("visual") == Mask(VISUAL)  # a bare string is one modality, not its letters
    with pytest.raises(ProblemsError, match=r"modalities \['audio'\]"):
        scorer.run(data.feeds, [Mask(frozenset({"audio"}))])
    with pytest.raises(ProblemsError, match="reference_means"):
        scorer.run(data.feeds, [Mask(VISUAL, "mean")])
    with pytest.raises(ProblemsError, match="groups has shape"):
        scorer.run(data.feeds, [Mask(VISUAL, "permute")], groups=data.query_id[:3])
    with pytest.raises(ProblemsError, match="no masks"):
        scorer.run(data.feeds, [])
    text_only = Scorer(toymodels.build_text_model(DIM, LT), device="cpu")
    with pytest.raises(ProblemsError, match="does not have"):
        text_only.run({k: data.feeds[k] for k in ("query", "text_tokens")}, [Mask(VISUAL)])


def test_ort_failure_is_an_evaluation_error(scorer, data):
    class Broken:
        def run(self, *_):
            raise session_mod._ort_state.RuntimeException("kernel exploded")

    scorer._session = Broken()
    with pytest.raises(EvaluationError, match="kernel exploded"):
        scorer.run(data.feeds)


# ----- datasets ---------------------------------------------------------------------------------

MASKS = [Mask(), Mask(VISUAL), Mask(TEXT, "mean"), Mask(VISUAL, "permute", 3)]


def _shuffled(batch: Batch, seed: int) -> Batch:
    order = np.random.default_rng(seed).permutation(len(batch))
    return Batch(batch.query_id[order], batch.item_id[order], batch.label[order], {k: v[order] for k, v in batch.feeds.items()})


def test_dataset_scores_equal_per_row_scores_in_file_order(tmp_path, scorer, data):
    shuffled = _shuffled(data, 0)  # queries interleaved: order must still be the file's
    path = write_dataset(tmp_path / "d.parquet", shuffled.query_id, shuffled.item_id, shuffled.label, shuffled.feeds)
    means = scorer.reference_means(shuffled)
    result = scorer.score_dataset(path, MASKS[:3], batch_rows=9, means=means)
    np.testing.assert_array_equal(result.query_id.astype(str), shuffled.query_id.astype(str))
    np.testing.assert_array_equal(result.item_id, shuffled.item_id)
    np.testing.assert_array_equal(result.label, shuffled.label)
    for i in range(len(shuffled)):
        row = {k: v[i:i + 1] for k, v in shuffled.feeds.items()}
        outs = scorer.run(row, MASKS[:3], means=means)
        for mask, out in zip(MASKS[:3], outs):
            np.testing.assert_allclose(result.scores[mask][i], out.score[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.attention[i], outs[0].attention[0], rtol=1e-5, atol=1e-7)


def test_dataset_mean_defaults_to_the_dataset_means(scorer, data):
    result = scorer.score_dataset(data, [Mask(TEXT, "mean")], batch_rows=16)
    (expected,) = scorer.run(data.feeds, [Mask(TEXT, "mean")], means=scorer.reference_means(data))
    np.testing.assert_allclose(result.scores[Mask(TEXT, "mean")], expected.score, rtol=1e-5, atol=1e-6)
    assert result.attention is None  # no unmasked pass asked for


def test_dataset_permute_keeps_queries_whole_and_matches_in_memory(tmp_path, scorer, data):
    path = write_dataset(tmp_path / "d.parquet", data.query_id, data.item_id, data.label, data.feeds)
    spy = spy_on(scorer)
    from_path = scorer.score_dataset(path, MASKS, batch_rows=28)  # 7 rows read per batch, queries of 5
    for call in spy.calls:
        rows = call["query"].shape[0] // len(MASKS)
        assert rows % 5 == 0  # whole queries only
        assert call["query"].shape[0] <= 28 + len(MASKS) * 5  # bounded: batch_rows plus at most one query
    from_memory = scorer.score_dataset(data, MASKS, batch_rows=28)
    for mask in MASKS:
        np.testing.assert_array_equal(from_path.scores[mask], from_memory.scores[mask])
    # within-query permutation: per query, the permuted visual parts are those of the same query
    v = np.sqrt(LV) * data.feeds["visual_tokens"].mean(1) @ toymodels.visual_direction(DIM)
    t_plus_v = from_path.scores[Mask()]
    permuted_visual = from_path.scores[Mask(VISUAL, "permute", 3)] - (t_plus_v - v)
    for qid in np.unique(data.query_id):
        rows = data.query_id == qid
        np.testing.assert_allclose(np.sort(permuted_visual[rows]), np.sort(v[rows]), rtol=1e-4, atol=1e-4)


def test_dataset_progress_and_empty_and_bad_data(tmp_path, scorer, data, capsys):
    scorer.score_dataset(data, [Mask()], progress=True)
    assert "scoring" in capsys.readouterr().err
    empty = Batch(data.query_id[:0], data.item_id[:0], data.label[:0], {k: v[:0] for k, v in data.feeds.items()})
    with pytest.raises(InvalidInputError, match="no rows"):
        scorer.score_dataset(empty)
    with pytest.raises(InvalidInputError, match="Parquet dataset path"):
        scorer.score_dataset({"query": data.feeds["query"]})
    with pytest.raises(InvalidInputError, match="batch_rows"):
        scorer.score_dataset(data, batch_rows=0)


def test_contract_sidecar_json_roundtrip_is_used(tmp_path, fusion):
    sidecar = tmp_path / "c.json"
    contract = load_contract(fusion)
    sidecar.write_text(json.dumps(contract.to_dict()))
    assert Scorer(fusion, sidecar=sidecar, device="cpu").contract == contract
