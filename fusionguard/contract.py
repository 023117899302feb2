"""The model contract: which inputs belong to which modality, and what the model outputs.

Every model fusionguard exports carries the contract as JSON in the ONNX `metadata_props` under
the key ``fusionguard.contract``. Third-party models that lack it get the same facts from a
sidecar JSON file, passed to the commands as `--candidate-contract` / `--baseline-contract`
(gate) or `--contract` (data validate); `contract_from_graph` writes one from the graph and a
modality assignment (Python only: no command option builds a contract). The contract is read and
checked here, and only here.

Conventions (all models, all subsystems):
- the batch axis is axis 0 and counts candidate rows (one row = one (query, candidate) pair);
- every input's per-row shape is static and listed in `TensorSpec.shape` (batch axis excluded);
- the score output has shape (N,); the optional attention output has shape (N, H, K) with
  `attention_keys` giving, per modality, the half-open key range [start, stop) inside K.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fusionguard import jsonio
from fusionguard.errors import ContractError, InvalidInputError

METADATA_KEY = "fusionguard.contract"
CONTRACT_VERSION = 1
KNOWN_MODALITIES = ("text", "visual")
SUPPORTED_DTYPES = ("float32", "float16", "float64", "int64", "int32")


@dataclass(frozen=True)
class TensorSpec:
    """One model input as the dataset and the scorer see it."""

    name: str
    dtype: str  # numpy dtype name, one of SUPPORTED_DTYPES
    shape: tuple[int, ...]  # per-row shape, batch axis excluded; () for a scalar per row

    @property
    def size(self) -> int:
        """Number of values per row once flattened (the Parquet list length)."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class ModelContract:
    """What a model promises about its inputs and outputs. See the module docstring."""

    inputs: tuple[TensorSpec, ...]
    modalities: Mapping[str, tuple[str, ...]]  # modality -> input names, e.g. {"visual": ("visual_tokens",)}
    score_output: str = "score"
    attention_output: str | None = None
    attention_heads: int | None = None  # H of the attention output
    attention_keys: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # modality -> [start, stop)
    variant: str = "unknown"
    provenance: Mapping[str, str] = field(default_factory=dict)  # data hash, config hash, code version...
    contract_version: int = CONTRACT_VERSION

    # ----- lookups -------------------------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def modality_of(self, input_name: str) -> str:
        for modality, names in self.modalities.items():
            if input_name in names:
                return modality
        raise KeyError(input_name)

    def has_modality(self, modality: str) -> bool:
        return bool(self.modalities.get(modality))

    @property
    def n_keys(self) -> int | None:
        """K, the number of attention key positions, or None without attention."""
        if not self.attention_keys:
            return None
        return max(stop for _, stop in self.attention_keys.values())

    # ----- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in self.inputs]
        d["modalities"] = {m: list(v) for m, v in self.modalities.items()}
        d["attention_keys"] = {m: list(v) for m, v in self.attention_keys.items()}
        d["provenance"] = dict(self.provenance)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "contract") -> ModelContract:
        """Build and validate a contract from parsed JSON; every problem is reported at once."""
        problems = _dict_problems(data)
        if problems:
            raise ContractError(source, problems)
        inputs = tuple(
            TensorSpec(str(i["name"]), str(i["dtype"]), tuple(int(x) for x in i["shape"])) for i in data["inputs"]
        )
        contract = cls(
            inputs=inputs,
            modalities={str(m): tuple(str(n) for n in names) for m, names in data["modalities"].items()},
            score_output=str(data.get("score_output", "score")),
            attention_output=data.get("attention_output"),
            attention_heads=data.get("attention_heads"),
            attention_keys={str(m): (int(r[0]), int(r[1])) for m, r in (data.get("attention_keys") or {}).items()},
            variant=str(data.get("variant", "unknown")),
            provenance={str(k): str(v) for k, v in (data.get("provenance") or {}).items()},
            contract_version=int(data.get("contract_version", CONTRACT_VERSION)),
        )
        consistency = contract.consistency_problems()
        if consistency:
            raise ContractError(source, consistency)
        return contract

    @classmethod
    def from_json(cls, text: str, source: str = "contract") -> ModelContract:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ContractError(source, [f"not valid JSON ({err}); the contract must be a JSON object"]) from None
        except RecursionError:
            data = too_deep = True  # reported below with the depth limit
        else:
            too_deep = jsonio.depth(data) > jsonio.MAX_DEPTH
        if too_deep:
            raise ContractError(source, [f"nested deeper than {jsonio.MAX_DEPTH} levels; a contract is a flat JSON object"])
        return cls.from_dict(data, source)

    def consistency_problems(self) -> list[str]:
        """Problems inside the contract itself (no graph needed)."""
        problems: list[str] = []
        names = [s.name for s in self.inputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"input names declared more than once: {dupes}")
        for spec in self.inputs:
            if spec.dtype not in SUPPORTED_DTYPES:
                problems.append(f"input '{spec.name}' has dtype '{spec.dtype}'; use one of {list(SUPPORTED_DTYPES)}")
            if any(d <= 0 for d in spec.shape):
                problems.append(f"input '{spec.name}' has a non-positive dimension in shape {list(spec.shape)}")
        assigned: dict[str, str] = {}
        for modality, members in self.modalities.items():
            if modality not in KNOWN_MODALITIES:
                problems.append(f"unknown modality '{modality}'; modalities are {list(KNOWN_MODALITIES)}")
            for name in members:
                if name not in names:
                    problems.append(f"modality '{modality}' lists input '{name}', which is not among the inputs {names}")
                if name in assigned and assigned[name] != modality:
                    problems.append(f"input '{name}' is assigned to both '{assigned[name]}' and '{modality}'")
                assigned[name] = modality
        unassigned = [n for n in names if n not in assigned]
        if unassigned:
            problems.append(f"inputs {unassigned} belong to no modality; list each under 'text' or 'visual'")
        if not self.score_output:
            problems.append("score_output is empty; name the model's score output")
        if self.attention_output is not None:
            if not self.attention_keys:
                problems.append("attention_output is set but attention_keys is empty; give each modality's [start, stop) keys")
            if self.attention_heads is not None and self.attention_heads <= 0:
                problems.append(f"attention_heads must be positive, got {self.attention_heads}")
            spans = sorted(self.attention_keys.items(), key=lambda kv: kv[1][0])
            for modality, (start, stop) in spans:
                if modality not in self.modalities:
                    problems.append(f"attention_keys names modality '{modality}', which has no inputs")
                if not 0 <= start < stop:
                    problems.append(f"attention_keys['{modality}'] = [{start}, {stop}) is not a valid half-open range")
            for (m1, (_, stop1)), (m2, (start2, _)) in zip(spans, spans[1:]):
                if start2 < stop1:
                    problems.append(f"attention key ranges of '{m1}' and '{m2}' overlap")
        elif self.attention_keys:
            problems.append("attention_keys is set but attention_output is not; name the attention output or drop the keys")
        return problems


