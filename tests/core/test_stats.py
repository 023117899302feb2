"""fusionguard.stats against plain references, scipy, exact enumeration, and properties."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from fusionguard.errors import EvaluationError, InvalidInputError
from fusionguard.stats import (
    BootstrapSettings,
    Interval,
    bootstrap_ci,
    bootstrap_cis,
    count_bootstrap_ci,
    holm,
    paired_bootstrap_ci,
    paired_effect_size,
    randomization_test,
)

values_st = st.lists(st.integers(-1000, 1000).map(lambda v: v / 100), min_size=1, max_size=40)


# ---------------------------------------------------------------- plain references

def ref_percentile_bootstrap(x, n_resamples, confidence, seed):
    """One resample at a time, with the standard library's RNG: independent of the code under test."""
    import random

    rnd = random.Random(seed)
    n = len(x)
    means = sorted(sum(x[rnd.randrange(n)] for _ in range(n)) / n for _ in range(n_resamples))
    alpha = (1 - confidence) / 2
    return np.quantile(means, [alpha, 1 - alpha])


def ref_holm(p):
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def exact_sign_flip_p(d):
    """Exact two-sided sign-flip p-value by enumerating all 2^n sign vectors."""
    t = abs(sum(d))
    hits = sum(
        1 for signs in itertools.product((1, -1), repeat=len(d)) if abs(sum(s * v for s, v in zip(signs, d, strict=True))) >= t - 1e-12
    )
    return hits / 2 ** len(d)


def assert_same_interval(got, want):
    """Same resamples, same interval. Bootstrap means are sums through BLAS (counts @ X), whose
    summation order may differ with the matrix shape (chunk size, one vector vs several): that is
    floating-point rounding of the same numbers, so bounds are compared to relative 1e-12, not a
    loosened statistical tolerance. Everything else must match exactly."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.estimate, g.confidence, g.n_resamples, g.method, g.n) == (w.estimate, w.confidence, w.n_resamples, w.method, w.n)
        assert g.low == pytest.approx(w.low, rel=1e-12, abs=1e-300)
        assert g.high == pytest.approx(w.high, rel=1e-12, abs=1e-300)


def ref_gather_bootstrap(x, n_resamples, seed, confidence=0.95):
    """The same resample indices as the code under test (same generator calls), gathered and
    averaged one resample at a time: checks that the counts @ X shortcut computes these means."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, dtype=np.float64)
    idx = rng.integers(0, len(x), size=(n_resamples, len(x)), dtype=np.intp)
    means = np.array([x[row].mean() for row in idx])
    alpha = (1 - confidence) / 2
    return np.quantile(means, [alpha, 1 - alpha])


# ---------------------------------------------------------------- bootstrap

def test_bootstrap_matches_plain_reference_within_monte_carlo_error():
    x = list(np.random.default_rng(1).normal(0.1, 1.0, size=150))
    got = bootstrap_ci(x, settings=BootstrapSettings(n_resamples=4000, seed=5))
    want = ref_percentile_bootstrap(x, 4000, 0.95, seed=5)
    se = statistics.stdev(x) / math.sqrt(len(x))
    # Monte Carlo error of a 2.5% quantile from 4000 resamples is about 0.04 standard errors.
    assert got.low == pytest.approx(want[0], abs=0.25 * se)
    assert got.high == pytest.approx(want[1], abs=0.25 * se)
    assert got.estimate == pytest.approx(statistics.fmean(x))
    assert (got.confidence, got.n_resamples, got.method, got.n) == (0.95, 4000, "percentile", 150)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_bootstrap_agrees_with_scipy(method):
    rng = np.random.default_rng(2)
    x = rng.exponential(1.0, size=300)  # skewed, so BCa differs from percentile
    got = bootstrap_ci(x, settings=BootstrapSettings(n_resamples=20_000, seed=0, method=method))
    ref = sps.bootstrap((x,), np.mean, n_resamples=20_000, method="BCa" if method == "bca" else "percentile",
                        rng=np.random.default_rng(1), vectorized=True).confidence_interval
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert got.low == pytest.approx(ref.low, abs=0.06 * se)
    assert got.high == pytest.approx(ref.high, abs=0.06 * se)


def test_bca_median_uses_generic_jackknife():
    x = np.random.default_rng(4).lognormal(size=80)
    got = bootstrap_ci(x, statistic="median", settings=BootstrapSettings(n_resamples=5000, method="bca", chunk_elements=500))
    ref = sps.bootstrap((x,), np.median, n_resamples=5000, method="BCa", rng=np.random.default_rng(0),
                        vectorized=True).confidence_interval
    assert got.estimate == pytest.approx(np.median(x))
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert got.low == pytest.approx(ref.low, abs=0.3 * se) and got.high == pytest.approx(ref.high, abs=0.3 * se)


