"""Measures and decision rules against plain references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionguard import metrics
from fusionguard.gate import checks
from fusionguard.gate.measures import ModelMeasures, pearson_interval, per_query_mean, plan_passes
from fusionguard.gate.policy import Policy, with_overrides

FAST = with_overrides(Policy(), bootstrap={"n_resamples": 400})


def _groups(sizes, seed=0):
    rng = np.random.default_rng(seed)
    qid = np.repeat(np.arange(len(sizes)), sizes)
    iid = np.concatenate([np.arange(s) for s in sizes])
    label = rng.integers(0, 3, qid.size)
    order = rng.permutation(qid.size)  # caller order is not query order
    return metrics.QueryGroups.from_arrays(qid[order], iid[order], label[order]), qid[order]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=12), st.integers(0, 10**6))
def test_per_query_mean_matches_a_plain_loop(sizes, seed):
    groups, qid = _groups(sizes, seed)
    values = np.random.default_rng(seed).normal(size=qid.size)
    values[::4] = np.nan
    got = per_query_mean(groups, values)
    for i, q in enumerate(groups.query_ids):
        v = values[qid == q]
        v = v[np.isfinite(v)]
        assert (np.isnan(got[i]) and v.size == 0) or got[i] == pytest.approx(v.mean())


def test_pearson_interval_resamples_whole_queries(monkeypatch):
    groups, qid = _groups([5] * 30, seed=1)
    rng = np.random.default_rng(2)
    a = rng.normal(size=qid.size)
    b = a + rng.normal(scale=0.5, size=qid.size)
    iv = pearson_interval(groups, a, b, FAST)
    assert iv.estimate == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert iv.low <= iv.estimate <= iv.high and iv.n == 30
    # the cluster statistic on one explicit resample equals Pearson over the rows of those queries
    from fusionguard import stats

    captured = {}
    original = stats.count_bootstrap_ci

    def spy(n, statistic, *args, **kwargs):
        captured["statistic"] = statistic
        return original(n, statistic, *args, **kwargs)

    monkeypatch.setattr(stats, "count_bootstrap_ci", spy)
    pearson_interval(groups, a, b, FAST)
    picked = [3, 3, 7, 0, 12]
    counts = np.bincount(picked, minlength=groups.n_queries).astype(np.float64)[None, :]
    rows = np.concatenate([np.flatnonzero(qid == groups.query_ids[i]) for i in picked])
    want = np.corrcoef(a[rows], b[rows])[0, 1]
    assert captured["statistic"](counts)[0] == pytest.approx(want, rel=1e-9)


def test_pearson_interval_equals_a_plain_cluster_bootstrap():
    """Reference: the same query draws (same generator calls as fusionguard.stats), then Pearson
    over the rows of each resample's queries with np.corrcoef, one resample at a time."""
    groups, qid = _groups([3, 5, 4, 6, 2] * 5, seed=3)
    rng = np.random.default_rng(4)
    a = rng.normal(size=qid.size)
    b = 0.5 * a + rng.normal(size=qid.size)
    policy = with_overrides(Policy(), bootstrap={"n_resamples": 300})
    got = pearson_interval(groups, a, b, policy)
    draws = np.random.default_rng(policy.seed).integers(0, groups.n_queries, size=(300, groups.n_queries), dtype=np.intp)
    rows_of = [np.flatnonzero(qid == q) for q in groups.query_ids]
    rs = [np.corrcoef(a[r], b[r])[0, 1] for r in (np.concatenate([rows_of[i] for i in d]) for d in draws)]
    want = np.quantile(rs, [0.025, 0.975])
    assert got.low == pytest.approx(want[0], rel=1e-9) and got.high == pytest.approx(want[1], rel=1e-9)


def test_plan_counts_passes():
    plan = plan_passes(Policy())
    assert len(plan.visual) == 5 and len(plan.text) == 5
    assert len(plan.masks) == 14  # full + 5 + 5 + 3 Shapley (zero strategy)
    same = plan_passes(with_overrides(Policy(), ablation={"strategy": "zero"}))
    assert len(same.masks) == 4  # zero ablations coincide with the Shapley single-modality passes


def _measures(ndcg, n_rows=4):
    q = ndcg.size
    zeros = np.zeros(q)
    return ModelMeasures(
        scores=np.zeros(n_rows), ndcg=ndcg, ndcg_visual_masked=zeros, ndcg_text_masked=zeros,
        visual_drop=np.full(q, 0.5), text_drop=np.full(q, 0.5), phi_text=np.ones(n_rows),
        phi_visual=np.ones(n_rows), visual_share=np.full(n_rows, 0.5), visual_share_per_query=np.full(q, 0.5),
        attention_mass=None, attention_entropy=None, n_passes=14, provider="CPUExecutionProvider",
    )


@pytest.mark.parametrize(("shift", "outcome"), [(-0.02, "failed"), (-0.005, "passed"), (0.0, "passed")])
def test_quality_is_non_inferiority_on_the_ci(shift, outcome):
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, 200)
    cand = base + shift + rng.normal(0, 0.001, 200)
    result = checks.quality_check(_measures(cand), base, FAST)
    assert result.outcome == outcome
    assert result.numbers["difference"].low <= result.numbers["difference"].estimate


def test_visual_ablation_fails_only_when_the_upper_bound_is_below_the_minimum():
    m = _measures(np.full(50, 0.8))
    rng = np.random.default_rng(3)
    m.visual_drop = 0.09 + rng.normal(0, 0.05, 50)  # mean near 0.09, CI straddles 0.10
    assert checks.visual_ablation_check(m, FAST).outcome == "passed"
    m.visual_drop = np.full(50, 0.05)
    assert checks.visual_ablation_check(m, FAST).outcome == "failed"


def test_attention_is_skipped_without_an_attention_output():
    groups, _ = _groups([2, 2])
    result = checks.attention_check(_measures(np.full(2, 0.5)), groups, FAST, has_output=False)
    assert result.outcome == "skipped" and "no attention output" in result.reasons[0]
