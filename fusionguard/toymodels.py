"""Small ONNX ranking models whose behaviour is known by construction, and a matching dataset.

They stand in for trained models wherever a test, the README demo or a gate/monitor check needs a
model with a known answer: a text-only V1, an honest fusion model, a model that receives the
visual input but ignores it, and a "disguised" model whose score is a monotone function of V1's.
They are built with `onnx.helper` only (no torch) and each carries its contract
(`fusionguard.contract.write_contract`).

Inputs (axis 0 is the candidate row N, dynamic):
    query          float32 (N, D)      text modality
    text_tokens    float32 (N, Lt, D)  text modality
    visual_tokens  float32 (N, Lv, D)  visual modality (absent from the text-only model)

Signals (one definition, shared by the dataset and the models):
    text part    t = sqrt(Lt) * <query, mean_l text_tokens[l]>
    visual part  v = sqrt(Lv) * <u, mean_l visual_tokens[l]>,  u = visual_direction(D)
With the dataset's query ~ N(0, I/D) and tokens ~ N(0, I), both parts have unit variance, so a
label built from t + v weighs the two modalities equally and `build_fusion_model(visual_weight=1)`
scores exactly the latent relevance (up to the label noise).

Attention of the fusion-style models (H heads, K = Lt + Lv keys; text keys first):
    keys[k]           = concat(text_tokens, visual_tokens)[k]                     (N, K, D)
    logits[n, h, k]   = a_h * <keys[n, k], query[n]> + b_k,   a_h = h / max(H - 1, 1)
    b_k               = 0 for text keys, log(w + 1e-6) for visual keys
    attention         = softmax over k                                            (N, H, K)
so at w = 1 the heads spread their mass roughly uniformly over all keys (visual mass about
Lv / (Lt + Lv)), at w = 0 the visual mass is about 1e-6 * Lv / Lt, and it grows monotonically
with w in between. Head 0 is content-blind (a_0 = 0), later heads attend more to keys aligned
with the query, which gives the heads different entropies.
"""

from __future__ import annotations

import math
from pathlib import Path
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fusionguard.contract import ModelContract, TensorSpec, write_contract
from fusionguard.dataset import Batch
from fusionguard.errors import InvalidInputError

OPSET = 18
IR_VERSION = 9  # readable by every ONNX Runtime from 1.16 on
VISUAL_DIRECTION_SEED = 20_240_229  # fixes u, the visual signal direction, for a given D
_VISUAL_FLOOR = 1e-6  # keeps log(w) finite at w = 0

# Defaults shared by the builders and `make_toy_dataset`.
DIM = 16
N_TEXT = 4
N_VISUAL = 4
N_HEADS = 8

__all__ = [
    "visual_direction",
    "make_toy_dataset",
    "build_text_model",
    "build_fusion_model",
    "build_visual_blind_model",
    "build_monotone_of_text_model",
    "save",
]


def visual_direction(dim: int) -> np.ndarray:
    """u, the fixed unit direction whose projection of the mean visual token is the visual signal."""
    u = np.random.default_rng(VISUAL_DIRECTION_SEED).standard_normal(dim)
    return (u / np.linalg.norm(u)).astype(np.float32)


def make_toy_dataset(
    n_queries: int = 40,
    n_candidates: int = 10,
    dim: int = DIM,
    n_text: int = N_TEXT,
    n_visual: int = N_VISUAL,
    seed: int = 0,
    *,
    noise: float = 0.3,
) -> Batch:
    """A ranking dataset whose graded labels (0-4) depend on the text and the visual signal.

    Latent relevance r = t + v + noise * eps (t, v as in the module docstring). Labels cut r at
    the global 50/75/90/97 % quantiles into 0..4, and every query's best candidate gets at least
    label 1 so no query lacks a relevant item. A model that uses both signals therefore ranks
    better than one that uses text alone.

    Rows are ordered by query, then item; query ids are "q0000", item ids are int64 0..n-1 within
    each query.
    """
    problems = [
        f"{name} must be >= {low}, got {value}"
        for name, value, low in (
            ("n_queries", n_queries, 1),
            ("n_candidates", n_candidates, 2),
            ("dim", dim, 1),
            ("n_text", n_text, 1),
            ("n_visual", n_visual, 1),
        )
        if value < low
    ]
    if problems:
        raise InvalidInputError("make_toy_dataset: " + "; ".join(problems))
    rng = np.random.default_rng(seed)
    n = n_queries * n_candidates
    query_vec = rng.standard_normal((n_queries, dim)) / math.sqrt(dim)  # (Q, D), |q| ~ 1
    query = np.repeat(query_vec, n_candidates, axis=0).astype(np.float32)  # (N, D)
    text = rng.standard_normal((n, n_text, dim)).astype(np.float32)  # (N, Lt, D)
    visual = rng.standard_normal((n, n_visual, dim)).astype(np.float32)  # (N, Lv, D)

    t = math.sqrt(n_text) * np.einsum("nd,nd->n", query.astype(np.float64), text.mean(axis=1, dtype=np.float64))
    v = math.sqrt(n_visual) * (visual.mean(axis=1, dtype=np.float64) @ visual_direction(dim).astype(np.float64))
    latent = t + v + noise * rng.standard_normal(n)
    cuts = np.quantile(latent, [0.5, 0.75, 0.9, 0.97])
    label = np.searchsorted(cuts, latent, side="right").astype(np.int64)  # 0..4
    per_query = label.reshape(n_queries, n_candidates)
    best = latent.reshape(n_queries, n_candidates).argmax(axis=1)
    rows = np.arange(n_queries)
    per_query[rows, best] = np.maximum(per_query[rows, best], 1)

    query_id = np.repeat(np.array([f"q{i:04d}" for i in range(n_queries)], dtype=object), n_candidates)
    item_id = np.tile(np.arange(n_candidates, dtype=np.int64), n_queries)
    return Batch(
        query_id=query_id,
        item_id=item_id,
        label=per_query.reshape(-1),
        feeds={"query": query, "text_tokens": text, "visual_tokens": visual},
    )


