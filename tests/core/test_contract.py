"""fusionguard.contract: JSON and metadata_props round trips, sidecars, graph checks, fuzzed loading."""

from __future__ import annotations

import copy
import json

import onnx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fusionguard.contract import (
    METADATA_KEY,
    ModelContract,
    TensorSpec,
    contract_from_graph,
    embedded_contract,
    graph_problems,
    load_contract,
    validate_contract,
    write_contract,
)
from fusionguard.errors import ContractError, InvalidInputError

from .conftest import HEADS, LT, LV, D, In, matching_inputs

# ----- lookups and JSON ------------------------------------------------------------------------


def test_lookups(tiny_contract):
    assert tiny_contract.input_names == ("query", "text_tokens", "visual_tokens")
    assert tiny_contract.input("text_tokens").size == LT * D
    assert TensorSpec("s", "float32", ()).size == 1
    assert tiny_contract.modality_of("visual_tokens") == "visual"
    assert tiny_contract.has_modality("text") and not ModelContract(
        inputs=tiny_contract.inputs[:1], modalities={"text": ("query",)}).has_modality("visual")
    assert tiny_contract.n_keys == LT + LV
    with pytest.raises(KeyError):
        tiny_contract.input("pixels")
    with pytest.raises(KeyError):
        tiny_contract.modality_of("pixels")


def test_json_round_trip(tiny_contract):
    text = tiny_contract.to_json()
    assert json.loads(text)["inputs"][1] == {"name": "text_tokens", "dtype": "float32", "shape": [LT, D]}
    assert ModelContract.from_json(text) == tiny_contract
    with_provenance = ModelContract.from_dict({**tiny_contract.to_dict(), "provenance": {"data_sha256": "ab"}})
    assert ModelContract.from_json(with_provenance.to_json()) == with_provenance


# ----- ONNX metadata_props and sidecars ------------------------------------------------------


def test_metadata_props_round_trip(tmp_path, tiny_model, tiny_contract):
    tiny_model.metadata_props.add(key="author", value="test")
    write_contract(tiny_model, tiny_contract)
    write_contract(tiny_model, tiny_contract)  # replaces, never duplicates
    onnx.save(tiny_model, tmp_path / "m.onnx")
    loaded = onnx.load(str(tmp_path / "m.onnx"))
    keys = [p.key for p in loaded.metadata_props]
    assert keys.count(METADATA_KEY) == 1 and "author" in keys
    assert embedded_contract(tmp_path / "m.onnx") == tiny_contract
    assert load_contract(tmp_path / "m.onnx") == tiny_contract
    assert load_contract(loaded) == tiny_contract


def test_write_contract_refuses_a_contract_that_disagrees(tiny_model, tiny_contract):
    wrong = ModelContract.from_dict({**tiny_contract.to_dict(), "score_output": "logits"})
    with pytest.raises(ContractError, match="score output 'logits' is not a graph output"):
        write_contract(tiny_model, wrong)
    assert embedded_contract(tiny_model) is None


def test_sidecar(tmp_path, tiny_model, tiny_model_path, tiny_contract):
    onnx.save(tiny_model, tmp_path / "bare.onnx")
    assert embedded_contract(tmp_path / "bare.onnx") is None
    with pytest.raises(ContractError, match="no 'fusionguard.contract' entry in metadata_props"):
        load_contract(tmp_path / "bare.onnx")
    sidecar = tmp_path / "c.json"
    other = ModelContract.from_dict({**tiny_contract.to_dict(), "variant": "from-sidecar"})
    sidecar.write_text(other.to_json())
    assert load_contract(tmp_path / "bare.onnx", sidecar) == other
    assert load_contract(tiny_model_path, sidecar).variant == "from-sidecar"  # the sidecar wins
    with pytest.raises(InvalidInputError, match="sidecar .* does not exist"):
        load_contract(tiny_model_path, tmp_path / "missing.json")
    sidecar.write_text('{"inputs": [')
    with pytest.raises(ContractError, match="not valid JSON"):
        load_contract(tiny_model_path, sidecar)


