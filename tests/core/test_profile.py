"""The reference profile: summaries, JSON round trip, schema checks, feature norms."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fusionguard.errors import EvaluationError, ProblemsError
from fusionguard.profile import ReferenceProfile, Summary, build_profile, feature_summaries, request_means


def test_feature_summaries_match_plain_norms():
    rng = np.random.default_rng(0)
    feeds = {"query": rng.normal(size=(5, 3)).astype(np.float32), "visual_tokens": rng.normal(size=(5, 2, 3))}
    got = feature_summaries(feeds)
    for name, a in feeds.items():
        ref = [float(np.sqrt(sum(float(x) ** 2 for x in row.ravel()))) for row in a]
        np.testing.assert_allclose(got[name], ref, rtol=1e-6)


def test_profile_round_trip_and_schema(tmp_path):
    rng = np.random.default_rng(1)
    share = rng.uniform(size=30_000)
    share[:10] = np.nan  # the first request (10 rows) has no finite share
    requests = np.repeat(np.arange(3000), 10)
    profile = build_profile(
        "ab" * 32, share, feature_summaries({"q": rng.normal(size=(30_000, 4))}),
        attention_mass=rng.uniform(size=(30_000, 2)), requests=requests, shapley_strategy="permute",
    )
    data = json.loads(profile.to_json())
    assert set(data) == {
        "profile_version", "model_sha256", "n_rows", "n_requests", "unit", "shapley_strategy",
        "visual_share", "attention_mass", "features",
    }
    assert (data["unit"], data["shapley_strategy"], data["profile_version"]) == ("request", "permute", 2)
    assert set(data["visual_share"]) == {"mean", "std", "quantiles", "edges", "counts", "sample"}
    assert len(data["visual_share"]["sample"]) == 2000
    assert sum(data["visual_share"]["counts"]) == 2999  # one value per request with a finite share
    assert (data["n_rows"], data["n_requests"]) == (30_000, 3000)
    path = profile.write(tmp_path / "profile.json")
    assert ReferenceProfile.read(path) == profile


def test_constant_values_get_one_bin():
    s = Summary.of(np.full(10, 0.3))
    assert len(s.edges) == 2 and s.counts == (10,) and s.std == pytest.approx(0.0, abs=1e-12)


def test_all_nan_share_is_an_evaluation_error():
    with pytest.raises(EvaluationError, match="undefined"):
        build_profile("x", np.full(4, np.nan), {}, requests=np.zeros(4), shapley_strategy="zero")


def test_request_means_count_each_request_once():
    # Request "b" has 3 rows, "a" 2; the query norm is constant within a request.
    requests = np.array(["b", "a", "b", "a", "b"], dtype=object)
    per_row = {"query": np.array([2.0, 5.0, 2.0, 5.0, 2.0]), "share": np.array([0.1, np.nan, 0.3, np.nan, 0.5]),
               "mass": np.array([[0.2, 0.4], [1.0, 1.0], [0.2, 0.4], [0.0, 0.0], [0.2, 0.4]])}
    got = request_means(per_row, requests)
    np.testing.assert_allclose(got["query"], [2.0, 5.0])  # order of first appearance: b, a
    np.testing.assert_allclose(got["share"], [0.3, np.nan])
    np.testing.assert_allclose(got["mass"], [0.3, 0.5])
    one = request_means({"query": np.array([2.0, 2.0]), "share": np.array([np.nan, 0.4])})
    np.testing.assert_allclose(one["query"], [2.0])
    np.testing.assert_allclose(one["share"], [0.4])


def test_version_1_profile_is_refused_with_a_hint():
    profile = build_profile("ab" * 32, np.linspace(0, 1, 20), {}, requests=np.repeat(np.arange(4), 5), shapley_strategy="zero")
    data = {**profile.to_dict(), "profile_version": 1}
    with pytest.raises(ProblemsError) as err:
        ReferenceProfile.from_dict(data)
    assert any("re-run the gate" in p for p in err.value.problems)
    with pytest.raises(ProblemsError) as err:
        ReferenceProfile.from_dict({**profile.to_dict(), "shapley_strategy": "shuffle"})
    assert any("shapley_strategy" in p for p in err.value.problems)


def test_malformed_profile_lists_every_problem():
    with pytest.raises(ProblemsError) as err:
        ReferenceProfile.from_json(json.dumps({"profile_version": 9, "visual_share": {"mean": 1}}))
    assert len(err.value.problems) >= 4


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.integers(1, 300), elements=st.floats(-1e6, 1e6)))
def test_summary_properties(values):
    s = Summary.of(values)
    q = list(s.quantiles.values())
    assert q == sorted(q)
    assert sum(s.counts) == values.size
    assert s.edges[0] <= values.min() + 1e-9 and s.edges[-1] >= values.max() - 1e-9
    assert min(s.sample) >= values.min() and max(s.sample) <= values.max()
    shuffled = Summary.of(np.random.default_rng(0).permutation(values))
    assert shuffled.quantiles == s.quantiles and shuffled.counts == s.counts


def test_a_symlinked_profile_is_refused(tmp_path):
    from fusionguard.errors import InvalidInputError

    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0\n")
    (tmp_path / "profile.json").symlink_to(secret)
    with pytest.raises(InvalidInputError, match="symbolic link"):
        ReferenceProfile.read(tmp_path / "profile.json")