# ----- graph building ---------------------------------------------------------------------------

class _Graph:
    """A tiny builder: nodes, initializers and unique names, so each model reads as its formula."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer named `name`; a second call with the same name reuses the first."""
        if any(init.name == name for init in self.initializers):
            return name
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name=name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: object) -> str:
        self._count += 1
        out = output or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{op_type}_{self._count}", **attrs))
        return out


def _check_dims(dim: int, n_text: int, n_visual: int, n_heads: int) -> None:
    problems = [
        f"{name} must be >= 1, got {value}"
        for name, value in (("dim", dim), ("n_text", n_text), ("n_visual", n_visual), ("n_heads", n_heads))
        if value < 1
    ]
    if problems:
        raise InvalidInputError("toy model: " + "; ".join(problems))


def _text_part(g: _Graph, n_text: int, scale: float) -> str:
    """(N,) scale * sqrt(Lt) * <query, mean(text_tokens)>."""
    axis1 = g.const("axis1", np.array([1], dtype=np.int64))
    text_mean = g.op("ReduceMean", ["text_tokens", axis1], keepdims=0)  # (N, D)
    dot = g.op("ReduceSum", [g.op("Mul", ["query", text_mean]), axis1], keepdims=0)  # (N,)
    return g.op("Mul", [dot, g.const("text_scale", np.array(scale * math.sqrt(n_text), dtype=np.float32))])


def _visual_part(g: _Graph, dim: int, n_visual: int) -> str:
    """(N,) sqrt(Lv) * <u, mean(visual_tokens)>."""
    axis1 = g.const("axis1", np.array([1], dtype=np.int64))
    visual_mean = g.op("ReduceMean", ["visual_tokens", axis1], keepdims=0)  # (N, D)
    u = g.const("visual_direction", visual_direction(dim) * np.float32(math.sqrt(n_visual)))
    return g.op("MatMul", [visual_mean, u])  # (N,)


def _attention(g: _Graph, n_text: int, n_visual: int, n_heads: int, visual_bias_weight: float) -> str:
    """(N, H, K) softmax attention as in the module docstring."""
    keys = g.op("Concat", ["text_tokens", "visual_tokens"], axis=1)  # (N, K, D)
    q = g.op("Unsqueeze", ["query", g.const("axis2", np.array([2], dtype=np.int64))])  # (N, D, 1)
    dots = g.op("Transpose", [g.op("MatMul", [keys, q])], perm=[0, 2, 1])  # (N, 1, K)
    head_scale = (np.arange(n_heads, dtype=np.float32) / max(n_heads - 1, 1)).reshape(1, n_heads, 1)
    scaled = g.op("Mul", [dots, g.const("head_scale", head_scale)])  # (N, H, K)
    bias = np.zeros((1, 1, n_text + n_visual), dtype=np.float32)
    bias[..., n_text:] = math.log(max(visual_bias_weight, 0.0) + _VISUAL_FLOOR)
    logits = g.op("Add", [scaled, g.const("key_bias", bias)])
    return g.op("Softmax", [logits], "attention", axis=-1)


