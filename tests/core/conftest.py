"""Fixtures for core tests: a tiny contract, an ONNX graph builder, and tiny datasets.

Other core tests may reuse them: `tiny_contract`, `build_model`, `tiny_model_path`,
`tiny_arrays`, `tiny_dataset`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fusionguard.contract import ModelContract, TensorSpec, write_contract
from fusionguard.dataset import write_dataset

D, LT, LV, HEADS = 4, 2, 3, 2  # tiny per-row shapes: query (D,), text (LT, D), visual (LV, D)
_ONNX_TYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE,
               "int64": TensorProto.INT64, "int32": TensorProto.INT32}


@pytest.fixture
def tiny_contract() -> ModelContract:
    return ModelContract(
        inputs=(
            TensorSpec("query", "float32", (D,)),
            TensorSpec("text_tokens", "float32", (LT, D)),
            TensorSpec("visual_tokens", "float32", (LV, D)),
        ),
        modalities={"text": ("query", "text_tokens"), "visual": ("visual_tokens",)},
        attention_output="attention",
        attention_heads=HEADS,
        attention_keys={"text": (0, LT), "visual": (LT, LT + LV)},
        variant="tiny",
    )


@dataclass(frozen=True)
class In:
    """A graph input for `build_model`: dims may hold ints or symbolic names."""

    name: str
    dtype: str = "float32"
    dims: Sequence[int | str] = ("N", D)


def _build(
    inputs: Sequence[In],
    score: str | None = "score",
    score_dims: Sequence[int | str] = ("N",),
    attention: str | None = None,
    attention_dims: Sequence[int | str] = ("N", HEADS, LT + LV),
) -> onnx.ModelProto:
    """A small valid ONNX model with the given inputs and outputs.

    score = sum of the first input's row values; attention (if named) = a constant uniform
    (H, K) pattern broadcast over the rows. Unused inputs stay declared graph inputs.
    """
    first = inputs[0]
    nodes = [
        helper.make_node("Cast", [first.name], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Flatten", ["as_float"], ["flat"], axis=1),
        helper.make_node("ReduceSum", ["flat", "axis1"], [score or "score_like"], keepdims=0),
    ]
    inits = [helper.make_tensor("axis1", TensorProto.INT64, [1], [1])]
    outputs = [helper.make_tensor_value_info(score or "score_like", TensorProto.FLOAT, list(score_dims))]
    if attention is not None:
        dims = [d if isinstance(d, int) else None for d in attention_dims]
        h = dims[1] if len(dims) > 1 and dims[1] is not None else HEADS
        k = dims[-1] if dims[-1] is not None else LT + LV
        inits.append(helper.make_tensor("uniform", TensorProto.FLOAT, [1, h, k], [1.0 / k] * (h * k)))
        inits.append(helper.make_tensor("hk", TensorProto.INT64, [2], [h, k]))
        nodes += [
            helper.make_node("Shape", [first.name], ["n"], start=0, end=1),
            helper.make_node("Concat", ["n", "hk"], ["target"], axis=0),
            helper.make_node("Expand", ["uniform", "target"], [attention]),
        ]
        outputs.append(helper.make_tensor_value_info(attention, TensorProto.FLOAT, list(attention_dims)))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(i.name, _ONNX_TYPES[i.dtype], list(i.dims)) for i in inputs],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def build_model() -> Callable[..., onnx.ModelProto]:
    """The builder: `build_model([In("query"), ...], score="score", attention="attention")`."""
    return _build


def matching_inputs(contract: ModelContract) -> list[In]:
    return [In(s.name, s.dtype, ("N", *s.shape)) for s in contract.inputs]


@pytest.fixture
def tiny_model(tiny_contract) -> onnx.ModelProto:
    """A graph that matches `tiny_contract`, with no contract embedded."""
    return _build(matching_inputs(tiny_contract), attention="attention")


@pytest.fixture
def tiny_model_path(tmp_path, tiny_model, tiny_contract):
    """`tiny_model` with the contract embedded, saved under tmp_path."""
    path = tmp_path / "tiny.onnx"
    model = onnx.ModelProto()
    model.CopyFrom(tiny_model)  # leave the `tiny_model` fixture without a contract
    onnx.save(write_contract(model, tiny_contract), path)
    return path


def make_arrays(n_queries: int = 5, n_candidates: int = 4, seed: int = 0) -> dict:
    """Valid rows for `tiny_contract`: every query has one relevant item."""
    rng = np.random.default_rng(seed)
    n = n_queries * n_candidates
    label = rng.integers(0, 3, size=n)
    label[::n_candidates] = np.maximum(label[::n_candidates], 1)
    return {
        "query_id": np.repeat(np.arange(n_queries, dtype=np.int64), n_candidates),
        "item_id": np.tile(np.arange(n_candidates, dtype=np.int64), n_queries) + 100,
        "label": label.astype(np.int64),
        "feeds": {
            "query": rng.normal(size=(n, D)).astype(np.float32),
            "text_tokens": rng.normal(size=(n, LT, D)).astype(np.float32),
            "visual_tokens": rng.normal(size=(n, LV, D)).astype(np.float32),
        },
    }


@pytest.fixture
def tiny_arrays() -> dict:
    return make_arrays()


@pytest.fixture
def tiny_dataset(tmp_path, tiny_arrays):
    """A valid dataset for `tiny_contract` (5 queries x 4 candidates)."""
    a = tiny_arrays
    return write_dataset(tmp_path / "tiny.parquet", a["query_id"], a["item_id"], a["label"], a["feeds"])
