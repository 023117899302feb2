"""Warm start, the no-early-stop floor, per-head attention logs, and the collapse protocol's tables."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionguard import stats
from fusionguard.errors import ConfigError
from fusionguard.training.checkpoint import load_checkpoint
from fusionguard.training.config import TrainConfig
from fusionguard.training.protocol import load_protocol, summarize
from fusionguard.training.trainer import train

from .conftest import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def test_warm_start_copies_v1_text_pathway_and_keeps_visual_fresh(tmp_path, tiny_bench):
    train(tiny_config("v1", max_epochs=1), tiny_bench, tmp_path / "v1", progress=False)
    v1 = load_checkpoint(tmp_path / "v1").model.state_dict()
    config = replace(tiny_config("baseline", max_epochs=1, lr=1e-12), warm_start_from=str(tmp_path / "v1"))
    result = train(config, tiny_bench, tmp_path / "v2", progress=False)
    assert result.warm_start is not None and {"k_text.weight", "head.0.weight"} <= set(result.warm_start["loaded"])
    assert {"k_visual.weight", "v_visual.weight"} <= set(result.warm_start["kept"])
    v2 = load_checkpoint(tmp_path / "v2").model.state_dict()
    torch.testing.assert_close(v2["k_text.weight"], v1["k_text.weight"], rtol=0, atol=1e-6)  # lr ~0: still V1's
    assert json.loads((tmp_path / "v2" / "result.json").read_text())["warm_start"]["source_variant"] == "v1"


def test_warm_start_from_a_missing_checkpoint_is_a_config_problem(tmp_path, tiny_bench):
    config = replace(tiny_config("baseline"), warm_start_from=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="warm_start_from"):
        train(config, tiny_bench, tmp_path / "out", progress=False)


def test_min_epochs_holds_off_early_stopping(tmp_path, tiny_bench):
    # min_delta 1.0: no epoch after the first is ever "better", so patience 1 would stop at epoch 2
    stopped = train(tiny_config(max_epochs=5, patience=1, min_delta=1.0), tiny_bench, tmp_path / "a", progress=False)
    held = train(tiny_config(max_epochs=5, patience=1, min_delta=1.0, min_epochs=4), tiny_bench, tmp_path / "b", progress=False)
    assert stopped.epochs_run == 2 and held.epochs_run == 4
    heads = held.history[0]
    assert len(heads["val_visual_attention_mass_per_head"]) == 4 and len(heads["val_attention_entropy_per_head"]) == 4


def test_keep_last_keeps_the_converged_model_not_the_best_val_one(tmp_path, tiny_bench):
    result = train(tiny_config("v1", max_epochs=3, min_delta=1.0, keep="last"), tiny_bench, tmp_path / "v1", progress=False)
    assert result.best_epoch == 2  # min_delta 1.0: best-val would have kept epoch 0
    with pytest.raises(ConfigError, match="optim.keep"):
        TrainConfig.from_dict({"optim": {"keep": "best"}})


@pytest.mark.parametrize("what", ["text-tower", "loaded"])
def test_warm_start_freeze_keeps_the_frozen_part_exactly(tmp_path, tiny_bench, what):
    train(tiny_config("v1", max_epochs=1), tiny_bench, tmp_path / "v1", progress=False)
    v1 = load_checkpoint(tmp_path / "v1").model.state_dict()
    config = replace(tiny_config("baseline", max_epochs=2), warm_start_from=str(tmp_path / "v1"), warm_start_freeze=what)
    result = train(config, tiny_bench, tmp_path / what, progress=False)
    v2 = load_checkpoint(tmp_path / what).model.state_dict()
    frozen = set(result.warm_start["frozen"])
    assert {"query_in.0.weight", "k_text.weight", "v_text.weight"} <= frozen and "k_visual.weight" not in frozen
    assert ("head.0.weight" in frozen) == (what == "loaded")
    for name in frozen:
        torch.testing.assert_close(v2[name], v1[name], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="warm_start_freeze"):
        TrainConfig.from_dict({"warm_start_freeze": "all"})


def test_protocol_v1_table_sets_the_production_v1_budget(tmp_path):
    text = (ROOT / "training" / "configs" / "pilot" / "converged-v1.toml").read_text()
    protocol = load_protocol(ROOT / "training" / "configs" / "pilot" / "converged-v1.toml")
    assert "[v1]" in text
    v1 = protocol.train_config("v1", 0, "")
    assert v1.optim.keep == "last" and v1.optim.max_epochs == v1.optim.min_epochs == 100
    assert protocol.train_config("baseline", 0, "v1-dir").optim.keep == "best-val"  # only the V1 gets it


def test_min_epochs_above_max_epochs_is_rejected():
    with pytest.raises(ConfigError, match="min_epochs"):
        TrainConfig.from_dict({"optim": {"max_epochs": 5, "min_epochs": 6}})


def test_committed_protocol_loads_and_fixes_the_budget():
    protocol = load_protocol(ROOT / "training" / "configs" / "protocol.toml")
    assert len(protocol.training_seeds) >= 10 and len(protocol.generator_seeds) >= 3
    cfg = protocol.train_config("baseline", 0, "v1-dir")
    assert (cfg.optim.max_epochs, cfg.optim.min_epochs, cfg.warm_start_from) == (50, 20, "v1-dir")
    long = protocol.train_config("baseline", 0, "v1-dir", long=True)
    assert long.optim.max_epochs == 2 * cfg.optim.max_epochs and long.optim.min_epochs == long.optim.max_epochs


def _record(variant, g, s, drop, ndcg, spearman=0.995):
    rng = np.random.default_rng(g * 100 + s)
    return {"protocol": "p", "variant": variant, "generator_seed": g, "training_seed": s, "long": False,
            "ndcg": ndcg, "visual_drop": drop, "spearman_v1": spearman, "collapsed": drop < 0.01 and spearman >= 0.99,
            "escaped": drop >= 0.10, "first_val_escape_epoch": 5 if drop >= 0.10 else None, "seconds": 1.0, "epochs_run": 20,
            "per_query_ndcg": (ndcg + rng.normal(0, 0.01, 20)).tolist(), "per_query_visual_drop": (drop + rng.normal(0, 0.001, 20)).tolist()}


def test_protocol_summary_counts_runs_and_tests_at_the_seed_level():
    protocol = replace(load_protocol(ROOT / "training" / "configs" / "protocol.toml"), n_resamples=500)
    records = [_record("baseline", g, s, 0.0 if s else 0.2, 0.75) for g in (0, 1) for s in range(5)]
    records += [_record("progressive", g, s, 0.2, 0.80, 0.9) for g in (0, 1) for s in range(5)]
    rows = {r["variant"]: r for r in summarize(records, protocol)}
    base, prog = rows["baseline"], rows["progressive"]
    assert (base["runs"], base["collapsed"], base["escaped"]) == (10, 8, 2)
    ci = stats.binomial_ci(8, 10)
    assert (base["collapse_low"], base["collapse_high"]) == pytest.approx((ci.low, ci.high))
    assert prog["p_escape"] == pytest.approx(stats.fisher_exact(10, 10, 2, 10))
    seed_diff = [0.05] * 10
    assert prog["p_ndcg"] == pytest.approx(stats.seed_level_test(np.array(seed_diff) + 0.0))
    assert prog["ndcg_seed_sd"] == pytest.approx(0.0) and prog["delta_ndcg"] == pytest.approx(0.05, abs=0.01)


def test_seed_level_p_can_reach_the_stretch_target_after_holm_over_every_variant():
    """30 paired runs that all improve: after Holm over the protocol's 15 variants the seed-level p
    must still be able to go below the research plan's stretch target (0.001); with the
    bootstrap's 10,000 sign flips it could not (floor 15 / 10,001 = 0.0015)."""
    protocol = replace(load_protocol(ROOT / "training" / "configs" / "protocol.toml"), n_resamples=200)
    records = [_record("baseline", g, s, 0.0, 0.75) for g in (0, 1, 2) for s in range(10)]
    for i, variant in enumerate(protocol.variants[1:]):
        records += [_record(variant, g, s, 0.2, 0.80 + 0.001 * s, 0.9) for g in (0, 1, 2) for s in range(10)]
    rows = summarize(records, protocol)
    assert len([r for r in rows if "p_holm_ndcg" in r]) == 14
    assert all(r["p_holm_ndcg"] < 0.001 for r in rows if "p_holm_ndcg" in r)


