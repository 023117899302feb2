"""PSI and the windowed drift tracker, against plain references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fusionguard.profile import build_profile, request_means
from fusionguard.monitor.drift import DEFAULT_WINDOW, PSI_FLOOR, PSI_MAJOR, PSI_MODERATE, DriftTracker, kolmogorov_sf, ks_2samp, psi


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


def _profile(rng, n_requests=3000, rows=5):
    requests = np.repeat(np.arange(n_requests), rows)
    share = rng.uniform(0.3, 0.7, n_requests * rows)
    return build_profile(
        "0" * 64, share, {"visual_tokens": rng.standard_normal(n_requests * rows) + 10},
        requests=requests, shapley_strategy="zero",
    )


def test_tracker_window_counts_requests_and_reports_only_full_windows():
    rng = np.random.default_rng(1)
    profile = _profile(rng)
    ref = np.asarray(profile.features["visual_tokens"].sample)
    tracker = DriftTracker(profile, window=200)
    for _ in range(199):
        tracker.add({"visual_tokens": rng.choice(ref), "visual_share": np.array([0.5]), "other": 1.0})
    assert tracker.results() == []  # 199 requests: the window is not full yet
    tracker.add({"visual_tokens": rng.choice(ref), "visual_share": np.nan})  # NaN share: skipped for that feature
    stable = {r.feature: r for r in tracker.results()}
    assert set(stable) == {"visual_tokens"} and stable["visual_tokens"].n == 200
    assert stable["visual_tokens"].psi < PSI_MODERATE and stable["visual_tokens"].pvalue > 0.001
    for _ in range(200):  # the window now holds only shifted requests
        tracker.add({"visual_tokens": rng.choice(ref) + 1.0})
    r = {r.feature: r for r in tracker.results()}["visual_tokens"]
    assert r.n == 200 and r.psi > PSI_MAJOR
    window = np.asarray(tracker._windows["visual_tokens"].values)
    sample = ref
    reference = stats.ks_2samp(window, sample, method="asymp")
    en = window.size * sample.size / (window.size + sample.size)
    assert r.pvalue == pytest.approx(stats.kstwobign.sf(math.sqrt(en) * reference.statistic), rel=1e-9)
    assert r.pvalue < 0.01


def test_request_constant_feature_is_one_unit_per_request():
    # 40 requests x 50 rows whose query is repeated on every row: a row-level window would see
    # 2,000 values of 40 distinct queries; the request-level window sees 40 values.
    rng = np.random.default_rng(2)
    profile = _profile(rng)
    tracker = DriftTracker(profile, window=40)
    for _ in range(40):
        rows = np.full(50, rng.choice(np.asarray(profile.features["visual_tokens"].sample)))
        tracker.add(request_means({"visual_tokens": rows}))
    (r,) = [r for r in tracker.results() if r.feature == "visual_tokens"]
    assert r.n == 40


def test_in_distribution_windows_rarely_exceed_the_alert_threshold():
    # Null behaviour at the default window: 200 requests drawn from the reference's own values.
    rng = np.random.default_rng(3)
    profile = _profile(rng, n_requests=2000, rows=1)
    values = np.asarray(profile.features["visual_tokens"].sample)
    edges, counts = profile.features["visual_tokens"].edges, profile.features["visual_tokens"].counts
    psis = [psi(rng.choice(values, DEFAULT_WINDOW), edges, counts) for _ in range(200)]
    assert np.mean(np.array(psis) > PSI_MAJOR) <= 0.01


def test_a_new_profile_clears_the_drift_gauges_until_its_window_is_full(tmp_path):
    import dataclasses

    from prometheus_client import CollectorRegistry

    from fusionguard import toymodels
    from fusionguard.profile import ReferenceProfile, feature_summaries
    from fusionguard.monitor.metrics import MonitorMetrics
    from fusionguard.monitor.service import ModelService, ServiceConfig
    from fusionguard.monitor.telemetry import TelemetryConfig, TelemetryWorker

    data = toymodels.make_toy_dataset(n_queries=10, n_candidates=5, seed=4)
    model = toymodels.save(toymodels.build_fusion_model(1.0), tmp_path / "fusion.onnx")
    service = ModelService(ServiceConfig(model=model, device="cpu", telemetry_share=1.0))
    passes = service.passes
    scores = dict(zip(passes.masks, (o.score for o in service.state.scorer.run(data.feeds, passes.masks))))
    path = build_profile(
        service.state.scorer.sha256, passes.values(scores)[2], feature_summaries(data.feeds),
        requests=data.query_id, shapley_strategy="zero",
    ).write(tmp_path / "profile.json")
    registry = CollectorRegistry()
    worker = TelemetryWorker("ranker", MonitorMetrics.create(registry), config=TelemetryConfig(drift_window=10, drift_every=1))
    state = dataclasses.replace(service.state, profile=ReferenceProfile.read(path))
    requests = [{k: v[5 * q : 5 * q + 5] for k, v in data.feeds.items()} for q in range(10)]
    for feeds in requests:
        scored = service.score(feeds, telemetry=True)
        worker.process(dataclasses.replace(scored, state=state))
    labels = {"model": "ranker", "feature": "visual_tokens"}
    assert registry.get_sample_value("fusionguard_drift_psi", labels) == pytest.approx(0.0, abs=1e-9)
    reloaded = dataclasses.replace(state, profile=ReferenceProfile.read(path))  # a reload: a new profile object
    worker.process(dataclasses.replace(service.score(requests[0], telemetry=True), state=reloaded))
    assert math.isnan(registry.get_sample_value("fusionguard_drift_psi", labels))
    assert math.isnan(registry.get_sample_value("fusionguard_drift_pvalue", labels))


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
