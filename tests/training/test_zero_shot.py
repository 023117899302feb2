"""The zero-shot scorers against plain references."""

from __future__ import annotations

import numpy as np
import pytest

from fusionguard.metrics import QueryGroups, mrr, ndcg_at_k
from fusionguard.training.zero_shot import ZeroShot, fit_probe, paired, random_expectation, zscore_within


def test_zscore_within_matches_a_loop():
    rng = np.random.default_rng(0)
    qid = rng.permutation(np.repeat([7, 3, 5], [4, 6, 1]))
    s = rng.standard_normal(len(qid))
    got = zscore_within(qid, s)
    for q in (7, 3):
        m = qid == q
        np.testing.assert_allclose(got[m], (s[m] - s[m].mean()) / s[m].std(), rtol=1e-12)
    assert got[qid == 5] == 0.0  # a single row: no spread


def test_probe_is_ridge_with_an_unpenalised_bias():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 4))
    w = rng.standard_normal((4, 3))
    y = x @ w + 2.0
    probe = fit_probe(x, y, alpha=1e-9)  # ~ least squares: recovers the map and the bias
    np.testing.assert_allclose(probe.project(x), y, atol=1e-6)
    heavy = fit_probe(x, y, alpha=1e9)  # weights shrink to 0, the bias stays the mean
    np.testing.assert_allclose(heavy.project(x), np.tile(y.mean(0), (50, 1)), atol=1e-3)


def test_random_expectation_matches_a_brute_force_average():
    qid = np.repeat([0, 1], [5, 12])
    label = np.zeros(17)
    label[[2, 9]] = 1
    want = random_expectation(qid, label)
    groups = QueryGroups.from_arrays(qid, np.arange(17), label)
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((4000, 17))
    assert np.nanmean(ndcg_at_k(groups, scores, 10)) == pytest.approx(want["ndcg@10"], abs=0.01)
    assert np.nanmean(mrr(groups, scores)) == pytest.approx(want["mrr"], abs=0.01)


def test_sum_is_scale_free_and_paired_reports_a_p_value():
    rng = np.random.default_rng(2)
    qid = np.repeat(np.arange(30), 5)
    t, v = rng.standard_normal(150), rng.standard_normal(150)
    a = ZeroShot.from_features(qid, np.arange(150), np.zeros(150), t, v)
    b = ZeroShot.from_features(qid, np.arange(150), np.zeros(150), 100 * t + 3, 0.01 * v)
    np.testing.assert_allclose(a.scores["sum"], b.scores["sum"], atol=1e-9)
    r = paired(rng.random(30) + 0.5, rng.random(30), n_resamples=2000)
    assert 0 < r["p_value"] < 0.01 and r["ci_low"] <= r["mean_diff"] <= r["ci_high"]