def test_zero_values_warm_start_silences_the_new_modality_at_the_start(tmp_path, tiny_bench):
    train(tiny_config("v1", max_epochs=1), tiny_bench, tmp_path / "v1", progress=False)
    from fusionguard.training.checkpoint import warm_start
    from fusionguard.training.data import load_split, read_dims
    from fusionguard.training.models import build_model

    dims = read_dims(tiny_bench)
    v1 = load_checkpoint(tmp_path / "v1").model
    model = build_model("baseline", dims, v1.cfg)
    info = warm_start(model, tmp_path / "v1", init="zero-values")
    assert info["zeroed"] == ["v_visual.bias", "v_visual.weight"]
    split = load_split(tiny_bench / "test.parquet", dims, with_visual=True)
    with torch.no_grad():
        assert float(model.v_visual(split.visual_tokens).abs().max()) == 0.0  # the new tokens carry no value yet
        torch.testing.assert_close(model.k_text.weight, v1.k_text.weight)
    with pytest.raises(ConfigError, match="warm_start_init"):
        TrainConfig.from_dict({"warm_start_init": "ones"})


def test_phase_diagram_escape_by_budget_censors_runs_that_stopped_early():
    from benchmarks.collapse import escape_by_budget

    def run(drops, epochs_run):
        return {"history": [{"epoch": e, "val_visual_drop": d} for e, d in enumerate(drops)], "epochs_run": epochs_run}

    runs = [run([0.0, 0.2, 0.3], 3),  # escapes at epoch 1: counted as escaped from budget 2 on
            run([0.0, 0.0], 2),  # stopped after 2 epochs without escaping: says nothing about budget 3
            run([0.0, 0.0, 0.05], 3)]  # never reaches 10%
    share, count = escape_by_budget(runs, np.array([1, 2, 3]), 0.10)
    assert count.tolist() == [3, 3, 2]
    np.testing.assert_allclose(share, [0.0, 1 / 3, 1 / 2])


