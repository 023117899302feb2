"""Each architecture exported end to end: contract, checker, strict shapes, ORT-vs-torch parity.

The parity here is recomputed independently of `export.verify`: a plain onnxruntime session (not
the core scorer) against torch eager on fresh validation rows at batch sizes the exporter never
saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fusionguard
from fusionguard.contract import METADATA_KEY, load_contract
from fusionguard.dataset import load_dataset

from tests.export.conftest import LT, LV, VARIANTS

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch


def _inputs(variant: str) -> tuple[str, ...]:
    return ("query", "text_tokens") if variant == "v1" else ("query", "text_tokens", "visual_tokens")


@pytest.mark.parametrize("variant", VARIANTS)
def test_contract_and_provenance(variant, exports, checkpoints):
    path = Path(exports[variant]["path"])
    contract = load_contract(path)  # also validates it against the graph
    trained = checkpoints[variant]
    assert contract.variant == variant
    assert contract.input_names == _inputs(variant)
    assert contract.score_output == "score"
    assert contract.attention_output == "attention"
    assert contract.attention_heads == 2
    expected_keys = {"text": (0, LT)} if variant == "v1" else {"text": (0, LT), "visual": (LT, LT + LV)}
    assert dict(contract.attention_keys) == expected_keys
    assert set(contract.modalities) == ({"text"} if variant == "v1" else {"text", "visual"})
    prov = contract.provenance
    assert prov["variant"] == variant
    assert prov["config_sha256"] == trained.config.sha256()
    assert prov["data_sha256"] == "0" * 64
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
    assert set(outputs) == {"score", "attention"}
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
        assert p["rows"] == 160
        assert 0 <= p["max_abs_score_diff"] <= 1e-4
        assert 0 <= p["max_abs_attention_diff"] <= 1e-4
        assert p["queries_reordered"] == 0 and p["queries"] == 20


@pytest.mark.parametrize("variant", VARIANTS)
def test_independent_parity_with_plain_onnxruntime(variant, exports, loaded, data_dir):
    """A plain ORT session vs torch eager on the validation rows, batch sizes 2, 33 and all rows."""
    ckpt = loaded[variant]
    contract = load_contract(exports[variant]["path"])
    batch = load_dataset(data_dir / "val.parquet", contract)
    session = ort.InferenceSession(exports[variant]["path"], providers=["CPUExecutionProvider"])
    for size in (2, 33, len(batch)):
        for start in range(0, len(batch), size):
            feeds = {n: batch.feeds[n][start:start + size] for n in contract.input_names}
            score, attention = session.run(["score", "attention"], feeds)
            with torch.no_grad():
                ref_score, ref_attention = ckpt.model(*(torch.tensor(feeds[n]) for n in contract.input_names))
            np.testing.assert_allclose(score, ref_score.numpy(), rtol=0, atol=1e-4)
            np.testing.assert_allclose(attention, ref_attention.numpy(), rtol=0, atol=1e-4)
            assert score.shape == (len(feeds["query"]),)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_models_are_trained(variant, checkpoints, loaded):
    """The fixtures export trained models: the weights the forward pass uses moved from their initial
    values (training-only heads get no gradient from a forward-only loss and stay put)."""
    initial = checkpoints[variant].initial_state
    state = loaded[variant].model.state_dict()
    moved = [k for k in state if state[k].is_floating_point() and not torch.equal(initial[k], state[k])]
    assert len(moved) > len([k for k in state if state[k].is_floating_point()]) // 2


def test_int8_model_and_report(exports):
    q = exports["baseline"]["quantization"]
    assert exports["v1"]["quantization"] is None and exports["progressive"]["quantization"] is None
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
    assert q["rows"] == 160 and q["queries"] > 0
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
