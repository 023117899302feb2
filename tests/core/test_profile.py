"""The reference profile: summaries, JSON round trip, schema checks, feature norms."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fusionguard.errors import EvaluationError, ProblemsError
from fusionguard.profile import ReferenceProfile, Summary, build_profile, feature_summaries


def test_feature_summaries_match_plain_norms():
    rng = np.random.default_rng(0)
    feeds = {"query": rng.normal(size=(5, 3)).astype(np.float32), "visual_tokens": rng.normal(size=(5, 2, 3))}
    got = feature_summaries(feeds)
    for name, a in feeds.items():
        ref = [float(np.sqrt(sum(float(x) ** 2 for x in row.ravel()))) for row in a]
        np.testing.assert_allclose(got[name], ref, rtol=1e-6)


def test_profile_round_trip_and_schema(tmp_path):
    rng = np.random.default_rng(1)
    share = rng.uniform(size=3000)
    share[:5] = np.nan
    profile = build_profile(
        "ab" * 32, share, feature_summaries({"q": rng.normal(size=(3000, 4))}), attention_mass=rng.uniform(size=(3000, 2))
    )
    data = json.loads(profile.to_json())
    assert set(data) == {"profile_version", "model_sha256", "n_rows", "visual_share", "attention_mass", "features"}
    assert set(data["visual_share"]) == {"mean", "std", "quantiles", "edges", "counts", "sample"}
    assert len(data["visual_share"]["sample"]) == 2000
    assert sum(data["visual_share"]["counts"]) == 2995
    assert data["n_rows"] == 3000
    path = profile.write(tmp_path / "profile.json")
    assert ReferenceProfile.read(path) == profile


def test_constant_values_get_one_bin():
    s = Summary.of(np.full(10, 0.3))
    assert len(s.edges) == 2 and s.counts == (10,) and s.std == pytest.approx(0.0, abs=1e-12)


def test_all_nan_share_is_an_evaluation_error():
    with pytest.raises(EvaluationError, match="undefined"):
        build_profile("x", np.full(4, np.nan), {})


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