def test_bootstrap_is_seeded_and_independent_of_chunking():
    x = np.random.default_rng(0).normal(size=301)
    a = bootstrap_ci(x, settings=BootstrapSettings(n_resamples=3000, seed=7))
    assert bootstrap_ci(x, settings=BootstrapSettings(n_resamples=3000, seed=7)) == a  # deterministic for a fixed call
    assert_same_interval([bootstrap_ci(x, settings=BootstrapSettings(n_resamples=3000, seed=7, chunk_elements=1000))], [a])
    assert bootstrap_ci(x, settings=BootstrapSettings(n_resamples=3000, seed=8)) != a


@pytest.mark.parametrize(("statistic", "method"), [("mean", "percentile"), ("mean", "bca"), ("median", "bca")])
def test_shared_bootstrap_equals_one_call_per_vector(statistic, method):
    rng = np.random.default_rng(11)
    vectors = [rng.normal(size=120), rng.exponential(size=120), rng.uniform(size=120), np.full(120, 0.25)]
    vectors[1][[4, 50]] = np.nan  # a different length after dropping NaN: its own index matrix
    vectors.append(rng.normal(size=77))
    got = bootstrap_cis(vectors, statistic, settings=BootstrapSettings(n_resamples=1500, seed=3, method=method, chunk_elements=10_000))
    want = [bootstrap_ci(v, statistic, settings=BootstrapSettings(n_resamples=1500, seed=3, method=method)) for v in vectors]
    if statistic == "median":
        assert got == want  # exactly: same index matrix, same gather
    else:
        assert_same_interval(got, want)  # same resamples; means summed by BLAS in another shape
    assert [ci.n for ci in got] == [120, 118, 120, 120, 77]


@settings(max_examples=30, deadline=None)
@given(st.lists(values_st, min_size=1, max_size=5), st.integers(0, 1000), st.integers(50, 5000))
def test_shared_bootstrap_equals_separate_calls_for_any_vectors(vectors, seed, chunk):
    got = bootstrap_cis(vectors, settings=BootstrapSettings(n_resamples=300, seed=seed, chunk_elements=chunk))
    assert_same_interval(got, [bootstrap_ci(v, settings=BootstrapSettings(n_resamples=300, seed=seed)) for v in vectors])


@settings(max_examples=25, deadline=None)
@given(values_st.filter(lambda v: len(set(v)) > 1), st.integers(0, 1000), st.integers(30, 3000))
def test_counted_means_equal_gathered_means_of_the_same_resamples(x, seed, chunk):
    got = bootstrap_ci(x, settings=BootstrapSettings(n_resamples=400, seed=seed, chunk_elements=chunk))
    want = ref_gather_bootstrap(x, 400, seed)
    scale = max(1.0, max(abs(v) for v in x))
    assert got.low == pytest.approx(want[0], rel=1e-12, abs=1e-13 * scale)
    assert got.high == pytest.approx(want[1], rel=1e-12, abs=1e-13 * scale)


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_count_bootstrap_of_a_weighted_mean_equals_the_plain_bootstrap(method):
    x = np.random.default_rng(6).exponential(size=90)

    def mean_from_counts(counts):
        return counts @ x / counts.sum(axis=1)

    got = count_bootstrap_ci(len(x), mean_from_counts, settings=BootstrapSettings(n_resamples=2000, seed=4, method=method, chunk_elements=5000))
    want = bootstrap_ci(x, settings=BootstrapSettings(n_resamples=2000, seed=4, method=method))
    assert got.estimate == pytest.approx(want.estimate, rel=1e-12)
    assert_same_interval([Interval(want.estimate, got.low, got.high, got.confidence, got.n_resamples, got.method, got.n)], [want])


