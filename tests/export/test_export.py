"""Each architecture exported end to end: contract, checker, strict shapes, ORT-vs-torch parity.

The parity here is recomputed independently of `fusionguard.export.verify`: a plain onnxruntime session (not
the core scorer) against torch eager on fresh validation rows at batch sizes the exporter never
saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fusionguard
from fusionguard.contract import METADATA_KEY, load_contract
from fusionguard.dataset import load_dataset

from tests.export.conftest import LT, LV, N_CANDIDATES, N_VAL_QUERIES, VARIANTS

import torch  # the train extra is part of the test install: fail loudly, never skip

pytestmark = pytest.mark.torch


def _inputs(variant: str) -> tuple[str, ...]:
    return ("query", "text_tokens") if variant == "v1" else ("query", "text_tokens", "visual_tokens")


def _meta(variant: str, checkpoints, late_fusion) -> dict:
    if variant == "late-fusion":
        return late_fusion[1]
    return json.loads((checkpoints[variant].checkpoint / "meta.json").read_text())


@pytest.mark.parametrize("variant", VARIANTS)
def test_contract_and_provenance(variant, exports, checkpoints, late_fusion):
    path = Path(exports[variant]["path"])
    contract = load_contract(path)  # also validates it against the graph
    meta = _meta(variant, checkpoints, late_fusion)
    assert contract.variant == variant
    assert contract.input_names == _inputs(variant)
    assert contract.score_output == "score"
    if variant == "late-fusion":  # no attention: score only
        assert contract.attention_output is None and contract.attention_heads is None
        assert dict(contract.attention_keys) == {}
    else:
        assert contract.attention_output == "attention"
        assert contract.attention_heads == 2
        expected_keys = {"text": (0, LT)} if variant == "v1" else {"text": (0, LT), "visual": (LT, LT + LV)}
        assert dict(contract.attention_keys) == expected_keys
    assert set(contract.modalities) == ({"text"} if variant == "v1" else {"text", "visual"})
    prov = contract.provenance
    assert prov["variant"] == variant
    assert len(meta["config_sha256"]) == 64 and prov["config_sha256"] == meta["config_sha256"]
    assert len(meta["data_sha256"]) == 64 and prov["data_sha256"] == meta["data_sha256"]
    if variant != "late-fusion":
        assert prov["config_sha256"] == checkpoints[variant].config.sha256()
    assert prov["fusionguard_version"] == fusionguard.__version__
    assert prov["torch_version"] == torch.__version__
    assert prov["opset"] == "18"
    assert prov["exporter"].startswith("torch.onnx.export")
    proto = onnx.load(str(path))
    assert [p.key for p in proto.metadata_props].count(METADATA_KEY) == 1
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]


@pytest.mark.parametrize("variant", VARIANTS)
def test_checker_and_strict_shape_inference(variant, exports):
    path = Path(exports[variant]["path"])
    assert not list(path.parent.glob(f".{path.stem}.*.partial.onnx")), "temporary file left behind"
    proto = onnx.load(str(path))
    # Self-contained: no external data references.
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    outputs = {o.name: o.type.tensor_type.shape.dim for o in inferred.graph.output}
    assert set(outputs) == ({"score"} if variant == "late-fusion" else {"score", "attention"})
    for vi in [*inferred.graph.input, *inferred.graph.output]:
        dim0 = vi.type.tensor_type.shape.dim[0]
        assert dim0.HasField("dim_param") and not dim0.HasField("dim_value"), f"{vi.name}: batch axis frozen"
    checks = {c["name"]: c["outcome"] for c in exports[variant]["verification"]["checks"]}
    assert checks == dict.fromkeys(
        ("load", "checker", "shape_inference", "dynamic_batch", "contract", "session", "parity"), "passed"
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_reported_per_batch_size(variant, exports):
    parity = exports[variant]["verification"]["parity"]
    assert [p["batch_size"] for p in parity] == [1, 7, 50, 128]
    for p in parity:
        assert p["rows"] == N_VAL_QUERIES * N_CANDIDATES
        assert 0 <= p["max_abs_score_diff"] <= 1e-4
        if variant == "late-fusion":
            assert p["max_abs_attention_diff"] is None
        else:
            assert 0 <= p["max_abs_attention_diff"] <= 1e-4
        assert p["queries_reordered"] == 0 and p["queries"] == N_VAL_QUERIES


@pytest.mark.parametrize("variant", VARIANTS)
def test_independent_parity_with_plain_onnxruntime(variant, exports, loaded, data_dir):
    """A plain ORT session vs torch eager on the validation rows, batch sizes 2, 33 and all rows."""
    model = loaded[variant]
    contract = load_contract(exports[variant]["path"])
    batch = load_dataset(data_dir / "val.parquet", contract)
    session = ort.InferenceSession(exports[variant]["path"], providers=["CPUExecutionProvider"])
    for size in (2, 33, len(batch)):
        for start in range(0, len(batch), size):
            feeds = {n: batch.feeds[n][start:start + size] for n in contract.input_names}
            got = session.run(None, feeds)
            with torch.no_grad():
                ref_score, ref_attention = model(*(torch.tensor(feeds[n]) for n in contract.input_names))
            score = got[0]
            np.testing.assert_allclose(score, ref_score.numpy(), rtol=0, atol=1e-4)
            if ref_attention is None:
                assert len(got) == 1
            else:
                np.testing.assert_allclose(got[1], ref_attention.numpy(), rtol=0, atol=1e-4)
            assert score.shape == (len(feeds["query"]),)


def test_exported_models_are_trained(checkpoints, late_fusion):
    """The fixtures export models the real training loops trained (two epochs each)."""
    assert all(t.epochs_run >= 1 for t in checkpoints.values())
    assert late_fusion[1]["val_ndcg"] > 0


def test_int8_model_and_report(exports):
    q = exports["baseline"]["quantization"]
    assert all(exports[v]["quantization"] is None for v in VARIANTS if v != "baseline")
    path = Path(q["path"])
    assert path.name == "baseline.int8.onnx" and path.is_file()
    contract = load_contract(path)
    float_contract = load_contract(exports["baseline"]["path"])
    assert contract.input_names == float_contract.input_names
    assert contract.provenance["quantization"].startswith("onnxruntime.quantization.quantize_dynamic")
    assert {k: v for k, v in contract.provenance.items() if k != "quantization"} == dict(float_contract.provenance)
    proto = onnx.load(str(path))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in proto.graph.node)
    onnx.checker.check_model(proto, full_check=True)
    assert q["rows"] == N_VAL_QUERIES * N_CANDIDATES and q["queries"] > 0
    assert -1 <= q["pearson"] <= 1 and -1 <= q["spearman"] <= 1
    assert q["ndcg10_diff"] == pytest.approx(q["ndcg10_int8"] - q["ndcg10_float"], abs=1e-12)
    assert q["int8_bytes"] < q["float_bytes"]


def test_int8_numbers_match_a_plain_recomputation(exports, data_dir):
    """Pearson of the float and int8 scores, recomputed with numpy on plain ORT runs, one per query."""
    q = exports["baseline"]["quantization"]
    contract = load_contract(exports["baseline"]["path"])
    batch = load_dataset(data_dir / "val.parquet", contract)
    feeds = {n: batch.feeds[n] for n in contract.input_names}
    float_session = ort.InferenceSession(exports["baseline"]["path"], providers=["CPUExecutionProvider"])
    int8_session = ort.InferenceSession(q["path"], providers=["CPUExecutionProvider"])
    a, b = np.zeros(len(batch)), np.zeros(len(batch))
    for qid in np.unique(batch.query_id):
        rows = np.flatnonzero(batch.query_id == qid)
        a[rows] = float_session.run(["score"], {n: v[rows] for n, v in feeds.items()})[0]
        b[rows] = int8_session.run(["score"], {n: v[rows] for n, v in feeds.items()})[0]
    whole = int8_session.run(["score"], feeds)[0]
    assert q["pearson"] == pytest.approx(float(np.corrcoef(a.astype(np.float64), b)[0, 1]), abs=1e-6)
    assert q["max_abs_score_diff"] == pytest.approx(float(np.max(np.abs(a - b))), abs=1e-6)
    assert q["batch_sensitivity"] == pytest.approx(float(np.max(np.abs(whole - b))), abs=1e-6)
