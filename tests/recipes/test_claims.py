"""The claims runner's cheap parts: the mechanism check and the reading of a gate report."""

from __future__ import annotations

import pytest

from fusionguard.errors import ConfigError
from fusionguard.recipes.claims import _number, default_protocol, run_claims, seeds_table, summary


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


def test_the_default_protocol_is_the_packaged_one():
    path = default_protocol()
    assert path.is_file() and path.name == "protocol.toml" and path.parent.name == "configs"


def _claims(seed: int, drop: float, exit_collapsed: int) -> dict:
    def gate(d, rho, code):
        return {"exit_code": code, "protocol_collapsed": False, "checks": {
            "visual_ablation": {"numbers": {"visual_drop": {"estimate": d, "low": d - 0.04, "high": d + 0.04}}},
            "integrity": {"numbers": {"spearman_mean": {"estimate": rho, "low": rho - 0.01, "high": rho + 0.01}}}}}
    return {"training_seed": seed, "epochs_override": None, "runs": {
        "collapsed": {"test": {"ndcg": 0.5}, "gate": gate(drop, 0.9, exit_collapsed)},
        "healthy": {"test": {"ndcg": 0.6}, "gate": gate(0.3, 0.6, 0)}}}


def test_the_seeds_table_has_every_seed_and_counts_the_verdicts(tmp_path):
    import json

    (tmp_path / "claims.json").write_text(json.dumps(_claims(0, 0.02, 1)))
    (tmp_path / "claims-s1.json").write_text(json.dumps(_claims(1, 0.08, 0)))
    text = seeds_table(tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(rows) == 4
    assert "| 1 | collapsed | 0.500 | 0.080 [0.040, 0.120] | 0.900 [0.890, 0.910] | 0 | False |" in rows
    assert "- collapsed: 2 seed(s)" in text and "blocked in 1 of 2" in text and "budget: the protocol" in text


def test_the_seeds_table_needs_stored_runs(tmp_path):
    with pytest.raises(ConfigError, match="no claims"):
        seeds_table(tmp_path)
