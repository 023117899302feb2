"""PSI and the windowed drift tracker, against plain references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fusionguard.profile import build_profile
from monitor.drift import PSI_FLOOR, PSI_MAJOR, PSI_MODERATE, DriftTracker, psi


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
    assert r.pvalue == pytest.approx(stats.ks_2samp(window, np.asarray(profile.features["visual_tokens"].sample)).pvalue)
    assert r.pvalue < 0.01