def _finish(
    g: _Graph,
    name: str,
    dim: int,
    n_text: int,
    n_visual: int | None,
    n_heads: int | None,
    variant: str,
) -> onnx.ModelProto:
    """Wrap the nodes in a model with a dynamic batch axis, check it, and attach its contract."""
    inputs = [
        helper.make_tensor_value_info("query", TensorProto.FLOAT, ["N", dim]),
        helper.make_tensor_value_info("text_tokens", TensorProto.FLOAT, ["N", n_text, dim]),
    ]
    specs = [TensorSpec("query", "float32", (dim,)), TensorSpec("text_tokens", "float32", (n_text, dim))]
    modalities: dict[str, tuple[str, ...]] = {"text": ("query", "text_tokens")}
    if n_visual is not None:
        inputs.append(helper.make_tensor_value_info("visual_tokens", TensorProto.FLOAT, ["N", n_visual, dim]))
        specs.append(TensorSpec("visual_tokens", "float32", (n_visual, dim)))
        modalities["visual"] = ("visual_tokens",)
    outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])]
    attention_keys: dict[str, tuple[int, int]] = {}
    if n_heads is not None and n_visual is not None:
        outputs.append(helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["N", n_heads, n_text + n_visual]))
        attention_keys = {"text": (0, n_text), "visual": (n_text, n_text + n_visual)}
    graph = helper.make_graph(g.nodes, name, inputs, outputs, initializer=g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="fusionguard.toymodels",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    contract = ModelContract(
        inputs=tuple(specs),
        modalities=modalities,
        score_output="score",
        attention_output="attention" if attention_keys else None,
        attention_heads=n_heads if attention_keys else None,
        attention_keys=attention_keys,
        variant=variant,
        provenance={"source": "fusionguard.toymodels", "builder": name},
    )
    return write_contract(model, contract)


# ----- the models -------------------------------------------------------------------------------

def build_text_model(dim: int = DIM, n_text: int = N_TEXT, *, scale: float = 1.0) -> onnx.ModelProto:
    """V1, text only: score = scale * t. Inputs query and text_tokens; no attention output."""
    _check_dims(dim, n_text, 1, 1)
    g = _Graph()
    g.op("Identity", [_text_part(g, n_text, scale)], "score")
    return _finish(g, "toy_text_v1", dim, n_text, None, None, variant="toy-text-v1")


def build_fusion_model(
    visual_weight: float = 1.0,
    dim: int = DIM,
    n_text: int = N_TEXT,
    n_visual: int = N_VISUAL,
    n_heads: int = N_HEADS,
) -> onnx.ModelProto:
    """Fusion: score = t + visual_weight * v; attention puts more mass on visual keys as
    visual_weight grows (module docstring). visual_weight=1 matches the toy dataset's labels."""
    _check_dims(dim, n_text, n_visual, n_heads)
    if not math.isfinite(visual_weight) or visual_weight < 0:
        raise InvalidInputError(f"visual_weight must be a finite number >= 0, got {visual_weight}")
    g = _Graph()
    text = _text_part(g, n_text, 1.0)
    visual = g.op("Mul", [_visual_part(g, dim, n_visual), g.const("visual_weight", np.array(visual_weight, np.float32))])
    g.op("Add", [text, visual], "score")
    _attention(g, n_text, n_visual, n_heads, visual_weight)
    return _finish(g, "toy_fusion", dim, n_text, n_visual, n_heads, variant=f"toy-fusion-w{visual_weight:g}")


def build_visual_blind_model(
    dim: int = DIM, n_text: int = N_TEXT, n_visual: int = N_VISUAL, n_heads: int = N_HEADS
) -> onnx.ModelProto:
    """Collapsed fusion: declares and receives visual_tokens, but score = t exactly (the V1
    score); the visual tokens only enter the attention, whose visual mass is ~1e-6."""
    _check_dims(dim, n_text, n_visual, n_heads)
    g = _Graph()
    g.op("Identity", [_text_part(g, n_text, 1.0)], "score")
    _attention(g, n_text, n_visual, n_heads, 0.0)
    return _finish(g, "toy_visual_blind", dim, n_text, n_visual, n_heads, variant="toy-visual-blind")


MONOTONE_TRANSFORMS = ("affine", "cubic", "tanh")


def build_monotone_of_text_model(
    transform: str = "affine",
    dim: int = DIM,
    n_text: int = N_TEXT,
    n_visual: int = N_VISUAL,
    n_heads: int = N_HEADS,
    *,
    attention_visual_weight: float = 1.0,
) -> onnx.ModelProto:
    """Disguised collapse: score = f(t) with f strictly increasing, so it ranks exactly like V1.

    transform: "affine" f(s) = 2s + 1, "cubic" f(s) = s^3 + s, "tanh" f(s) = tanh(s / 4)
    (the division keeps float32 from saturating on the toy data's scale).
    attention_visual_weight: the attention is that of a fusion model with this weight (default 1,
    a healthy-looking visual mass), so only an integrity check against V1 can catch the model.
    """
    _check_dims(dim, n_text, n_visual, n_heads)
    if transform not in MONOTONE_TRANSFORMS:
        raise InvalidInputError(f"transform '{transform}' is unknown; use one of {list(MONOTONE_TRANSFORMS)}")
    g = _Graph()
    s = _text_part(g, n_text, 1.0)
    if transform == "affine":
        out = g.op("Add", [g.op("Mul", [s, g.const("two", np.array(2.0, np.float32))]), g.const("one", np.array(1.0, np.float32))])
    elif transform == "cubic":
        out = g.op("Add", [g.op("Mul", [g.op("Mul", [s, s]), s]), s])
    else:
        out = g.op("Tanh", [g.op("Mul", [s, g.const("quarter", np.array(0.25, np.float32))])])
    g.op("Identity", [out], "score")
    _attention(g, n_text, n_visual, n_heads, attention_visual_weight)
    return _finish(g, f"toy_monotone_{transform}", dim, n_text, n_visual, n_heads, variant=f"toy-monotone-{transform}")


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write `model` to `path` (parents created) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out
