"""`fusionguard train --mlflow-uri`: a training run logged to MLflow (a local store under tmp_path)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fusionguard.cli import cli

mlflow = pytest.importorskip("mlflow")

TINY = """
variant = "baseline"
[model]
d_model = 16
n_heads = 4
depth = 2
[optim]
max_epochs = 2
patience = 2
batch_queries = 4
lr = 0.01
"""


def test_train_logs_params_epochs_test_metrics_and_checkpoint(tmp_path, tiny_bench):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    store, out = tmp_path / "mlruns", tmp_path / "run"
    result = CliRunner(env={"MLFLOW_TRACKING_URI": str(store)}).invoke(
        cli, ["train", "--data", str(tiny_bench), "--out", str(out), "--config", str(config), "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "logged to MLflow" in result.output
    client = mlflow.MlflowClient(tracking_uri=str(store))
    [run] = client.search_runs([client.get_experiment_by_name("fusionguard-train").experiment_id])
    assert run.data.params["variant"] == "baseline" and run.data.params["optim.max_epochs"] == "2"
    assert run.data.tags["fusionguard.variant"] == "baseline"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    history = client.get_metric_history(run.info.run_id, "val_ndcg")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([e["val_ndcg"] for e in log])
    test = json.loads((out / "result.json").read_text())["test"]
    assert run.data.metrics["test.ndcg"] == pytest.approx(test["ndcg"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")} >= {"checkpoint/model.pt", "checkpoint/meta.json"}


def test_train_without_the_tracking_server_option_logs_nothing(tmp_path, tiny_bench, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.replace("max_epochs = 2", "max_epochs = 1"))
    result = CliRunner().invoke(cli, ["train", "--data", str(tiny_bench), "--out", str(tmp_path / "run"), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "MLflow" not in result.output
    assert not (tmp_path / "mlruns").exists()