@pytest.mark.parametrize(("statistic", "method"), [("mean", "percentile"), ("mean", "bca"), ("median", "percentile")])
def test_count_statistics_share_the_vectors_resamples(statistic, method):
    rng = np.random.default_rng(12)
    vectors = [rng.normal(size=60), rng.exponential(size=60), rng.normal(size=41)]
    w = rng.uniform(size=60)

    def weighted(counts):
        return counts @ (w * vectors[0]) / (counts @ w)

    extra = [(60, weighted), (41, lambda counts: counts @ vectors[2] / 41), (17, lambda counts: counts[:, 0])]
    got = bootstrap_cis(vectors, statistic, settings=BootstrapSettings(n_resamples=700, seed=9, method=method, chunk_elements=2000),
                        count_statistics=extra)
    assert len(got) == 6
    want_vectors = bootstrap_cis(vectors, statistic, settings=BootstrapSettings(n_resamples=700, seed=9, method=method, chunk_elements=2000))
    assert got[:3] == want_vectors  # adding count statistics changes nothing for the vectors
    want_counts = [count_bootstrap_ci(n, f, settings=BootstrapSettings(n_resamples=700, seed=9, method=method, chunk_elements=2000)) for n, f in extra]
    assert got[3:] == want_counts  # same draws, same shapes: bit for bit
    if statistic == "mean":  # a mean written as a count statistic is the vector's own bootstrap
        assert_same_interval([replace(got[4], estimate=got[2].estimate)], [got[2]])
    with pytest.raises(InvalidInputError, match=r"count_statistics\[0\]"):
        bootstrap_cis(vectors, count_statistics=[(0, weighted)])


def test_count_bootstrap_jackknife_leaves_one_unit_out():
    seen = []

    def spy(counts):
        seen.append(counts.copy())
        return counts @ np.arange(5.0)

    count_bootstrap_ci(5, spy, settings=BootstrapSettings(n_resamples=100, seed=0, method="bca", chunk_elements=10))
    rows = np.concatenate(seen)
    sizes = rows.sum(axis=1)
    np.testing.assert_array_equal(rows[sizes == 4], 1.0 - np.eye(5))  # the jackknife: each unit left out once
    assert np.all(sizes[sizes != 4] == 5)  # resamples (and the estimate's all-ones row) draw n units
    assert np.count_nonzero(sizes == 5) == 100 + 1


def test_count_bootstrap_bad_input():
    with pytest.raises(InvalidInputError, match="positive integer"):
        count_bootstrap_ci(0, lambda c: c.sum(axis=1))
    with pytest.raises(InvalidInputError, match="one value"):
        count_bootstrap_ci(4, lambda c: c, settings=BootstrapSettings(n_resamples=100))
    with pytest.raises(InvalidInputError, match="method"):
        count_bootstrap_ci(4, lambda c: c.sum(axis=1), settings=BootstrapSettings(method="basic"))


def test_shared_bootstrap_names_the_bad_vector():
    with pytest.raises(EvaluationError, match="visual_drop"):
        bootstrap_cis([[1.0, 2.0], [np.nan]], names=["ndcg", "visual_drop"])
    with pytest.raises(InvalidInputError, match=r"values\[1\].*infinite"):
        bootstrap_cis([[1.0, 2.0], [np.inf, 1.0]])
    with pytest.raises(InvalidInputError, match="one name per vector"):
        bootstrap_cis([[1.0, 2.0]], names=["a", "b"])
    assert bootstrap_cis([]) == []


def test_paired_bootstrap_is_bootstrap_of_differences_and_drops_nan_pairs():
    rng = np.random.default_rng(3)
    a = rng.uniform(size=200)
    b = a - 0.05 + rng.normal(0, 0.1, size=200)
    a[[3, 10]] = np.nan  # excluded queries
    b[20] = np.nan
    got = paired_bootstrap_ci(a, b, settings=BootstrapSettings(n_resamples=2000, seed=1))
    keep = ~(np.isnan(a) | np.isnan(b))
    assert got == bootstrap_ci((a - b)[keep], settings=BootstrapSettings(n_resamples=2000, seed=1))
    assert got.n == 197 and got.contains(got.estimate)
    with pytest.raises(InvalidInputError, match="same length"):
        paired_bootstrap_ci(a, b[:-1])


@settings(max_examples=40, deadline=None)
@given(st.floats(-5, 5, allow_subnormal=False), st.integers(1, 500), st.sampled_from(["percentile", "bca"]))
def test_constant_difference_has_zero_width(c, n, method):
    ci = paired_bootstrap_ci(np.full(n, c + 1.0), np.full(n, 1.0), settings=BootstrapSettings(n_resamples=1000, method=method))
    d = (c + 1.0) - 1.0
    assert ci.low == ci.high == ci.estimate == d and ci.width == 0.0


@settings(max_examples=40, deadline=None)
@given(values_st, st.sampled_from([0.8, 0.95, 0.99]), st.integers(0, 1000))
def test_ci_contains_its_point_estimate(x, confidence, seed):
    ci = bootstrap_ci(x, settings=BootstrapSettings(n_resamples=500, confidence=confidence, seed=seed))
    assert ci.low <= ci.estimate <= ci.high


