"""fusionguard.metrics against plain per-query references, trec_eval hand-worked cases, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionguard.errors import InvalidInputError
from fusionguard.metrics import (
    QueryGroups,
    ablation_drop,
    attention_entropy,
    attention_mass,
    mrr,
    ndcg_at_k,
    pearson,
    shapley_values,
    spearman_per_query,
)

# ---------------------------------------------------------------- plain references (loops)


def _by_query(query_id, item_id, label, *cols):
    out: dict = {}
    for i, q in enumerate(query_id):
        out.setdefault(q, []).append((item_id[i], label[i], *(c[i] for c in cols)))
    return dict(sorted(out.items()))


def _trec_ranking(rows):
    """trec_eval comp_sim_docno: score descending, then docno descending."""
    rows = sorted(rows, key=lambda r: r[0], reverse=True)  # item id descending
    return sorted(rows, key=lambda r: -r[2])  # stable: score descending keeps the id order in ties


def ref_ndcg(query_id, item_id, label, score, k=10, gain="linear"):
    g = (lambda x: x) if gain == "linear" else (lambda x: 2.0**x - 1.0)
    result = []
    for rows in _by_query(query_id, item_id, label, score).values():
        if not any(r[1] > 0 for r in rows):
            result.append(math.nan)
            continue
        ranked = _trec_ranking(rows)
        dcg = sum(g(r[1]) / math.log2(i + 2) for i, r in enumerate(ranked[:k]))
        ideal = sorted((r[1] for r in rows), reverse=True)
        idcg = sum(g(lab) / math.log2(i + 2) for i, lab in enumerate(ideal[:k]))
        result.append(dcg / idcg)
    return np.array(result)


def ref_mrr(query_id, item_id, label, score, threshold=1):
    result = []
    for rows in _by_query(query_id, item_id, label, score).values():
        rr = math.nan
        for i, r in enumerate(_trec_ranking(rows)):
            if r[1] >= threshold:
                rr = 1.0 / (i + 1)
                break
        result.append(rr)
    return np.array(result)


def ref_average_ranks(x):
    ranks = []
    for v in x:
        below = sum(1 for w in x if w < v)
        equal = sum(1 for w in x if w == v)
        ranks.append(below + (equal + 1) / 2.0)
    return ranks


def ref_pearson(x, y):
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def ref_spearman(query_id, item_id, label, a, b):
    return np.array(
        [
            ref_pearson(ref_average_ranks([r[2] for r in rows]), ref_average_ranks([r[3] for r in rows]))
            for rows in _by_query(query_id, item_id, label, a, b).values()
        ]
    )


# ---------------------------------------------------------------- hypothesis data

@st.composite
def ranking_data(draw, max_queries=6, max_items=8):
    """Random queries with graded labels and heavily tied scores, rows shuffled."""
    n_q = draw(st.integers(1, max_queries))
    query_id, item_id, label, score = [], [], [], []
    for q in range(n_q):
        n_i = draw(st.integers(1, max_items))
        ids = draw(st.lists(st.integers(0, 50), min_size=n_i, max_size=n_i, unique=True))
        for i in ids:
            query_id.append(q * 7 + 3)
            item_id.append(i)
            label.append(draw(st.integers(0, 3)))
            score.append(float(draw(st.integers(-2, 2))))  # few values: many ties
    perm = draw(st.permutations(range(len(query_id))))
    pick = lambda xs: np.array([xs[j] for j in perm])  # noqa: E731
    return pick(query_id), pick(item_id), pick(label), pick(score)


# ---------------------------------------------------------------- trec_eval ndcg_cut.10 by hand

def _log2(x):
    return math.log(x, 2)


def test_ndcg_cut10_hand_worked_ties_graded_and_unjudged_query():
    # q1: d1, d2, d4 tie at 0.5. trec_eval orders ties by docno descending: d4, d2, d1, then d3.
    #     ranked labels 0, 0, 1, 2 -> DCG = 1/log2(4) + 2/log2(5); ideal 2, 1 -> 2/1 + 1/log2(3).
    # q2: 12 items scored a > b > ... > l, labels by rank 0 2 0 0 1 0 0 0 0 0 3 0: the grade-3 item
    #     sits at rank 11, outside the cutoff, but still counts in the ideal ranking.
    # q3: no relevant item -> excluded (NaN) and counted.
    query_id = ["q1"] * 4 + ["q2"] * 12 + ["q3"] * 3
    item_id = ["d1", "d2", "d3", "d4"] + list("abcdefghijkl") + ["x", "y", "z"]
    label = [1, 0, 2, 0] + [0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 3, 0] + [0, 0, 0]
    score = [0.5, 0.5, 0.2, 0.5] + [12.0 - i for i in range(12)] + [0.3, 0.2, 0.1]
    groups = QueryGroups.from_arrays(np.array(query_id, dtype=object), np.array(item_id, dtype=object), label)
    got = ndcg_at_k(groups, score, k=10)

    q1 = (1 / _log2(4) + 2 / _log2(5)) / (2 + 1 / _log2(3))
    q2 = (2 / _log2(3) + 1 / _log2(6)) / (3 + 2 / _log2(3) + 1 / _log2(4))
    assert list(groups.query_ids) == ["q1", "q2", "q3"]
    np.testing.assert_allclose(got[:2], [q1, q2], rtol=1e-12)
    assert round(got[0], 4) == 0.5174 and round(got[1], 4) == 0.3462  # as trec_eval prints them
    assert math.isnan(got[2]) and groups.n_excluded == 1
    assert list(groups.has_relevant) == [True, True, False]

    exp = ndcg_at_k(groups, score, k=10, gain="exponential")
    np.testing.assert_allclose(exp[0], (1 / _log2(4) + 3 / _log2(5)) / (3 + 1 / _log2(3)), rtol=1e-12)


def test_ndcg_ties_break_by_item_id_descending_for_integer_ids():
    # Ids 9 and 10 tie; 10 (the larger number) ranks first, so the relevant 9 lands at rank 2.
    groups = QueryGroups.from_arrays([1, 1], [9, 10], [1, 0])
    np.testing.assert_allclose(ndcg_at_k(groups, [0.0, 0.0]), [1 / _log2(3)])
    # ... and the result does not depend on the row order in which the tie arrives.
    groups_rev = QueryGroups.from_arrays([1, 1], [10, 9], [0, 1])
    np.testing.assert_allclose(ndcg_at_k(groups_rev, [0.0, 0.0]), [1 / _log2(3)])


def test_ndcg_cutoff_one_and_short_lists():
    groups = QueryGroups.from_arrays([0, 0, 0], [1, 2, 3], [0, 1, 2])
    np.testing.assert_allclose(ndcg_at_k(groups, [3.0, 2.0, 1.0], k=1), [0.0])
    np.testing.assert_allclose(ndcg_at_k(groups, [1.0, 2.0, 3.0], k=100), [1.0])


# ---------------------------------------------------------------- against the references

@settings(max_examples=60, deadline=None)
@given(ranking_data(), st.sampled_from([1, 3, 10]), st.sampled_from(["linear", "exponential"]))
def test_ndcg_matches_reference(data, k, gain):
    q, i, lab, s = data
    groups = QueryGroups.from_arrays(q, i, lab)
    got = ndcg_at_k(groups, s, k=k, gain=gain)
    np.testing.assert_allclose(got, ref_ndcg(q, i, lab, s, k, gain), rtol=1e-12, equal_nan=True)
    assert groups.n_excluded == int(np.isnan(got).sum())
    finite = got[~np.isnan(got)]
    assert np.all((finite >= 0) & (finite <= 1 + 1e-12))


@settings(max_examples=40, deadline=None)
@given(ranking_data(), st.integers(0, 2**31))
def test_ndcg_and_mrr_invariant_to_row_order(data, seed):
    q, i, lab, s = data
    perm = np.random.default_rng(seed).permutation(len(q))
    g1 = QueryGroups.from_arrays(q, i, lab)
    g2 = QueryGroups.from_arrays(q[perm], i[perm], lab[perm])
    np.testing.assert_array_equal(ndcg_at_k(g1, s), ndcg_at_k(g2, s[perm]))
    np.testing.assert_array_equal(mrr(g1, s), mrr(g2, s[perm]))
    np.testing.assert_array_equal(spearman_per_query(g1, s, lab), spearman_per_query(g2, s[perm], lab[perm]))


@settings(max_examples=40, deadline=None)
@given(ranking_data())
def test_perfect_ranking_scores_one(data):
    q, i, lab, _ = data
    groups = QueryGroups.from_arrays(q, i, lab)
    got = ndcg_at_k(groups, lab.astype(float), k=5)
    np.testing.assert_allclose(got[groups.has_relevant], 1.0, rtol=1e-12)
    assert np.all(np.isnan(got[~groups.has_relevant]))
    np.testing.assert_allclose(mrr(groups, lab.astype(float))[groups.has_relevant], 1.0)


@settings(max_examples=30, deadline=None)
@given(ranking_data(), st.integers(0, 2**31))
def test_many_score_vectors_at_once(data, seed):
    q, i, lab, s = data
    groups = QueryGroups.from_arrays(q, i, lab)
    many = np.stack([s, np.random.default_rng(seed).normal(size=len(s)), -s])
    got = ndcg_at_k(groups, many, k=3)
    assert got.shape == (3, groups.n_queries)
    for m in range(3):
        np.testing.assert_array_equal(got[m], ndcg_at_k(groups, many[m], k=3))
    np.testing.assert_array_equal(mrr(groups, many)[2], mrr(groups, many[2]))


@settings(max_examples=60, deadline=None)
@given(ranking_data(), st.sampled_from([1, 2, 3]))
def test_mrr_matches_reference(data, threshold):
    q, i, lab, s = data
    groups = QueryGroups.from_arrays(q, i, lab)
    np.testing.assert_allclose(mrr(groups, s, threshold), ref_mrr(q, i, lab, s, threshold), equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(ranking_data(), st.integers(0, 2**31))
def test_spearman_matches_reference(data, seed):
    q, i, lab, s = data
    b = np.round(np.random.default_rng(seed).normal(size=len(s)), 1)  # some ties on this side too
    groups = QueryGroups.from_arrays(q, i, lab)
    got = spearman_per_query(groups, s, b)
    np.testing.assert_allclose(got, ref_spearman(q, i, lab, s, b), rtol=1e-9, atol=1e-12, equal_nan=True)


def test_spearman_nan_for_constant_and_single_candidate_queries():
    groups = QueryGroups.from_arrays([0, 0, 0, 1, 1, 2], [1, 2, 3, 1, 2, 1], [1, 0, 0, 1, 0, 1])
    got = spearman_per_query(groups, [1.0, 2.0, 3.0, 5.0, 5.0, 1.0], [3.0, 2.0, 1.0, 1.0, 2.0, 1.0])
    np.testing.assert_allclose(got[0], -1.0)
    assert np.isnan(got[1]) and np.isnan(got[2])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(-999, 999), st.integers(-9, 9)), min_size=2, max_size=30))
def test_pearson_matches_reference(pairs):
    x = [p[0] / 8 for p in pairs]  # exact binary fractions: constant means exactly constant
    y = [p[1] / 4 for p in pairs]
    got, want = pearson(x, y), ref_pearson(x, y)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, abs=1e-9)


# ---------------------------------------------------------------- modality measures

def test_ablation_drop():
    got = ablation_drop([0.8, 0.5, 0.0, np.nan], [0.4, 0.5, 0.0, 0.3])
    np.testing.assert_allclose(got, [0.5, 0.0, np.nan, np.nan], equal_nan=True)
    with pytest.raises(InvalidInputError):
        ablation_drop([1.0, 2.0], [1.0, 2.0, 3.0])


def _ref_shapley(v):
    """Generic Shapley formula over coalitions of the two players {t, v}; v maps coalition -> score."""
    players = ("t", "v")
    phi = {}
    for p in players:
        other = [o for o in players if o != p][0]
        # |S|!(n-|S|-1)!/n! = 1/2 for both S = {} and S = {other} when n = 2
        phi[p] = 0.5 * (v[frozenset({p})] - v[frozenset()]) + 0.5 * (v[frozenset({p, other})] - v[frozenset({other})])
    return phi


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=4, max_size=4))
def test_shapley_matches_generic_formula(s):
    tv, t, v, none = s
    phi_t, phi_v, share = shapley_values(np.array([tv]), np.array([t]), np.array([v]), np.array([none]))
    ref = _ref_shapley({frozenset({"t", "v"}): tv, frozenset({"t"}): t, frozenset({"v"}): v, frozenset(): none})
    assert phi_t[0] == pytest.approx(ref["t"], abs=1e-12) and phi_v[0] == pytest.approx(ref["v"], abs=1e-12)
    assert phi_t[0] + phi_v[0] == pytest.approx(tv - none, abs=1e-9)  # efficiency
    denom = abs(ref["t"]) + abs(ref["v"])
    if denom == 0:
        assert np.isnan(share[0])
    else:
        assert share[0] == pytest.approx(abs(ref["v"]) / denom, abs=1e-9) and 0 <= share[0] <= 1


def test_shapley_text_only_model_has_zero_visual_share():
    s_text = np.array([0.3, 1.2, -0.5])
    phi_t, phi_v, share = shapley_values(s_text, s_text, np.zeros(3), np.zeros(3))
    np.testing.assert_allclose(phi_v, 0.0)
    np.testing.assert_allclose(phi_t, s_text)
    np.testing.assert_allclose(share, 0.0)
    assert np.isnan(shapley_values([1.0], [1.0], [1.0], [1.0])[2][0])


def test_attention_mass_and_entropy_against_loops():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(5, 4, 7))
    att = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    att[0, 0] = [0, 0, 1, 0, 0, 0, 0]  # one-hot: entropy 0, 0 log 0 = 0
    att[0, 1] = 1 / 7  # uniform: entropy 1
    mass = attention_mass(att, (3, 7))
    ent = attention_entropy(att)
    for n in range(5):
        for h in range(4):
            assert mass[n, h] == pytest.approx(sum(att[n, h, j] for j in range(3, 7)))
            ref = -sum(p * math.log(p) for p in att[n, h] if p > 0) / math.log(7)
            assert ent[n, h] == pytest.approx(ref, abs=1e-12)
    assert ent[0, 0] == 0.0 and ent[0, 1] == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match="key_range"):
        attention_mass(att, (5, 9))
    with pytest.raises(InvalidInputError, match="K >= 2"):
        attention_entropy(att[:, :, :1])


# ---------------------------------------------------------------- input checks

@pytest.mark.parametrize(
    ("query_id", "item_id", "label", "match"),
    [
        ([1, 1], [2, 2], [0, 1], "duplicated"),
        ([1, 1], [2, 3], [0, -1], "negative"),
        ([1, 1], [2, 3], [0, np.nan], "NaN"),
        ([1, 1], [2], [0, 1], "rows"),
        ([], [], [], "no rows"),
    ],
)
def test_query_groups_rejects_bad_input(query_id, item_id, label, match):
    with pytest.raises(InvalidInputError, match=match):
        QueryGroups.from_arrays(np.array(query_id), np.array(item_id), np.array(label, dtype=float))


def test_scores_checked():
    groups = QueryGroups.from_arrays([1, 1], [1, 2], [1, 0])
    with pytest.raises(InvalidInputError, match="rows"):
        ndcg_at_k(groups, [1.0, 2.0, 3.0])
    with pytest.raises(InvalidInputError, match="NaN"):
        ndcg_at_k(groups, [1.0, np.nan])
    with pytest.raises(InvalidInputError, match="k must"):
        ndcg_at_k(groups, [1.0, 2.0], k=0)
    with pytest.raises(InvalidInputError, match="gain"):
        ndcg_at_k(groups, [1.0, 2.0], gain="cubic")


def test_query_groups_layout():
    groups = QueryGroups.from_arrays(["b", "a", "b", "a", "c"], [7, 3, 2, 1, 5], [1, 0, 0, 2, 0])
    assert list(groups.query_ids) == ["a", "b", "c"]
    assert (groups.n_rows, groups.n_queries, groups.n_excluded) == (5, 3, 1)
    assert list(groups.sizes) == [2, 2, 1] and list(groups.offsets) == [0, 2, 4, 5]
    assert list(groups.item_id_sorted) == [1, 3, 2, 7, 5]  # ascending within each query
    assert list(groups.sort(np.arange(5))) == [3, 1, 2, 0, 4]  # caller rows in sorted order
    assert list(groups.per_query_sum(groups.label_sorted)) == [2.0, 1.0, 0.0]
    with pytest.raises(InvalidInputError, match="5 rows"):
        groups.sort(np.arange(4))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(20, 60))
def test_skewed_query_sizes_match_reference(seed, big):
    # One long query among many singletons: too wasteful to pad, so the global-sort path runs.
    rng = np.random.default_rng(seed)
    sizes = [big] + [1] * 25
    q = np.repeat(np.arange(len(sizes)), sizes)
    i = np.concatenate([rng.permutation(100)[:s] for s in sizes])
    lab = rng.integers(0, 3, q.shape[0])
    s = np.round(rng.normal(size=q.shape[0]), 1)
    groups = QueryGroups.from_arrays(q, i, lab)
    assert groups.n_queries * big > 4 * groups.n_rows
    np.testing.assert_allclose(ndcg_at_k(groups, s), ref_ndcg(q, i, lab, s), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(mrr(groups, np.stack([s, -s]))[1], ref_mrr(q, i, lab, -s), equal_nan=True)
