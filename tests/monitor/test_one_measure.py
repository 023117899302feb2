"""One measure: the gate's reference visual share and the monitor's live share are the same
numbers on the same rows (both build their Shapley passes with `fusionguard.masking`), and the
monitor refuses a profile measured with another strategy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from fusionguard import toymodels as tm
from fusionguard.cli import cli
from fusionguard.dataset import write_dataset
from fusionguard.errors import InvalidInputError
from fusionguard.profile import ReferenceProfile
from fusionguard.monitor.replay import ReplayConfig, iter_requests, replay
from fusionguard.monitor.service import ModelService, ServiceConfig
from fusionguard.monitor.telemetry import TelemetryConfig
from tests.gate.conftest import FAST_POLICY

N_QUERIES, N_CANDIDATES = 20, 7


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A gate run (zero-masked Shapley passes, the default policy's) of an honest fusion model."""
    from fusionguard.gate.runner import run_gate

    root = tmp_path_factory.mktemp("one-measure")
    batch = tm.make_toy_dataset(n_queries=N_QUERIES, n_candidates=N_CANDIDATES, seed=5)
    data = write_dataset(root / "eval.parquet", batch.query_id, batch.item_id, batch.label, batch.feeds)
    model = tm.save(tm.build_fusion_model(0.6), root / "fusion.onnx")
    v1 = tm.save(tm.build_text_model(), root / "v1.onnx")
    policy = root / "policy.toml"
    policy.write_text(FAST_POLICY)
    out = root / "report"
    result = run_gate(model, data, out, baseline=v1, policy=policy)
    assert result.measures is not None and (out / "profile.json").is_file()
    return result, out / "profile.json", model, data, root


def test_gate_share_and_monitor_share_agree_row_by_row(gated):
    result, profile_path, model, data, _ = gated
    profile = ReferenceProfile.read(profile_path)
    assert profile.shapley_strategy == result.policy.shapley.strategy == "zero"
    service = ModelService(ServiceConfig(model=model, profile=profile_path, telemetry_share=1.0, device="cpu"))
    from fusionguard.dataset import iter_batches

    live = []
    for request in iter_requests(iter_batches(data, service.state.scorer.contract)):
        scored = service.score(request.feeds, telemetry=True)
        live.append(scored.passes.values(scored.by_mask())[2])  # what the telemetry worker computes
    live_share = np.concatenate(live)  # rows in file order, the gate's order too
    np.testing.assert_allclose(live_share, result.measures.visual_share, rtol=1e-5, atol=1e-7)


def test_replayed_eval_set_reproduces_the_gate_profile(gated, tmp_path):
    # The monitor's per-request shares of the eval set are the profile's values: PSI exactly 0,
    # KS p = 1, and the share histogram sums to the gate's per-query means.
    result, profile_path, model, data, _ = gated
    out = tmp_path / "m.prom"
    config = ServiceConfig(model=model, profile=profile_path, telemetry_share=1.0, device="cpu")
    replay(ReplayConfig(data, config, out=out, telemetry=TelemetryConfig(drift_window=N_QUERIES)))
    samples = {
        (s.name, s.labels.get("feature"), s.labels.get("modality")): s.value
        for fam in text_string_to_metric_families(out.read_text())
        for s in fam.samples
    }
    assert samples[("fusionguard_drift_psi", "visual_share", None)] == pytest.approx(0.0, abs=1e-9)
    assert samples[("fusionguard_drift_pvalue", "visual_share", None)] == pytest.approx(1.0)
    gate_sum = float(np.nansum(result.measures.visual_share_per_query))
    assert samples[("fusionguard_modality_share_sum", None, "visual")] == pytest.approx(gate_sum, rel=1e-5)


def test_monitor_refuses_a_profile_of_another_strategy(gated, tmp_path):
    _, profile_path, model, data, _ = gated
    other = json.loads(profile_path.read_text())
    other["shapley_strategy"] = "permute"  # what a gate with shapley.strategy = "permute" writes
    permuted = tmp_path / "profile.json"
    permuted.write_text(json.dumps(other))
    with pytest.raises(InvalidInputError, match="Shapley strategy 'permute'"):
        ModelService(ServiceConfig(model=model, profile=permuted, device="cpu"))
    r = CliRunner().invoke(
        cli, ["monitor", "replay", "--model", str(model), "--profile", str(permuted), "--data", str(data),
              "--out", str(tmp_path / "m.prom"), "--device", "cpu"],
    )
    assert r.exit_code == 2, r.output
    assert "measured with Shapley strategy 'permute'" in r.output and "Traceback" not in r.output


def test_gate_records_the_policy_strategy(gated):
    from fusionguard.gate.runner import run_gate

    _, _, model, data, root = gated
    policy = root / "permute.toml"
    policy.write_text(FAST_POLICY + '[shapley]\nstrategy = "permute"\n')
    out = root / "report-permute"
    run_gate(model, data, out, baseline=root / "v1.onnx", policy=policy)
    assert ReferenceProfile.read(out / "profile.json").shapley_strategy == "permute"