def test_bootstrap_bad_input():
    with pytest.raises(EvaluationError, match="no finite values"):
        bootstrap_ci([np.nan, np.nan])
    with pytest.raises(InvalidInputError, match="infinite"):
        bootstrap_ci([1.0, np.inf])
    with pytest.raises(InvalidInputError, match="confidence"):
        bootstrap_ci([1.0, 2.0], settings=BootstrapSettings(confidence=1.5))
    with pytest.raises(InvalidInputError, match="method"):
        bootstrap_ci([1.0, 2.0], settings=BootstrapSettings(method="basic"))
    with pytest.raises(InvalidInputError, match="statistic"):
        bootstrap_ci([1.0, 2.0], statistic="mode")


def test_interval_is_a_frozen_record():
    ci = Interval(0.5, 0.4, 0.6, 0.95, 10_000, "percentile", 100)
    assert ci.width == pytest.approx(0.2) and ci.contains(0.6) and not ci.contains(0.61)
    with pytest.raises(AttributeError):
        ci.low = 0.0  # type: ignore[misc]


# ---------------------------------------------------------------- randomization test

@pytest.mark.parametrize("d", [[0.3, -0.1, 0.2, 0.25, 0.05, -0.02, 0.4, 0.1], [1.0, -1.0, 0.5, -0.4, 0.2, 0.1]])
def test_randomization_matches_exact_enumeration(d):
    exact = exact_sign_flip_p(d)
    got = randomization_test(d, n_resamples=40_000, seed=2)
    assert got == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 40_000) + 1e-4)


def test_randomization_extremes():
    assert randomization_test(np.zeros(30)) == 1.0  # every resample is as extreme as T = 0
    assert randomization_test(np.full(40, 0.5), n_resamples=999) == pytest.approx(1 / 1000)
    d = np.random.default_rng(0).normal(size=101)
    assert randomization_test(d, seed=3) == randomization_test(d, seed=3, chunk_elements=777)


@settings(max_examples=40, deadline=None)
@given(values_st, st.integers(0, 1000))
def test_p_value_in_unit_interval(d, seed):
    p = randomization_test(d, n_resamples=200, seed=seed)
    assert 0.0 < p <= 1.0


# ---------------------------------------------------------------- Holm, effect size

def test_holm_hand_worked():
    # sorted: .005*4=.02, .01*3=.03, .03*2=.06, .04*1=.04 -> running max .06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    assert holm([]).shape == (0,)
    with pytest.raises(InvalidInputError, match=r"\[0, 1\]"):
        holm([0.1, np.nan])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_holm_matches_reference_and_is_monotone(p):
    adj = holm(p)
    np.testing.assert_allclose(adj, ref_holm(p), rtol=1e-12)
    assert np.all(adj >= np.asarray(p)) and np.all(adj <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-1000, 1000).map(lambda v: v / 100), min_size=2, max_size=40))
def test_effect_size_matches_reference(d):
    got = paired_effect_size(d)
    if len(set(d)) == 1:
        assert math.isnan(got) if d[0] == 0 else got == math.copysign(math.inf, d[0])
    else:
        assert got == pytest.approx(statistics.fmean(d) / statistics.stdev(d), rel=1e-9)


def test_effect_size_drops_nan_and_needs_two_values():
    assert paired_effect_size([1.0, np.nan, 3.0]) == pytest.approx(2.0 / math.sqrt(2.0))
    assert math.isnan(paired_effect_size([1.0]))


def ref_sign_flip_p(d, n_resamples, seed):
    """The same random bits as the code under test (64-bit words per resample, bits in
    np.unpackbits order), one resample at a time, with a plain signed sum."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    words = -(-n // 64)
    raw = np.random.default_rng(seed).bit_generator.random_raw(n_resamples * words).astype("<u8")
    keep = np.unpackbits(raw.view(np.uint8).reshape(n_resamples, words * 8), axis=1)[:, :n]
    t = abs(math.fsum(d))
    tol = 1e-9 * math.fsum(abs(v) for v in d)
    hits = sum(1 for row in keep if abs(math.fsum(np.where(row == 1, d, -d))) >= t - tol)
    return (1 + hits) / (1 + n_resamples)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-50, 50).map(lambda v: v / 10), min_size=1, max_size=150), st.integers(0, 10**6),
       st.integers(64, 4000))
def test_randomization_equals_a_plain_loop_over_the_same_signs(d, seed, chunk):
    assert randomization_test(d, n_resamples=300, seed=seed, chunk_elements=chunk) == ref_sign_flip_p(d, 300, seed)