def test_collapse_run_in_parallel_records_what_the_sequential_run_does(tmp_path, monkeypatch):
    """`benchmarks.collapse run --jobs 2` trains in worker processes and appends each record from
    the parent: the same runs, and the same numbers, as one at a time (each run is seeded)."""
    import sys

    from benchmarks import collapse

    protocol = tmp_path / "tiny.toml"
    protocol.write_text(
        'name = "tiny"\ngenerator_seeds = [0]\ntraining_seeds = [0, 1]\nv1_seed = 0\nvariants = ["baseline"]\n'
        'reference = "baseline"\n[train]\ndevice = "cpu"\n[train.model]\nd_model = 8\nn_heads = 2\n'
        "[train.optim]\nmax_epochs = 1\nmin_epochs = 1\n[data]\nn_train = 6\nn_val = 3\nn_test = 3\n"
        "n_candidates = 5\ndim = 8\ntext_tokens = 2\nvisual_tokens = 2\nobject_patches = 1\n[eval]\nn_resamples = 10\n"
    )
    records = {}
    for jobs in ("1", "2"):
        results = tmp_path / f"jobs{jobs}.jsonl"
        monkeypatch.setattr(sys, "argv", ["collapse", "run", "--protocol", str(protocol), "--work", str(tmp_path / f"w{jobs}"),
                                          "--results", str(results), "--jobs", jobs])
        collapse.main()
        rows = [json.loads(line) for line in results.read_text().splitlines()]
        records[jobs] = {(r["variant"], r["generator_seed"], r["training_seed"]): r for r in rows}
    assert set(records["1"]) == set(records["2"]) == {("baseline", 0, 0), ("baseline", 0, 1)}
    for key, r in records["1"].items():
        assert records["2"][key]["per_query_ndcg"] == r["per_query_ndcg"] and records["2"][key]["visual_drop"] == r["visual_drop"]
        assert "torch" in r["machine"]


def test_collapse_report_per_run_table_has_one_row_per_record():
    from benchmarks.collapse import runs_table

    rec = {"variant": "baseline", "training_seed": 0, "ndcg": 0.7, "visual_drop": 0.004, "spearman_v1": 0.995, "collapsed": True,
           "escaped": False, "best_epoch": 3, "epochs_run": 20, "max_val_visual_drop": 0.02, "v1_test_ndcg": 0.75, "seconds": 11.0}
    table = runs_table([{**rec, "generator_seed": 1, "long": True}, {**rec, "generator_seed": 2, "collapsed": False, "spearman_v1": 0.9}])
    rows = table.splitlines()[2:]
    assert len(rows) == 2  # the standard-budget run first, then the long one
    assert rows[0].startswith("| baseline | 2 | 0 | standard | 0.7000 | 0.4% | 0.9000 | no |")
    assert rows[1].startswith("| baseline | 1 | 0 | long |") and "| yes | no | 3 / 20 |" in rows[1]


def test_pilots_summary_counts_each_half_of_the_criterion(tmp_path):
    """One row per (round, protocol, variant, budget); the protocol grid keeps its baseline only."""
    import json

    from benchmarks.collapse import pilots_summary

    def rec(protocol, variant, drop, rho, long=False):
        return {"protocol": protocol, "variant": variant, "long": long, "visual_drop": drop, "spearman_v1": rho,
                "collapsed": drop < 0.01 and rho >= 0.99, "escaped": drop >= 0.10, "ndcg": 0.7}

    pilot = tmp_path / "p.jsonl"
    grid = tmp_path / "g.jsonl"
    pilot.write_text("\n".join(json.dumps(r) for r in [rec("a", "baseline", 0.0, 0.995), rec("a", "baseline", 0.02, 0.999),
                                                        rec("a", "baseline", 0.005, 0.95)]) + "\n")
    grid.write_text("\n".join(json.dumps(r) for r in [rec("w", "baseline", 0.2, 0.8, long=True), rec("w", "mbl", 0.0, 1.0)]) + "\n")
    rows = pilots_summary((("1", pilot), ("protocol grid", grid)), write_doc=False).splitlines()[2:4]
    assert rows[0].startswith("| 1 | a | baseline | standard | 3 | 2/3 | 2/3 | 1/3 [")
    assert rows[1].startswith("| protocol grid | w | baseline | long | 1 | 0/1 | 0/1 | 0/1 [") and "| 1/1 |" in rows[1]