def _dict_problems(data: Any) -> list[str]:
    """Structural problems of a parsed contract JSON object."""
    if not isinstance(data, Mapping):
        return [f"the contract must be a JSON object, got {type(data).__name__}"]
    problems: list[str] = []
    allowed = {f for f in ModelContract.__dataclass_fields__}
    unknown = sorted(set(data) - allowed)
    if unknown:
        problems.append(f"unknown keys {unknown}; allowed keys are {sorted(allowed)}")
    version = data.get("contract_version", CONTRACT_VERSION)
    if isinstance(version, bool) or version != CONTRACT_VERSION:
        problems.append(f"contract_version {version!r} is not supported (this fusionguard reads version {CONTRACT_VERSION})")
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        problems.append("'inputs' must be a non-empty list of {name, dtype, shape} objects")
    else:
        for i, item in enumerate(inputs):
            if not isinstance(item, Mapping) or not {"name", "dtype", "shape"} <= set(item):
                problems.append(f"inputs[{i}] must be an object with 'name', 'dtype' and 'shape'")
            elif not isinstance(item["shape"], list) or not all(isinstance(x, int) for x in item["shape"]):
                problems.append(f"inputs[{i}] ('{item['name']}'): shape must be a list of integers (batch axis excluded)")
    modalities = data.get("modalities")
    if not isinstance(modalities, Mapping) or not modalities:
        problems.append("'modalities' must map a modality ('text', 'visual') to a list of input names")
    elif not all(isinstance(v, list) for v in modalities.values()):
        problems.append("every entry of 'modalities' must be a list of input names")
    heads = data.get("attention_heads")
    if heads is not None and (isinstance(heads, bool) or not isinstance(heads, int)):
        problems.append(f"'attention_heads' must be an integer or null, got {heads!r}")
    provenance = data.get("provenance")
    if provenance is not None and not isinstance(provenance, Mapping):
        problems.append(f"'provenance' must be an object of string values, got {type(provenance).__name__}")
    for key in ("score_output", "variant"):
        if key in data and not isinstance(data[key], str):
            problems.append(f"'{key}' must be a string, got {data[key]!r}")
    attention_output = data.get("attention_output")
    if attention_output is not None and not isinstance(attention_output, str):
        problems.append(f"'attention_output' must be a string or null, got {attention_output!r}")
    keys = data.get("attention_keys") or {}
    if not isinstance(keys, Mapping) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v) for v in keys.values()
    ):
        problems.append("'attention_keys' must map a modality to [start, stop) integer pairs")
    return problems


