"""Policy TOML: defaults, whole-file validation, every problem listed at once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionguard.errors import ConfigError, InvalidInputError
from fusionguard.gate.policy import Policy, load_policy, policy_from_dict


def test_no_file_and_empty_file_are_the_defaults(tmp_path):
    empty = tmp_path / "p.toml"
    empty.write_text("")
    assert load_policy(None) == Policy() == load_policy(empty)
    p = Policy()
    assert (p.ablation.min_visual_drop, p.integrity.max_correlation, p.baseline.required) == (0.10, 0.99, True)
    assert (p.ablation.strategy, p.bootstrap.n_resamples, p.bootstrap.confidence) == ("permute", 10_000, 0.95)


def test_values_are_read(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("seed = 7\n[integrity]\nmax_correlation = 0.95\n[quality]\nmargin = 0\n[attention]\nmin_entropy = 0.2\n")
    p = load_policy(path)
    assert p.seed == 7 and p.integrity.max_correlation == 0.95 and p.quality.margin == 0.0
    assert p.attention.min_entropy == 0.2 and p.attention.max_entropy is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[integrity]\nmax_corelation = 0.9\n", "did you mean 'max_correlation'"),
        ("[integrty]\nmax_correlation = 0.9\n", "unknown section 'integrty'"),
        ("[ablation]\nstrategy = 'shuffle'\n", "'ablation.strategy' must be one of"),
        ("[ablation]\nmin_visual_drop = 'high'\n", "'ablation.min_visual_drop' must be a finite number"),
        ("[bootstrap]\nn_resamples = 10.5\n", "'bootstrap.n_resamples' must be an integer"),
        ("[baseline]\nrequired = 1\n", "'baseline.required' must be true or false"),
        ("[integrity]\nmax_correlation = 1.5\n", "'integrity.max_correlation' must be a number in (-1, 1]"),
        ("[attention]\nmin_entropy = 0.9\nmax_entropy = 0.1\n", "is above 'attention.max_entropy'"),
        ("integrity = 3\n", "'integrity' must be a [integrity] table"),
        ("[integrity\n", "not valid TOML"),
    ],
)
def test_bad_policies_are_config_errors(tmp_path, text, needle):
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert needle in str(err.value)
    assert err.value.exit_code == 2


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as err:
        policy_from_dict({"sed": 1, "metric": {"k": 0, "gian": "linear"}, "quality": {"margin": -1}})
    assert len(err.value.problems) == 4


def test_missing_file_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    drop=st.floats(-1, 1),
    corr=st.floats(-0.99, 1.0),
    margin=st.floats(0, 1, exclude_max=True),  # the valid range is [0, 1)
    strategy=st.sampled_from(["zero", "mean", "permute"]),
)
def test_round_trip_through_dict(seed, drop, corr, margin, strategy):
    p = policy_from_dict(
        {"seed": seed, "ablation": {"min_visual_drop": drop, "strategy": strategy},
         "integrity": {"max_correlation": corr}, "quality": {"margin": margin}}
    )
    assert policy_from_dict(p.to_dict()) == p
