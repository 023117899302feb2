"""int8 dynamic quantization (ONNX Runtime) and how far it moves the scores.

Dynamic quantization stores MatMul/Gemm weights as int8 and quantizes activations at run time.
It changes the scores, so there is no pass/fail here: the report gives the numbers (Pearson over
all rows, mean per-query Spearman, NDCG@10 of both models and their difference, on the validation
set, each query scored as its own batch) and the user decides whether the int8 model is good
enough.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from fusionguard.contract import ModelContract, write_contract
from fusionguard.dataset import load_dataset
from fusionguard.errors import InvalidInputError
from fusionguard.metrics import QueryGroups, ndcg_at_k, pearson, spearman_per_query
from fusionguard.scorer import Scorer

from fusionguard.export.errors import ExportVerificationError

logger = logging.getLogger(__name__)

QUANTIZATION = "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)"


@dataclass(frozen=True)
class QuantizationReport:
    """The int8 model against the float model on the same validation rows."""

    path: Path  # the int8 model written
    rows: int  # validation rows scored by both models
    queries: int  # queries among them with a relevant item (NDCG is defined)
    pearson: float  # Pearson correlation of the two score vectors over all rows
    spearman: float  # mean per-query Spearman correlation (queries with constant scores left out)
    ndcg10_float: float  # mean NDCG@10 of the float model
    ndcg10_int8: float  # mean NDCG@10 of the int8 model
    ndcg10_diff: float  # int8 minus float
    max_abs_score_diff: float
    batch_sensitivity: float  # max abs change of an int8 score between per-query batches and 4096-row batches
    float_bytes: int  # file sizes
    int8_bytes: int

    def to_dict(self) -> dict:
        d = vars(self).copy()
        d["path"] = str(self.path)
        return d


def _drop_preprocessing_advice(record: logging.LogRecord) -> bool:
    """quantize_dynamic logs, on the root logger, advice to run its pre-processing (meant for
    static quantization of conv nets); the report below measures the effect instead."""
    return not record.getMessage().startswith("Please consider to run pre-processing")


def int8_path(float_path: Path) -> Path:
    """model.onnx -> model.int8.onnx"""
    return float_path.with_name(f"{float_path.stem}.int8{float_path.suffix or '.onnx'}")


def quantize_int8(float_path: str | Path, out: str | Path, contract: ModelContract) -> Path:
    """Write an int8 dynamically quantized copy of `float_path` to `out`, contract preserved.

    The contract keeps the float model's facts and adds `provenance.quantization`. The file is
    written under a temporary name and renamed once it passes the checker and strict shape
    inference.

    Raises:
        ExportVerificationError: the quantized model fails the checker or shape inference.
    """
    float_path, out = Path(float_path), Path(out)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".partial.onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        source = onnx.load(str(float_path))
        # The exporter's value_info records Gemm weight shapes; quantize_dynamic rewrites Gemm into
        # MatMul with transposed weights under the same names, and the stale entries then clash
        # with its own shape inference. Dropping them lets ONNX Runtime infer everything afresh.
        del source.graph.value_info[:]
        root = logging.getLogger()
        root.addFilter(_drop_preprocessing_advice)
        try:
            quantize_dynamic(source, tmp, weight_type=QuantType.QInt8)
        finally:
            root.removeFilter(_drop_preprocessing_advice)
        proto = onnx.load(str(tmp))
        quantized = replace(contract, provenance={**dict(contract.provenance), "quantization": QUANTIZATION})
        write_contract(proto, quantized)
        try:
            onnx.checker.check_model(proto, full_check=True)
            onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
            raise ExportVerificationError(str(out), [f"int8 model: {str(err).strip().splitlines()[0]}"]) from None
        onnx.save(proto, str(tmp))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; the server's uid must read the model
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _per_query(scorer: Scorer, feeds: dict[str, np.ndarray], query_rows: list[np.ndarray], n: int) -> np.ndarray:
    """Scores with one session.run per query, as a serving request would send them."""
    out = np.empty(n, dtype=np.float64)
    for rows in query_rows:
        out[rows] = scorer.run({name: value[rows] for name, value in feeds.items()})[0].score
    return out


def compare_int8(
    float_path: Path, int8_model: Path, data: Path, contract: ModelContract, *, threads: int | None = None
) -> QuantizationReport:
    """Score the validation set with both models (the core scorer, CPU) and compare.

    Each query is scored as its own batch, as a ranking request would be: dynamic quantization
    picks the activation scale from the whole batch, so an int8 score depends on which other
    rows share its batch (`batch_sensitivity` measures by how much).
    """
    batch = load_dataset(data, contract)
    n = len(batch)
    if n == 0:
        raise InvalidInputError(f"{data} has no rows; the quantization report needs validation rows")
    feeds = {name: batch.feeds[name] for name in contract.input_names}
    _, inverse = np.unique(batch.query_id, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    query_rows = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    ref_scorer = Scorer(float_path, device="cpu", threads=threads)
    int8_scorer = Scorer(int8_model, device="cpu", threads=threads)
    a = _per_query(ref_scorer, feeds, query_rows, n)
    b = _per_query(int8_scorer, feeds, query_rows, n)
    chunk = 4096  # the core scorer's default rows per session.run
    whole = np.concatenate(
        [int8_scorer.run({k: v[i:i + chunk] for k, v in feeds.items()})[0].score for i in range(0, n, chunk)]
    )
    groups = QueryGroups.from_arrays(batch.query_id, batch.item_id, batch.label)
    ndcg_a = ndcg_at_k(groups, a, k=10)
    ndcg_b = ndcg_at_k(groups, b, k=10)
    defined = ~np.isnan(ndcg_a)
    spearman = spearman_per_query(groups, a, b)
    return QuantizationReport(
        path=int8_model,
        rows=n,
        queries=int(defined.sum()),
        pearson=float(pearson(a, b)),
        spearman=float(np.nanmean(spearman)) if np.any(~np.isnan(spearman)) else float("nan"),
        ndcg10_float=float(np.nanmean(ndcg_a)) if defined.any() else float("nan"),
        ndcg10_int8=float(np.nanmean(ndcg_b)) if defined.any() else float("nan"),
        ndcg10_diff=float(np.nanmean(ndcg_b - ndcg_a)) if defined.any() else float("nan"),
        max_abs_score_diff=float(np.max(np.abs(a - b))),
        batch_sensitivity=float(np.max(np.abs(whole - b))),
        float_bytes=float_path.stat().st_size,
        int8_bytes=int8_model.stat().st_size,
    )
