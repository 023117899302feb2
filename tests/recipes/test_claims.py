"""The claims runner's cheap parts: the mechanism check and the reading of a gate report."""

from __future__ import annotations

import pytest

from fusionguard.errors import ConfigError
from fusionguard.recipes.claims import _number, run_claims, summary


def test_an_unknown_mechanism_is_refused_before_any_work(tmp_path):
    proto = tmp_path / "p.toml"
    proto.write_text('name = "x"\nmechanism = "something-else"\nvariants = ["baseline"]\nreference = "baseline"\n')
    with pytest.raises(ConfigError, match="something-else"):
        run_claims(tmp_path / "cache", tmp_path / "out", proto)
    assert not (tmp_path / "out").exists()


def test_numbers_are_read_from_the_gate_checks():
    checks = {"visual_ablation": {"numbers": {"visual_drop": {"estimate": 0.004, "low": 0.0, "high": 0.01}}}}
    assert _number(checks, "visual_ablation", "visual_drop", "estimate") == 0.004
    assert _number(checks, "integrity", "spearman_mean", "estimate") is None
    assert _number(checks, "visual_ablation", "visual_drop", "missing") is None


def test_summary_names_the_budget_and_the_verdicts():
    run = {"variant": "baseline", "warm_start_from": "", "epochs_run": 8, "best_epoch": 7, "test": {"ndcg": 0.5}}
    gate = {"exit_code": 1, "outcome": "blocked", "protocol_collapsed": True,
            "checks": {"visual_ablation": {"outcome": "failed", "summary": "visual drop 0.001"}}}
    claims = {"protocol": "p", "mechanism": "warm_start_from_v1", "epochs_override": 8, "timings": {"total_s": 10.0},
              "runs": {"v1": run | {"variant": "v1"}, "collapsed": run | {"gate": gate},
                       "healthy": run | {"gate": gate | {"exit_code": 0, "outcome": "passed"}}},
              "gate_blocks_collapsed": True, "gate_passes_healthy": True}
    text = summary(claims)
    assert "8 epochs per run" in text and "gate exit 1 (blocked)" in text and "gate exit 0 (passed)" in text