# ----- ONNX metadata ----------------------------------------------------------------------------

def _load_model(model: str | Path | onnx.ModelProto, load_weights: bool = False) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        return model, "<in-memory model>"
    path = Path(model)
    if not path.is_file():
        raise InvalidInputError(f"model file {path} does not exist; check the path")
    try:
        proto = onnx.load(str(path), load_external_data=load_weights)
    except Exception as err:  # onnx raises DecodeError and others for corrupt files
        raise InvalidInputError(f"{path} is not a readable ONNX model ({type(err).__name__}: {err})") from None
    if not proto.graph.output:
        raise InvalidInputError(f"{path} is not a usable ONNX model: its graph has no outputs")
    return proto, str(path)


def embedded_contract(model: str | Path | onnx.ModelProto) -> ModelContract | None:
    """The contract stored in the model's metadata_props, or None if it has none."""
    proto, source = _load_model(model)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return ModelContract.from_json(prop.value, source=f"{source} (metadata_props['{METADATA_KEY}'])")
    return None


def write_contract(model: onnx.ModelProto, contract: ModelContract) -> onnx.ModelProto:
    """Store `contract` in `model.metadata_props` (replacing any previous one) after checking it
    against the graph. Returns the same proto for chaining."""
    validate_contract(model, contract)
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for p in kept:
        model.metadata_props.add(key=p.key, value=p.value)
    model.metadata_props.add(key=METADATA_KEY, value=contract.to_json())
    return model


def load_contract(model: str | Path | onnx.ModelProto, sidecar: str | Path | None = None) -> ModelContract:
    """The contract of `model`, validated against its graph.

    Args:
        model: path to an ONNX file or a loaded proto.
        sidecar: optional JSON file with the contract, for models that lack an embedded one.
            When given it takes precedence over the embedded contract.
    Raises:
        InvalidInputError: the model cannot be read.
        ContractError: no contract, a malformed one, or one that disagrees with the graph.
    """
    proto, source = _load_model(model)
    if sidecar is not None:
        path = Path(sidecar)
        if not path.is_file():
            raise InvalidInputError(f"contract sidecar {path} does not exist; check the path")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidInputError(f"contract sidecar {path} is unreadable ({err}); it must be a UTF-8 JSON file") from None
        contract = ModelContract.from_json(text, source=str(path))
    else:
        contract = embedded_contract(proto)
        if contract is None:
            raise ContractError(
                source,
                [
                    f"the model has no '{METADATA_KEY}' entry in metadata_props; export it with "
                    "`fusionguard export`, or describe it in a sidecar JSON file (gate: --candidate-contract / "
                    "--baseline-contract FILE; data validate: --contract FILE)"
                ],
            )
    validate_contract(proto, contract, source)
    return contract


# ----- graph validation -------------------------------------------------------------------------

def _value_info_shape(vi: onnx.ValueInfoProto) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        return f"onnx-type-{elem_type}"