def test_unreadable_models(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_contract(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidInputError, match="ONNX model"):
        load_contract(tmp_path / "bad.onnx")


# ----- graph_problems ------------------------------------------------------------------------

def _inputs(**replace):
    """The tiny contract's graph inputs with some replaced (None drops one)."""
    base = {"query": In("query", "float32", ("N", D)), "text_tokens": In("text_tokens", "float32", ("N", LT, D)),
            "visual_tokens": In("visual_tokens", "float32", ("N", LV, D))}
    base.update(replace)
    return [i for i in base.values() if i is not None]


K = LT + LV
GRAPH_CASES = [
    ("missing-input", dict(inputs=_inputs(visual_tokens=None)),
     "input 'visual_tokens' is in the contract but not in the graph"),
    ("wrong-dtype", dict(inputs=_inputs(visual_tokens=In("visual_tokens", "int64", ("N", LV, D)))),
     "input 'visual_tokens': contract says dtype float32, graph says int64"),
    ("wrong-rank", dict(inputs=_inputs(text_tokens=In("text_tokens", "float32", ("N", LT * D)))),
     "input 'text_tokens': graph rank is 2 but the contract implies 3"),
    ("wrong-static-dim", dict(inputs=_inputs(visual_tokens=In("visual_tokens", "float32", ("N", LV + 1, D)))),
     f"input 'visual_tokens' axis 1: graph has {LV + 1}, contract says {LV}"),
    ("undeclared-input", dict(inputs=_inputs(mask=In("mask", "float32", ("N", 1)))),
     "graph inputs ['mask'] are not in the contract"),
    ("missing-score", dict(score="logits"), "score output 'score' is not a graph output"),
    ("score-shape", dict(score_dims=("N", 2)), "score output 'score' must have shape (N,) or (N, 1)"),
    ("missing-attention", dict(attention=None), "attention output 'attention' is not a graph output"),
    ("attention-rank", dict(attention_dims=("N", K)), "must have rank 3 (N, H, K)"),
    ("attention-heads", dict(attention_dims=("N", HEADS + 1, K)),
     f"attention output has {HEADS + 1} heads, the contract says {HEADS}"),
    ("attention-keys", dict(attention_dims=("N", HEADS, K + 1)),
     f"attention output has {K + 1} keys, the contract's attention_keys cover {K}"),
]


@pytest.mark.parametrize("changes, fragment", [c[1:] for c in GRAPH_CASES], ids=[c[0] for c in GRAPH_CASES])
def test_each_graph_problem(build_model, tiny_contract, changes, fragment):
    kwargs = {"inputs": _inputs(), "attention": "attention", **changes}
    model = build_model(**kwargs)
    problems = graph_problems(model, tiny_contract)
    assert len(problems) == 1, problems
    assert fragment in problems[0]
    with pytest.raises(ContractError) as err:
        validate_contract(model, tiny_contract, "m.onnx")
    assert err.value.problems == problems and "m.onnx" in str(err.value)


@pytest.mark.parametrize("changes", [
    dict(),
    dict(inputs=_inputs(visual_tokens=In("visual_tokens", "float32", ("N", "L", D)))),  # symbolic dim: allowed
    dict(score_dims=("N", 1)),
    dict(attention_dims=("N", "H", "K")),
], ids=["matching", "symbolic-dim", "score-N-by-1", "symbolic-attention"])
def test_graphs_that_satisfy_the_contract(build_model, tiny_contract, changes):
    model = build_model(**{"inputs": _inputs(), "attention": "attention", **changes})
    assert graph_problems(model, tiny_contract) == []


def test_initializers_listed_as_inputs_are_not_inputs(tiny_model, tiny_contract):
    init = tiny_model.graph.initializer[0]
    tiny_model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    assert graph_problems(tiny_model, tiny_contract) == []


def test_several_graph_problems_at_once(build_model, tiny_contract):
    model = build_model(inputs=_inputs(visual_tokens=None, extra=In("extra")), score="logits", attention="attention")
    problems = graph_problems(model, tiny_contract)
    assert len(problems) == 3


def test_contract_from_graph(build_model, tiny_contract, tiny_model):
    got = contract_from_graph(tiny_model, {"text": ["query", "text_tokens"], "visual": ["visual_tokens"]},
                              score_output="score", attention_output="attention",
                              attention_keys={"text": (0, LT), "visual": (LT, K)}, variant="tiny")
    assert got == tiny_contract
    dynamic = build_model(inputs=_inputs(visual_tokens=In("visual_tokens", "float32", ("N", "L", D))))
    with pytest.raises(ContractError, match="non-static per-row shape"):
        contract_from_graph(dynamic, {"text": ["query", "text_tokens"], "visual": ["visual_tokens"]})
    with pytest.raises(ContractError, match="belong to no modality"):
        contract_from_graph(build_model(inputs=matching_inputs(tiny_contract)), {"text": ["query"]})


# ----- malformed contracts ---------------------------------------------------------------------

def _valid() -> dict:
    return {
        "inputs": [{"name": "q", "dtype": "float32", "shape": [4]}, {"name": "v", "dtype": "float32", "shape": [3, 4]}],
        "modalities": {"text": ["q"], "visual": ["v"]},
        "attention_output": "attn",
        "attention_heads": 2,
        "attention_keys": {"text": [0, 1], "visual": [1, 4]},
    }


def _edit(**changes):
    d = _valid()
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return d


_DROP = object()
MALFORMED = [
    ("not-an-object", [1, 2], "must be a JSON object, got list"),
    ("unknown-key", _edit(colour="blue"), "unknown keys ['colour']"),
    ("version", _edit(contract_version=2), "contract_version 2 is not supported"),
    ("no-inputs", _edit(inputs=[]), "'inputs' must be a non-empty list"),
    ("input-fields", _edit(inputs=[{"name": "q"}]), "inputs[0] must be an object with 'name', 'dtype' and 'shape'"),
    ("shape-not-ints", _edit(inputs=[{"name": "q", "dtype": "float32", "shape": [4.5]}]), "shape must be a list of integers"),
    ("modalities-missing", _edit(modalities=_DROP), "'modalities' must map a modality"),
    ("modality-not-list", _edit(modalities={"text": "q"}), "must be a list of input names"),
    ("keys-malformed", _edit(attention_keys={"text": [0]}), "'attention_keys' must map a modality to [start, stop)"),
    ("duplicate-input", _edit(inputs=[{"name": "q", "dtype": "float32", "shape": [4]}] * 2, modalities={"text": ["q"]},
                              attention_keys={"text": [0, 1]}), "declared more than once: ['q']"),
    ("dtype", _edit(inputs=[{"name": "q", "dtype": "bfloat7", "shape": [4]}, _valid()["inputs"][1]]), "dtype 'bfloat7'"),
    ("non-positive-dim", _edit(inputs=[{"name": "q", "dtype": "float32", "shape": [0]}, _valid()["inputs"][1]]),
     "non-positive dimension"),
    ("unknown-modality", _edit(modalities={"text": ["q"], "audio": ["v"]}, attention_keys={"text": [0, 1]}),
     "unknown modality 'audio'"),
    ("modality-lists-unknown-input", _edit(modalities={"text": ["q", "zz"], "visual": ["v"]}),
     "lists input 'zz', which is not among the inputs"),
    ("input-in-two-modalities", _edit(modalities={"text": ["q", "v"], "visual": ["v"]}),
     "input 'v' is assigned to both 'text' and 'visual'"),
    ("unassigned-input", _edit(modalities={"text": ["q"]}, attention_keys={"text": [0, 1]}),
     "inputs ['v'] belong to no modality"),
    ("empty-score", _edit(score_output=""), "score_output is empty"),
    ("attention-without-keys", _edit(attention_keys={}), "attention_output is set but attention_keys is empty"),
    ("heads", _edit(attention_heads=0), "attention_heads must be positive"),
    ("bad-range", _edit(attention_keys={"text": [2, 1], "visual": [2, 4]}), "is not a valid half-open range"),
    ("overlap", _edit(attention_keys={"text": [0, 2], "visual": [1, 4]}), "overlap"),
    ("keys-for-a-modality-without-inputs", _edit(modalities={"text": ["q", "v"]}),
     "attention_keys names modality 'visual', which has no inputs"),
    ("keys-without-attention", _edit(attention_output=None), "attention_keys is set but attention_output is not"),
]


@pytest.mark.parametrize("data, fragment", [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_contracts(data, fragment):
    with pytest.raises(ContractError) as err:
        ModelContract.from_dict(data, source="c.json")
    assert any(fragment in p for p in err.value.problems), err.value.problems
    assert str(err.value).startswith("model contract problem in c.json")
    with pytest.raises(ContractError):
        ModelContract.from_json(json.dumps(data), source="c.json")


def test_every_structural_problem_at_once():
    data = _edit(colour="blue", contract_version=7, modalities=_DROP)
    with pytest.raises(ContractError) as err:
        ModelContract.from_dict(data)
    assert len(err.value.problems) == 3


@pytest.mark.parametrize("text", ["", "{", "null", "[]", '"contract"', "1e999", '{"inputs": NaN}'])
def test_malformed_json_text(text):
    with pytest.raises(ContractError):
        ModelContract.from_json(text)


# ----- fuzzing: the loader raises ContractError and nothing else ------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _load_or_contract_error(data) -> None:
    try:
        contract = ModelContract.from_json(json.dumps(data))
    except ContractError:
        return
    assert isinstance(contract, ModelContract)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_fuzz_arbitrary_json(data):
    _load_or_contract_error(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(ModelContract.__dataclass_fields__)), value=json_values)
@example(key="provenance", value=[1, 2])  # found by this test: AttributeError in from_dict
@example(key="attention_heads", value="2")  # found by this test: TypeError in consistency_problems
def test_fuzz_one_field_of_a_valid_contract(key, value):
    data = copy.deepcopy(_valid())
    data[key] = value
    _load_or_contract_error(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, 1), key=st.sampled_from(["name", "dtype", "shape"]), value=json_values)
def test_fuzz_one_field_of_an_input(index, key, value):
    data = copy.deepcopy(_valid())
    data["inputs"][index][key] = value
    _load_or_contract_error(data)
