"""The experiment grid: config validation, run keys, the report's statistics, and a toy grid end to end."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fusionguard import stats
from fusionguard.cli import cli
from fusionguard.errors import ConfigError
from fusionguard.recipes.experiment import expand, load_grid, run_key
from fusionguard.training.config import TrainConfig
from fusionguard.recipes.experiment_report import build_report

TOY = """
name = "toy"
seeds = [0]
variants = ["baseline", "v1"]
reference = "baseline"
[train]
device = "cpu"
[train.model]
d_model = 8
n_heads = 2
[train.optim]
max_epochs = 2
[data]
n_train = 12
n_val = 6
n_test = 20
n_candidates = 6
dim = 8
text_tokens = 2
visual_tokens = 2
object_patches = 1
[eval]
n_resamples = 200
latency_repeats = 2
attention_rows = 60
"""


def _write(tmp_path, text, name="grid.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_grid_problems_are_listed_together(tmp_path):
    path = _write(tmp_path, 'variants = ["baseline", "nope"]\nreference = "mbl"\nseeds = [-1]\n[data]\nn_train = 0\n')
    with pytest.raises(ConfigError) as err:
        load_grid(path)
    text = " ".join(err.value.problems)
    for needle in ("nope", "reference 'mbl'", "seeds", "data.n_train"):
        assert needle in text


def test_scale_overrides_and_shared_runs(tmp_path):
    from fusionguard.training.config import MitigationConfig

    default = MitigationConfig().lambda_visual
    other = default + 0.2
    path = _write(tmp_path, TOY + f"\n[ablations]\nlambda_visual = [{other}, {default}]\nlambda_variant = \"mbl\"\n"
                  "[scale.full.train.optim]\nmax_epochs = 30\n")
    small, full = load_grid(path, "small"), load_grid(path, "full")
    assert small.train["optim"]["max_epochs"] == 2 and full.train["optim"]["max_epochs"] == 30
    specs = {(s.group, s.value): s for s in expand(small)}
    assert specs[("lambda", other)].config.mitigation.lambda_visual == pytest.approx(other)
    # the training default lambda resolves to the same config (and key) as a plain mbl run; another value does not
    at_default = specs[("lambda", default)]
    plain = replace(at_default, label="mbl", group="main", value=None,
                    config=TrainConfig.from_dict({**at_default.config.to_dict(), "variant": "mbl"}))
    assert run_key(at_default, "d") == run_key(plain, "d")
    assert run_key(specs[("lambda", other)], "d") != run_key(at_default, "d")
    assert run_key(specs[("main", None)], "d") != run_key(specs[("main", None)], "other data")


def _fake_experiment(tmp_path, deltas, n_seeds=8, drops=None):
    """A stored experiment without training: per-query NDCG of a reference and shifted variants.
    `drops` maps a label to per-seed visual drops (default 0.1 + noise everywhere)."""
    rng = np.random.default_rng(0)
    out = tmp_path / "exp"
    n_q, seeds = 60, tuple(range(n_seeds))
    base = {s: rng.uniform(0.3, 0.7, n_q) for s in seeds}
    labels = {"baseline": 0.0, **deltas}
    entries = []
    for label, delta in labels.items():
        for s in seeds:
            run = f"runs/{label}-s{s}"
            (out / run).mkdir(parents=True)
            (out / run / "latency.json").write_text(json.dumps({"median_ms": 1.0 + delta}))
            entries.append({"label": label, "group": "main", "value": None, "variant": "baseline", "seed": s,
                            "dataset": "main", "key": f"{label}{s}", "run_dir": run, "model": f"{label}-{s}"})
    for s in seeds:
        frames = []
        for label, delta in labels.items():
            noise = rng.normal(0, 0.01, n_q)
            drop = (drops or {}).get(label, [0.1] * n_seeds)[s]
            frames.append(pd.DataFrame({"model": f"{label}-{s}", "query_id": [str(q) for q in range(n_q)],
                                        "ndcg": base[s] + delta + noise, "visual_drop": drop + noise}))
        (out / "eval" / f"main-s{s}").mkdir(parents=True)
        pd.concat(frames).to_csv(out / "eval" / f"main-s{s}" / "per_query.csv", index=False)
    grid = {"reference": "baseline", "track": "synth", "scale": "small", "seeds": list(seeds), "eval": {"n_resamples": 500}}
    (out / "manifest.json").write_text(json.dumps({"grid": grid, "entries": entries}))
    return out


def _per_query_files(out, n_seeds):
    pq = pd.concat([pd.read_csv(out / "eval" / f"main-s{s}" / "per_query.csv", dtype={"query_id": str}) for s in range(n_seeds)])
    pq[["label", "seed"]] = pq["model"].str.rsplit("-", n=1, expand=True)
    return pq


def test_report_statistics_match_plain_reference(tmp_path):
    out = _fake_experiment(tmp_path, {"better": 0.05, "same": 0.0, "worse": -0.05})
    report = build_report(out)
    table = pd.read_csv(out / "report" / "tables" / "main.csv").set_index("row")
    assert table.loc["better", "beats_baseline"] == "yes"
    assert table.loc["same", "beats_baseline"] == "no (n.s.)"
    assert table.loc["worse", "beats_baseline"] == "no (lower NDCG)"
    # every number traces to the per-query files: recompute from them with plain pandas, seeds as units
    pq = _per_query_files(out, 8)
    seed_means = pq.groupby(["label", "seed"])["ndcg"].mean().unstack(0)  # (seed, label)
    assert table.loc["better", "ndcg@10"] == pytest.approx(seed_means["better"].mean(), abs=1e-9)
    assert table.loc["better", "ndcg@10_seed_sd"] == pytest.approx(seed_means["better"].std(ddof=1), abs=1e-9)
    diff = {k: (seed_means[k] - seed_means["baseline"]).to_numpy() for k in ("better", "same", "worse")}
    raw = [stats.seed_level_test(diff[k]) for k in ("better", "same", "worse")]
    np.testing.assert_allclose(table.loc[["better", "same", "worse"], "p_holm"], stats.holm(np.array(raw)))
    assert table.loc["better", "delta_ndcg@10"] == pytest.approx(diff["better"].mean(), abs=1e-9)
    assert {p.name for p in report.figures} >= {"latency.png", "latency.pdf"}
    md = (out / "report" / "tables" / "main.md").read_text()
    tex = (out / "report" / "tables" / "main.tex").read_text()
    assert "yes" in md and "\\toprule" in tex
    sd = f"{table.loc['better', 'ndcg@10_seed_sd']:.4f}"
    assert "seed SD" in md and "seed SD" in tex and sd in md and sd in tex  # the seed SD is shown, not only stored


def test_report_one_escaping_seed_is_not_significant(tmp_path):
    """A variant that escapes in 1 of 8 seeds: averaged per query over seeds and tested over
    queries it would look highly significant; with the seed as the unit it is not."""
    drops = {"baseline": [0.0] * 8, "lucky": [0.3] + [0.0] * 7, "cured": [0.3] * 8}
    out = _fake_experiment(tmp_path, {"lucky": 0.0, "cured": 0.0}, drops=drops)
    build_report(out)
    table = pd.read_csv(out / "report" / "tables" / "main.csv").set_index("row")
    assert table.loc["lucky", "escapes"] == 1 and table.loc["cured", "escapes"] == 8 and table.loc["baseline", "escapes"] == 0
    assert table.loc["lucky", "uses_visual_more"] == "no (n.s.)" and table.loc["cured", "uses_visual_more"] == "yes"
    ci = stats.binomial_ci(1, 8)
    assert (table.loc["lucky", "escape_low"], table.loc["lucky", "escape_high"]) == pytest.approx((ci.low, ci.high))
    raw = [stats.fisher_exact(1, 8, 0, 8), stats.fisher_exact(8, 8, 0, 8)]
    np.testing.assert_allclose(table.loc[["lucky", "cured"], "p_holm_escape"], stats.holm(np.array(raw)))
    per_query = _per_query_files(out, 8)
    pooled = per_query[per_query["label"] == "lucky"].groupby("query_id")["visual_drop"].mean()
    pooled_ref = per_query[per_query["label"] == "baseline"].groupby("query_id")["visual_drop"].mean()
    assert stats.randomization_test((pooled - pooled_ref).to_numpy(), 500, 0) < 0.01  # what the old report did
    assert table.loc["lucky", "p_visual_drop"] > 0.2  # the seed-level test
    assert table.loc["lucky", "visual_drop_low"] < 0.02  # the hierarchical CI reaches the collapsed runs


def test_mlflow_logging_into_a_local_store(tmp_path):
    import mlflow

    from fusionguard.toymodels import build_fusion_model, save
    from fusionguard.training.tracking import log_run

    onnx_path = save(build_fusion_model(1.0, 8, 2, 2, n_heads=2), tmp_path / "m.onnx")
    log = tmp_path / "train_log.jsonl"
    log.write_text("\n".join(json.dumps({"epoch": e, "loss": 1.0 / (e + 1), "val_ndcg": 0.5 + e / 10, "note": "x"}) for e in range(3)))
    store = tmp_path / "mlruns"
    run_id = log_run(str(store), "unit", "r0", {"variant": "mbl", "optim": {"lr": 0.01}}, log, onnx_path, {"latency_ms": 0.3})
    client = mlflow.MlflowClient(tracking_uri=str(store))
    run = client.get_run(run_id)
    assert run.data.params == {"variant": "mbl", "optim.lr": "0.01"}
    assert [m.value for m in client.get_metric_history(run_id, "val_ndcg")] == pytest.approx([0.5, 0.6, 0.7])
    assert run.data.metrics["latency_ms"] == pytest.approx(0.3)
    # the model is an MLflow model (onnx flavor + signature) holding the exact exported file
    assert {a.path for a in client.list_artifacts(run_id, "model")} >= {"model/MLmodel", "model/model.onnx"}
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", tracking_uri=str(store)))
    assert (local / "model.onnx").read_bytes() == onnx_path.read_bytes()
    info = mlflow.models.get_model_info(str(local))
    assert {"onnx", "python_function"} <= set(info.flavors)
    signature = info.signature.to_dict()
    assert [i["name"] for i in json.loads(signature["inputs"])] == ["query", "text_tokens", "visual_tokens"]
    assert json.loads(signature["outputs"])[0]["name"] == "score"


def test_two_run_grid_end_to_end_with_mlflow(tmp_path):
    """Two trainings + two dynamo exports: about 35 s of CPU (48 s wall on the shared machine)."""
    import mlflow

    config = _write(tmp_path, TOY)
    out, store = tmp_path / "exp", tmp_path / "mlruns"
    runner = CliRunner()
    res = runner.invoke(cli, ["experiment", "run", "--config", str(config), "--out", str(out), "--no-progress",
                              "--mlflow-uri", str(store)])
    assert res.exit_code == 0, res.output
    assert "2 runs (2 trained, 0 reused)" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(e["variant"] for e in manifest["entries"]) == ["baseline", "v1"]
    for e in manifest["entries"]:
        assert (out / e["run_dir"] / "complete.json").is_file() and (out / e["run_dir"] / f"{e['model']}.onnx").is_file()
    per_query = pd.read_csv(out / "eval" / "main-s0" / "per_query.csv")
    table = pd.read_csv(out / "report" / "tables" / "main.csv").set_index("row")
    assert table.loc["baseline", "ndcg@10"] == pytest.approx(per_query["ndcg"].mean(), abs=1e-9)
    assert table.loc["v1", "modalities"] == "text only"
    # report rebuilds from stored files: delete it and regenerate without training
    for p in (out / "report").rglob("*.*"):
        p.unlink()
    res = runner.invoke(cli, ["experiment", "report", str(out)])
    assert res.exit_code == 0, res.output
    names = {p.name for p in (out / "report").rglob("*.*")}
    assert {"main.csv", "main.md", "main.tex", "attention.png", "grad_norms.pdf", "latency.png"} <= names
    # finished runs are reused
    res = runner.invoke(cli, ["experiment", "run", "--config", str(config), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0 and "(0 trained, 2 reused)" in res.output, res.output
    # MLflow: two runs with params, per-epoch metrics and the ONNX model
    client = mlflow.MlflowClient(tracking_uri=str(store))
    runs = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.data.params["optim.max_epochs"] == "2"
        assert len(client.get_metric_history(run.info.run_id, "val_ndcg")) == 2
        assert "model/model.onnx" in [a.path for a in client.list_artifacts(run.info.run_id, "model")]


def test_balancing_grid_has_a_row_for_every_registered_variant():
    from pathlib import Path

    from fusionguard.training.variants import REGISTRY

    grid = load_grid(Path(__file__).resolve().parents[2] / "training" / "configs" / "balancing.toml", "small")
    assert set(grid.variants) == set(REGISTRY)
    specs = expand(grid)
    assert {s.variant for s in specs} == set(REGISTRY)
    assert len({run_key(s, "d") for s in specs}) == len(specs)  # every row is its own run
