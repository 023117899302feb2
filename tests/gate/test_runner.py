"""The gate end to end on toy ONNX models whose behaviour is known by construction."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from fusionguard import toymodels as tm
from fusionguard.errors import InvalidInputError
from fusionguard.profile import ReferenceProfile
from fusionguard.registry import file_sha256
from fusionguard.gate.checks import CheckResult
from fusionguard.gate.policy import load_policy, with_overrides
from fusionguard.gate.result import exit_code as _exit_code
from fusionguard.gate.runner import run_gate


def _outcomes(result):
    return {c.name: c.outcome for c in result.checks}


@pytest.fixture(scope="module")
def fusion_run(toys, tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion-report")
    return run_gate(toys.fusion, toys.data, out, baseline=toys.v1, policy=toys.policy), out


def test_honest_fusion_model_passes(fusion_run, toys):
    result, out = fusion_run
    assert result.exit_code == 0 and result.outcome == "passed"
    assert set(_outcomes(result).values()) == {"passed"}
    report = json.loads((out / "report.json").read_text())
    assert report["outcome"] == "passed" and report["exit_code"] == 0
    assert report["candidate"]["sha256"] == file_sha256(toys.fusion)
    assert report["baseline"]["sha256"] == file_sha256(toys.v1)
    assert len(report["data"]["sha256"]) == 64
    assert report["policy"]["bootstrap"]["n_resamples"] == 500
    assert report["seeds"]["ablation_permutations"] == [0, 1, 2]
    assert "onnxruntime" in report["versions"] and "numpy" in report["versions"]
    quality = next(c for c in report["checks"] if c["name"] == "quality")["numbers"]
    assert 0 < quality["p_value"] <= 1 and quality["difference"]["low"] > 0
    for name in ("report.md", "junit.xml", "ndcg_difference.png", "contributions.png", "profile.json"):
        assert (out / name).stat().st_size > 0
    profile = ReferenceProfile.read(out / "profile.json")
    assert profile.model_sha256 == report["candidate"]["sha256"]
    assert set(profile.features) == {"query", "text_tokens", "visual_tokens"}
    assert profile.attention_mass is not None and 0.3 < profile.visual_share.mean < 0.7


def test_visual_blind_model_is_blocked_by_visual_ablation(toys, tmp_path):
    result = run_gate(toys.blind, toys.data, tmp_path, baseline=toys.v1, policy=toys.policy)
    assert result.exit_code == 1 and result.outcome == "blocked"
    ablation = next(c for c in result.checks if c.name == "visual_ablation")
    assert ablation.outcome == "failed"
    assert ablation.numbers["visual_drop"].high < 0.10
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    failed = {case.get("name") for case in junit.iter("testcase") if case.find("failure") is not None}
    assert "visual_ablation" in failed
    assert "BLOCKED" in (tmp_path / "report.md").read_text()


def test_monotone_of_v1_model_is_blocked_by_integrity(toys, tmp_path):
    result = run_gate(toys.monotone, toys.data, tmp_path, baseline=toys.v1, policy=toys.policy)
    assert result.exit_code == 1
    integrity = next(c for c in result.checks if c.name == "integrity")
    assert integrity.outcome == "failed"
    assert integrity.numbers["spearman_mean"].estimate == pytest.approx(1.0)
    # its attention looks healthy: only the integrity check (and ablation) can catch it
    assert _outcomes(result)["attention"] == "passed"


def test_report_is_deterministic_except_the_timestamp(fusion_run, toys, tmp_path):
    _, first = fusion_run
    run_gate(toys.fusion, toys.data, tmp_path, baseline=toys.v1, policy=toys.policy)
    a = json.loads((first / "report.json").read_text())
    b = json.loads((tmp_path / "report.json").read_text())
    a.pop("created_at"), b.pop("created_at")
    assert a == b
    assert (first / "profile.json").read_text() == (tmp_path / "profile.json").read_text()


def test_missing_baseline_is_an_explicit_policy_decision(toys, tmp_path):
    (tmp_path / "report.json").write_text('{"outcome": "passed", "exit_code": 0}')  # left by an earlier run
    with pytest.raises(InvalidInputError, match="baseline.required"):
        run_gate(toys.fusion, toys.data, tmp_path, policy=toys.policy)
    assert not (tmp_path / "report.json").exists()  # a stale passing report is never left behind
    policy = with_overrides(load_policy(toys.policy), baseline={"required": False})
    result = run_gate(toys.fusion, toys.data, tmp_path, policy=policy)
    assert result.exit_code == 0
    skipped = {c.name: c for c in result.checks if c.outcome == "skipped"}
    assert set(skipped) == {"integrity", "quality"}
    assert "baseline.required = false" in skipped["integrity"].reasons[0]
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    assert sum(case.find("skipped") is not None for case in junit.iter("testcase")) == 2
    assert not (tmp_path / "ndcg_difference.png").exists()


def test_attention_thresholds_are_optional_and_enforced(toys, tmp_path):
    policy = with_overrides(load_policy(toys.policy), attention={"min_entropy": 0.99})
    result = run_gate(toys.fusion, toys.data, None, baseline=toys.v1, policy=policy)
    attention = next(c for c in result.checks if c.name == "attention")
    assert attention.outcome == "failed" and result.exit_code == 1
    assert any("head" in r for r in attention.reasons)


@pytest.mark.parametrize(
    ("codes", "expected"),
    [((0, 0), 0), ((0, 1), 1), ((3, 1), 1), ((3, 0), 3), ((2, 1, 3), 2), ((), 0)],
)
def test_exit_code_precedence(codes, expected):
    results = [CheckResult(f"c{i}", "x", "", exit_code=c) for i, c in enumerate(codes)]
    assert _exit_code(results) == expected


def _nan_model():
    """A fusion-shaped model whose score is NaN for every row: log(0 * sum(query) - 1)."""
    import onnx
    from onnx import TensorProto, helper

    from fusionguard.contract import ModelContract, TensorSpec, write_contract

    dim, lt, lv = tm.DIM, tm.N_TEXT, tm.N_VISUAL
    nodes = [
        helper.make_node("ReduceSum", ["query", "axes"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Sub", ["z", "one"], ["neg"]),
        helper.make_node("Log", ["neg"], ["score"]),
    ]
    inits = [
        onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        onnx.numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        onnx.numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    inputs = [
        helper.make_tensor_value_info("query", TensorProto.FLOAT, ["N", dim]),
        helper.make_tensor_value_info("text_tokens", TensorProto.FLOAT, ["N", lt, dim]),
        helper.make_tensor_value_info("visual_tokens", TensorProto.FLOAT, ["N", lv, dim]),
    ]
    graph = helper.make_graph(nodes, "nan", inputs, [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    contract = ModelContract(
        inputs=(TensorSpec("query", "float32", (dim,)), TensorSpec("text_tokens", "float32", (lt, dim)),
                TensorSpec("visual_tokens", "float32", (lv, dim))),
        modalities={"text": ("query", "text_tokens"), "visual": ("visual_tokens",)},
    )
    return write_contract(model, contract)


def test_a_model_that_cannot_be_evaluated_exits_3(toys, tmp_path):
    model = tm.save(_nan_model(), tmp_path / "nan.onnx")
    result = run_gate(model, toys.data, tmp_path / "out", baseline=toys.v1, policy=toys.policy)
    assert result.exit_code == 3 and result.outcome == "unevaluated"
    assert {c.name for c in result.checks if c.outcome == "error"} == {"visual_ablation", "integrity", "quality", "attention"}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["exit_code"] == 3 and "NaN" in report["checks"][2]["reasons"][0]


@pytest.mark.parametrize(("model", "strategy", "exit_code"), [("fusion", "mean", 0), ("blind", "zero", 1)])
def test_other_masking_strategies(toys, model, strategy, exit_code):
    policy = with_overrides(load_policy(toys.policy), ablation={"strategy": strategy}, shapley={"strategy": strategy})
    result = run_gate(getattr(toys, model), toys.data, None, baseline=toys.v1, policy=policy)
    assert result.exit_code == exit_code
    assert result.measures is not None and result.measures.n_passes == 4  # full, -visual, -text, -both


def test_shared_intervals_equal_the_ones_each_check_computes_alone(fusion_run):
    from fusionguard.gate import checks

    result, _ = fusion_run
    m, groups, policy = result.measures, result.groups, result.policy
    base_ndcg = result.baseline_ndcg
    # The baseline's scores are not kept; any (N,) vector exercises the same code path.
    base_scores = m.scores[::-1].copy()
    cis = checks.shared_intervals(m, groups, policy, base_scores, base_ndcg)
    assert set(cis) == {
        "visual_drop", "text_drop", "visual_share", "spearman_mean", "ndcg_candidate", "ndcg_baseline",
        "difference", "visual_mass", "entropy", "pearson",
    }
    pairs = [
        (checks.visual_ablation_check(m, policy, cis), checks.visual_ablation_check(m, policy)),
        (checks.integrity_check(m, base_scores, groups, policy, cis), checks.integrity_check(m, base_scores, groups, policy)),
        (checks.quality_check(m, base_ndcg, policy, cis), checks.quality_check(m, base_ndcg, policy)),
        (checks.attention_check(m, groups, policy, True, cis), checks.attention_check(m, groups, policy, True)),
    ]
    for shared, alone in pairs:
        _assert_same_numbers(shared.to_dict(), alone.to_dict())


def _assert_same_numbers(got, want, where="check"):
    """Equal structure, equal strings and outcomes; floats equal to relative 1e-12. The shared CIs
    use the same resamples as a check's own, but their means are summed by BLAS over a matrix of
    another shape (several vectors at once), so the last bits may differ: rounding, not a looser
    statistical tolerance."""
    assert type(got) is type(want), where
    if isinstance(got, dict):
        assert got.keys() == want.keys(), where
        for key in got:
            _assert_same_numbers(got[key], want[key], f"{where}.{key}")
    elif isinstance(got, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same_numbers(g, w, f"{where}[{i}]")
    elif isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-300, nan_ok=True), where
    else:
        assert got == want, where


def test_shared_intervals_leave_an_unevaluable_vector_to_its_check(fusion_run):
    from dataclasses import replace

    from fusionguard.gate import checks

    result, _ = fusion_run
    m = replace(result.measures, text_drop=np.full_like(result.measures.text_drop, np.nan))
    assert checks.shared_intervals(m, result.groups, result.policy) == {}


def test_data_is_validated_once_per_gate(toys, tmp_path, monkeypatch):
    import fusionguard.gate.runner as runner

    calls = []
    real = runner.validate_dataset

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "validate_dataset", counting)
    result = run_gate(toys.fusion, toys.data, None, baseline=toys.v1, policy=toys.policy)
    assert result.exit_code == 0
    assert len(calls) == 1  # one Great Expectations run covers both models' contracts


def _nan_data(tmp_path):
    batch = tm.make_toy_dataset(n_queries=6, n_candidates=5, seed=1)
    feeds = dict(batch.feeds)
    feeds["visual_tokens"] = feeds["visual_tokens"].copy()
    feeds["visual_tokens"][2, 0, 0] = np.nan
    from fusionguard.dataset import write_dataset

    return write_dataset(tmp_path / "nan.parquet", batch.query_id, batch.item_id, batch.label, feeds)


def test_invalid_data_is_never_scored_and_the_data_check_decides(toys, tmp_path, monkeypatch):
    """Fail-closed: when the data check fails, the models never score the data (a scorer that
    would crash is not reached) and the gate says exactly what the data check says (exit 2)."""
    import fusionguard.gate.runner as runner

    def crash(*args, **kwargs):
        raise RuntimeError("scoring crashed on unvalidated data")

    monkeypatch.setattr(runner, "stream_measures", crash)
    result = run_gate(toys.fusion, _nan_data(tmp_path), tmp_path / "out", baseline=toys.v1, policy=toys.policy)
    assert result.exit_code == 2 and result.outcome == "invalid"
    assert _outcomes(result)["data"] == "error" and "visual_tokens" in result.message
    assert all(c.outcome == "skipped" and "data check did not pass" in c.summary for c in result.checks[2:])
    assert result.measures is None and result.groups is None
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["exit_code"] == 2 and "n_excluded_queries" not in report["data"]


def test_a_scoring_bug_on_valid_data_is_not_swallowed(toys, monkeypatch):
    import fusionguard.gate.runner as runner

    def crash(*args, **kwargs):
        raise RuntimeError("a bug, not bad data")

    monkeypatch.setattr(runner, "stream_measures", crash)
    with pytest.raises(RuntimeError, match="a bug"):
        run_gate(toys.fusion, toys.data, None, baseline=toys.v1, policy=toys.policy)

