"""Seed-level statistics of experiment grids, each against an independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from fusionguard.errors import EvaluationError, InvalidInputError
from fusionguard.stats import BootstrapSettings, binomial_ci, fisher_exact, hierarchical_bootstrap_ci, seed_level_test


@pytest.mark.parametrize(("k", "n"), [(0, 10), (1, 10), (8, 10), (10, 10), (24, 30), (3, 30), (0, 1)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_binomial_ci_is_scipys_exact_clopper_pearson(k, n, confidence):
    got = binomial_ci(k, n, confidence)
    want = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    assert got.estimate == k / n and got.n == n and got.method == "clopper-pearson"
    assert got.low == pytest.approx(want.low, abs=1e-12) and got.high == pytest.approx(want.high, abs=1e-12)


def test_binomial_ci_covers_at_least_nominally():
    n, conf = 30, 0.95
    for p in (0.05, 0.3, 0.5, 0.8, 0.97):
        coverage = sum(sps.binom.pmf(k, n, p) for k in range(n + 1) if binomial_ci(k, n, conf).contains(p))
        assert coverage >= conf - 1e-9


@pytest.mark.parametrize("bad", [(-1, 10), (11, 10), (0, 0), (1.0, 10), (True, 10)])
def test_binomial_ci_bad_counts(bad):
    with pytest.raises(InvalidInputError):
        binomial_ci(*bad)


def _fisher_by_hand(a, n_a, b, n_b):
    """Two-sided: sum of hypergeometric tables no more likely than the observed one."""
    total_k, n = a + b, n_a + n_b
    pmf = lambda x: math.comb(total_k, x) * math.comb(n - total_k, n_a - x) / math.comb(n, n_a)  # noqa: E731
    obs = pmf(a)
    lo, hi = max(0, n_a - (n - total_k)), min(total_k, n_a)
    return min(1.0, sum(pmf(x) for x in range(lo, hi + 1) if pmf(x) <= obs * (1 + 1e-7)))


@pytest.mark.parametrize(("a", "n_a", "b", "n_b"), [(10, 10, 0, 10), (3, 10, 1, 10), (5, 30, 5, 30), (0, 30, 6, 30), (29, 30, 2, 30)])
def test_fisher_exact_matches_the_hypergeometric_sum(a, n_a, b, n_b):
    assert fisher_exact(a, n_a, b, n_b) == pytest.approx(_fisher_by_hand(a, n_a, b, n_b), rel=1e-9)


def test_seed_level_test_is_the_exact_permutation_test():
    rng = np.random.default_rng(3)
    for n in (3, 6, 10):
        d = rng.normal(0.2, 1.0, n)
        want = sps.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                    n_resamples=np.inf, alternative="two-sided").pvalue
        assert seed_level_test(d) == pytest.approx(want, rel=1e-9)


def test_seed_level_test_floor_and_large_n():
    assert seed_level_test(np.ones(10)) == pytest.approx(2 / 1024)  # the smallest p 10 seeds can give
    assert seed_level_test([1.0, -1.0, 2.0, -2.0]) == 1.0
    d = np.random.default_rng(0).normal(1.0, 1.0, 30)  # > 16 runs: the seeded randomization test
    p = seed_level_test(d, n_resamples=20_000)
    assert 0 < p < 1e-3 and p == seed_level_test(d, n_resamples=20_000)


def _nested_reference(x, n_resamples, seed, confidence=0.95):
    """A plain loop: draw runs, then queries within each drawn run."""
    rng = np.random.default_rng(seed)
    rows = [r[~np.isnan(r)] for r in x]
    stats = []
    for _ in range(n_resamples):
        runs = rng.integers(0, len(rows), len(rows))
        stats.append(np.mean([rng.choice(rows[i], rows[i].shape[0]).mean() for i in runs]))
    return np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])


def test_hierarchical_bootstrap_matches_a_plain_nested_loop_within_monte_carlo_error():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (8, 40)) + rng.normal(0, 0.5, (8, 1))  # a run effect on top of query noise
    x[2, :5] = np.nan  # excluded queries in one run
    got = hierarchical_bootstrap_ci(x, settings=BootstrapSettings(n_resamples=4000, seed=0))
    lo, hi = _nested_reference(x, 4000, seed=1)
    width = hi - lo
    assert got.estimate == pytest.approx(np.mean([np.nanmean(r) for r in x]))
    assert abs(got.low - lo) < 0.1 * width and abs(got.high - hi) < 0.1 * width and got.n == 8


def test_hierarchical_bootstrap_sees_seed_variance_that_a_query_bootstrap_misses():
    """One run of ten escapes: the query-only view (runs averaged per query) is tight; the
    hierarchical CI must be far wider and include the typical run."""
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 0.05, (10, 100))
    x[0] += 1.0
    per_query = x.mean(axis=0)
    query_only_half = 1.96 * per_query.std(ddof=1) / math.sqrt(per_query.shape[0])
    got = hierarchical_bootstrap_ci(x, settings=BootstrapSettings(n_resamples=4000, seed=0))
    assert got.width > 10 * 2 * query_only_half
    assert got.low <= 0.02


def test_hierarchical_bootstrap_is_seeded_and_chunk_independent_in_distribution():
    x = np.random.default_rng(4).normal(size=(5, 30))
    a = hierarchical_bootstrap_ci(x, settings=BootstrapSettings(n_resamples=2000, seed=7))
    assert a == hierarchical_bootstrap_ci(x, settings=BootstrapSettings(n_resamples=2000, seed=7))
    b = hierarchical_bootstrap_ci(x, settings=BootstrapSettings(n_resamples=2000, seed=7, chunk_elements=600))
    assert abs(a.low - b.low) < 0.1 * a.width


def test_hierarchical_bootstrap_bad_input():
    with pytest.raises(InvalidInputError):
        hierarchical_bootstrap_ci(np.zeros(5))
    with pytest.raises(EvaluationError):
        hierarchical_bootstrap_ci(np.full((3, 4), np.nan) + np.r_[[[0, 0, 0, 0]], [[np.nan] * 4], [[np.nan] * 4]])
