"""Broken graphs, tampered contracts and parity failures are rejected, and a failed export is
never left behind under the requested name."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionguard.cli import cli
from fusionguard.contract import METADATA_KEY, load_contract
from fusionguard.dataset import iter_batches
from fusionguard.errors import EXIT_BLOCKED, EXIT_INVALID

import torch  # the train extra is part of the test install: fail loudly, never skip

from fusionguard.export.errors import ExportVerificationError  # noqa: E402
from fusionguard.export.pipeline import ExportConfig  # noqa: E402
from fusionguard.recipes.exporting import export_checkpoint  # noqa: E402
from fusionguard.export.verify import _reordered_queries, verify_model  # noqa: E402

pytestmark = pytest.mark.torch


def _outcomes(report) -> dict[str, str]:
    return {c.name: c.outcome for c in report.checks}


def _detail(report, name: str) -> str:
    return next(c.detail for c in report.checks if c.name == name)


@pytest.fixture
def baseline(exports, loaded, data_dir, tmp_path):
    """A private copy of the exported baseline, its torch model, contract and validation rows."""
    path = tmp_path / "baseline.onnx"
    shutil.copy(exports["baseline"]["path"], path)
    contract = load_contract(path)
    rows = next(iter_batches(data_dir / "val.parquet", contract, batch_rows=512))
    return path, loaded["baseline"], contract, rows


def _set_metadata(path: Path, value: str) -> None:
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = value
    onnx.save(proto, str(path))


def test_untampered_copy_passes(baseline):
    path, model, contract, rows = baseline
    report = verify_model(path, model, contract, rows, batch_sizes=(7,))
    assert report.ok, report.failures()


def test_contract_naming_an_input_the_graph_lacks_is_rejected(baseline):
    path, model, contract, rows = baseline
    data = json.loads(next(p.value for p in onnx.load(str(path)).metadata_props if p.key == METADATA_KEY))
    data["inputs"][2]["name"] = "image_tokens"
    data["modalities"]["visual"] = ["image_tokens"]
    _set_metadata(path, json.dumps(data))
    report = verify_model(path, model, contract, rows, batch_sizes=(7,))
    assert not report.ok
    assert _outcomes(report)["contract"] == "failed"
    assert "image_tokens" in _detail(report, "contract")
    assert _outcomes(report)["session"] == "skipped" and _outcomes(report)["parity"] == "skipped"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda text: text[:-5], "not valid JSON"),  # truncated metadata JSON
        (lambda text: text.replace('"attention_heads": 2', '"attention_heads": 4'), "heads"),
        (lambda text: text.replace('"variant": "baseline"', '"variant": "progressive"'), "differs"),
        (lambda text: text.replace('"visual": [4, 7]', '"visual": [4, 9]'), "keys"),
    ],
    ids=["truncated-json", "wrong-heads", "edited-variant", "wrong-key-range"],
)
def test_edited_metadata_json_is_rejected(baseline, edit, expected):
    path, model, contract, rows = baseline
    text = next(p.value for p in onnx.load(str(path)).metadata_props if p.key == METADATA_KEY)
    edited = edit(text)
    assert edited != text, "the edit must change the contract"
    _set_metadata(path, edited)
    report = verify_model(path, model, contract, rows, batch_sizes=(7,))
    assert _outcomes(report)["contract"] == "failed"
    assert expected in _detail(report, "contract")


def test_broken_graph_is_rejected(baseline):
    path, model, contract, rows = baseline
    proto = onnx.load(str(path))
    proto.graph.node[len(proto.graph.node) // 2].input[0] = "no_such_tensor"
    onnx.save(proto, str(path))
    report = verify_model(path, model, contract, rows, batch_sizes=(7,))
    outcomes = _outcomes(report)
    assert outcomes["checker"] == "failed" and outcomes["shape_inference"] == "failed"
    assert outcomes["session"] == "failed"
    assert "no_such_tensor" in _detail(report, "checker")


def test_corrupt_file_is_rejected(baseline):
    path, model, contract, rows = baseline
    path.write_bytes(path.read_bytes()[:200])
    report = verify_model(path, model, contract, rows)
    assert _outcomes(report)["load"] == "failed"
    assert all(c.outcome == "skipped" for c in report.checks[1:])


def test_parity_failure_reports_measured_differences(baseline):
    path, model, contract, rows = baseline
    drifted = copy.deepcopy(model)
    with torch.no_grad():
        for p in drifted.parameters():
            p.add_(0.05 * torch.randn_like(p))
    report = verify_model(path, drifted, contract, rows, batch_sizes=(1, 50))
    assert _outcomes(report)["parity"] == "failed"
    assert [p.batch_size for p in report.parity] == [1, 50]
    for p in report.parity:
        assert not p.passed and p.max_abs_score_diff > 1e-4
    detail = _detail(report, "parity")
    assert f"{report.parity[0].max_abs_score_diff:.2e}" in detail


def test_failed_export_is_not_left_behind(checkpoints, exports, monkeypatch, tmp_path):
    """The pipeline end to end with a graph broken after export: exit 1, nothing under --out, the
    model kept only as <stem>.failed.onnx, the failed checks in the message."""
    good = onnx.load(exports["v1"]["path"])

    def broken_export(model, contract, example, opset):
        proto = copy.deepcopy(good)
        proto.graph.node[0].input[0] = "no_such_tensor"
        return proto

    monkeypatch.setattr("fusionguard.export.pipeline.to_onnx", broken_export)
    out = tmp_path / "models" / "v1.onnx"
    with pytest.raises(ExportVerificationError) as info:
        export_checkpoint(checkpoints["v1"].checkpoint, out, ExportConfig(batch_sizes=(7,)))
    assert info.value.exit_code == EXIT_BLOCKED
    assert not out.exists()
    assert info.value.kept_as == out.with_name("v1.failed.onnx") and info.value.kept_as.is_file()
    assert not list(out.parent.glob("*.partial.onnx"))
    assert "checker failed" in str(info.value) and "no_such_tensor" in str(info.value)

    run = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["v1"].checkpoint), "--out", str(out)])
    assert run.exit_code == EXIT_BLOCKED
    assert "error: the exported model" in run.stderr and not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--opset", "11"], "opset 11"),
        (["--opset", "999"], "opset 999"),
        (["--tolerance", "0"], "tolerance must be > 0"),
        (["--quantize", "int4"], "int4"),
    ],
)
def test_bad_options_exit_2_before_exporting(checkpoints, tmp_path, args, message):
    out = tmp_path / "m.onnx"
    run = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["v1"].checkpoint), "--out", str(out), *args])
    assert run.exit_code == EXIT_INVALID, run.output
    assert message in run.stderr
    assert not out.exists()


def test_missing_validation_data_exits_2(checkpoints, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints["v1"].checkpoint, ckpt)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["data_dir"] = str(tmp_path / "gone")
    (ckpt / "meta.json").write_text(json.dumps(meta))
    run = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert run.exit_code == EXIT_INVALID
    assert "val.parquet" in run.stderr and "does not exist" in run.stderr


def test_batch_one_example_is_refused(loaded, exports):
    from fusionguard.export.exporter import to_onnx
    from fusionguard.errors import InvalidInputError

    contract = load_contract(exports["v1"]["path"])
    example = {"query": np.zeros((1, 8), np.float32), "text_tokens": np.zeros((1, 4, 8), np.float32)}
    with pytest.raises(InvalidInputError, match="batch-1 example freezes"):
        to_onnx(loaded["v1"], contract, example, 18)


# ----- the ranking comparison against a plain reference -----------------------------------------

def _reordered_reference(query_id, a, b, tie):
    reordered = 0
    queries = sorted(set(query_id.tolist()))
    for q in queries:
        idx = [i for i in range(len(query_id)) if query_id[i] == q]
        if any(a[i] - a[j] > tie and b[i] <= b[j] for i in idx for j in idx):
            reordered += 1
    return len(queries), reordered


scores = st.lists(st.integers(-20, 20), min_size=2, max_size=30)


@settings(max_examples=60, deadline=None)
@given(scores, st.data())
def test_reordered_queries_matches_reference(values, data):
    n = len(values)
    query_id = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    a = np.array(values, dtype=np.float64) / 4
    b = a + np.array(data.draw(st.lists(st.sampled_from([0.0, 1e-7, -1e-7, 0.3, -0.3]), min_size=n, max_size=n)))
    assert _reordered_queries(query_id, a, b, 1e-6) == _reordered_reference(query_id, a, b, 1e-6)
    # Identical scores never count as reordered, and row order does not matter.
    assert _reordered_queries(query_id, a, a.copy(), 1e-6)[1] == 0
    perm = np.random.default_rng(n).permutation(n)
    assert _reordered_queries(query_id[perm], a[perm], b[perm], 1e-6) == _reordered_queries(query_id, a, b, 1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"opset": 17}, "opset 17"),
        ({"batch_sizes": ()}, "batch_sizes"),
        ({"batch_sizes": (0, 5)}, "batch_sizes"),
        ({"parity_rows": 1}, "parity_rows"),
        ({"tie_tolerance": 1e-3}, "tie_tolerance"),
        ({"example_rows": 1}, "example_rows"),
        ({"threads": 0}, "threads"),
        ({"quantize": "fp16"}, "fp16"),
    ],
)
def test_config_problems(changes, message):
    problems = ExportConfig(**changes).problems()
    assert len(problems) == 1 and message in problems[0]
    assert ExportConfig().problems() == []


def test_exporter_failure_exits_3_with_the_root_cause(checkpoints, monkeypatch, tmp_path):
    """torch.onnx.export raising (here stubbed, the real failure takes seconds) becomes exit 3,
    naming the root cause, and leaves no file behind."""

    def failing_export(*args, **kwargs):
        try:
            raise ValueError("Could not guard on data-dependent expression u0")
        except ValueError as cause:
            raise torch.onnx.OnnxExporterError("\x1b[96mFailed to export the model with torch.export\x1b[0m") from cause

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    out = tmp_path / "v1.onnx"
    run = CliRunner().invoke(cli, ["export", "--checkpoint", str(checkpoints["v1"].checkpoint), "--out", str(out)])
    assert run.exit_code == 3, run.output
    assert "ValueError: Could not guard on data-dependent expression u0" in run.stderr
    assert "\x1b" not in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_human_readable_output(exports):
    """The CLI's table names every check and batch size (rendered from the stored result)."""
    from fusionguard.export.pipeline import ExportResult
    from fusionguard.export.verify import BatchParity, Check, VerificationReport

    v = exports["progressive"]["verification"]
    report = VerificationReport(
        tuple(Check(**c) for c in v["checks"]), tuple(BatchParity(**p) for p in v["parity"]), v["tolerance"]
    )
    text = str(ExportResult(Path(exports["progressive"]["path"]), "progressive", report))
    for name in ("checker", "shape_inference", "dynamic_batch", "contract", "session", "parity"):
        assert f"  {name}" in text
    for size in (1, 7, 50, 128):
        assert any(line.split()[:1] == [str(size)] for line in text.splitlines())
