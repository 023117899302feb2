"""The gate, promote, registry and eval commands through the root CLI: exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from fusionguard import toymodels as tm
from fusionguard.cli import cli
from fusionguard.dataset import write_dataset
from fusionguard.registry import Registry


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def gate_args(toys, out, candidate=None, data=None, policy=None):
    return [
        "gate", "--candidate", candidate or toys.fusion, "--baseline", toys.v1,
        "--data", data or toys.data, "--policy", policy or toys.policy, "--out", out,
    ]


def _bad_data(toys, tmp_path, kind):
    batch = tm.make_toy_dataset(n_queries=1 if kind == "one_query" else 6, n_candidates=5, seed=1)
    feeds = dict(batch.feeds)
    if kind == "missing_input":
        del feeds["visual_tokens"]
    if kind == "nan":
        feeds["visual_tokens"] = feeds["visual_tokens"].copy()
        feeds["visual_tokens"][2, 0, 0] = np.nan
    return write_dataset(tmp_path / f"{kind}.parquet", batch.query_id, batch.item_id, batch.label, feeds)


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("corrupt_onnx", "not a readable ONNX model"),
        ("not_onnx", "not a readable ONNX model"),
        ("missing_input", "visual_tokens"),
        ("nan", "visual_tokens"),
        ("one_query", "1 evaluable query"),
        ("policy_typo", "did you mean 'max_correlation'"),
    ],
)
def test_bad_inputs_exit_2_with_a_clear_message(toys, tmp_path, kind, needle):
    candidate, data, policy = None, None, None
    if kind == "corrupt_onnx":
        candidate = tmp_path / "corrupt.onnx"
        candidate.write_bytes(toys.fusion.read_bytes()[: 200] + b"\x00garbage")
    elif kind == "not_onnx":
        candidate = tmp_path / "model.onnx"
        candidate.write_text("this is a README, not a model\n")
    elif kind in ("missing_input", "nan", "one_query"):
        data = _bad_data(toys, tmp_path, kind)
    else:
        policy = tmp_path / "typo.toml"
        policy.write_text("[data]\nmin_queries = 2\n[integrity]\nmax_corelation = 0.9\n")
    result = invoke(*gate_args(toys, tmp_path / "out", candidate, data, policy))
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert result.output.count("error:") >= 1
    if kind != "policy_typo":  # a report tells CI what was wrong; a bad policy stops before any work
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["outcome"] == "invalid" and report["exit_code"] == 2
        assert not (tmp_path / "out" / "profile.json").exists()


def test_gate_then_promote_then_rollback(toys, tmp_path):
    ok, blocked, reg = tmp_path / "ok", tmp_path / "blocked", tmp_path / "registry"
    assert invoke(*gate_args(toys, ok)).exit_code == 0
    result = invoke(*gate_args(toys, blocked, candidate=toys.blind))
    assert result.exit_code == 1 and "blocked: visual_ablation" in result.output

    refused = invoke("promote", "--report", blocked, "--registry", reg)
    assert refused.exit_code == 1 and "refusing to promote" in refused.output
    assert Registry(reg).current() is None

    assert invoke("promote", "--report", ok, "--registry", reg).exit_code == 0
    assert invoke("promote", "--report", ok, "--registry", reg).exit_code == 0
    listing = invoke("registry", "list", "--registry", reg)
    assert listing.exit_code == 0 and "* v0002" in listing.output
    shown = json.loads(invoke("registry", "show", "--registry", reg, "v0001").output)
    assert shown["version"] == "v0001" and not shown["is_current"]
    assert invoke("registry", "rollback", "--registry", reg).exit_code == 0
    assert Registry(reg).current().version == "v0001"
    missing = invoke("registry", "rollback", "--registry", reg, "--to", "v0042")
    assert missing.exit_code == 2 and "no version 'v0042'" in missing.output


def test_promote_refuses_a_model_changed_after_the_gate(toys, tmp_path):
    model = tmp_path / "cand.onnx"
    model.write_bytes(toys.fusion.read_bytes())
    assert invoke(*gate_args(toys, tmp_path / "r", candidate=model)).exit_code == 0
    tm.save(tm.build_fusion_model(0.9), model)
    result = invoke("promote", "--report", tmp_path / "r", "--registry", tmp_path / "reg")
    assert result.exit_code == 1 and "sha256" in result.output
    assert Registry(tmp_path / "reg").versions() == []


def test_eval_writes_table_and_per_query_file(toys, tmp_path):
    out = tmp_path / "eval"
    result = invoke(
        "eval", "--models", toys.fusion, toys.blind, toys.monotone, "--baseline", toys.v1,
        "--data", toys.data, "--policy", toys.policy, "--out", out,
    )
    assert result.exit_code == 0, result.output
    import pandas as pd

    table = pd.read_csv(out / "table.csv")
    per_query = pd.read_csv(out / "per_query.csv")
    assert list(table["model"]) == ["fusion", "blind", "monotone"]
    # every number traces to the per-query file
    means = per_query.groupby("model", sort=False)["ndcg"].mean()
    np.testing.assert_allclose(table.set_index("model")["ndcg@10"], means[table["model"]].to_numpy(), rtol=1e-12)
    assert np.isnan(table["p_value"][0]) and (table["p_holm"][1:] >= table["p_value"][1:]).all()
    tex = (out / "table.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "| fusion |" in (out / "table.md").read_text()


def test_gate_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from fusionguard.cli import cli\n"
        "try:\n"
        "    cli.main(['gate', '--help'], prog_name='fusionguard')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('fusionguard.gate.cli' in sys.modules, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Example: fusionguard gate" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "True False"