def graph_problems(model: onnx.ModelProto, contract: ModelContract) -> list[str]:
    """Every disagreement between `contract` and the model's graph, as fix-it messages."""
    problems = list(contract.consistency_problems())
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = {vi.name: vi for vi in model.graph.input if vi.name not in initializers}
    graph_outputs = {vi.name: vi for vi in model.graph.output}
    for spec in contract.inputs:
        vi = graph_inputs.get(spec.name)
        if vi is None:
            problems.append(
                f"input '{spec.name}' is in the contract but not in the graph (graph inputs: {sorted(graph_inputs)}); "
                "rename it in the contract"
            )
            continue
        dtype = _dtype_name(vi.type.tensor_type.elem_type)
        if dtype != spec.dtype:
            problems.append(f"input '{spec.name}': contract says dtype {spec.dtype}, graph says {dtype}")
        dims = _value_info_shape(vi)
        if len(dims) != 1 + len(spec.shape):
            problems.append(
                f"input '{spec.name}': graph rank is {len(dims)} but the contract implies {1 + len(spec.shape)} "
                f"(batch axis + per-row shape {list(spec.shape)})"
            )
        else:
            for axis, (g, c) in enumerate(zip(dims[1:], spec.shape), start=1):
                if isinstance(g, int) and g != c:
                    problems.append(f"input '{spec.name}' axis {axis}: graph has {g}, contract says {c}")
    extra = sorted(set(graph_inputs) - set(contract.input_names))
    if extra:
        problems.append(f"graph inputs {extra} are not in the contract; declare them under a modality")
    score = graph_outputs.get(contract.score_output)
    if score is None:
        problems.append(f"score output '{contract.score_output}' is not a graph output (outputs: {sorted(graph_outputs)})")
    else:
        dims = _value_info_shape(score)
        if len(dims) not in (0, 1) and not (len(dims) == 2 and dims[1] == 1):
            problems.append(f"score output '{contract.score_output}' must have shape (N,) or (N, 1), graph has {dims}")
    if contract.attention_output is not None:
        attn = graph_outputs.get(contract.attention_output)
        if attn is None:
            problems.append(
                f"attention output '{contract.attention_output}' is not a graph output (outputs: {sorted(graph_outputs)})"
            )
        else:
            dims = _value_info_shape(attn)
            if len(dims) != 3:
                problems.append(f"attention output '{contract.attention_output}' must have rank 3 (N, H, K), graph has {dims}")
            else:
                heads, keys = dims[1], dims[2]
                if isinstance(heads, int) and contract.attention_heads is not None and heads != contract.attention_heads:
                    problems.append(f"attention output has {heads} heads, the contract says {contract.attention_heads}")
                if isinstance(keys, int) and contract.n_keys is not None and keys != contract.n_keys:
                    problems.append(f"attention output has {keys} keys, the contract's attention_keys cover {contract.n_keys}")
    return problems


def validate_contract(model: onnx.ModelProto, contract: ModelContract, source: str = "<model>") -> None:
    """Raise ContractError listing every disagreement between the contract and the graph."""
    problems = graph_problems(model, contract)
    if problems:
        raise ContractError(source, problems)


def contract_from_graph(
    model: str | Path | onnx.ModelProto,
    modalities: Mapping[str, Sequence[str]],
    score_output: str | None = None,
    attention_output: str | None = None,
    attention_keys: Mapping[str, tuple[int, int]] | None = None,
    variant: str = "third-party",
) -> ModelContract:
    """Describe a model that has no contract from the graph plus the user's modality assignment
    (a Python helper: write its `to_json()` as a sidecar for the commands' contract options).
    Per-row shapes come from the graph and must be static."""
    proto, source = _load_model(model)
    initializers = {init.name for init in proto.graph.initializer}
    specs: list[TensorSpec] = []
    problems: list[str] = []
    for vi in proto.graph.input:
        if vi.name in initializers:
            continue
        dims = _value_info_shape(vi)
        if any(not isinstance(d, int) for d in dims[1:]):
            problems.append(f"input '{vi.name}' has a non-static per-row shape {dims}; write a sidecar contract instead")
            continue
        specs.append(TensorSpec(vi.name, _dtype_name(vi.type.tensor_type.elem_type), tuple(int(d) for d in dims[1:])))
    if problems:
        raise ContractError(source, problems)
    outputs = [o.name for o in proto.graph.output]
    heads = None
    if attention_output is not None:
        attn = next((o for o in proto.graph.output if o.name == attention_output), None)
        if attn is not None:
            dims = _value_info_shape(attn)
            heads = dims[1] if len(dims) == 3 and isinstance(dims[1], int) else None
    contract = ModelContract(
        inputs=tuple(specs),
        modalities={m: tuple(v) for m, v in modalities.items() if v},
        score_output=score_output or outputs[0],
        attention_output=attention_output,
        attention_heads=heads,
        attention_keys=dict(attention_keys or {}),
        variant=variant,
    )
    validate_contract(proto, contract, source)
    return contract
