"""PSI and the windowed drift tracker, against plain references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fusionguard.profile import build_profile
from monitor.drift import PSI_FLOOR, PSI_MAJOR, PSI_MODERATE, DriftTracker, kolmogorov_sf, ks_2samp, psi


def psi_reference(values, edges, counts):
    """A loop over values and bins, written out."""
    live = [0] * len(counts)
    for x in values:
        b = 0
        for j in range(1, len(edges) - 1):
            if x >= edges[j]:
                b = j
        live[b] += 1
    total_ref, total_live = sum(counts), sum(live)
    out = 0.0
    for r, l in zip(counts, live):
        p = max(r / total_ref, PSI_FLOOR)
        q = max(l / total_live, PSI_FLOOR)
        out += (q - p) * math.log(q / p)
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=1, max_size=60), st.integers(0, 1000))
def test_psi_matches_reference(values, seed):
    rng = np.random.default_rng(seed)
    edges = np.sort(rng.choice(np.linspace(-4, 4, 40), size=6, replace=False))
    counts = rng.integers(0, 50, size=5)
    counts[0] += 1
    assert psi(np.array(values), edges, counts) == pytest.approx(psi_reference(values, edges, counts), rel=1e-9, abs=1e-12)


def test_psi_is_zero_for_the_reference_and_grows_with_shift():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(20_000)
    edges = np.quantile(ref, np.linspace(0, 1, 11))
    counts = np.histogram(ref, edges)[0]
    assert psi(ref, edges, counts) == pytest.approx(0.0, abs=1e-6)
    same = psi(rng.standard_normal(2000), edges, counts)
    shifted = psi(rng.standard_normal(2000) + 0.5, edges, counts)
    far = psi(rng.standard_normal(2000) + 1.5, edges, counts)
    assert same < PSI_MODERATE < shifted < far
    assert far > PSI_MAJOR


def test_tracker_reports_after_min_values_and_flags_a_shift():
    rng = np.random.default_rng(1)
    n = 3000
    profile = build_profile("0" * 64, rng.uniform(0.3, 0.7, n), {"visual_tokens": rng.standard_normal(n) + 10})
    tracker = DriftTracker(profile, window=500, min_values=100)
    tracker.add({"visual_tokens": rng.standard_normal(50) + 10})
    assert tracker.results() == []
    tracker.add({"visual_tokens": rng.standard_normal(450) + 10, "visual_share": rng.uniform(0.3, 0.7, 500), "other": [1.0]})
    stable = {r.feature: r for r in tracker.results()}
    assert set(stable) == {"visual_share", "visual_tokens"}
    assert stable["visual_tokens"].psi < PSI_MODERATE and stable["visual_tokens"].pvalue > 0.001
    tracker.add({"visual_tokens": rng.standard_normal(500) + 12})  # the window now holds only shifted values
    r = {r.feature: r for r in tracker.results()}["visual_tokens"]
    assert r.n == 500 and r.psi > PSI_MAJOR
    window = np.asarray(tracker._windows["visual_tokens"].values)
    sample = np.asarray(profile.features["visual_tokens"].sample)
    reference = stats.ks_2samp(window, sample, method="asymp")
    en = window.size * sample.size / (window.size + sample.size)
    assert r.pvalue == pytest.approx(stats.kstwobign.sf(math.sqrt(en) * reference.statistic), rel=1e-9)
    assert r.pvalue < 0.01


@pytest.mark.parametrize("x", [0.0, 0.05, 0.3, 0.7, 0.99, 1.0, 1.01, 1.5, 2.5, 4.0])
def test_kolmogorov_sf_matches_scipy(x):
    assert kolmogorov_sf(x) == pytest.approx(stats.kstwobign.sf(x), rel=1e-9, abs=1e-15)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.floats(-1.0, 1.0), st.integers(0, 2**31 - 1))
def test_ks_2samp_statistic_is_scipys_and_pvalue_in_range(n, m, shift, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(n) + shift, np.round(rng.standard_normal(m), 1)  # rounding makes ties
    d, p = ks_2samp(a, b)
    assert d == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert 0.0 <= p <= 1.0
    assert ks_2samp(b[::-1], a[::-1]) == pytest.approx((d, p), abs=1e-12)  # symmetric, order-free


def test_ks_2samp_pvalue_close_to_scipys_exact_and_conservative():
    """The asymptotic p-value is within 10 % of scipy's exact one at monitor sizes, never far below it."""
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.1, 0.2):
        a, b = rng.standard_normal(500) + shift, rng.standard_normal(2000)
        p = ks_2samp(a, b)[1]
        exact = stats.ks_2samp(a, b, method="exact").pvalue
        assert p == pytest.approx(exact, rel=0.1)
        assert p >= exact * 0.99
