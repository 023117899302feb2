"""torch → ONNX: the dynamo exporter, a dynamic batch axis, and the model contract in metadata.

Every fusionguard model follows one seam (docs/interfaces.md, "Training"):
``forward(query, text_tokens, visual_tokens=None) -> (score (N,), attention (N, H, K) | None)``
plus ``input_specs()``, ``modalities``, ``attention_keys`` and ``n_heads``. A thin adapter gives
the exporter a forward with exactly the model's inputs and only the tensors it returns, so a
text-only V1 exports with two inputs and one output (``score``) and a fusion model with three
inputs and two outputs (``score``, ``attention``).

The batch axis is exported as a named dynamic dimension. The example batch must have at least two
rows: torch.export specialises a size-1 dimension to the constant 1 and the model would then only
accept one candidate at a time.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import torch

import fusionguard
from fusionguard.contract import ModelContract, TensorSpec, write_contract
from fusionguard.errors import ContractError, InvalidInputError

from fusionguard.export.errors import ExportFailedError

logger = logging.getLogger(__name__)
# The dynamo exporter warns on every export that torchvision is absent; the serving models use no
# torchvision operator, so that line is noise in the CLI output.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

# The seam's forward signature, in order. A model takes a prefix of it: V1 the first two.
SEAM_INPUTS = ("query", "text_tokens", "visual_tokens")
SCORE_OUTPUT = "score"
ATTENTION_OUTPUT = "attention"
BATCH_DIM = "batch"
MIN_OPSET = 18  # the dynamo exporter emits opset 18 or newer
EXPORTER = "torch.onnx.export(dynamo=True)"


class _Adapter(torch.nn.Module):
    """Calls the wrapped model with exactly its inputs and returns only the tensors it produces."""

    def __init__(self, model: torch.nn.Module, n_inputs: int, with_attention: bool) -> None:
        super().__init__()
        self.model = model
        self.n_inputs = n_inputs
        self.with_attention = with_attention

    def forward(self, query: torch.Tensor, text_tokens: torch.Tensor, visual_tokens: torch.Tensor | None = None):
        if self.n_inputs == 2:
            score, attention = self.model(query, text_tokens)
        else:
            score, attention = self.model(query, text_tokens, visual_tokens)
        if self.with_attention:
            return score, attention
        return (score,)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(err: BaseException) -> str:
    """The most specific one-line reason of an exporter failure: its root cause when it has one."""
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = [line.strip() for line in _ANSI.sub("", str(cause)).splitlines() if line.strip()]
    head = lines[0] if lines else type(cause).__name__
    return head if cause is err else f"{type(cause).__name__}: {head}"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


def contract_for(model: torch.nn.Module, meta: Mapping[str, Any], opset: int) -> ModelContract:
    """The contract an export of `model` will carry, built from the model's own seam attributes
    and the checkpoint's provenance.

    Raises:
        ContractError: the model's specs, modalities or attention keys do not fit the seam.
    """
    where = f"model of variant '{meta.get('variant', '?')}'"
    problems: list[str] = []
    specs = tuple(model.input_specs())
    if not all(isinstance(s, TensorSpec) for s in specs):
        problems.append("input_specs() must return fusionguard.contract.TensorSpec objects")
    names = tuple(getattr(s, "name", "?") for s in specs)
    if names not in (SEAM_INPUTS[:2], SEAM_INPUTS):
        problems.append(
            f"input_specs() names {list(names)}; the seam's forward takes {list(SEAM_INPUTS[:2])} "
            f"(text-only) or {list(SEAM_INPUTS)}"
        )
    keys = {str(m): (int(r[0]), int(r[1])) for m, r in dict(getattr(model, "attention_keys", None) or {}).items()}
    heads = getattr(model, "n_heads", None)
    if bool(keys) != (heads is not None):
        problems.append(
            f"n_heads is {heads!r} but attention_keys is {keys!r}; a model with attention sets both, one without sets neither"
        )
    if problems:
        raise ContractError(where, problems)
    provenance = {
        "variant": str(meta.get("variant", "unknown")),
        "config_sha256": str(meta.get("config_sha256", "")),
        "data_sha256": str(meta.get("data_sha256", "")),
        "fusionguard_version": fusionguard.__version__,
        "trained_with_fusionguard": str(meta.get("fusionguard_version", "unknown")),
        "exporter": EXPORTER,
        "torch_version": torch.__version__,
        "onnxscript_version": _package_version("onnxscript"),
        "onnx_version": onnx.__version__,
        "opset": str(opset),
    }
    contract = ModelContract(
        inputs=specs,
        modalities={str(m): tuple(v) for m, v in dict(model.modalities).items() if v},
        score_output=SCORE_OUTPUT,
        attention_output=ATTENTION_OUTPUT if keys else None,
        attention_heads=int(heads) if heads is not None else None,
        attention_keys=keys,
        variant=str(meta.get("variant", "unknown")),
        provenance=provenance,
    )
    consistency = contract.consistency_problems()
    if consistency:
        raise ContractError(where, consistency)
    return contract


def example_batch_size(contract: ModelContract, at_least: int) -> int:
    """An example batch size >= max(2, at_least) that equals no per-row dimension, so the exporter
    cannot mistake the batch axis for (or unify it with) a static one."""
    static = {d for spec in contract.inputs for d in spec.shape}
    n = max(2, at_least)
    while n in static:
        n += 1
    return n


def torch_outputs(model: torch.nn.Module, contract: ModelContract, feeds: Mapping[str, np.ndarray]):
    """Run the torch model on numpy feeds: (score (N,), attention (N, H, K) | None) as numpy."""
    args = [torch.from_numpy(np.require(feeds[name], requirements=("C", "W"))) for name in contract.input_names]
    with torch.inference_mode():
        score, attention = model(*args)
    return score.detach().numpy(), None if attention is None else attention.detach().numpy()


def check_example_outputs(model: torch.nn.Module, contract: ModelContract, feeds: Mapping[str, np.ndarray]) -> None:
    """Run the model once in torch and check its outputs have the shapes the contract promises,
    before spending seconds on the exporter."""
    n = len(next(iter(feeds.values())))
    score, attention = torch_outputs(model, contract, feeds)
    problems = []
    if score.shape != (n,):
        problems.append(f"score has shape {list(score.shape)} for {n} rows; the seam wants ({n},)")
    if contract.attention_output is None:
        if attention is not None:
            problems.append("the model returns attention but declares no attention_keys/n_heads")
    else:
        expected = (n, contract.attention_heads, contract.n_keys)
        if attention is None:
            problems.append("the model declares attention_keys/n_heads but returns attention=None")
        elif tuple(attention.shape) != expected:
            problems.append(f"attention has shape {list(attention.shape)}; the contract implies {list(expected)}")
    if problems:
        raise ContractError(f"model of variant '{contract.variant}'", problems)


def to_onnx(
    model: torch.nn.Module, contract: ModelContract, example: Mapping[str, np.ndarray], opset: int
) -> onnx.ModelProto:
    """Export `model` with the dynamo exporter and embed `contract` in its metadata_props.

    Args:
        model: a torch module following the seam, in eval mode.
        contract: from `contract_for`; names the graph's inputs and outputs.
        example: input name -> (B, *shape) arrays with B >= 2 (see `example_batch_size`).
        opset: the ONNX opset to target (>= 18).
    Returns:
        The ONNX model, self-contained (weights inside), with the contract written and validated.
    Raises:
        InvalidInputError: the example batch has fewer than two rows.
        ExportFailedError: torch.onnx.export could not convert the model (exit 3).
        ContractError: the exported graph disagrees with the contract.
    """
    rows = {len(v) for v in example.values()}
    if len(rows) != 1 or min(rows) < 2:
        raise InvalidInputError(
            f"the export example needs one batch size >= 2 for every input, got {sorted(rows)}: "
            "a batch-1 example freezes the batch axis to 1"
        )
    names = contract.input_names
    adapter = _Adapter(model, len(names), contract.attention_output is not None).eval()
    args = tuple(torch.from_numpy(np.require(example[name], requirements=("C", "W"))) for name in names)
    batch = torch.export.Dim(BATCH_DIM)
    dynamic_shapes = {name: {0: batch} for name in names}
    outputs = [contract.score_output] + ([contract.attention_output] if contract.attention_output else [])
    try:
        with warnings.catch_warnings():
            # torch's exporter internals emit deprecation notices about its own pytree use.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            # Every input shares the one batch Dim, which the exporter notes once per input.
            warnings.filterwarnings("ignore", message=r".*The axis name: batch will not be used", category=UserWarning)
            program = torch.onnx.export(
                adapter,
                args,
                dynamo=True,
                input_names=list(names),
                output_names=outputs,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
    except torch.onnx.OnnxExporterError as err:
        raise ExportFailedError(
            f"torch.onnx.export (dynamo, opset {opset}) could not convert variant '{contract.variant}': "
            f"{_reason(err)}; keep forward free of data-dependent Python control flow (.item(), float(tensor)) "
            "and unsupported ops, or try another --opset"
        ) from None
    if program is None:  # only the legacy exporter returns None
        raise ExportFailedError("torch.onnx.export returned no ONNX program; the dynamo exporter is required")
    proto = program.model_proto
    logger.info("exported variant %s: %d nodes, opset %s", contract.variant, len(proto.graph.node), opset)
    return write_contract(proto, contract)
