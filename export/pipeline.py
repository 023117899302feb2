"""Export a trained model end to end: contract, ONNX, verification, atomic rename, optional int8.

The model is written to a temporary file in the destination folder and renamed to the requested
name only after every check in `fusionguard.export.verify` passed. A model that fails is renamed to
``<stem>.failed.onnx`` (kept for inspection, never under the requested name) and
`ExportVerificationError` (exit 1) lists the failed checks with their measured numbers.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from fusionguard.dataset import Batch, iter_batches
from fusionguard.errors import ConfigError, InvalidInputError

from fusionguard.export.errors import ExportVerificationError
from fusionguard.export.exporter import MIN_OPSET, check_example_outputs, contract_for, example_batch_size, to_onnx
from fusionguard.export.quantize import QuantizationReport, compare_int8, int8_path, quantize_int8
from fusionguard.export.verify import VerificationReport, report_lines, verify_model

logger = logging.getLogger(__name__)

VAL_FILE = "val.parquet"
QUANTIZE_CHOICES = ("int8",)
REQUIRED_META = ("variant", "config_sha256", "data_sha256", "data_dir")


@dataclass(frozen=True)
class ExportConfig:
    """Options of one export; validated whole by `problems()` before any work starts."""

    opset: int = 18  # ONNX opset the dynamo exporter targets (>= 18)
    quantize: str | None = None  # None, or "int8" to also write <stem>.int8.onnx
    batch_sizes: tuple[int, ...] = (1, 7, 50, 128)  # parity is measured at each batch size
    parity_rows: int = 512  # validation rows compared at each batch size (the first rows of val.parquet)
    tolerance: float = 1e-4  # max abs score (and attention) difference ONNX Runtime vs torch
    tie_tolerance: float = 1e-6  # torch score gaps at or below this count as ties when comparing rankings
    example_rows: int = 3  # rows in the exporter's example batch; >= 2 keeps the batch axis dynamic
    threads: int | None = None  # ONNX Runtime intra-op threads for the checks (None: its default)

    def problems(self) -> list[str]:
        out = []
        max_opset = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= self.opset <= max_opset:
            out.append(f"opset {self.opset} is outside [{MIN_OPSET}, {max_opset}] (dynamo exporter minimum .. installed onnx)")
        if self.quantize is not None and self.quantize not in QUANTIZE_CHOICES:
            out.append(f"quantize '{self.quantize}' is not supported; choose one of {list(QUANTIZE_CHOICES)}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            out.append(f"batch_sizes must be positive integers, got {list(self.batch_sizes)}")
        if self.parity_rows < 2:
            out.append(f"parity_rows must be >= 2, got {self.parity_rows}")
        if not self.tolerance > 0:
            out.append(f"tolerance must be > 0, got {self.tolerance}")
        if not 0 <= self.tie_tolerance < self.tolerance:
            out.append(f"tie_tolerance must be in [0, tolerance), got {self.tie_tolerance}")
        if self.example_rows < 2:
            out.append(f"example_rows must be >= 2 (a batch-1 example freezes the batch axis), got {self.example_rows}")
        if self.threads is not None and self.threads < 1:
            out.append(f"threads must be >= 1, got {self.threads}")
        return out


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` (and `fusionguard.recipes.exporting.export_checkpoint`) wrote and measured."""

    path: Path  # the verified ONNX model
    variant: str
    verification: VerificationReport
    quantization: QuantizationReport | None = None
    provenance: Mapping[str, str] = field(default_factory=dict)
    exit_code: int = 0  # 0: written and verified (failures raise instead)

    @property
    def max_abs_diff(self) -> dict[int, float]:
        """batch size -> max abs score difference ONNX Runtime vs torch."""
        return {p.batch_size: p.max_abs_score_diff for p in self.verification.parity}

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "variant": self.variant,
            "verification": self.verification.to_dict(),
            "quantization": None if self.quantization is None else self.quantization.to_dict(),
            "provenance": dict(self.provenance),
            "exit_code": self.exit_code,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def __str__(self) -> str:
        lines = [f"exported variant '{self.variant}' to {self.path}", "checks:"]
        lines += [f"  {line}" for line in report_lines(self.verification, short={"parity": "see the table below"})]
        lines.append("parity (ONNX Runtime vs torch eager, same rows):")
        lines.append(f"  {'batch':>6} {'rows':>6} {'max|Δscore|':>12} {'max|Δattn|':>12} {'reordered':>10}")
        for p in self.verification.parity:
            attn = "-" if p.max_abs_attention_diff is None else f"{p.max_abs_attention_diff:.2e}"
            lines.append(
                f"  {p.batch_size:>6} {p.rows:>6} {p.max_abs_score_diff:>12.2e} {attn:>12} "
                f"{p.queries_reordered:>4}/{p.queries:<5}"
            )
        if self.quantization is not None:
            q = self.quantization
            lines += [
                f"int8 model {q.path} ({q.int8_bytes / 1024:.0f} KiB vs {q.float_bytes / 1024:.0f} KiB float), "
                f"{q.rows} validation rows, {q.queries} queries, each query scored as one batch:",
                f"  score Pearson {q.pearson:.5f}   mean per-query Spearman {q.spearman:.5f}   max|Δscore| {q.max_abs_score_diff:.3e}",
                f"  NDCG@10 float {q.ndcg10_float:.4f}   int8 {q.ndcg10_int8:.4f}   difference {q.ndcg10_diff:+.4f}",
                f"  int8 scores move by up to {q.batch_sensitivity:.3e} with the batch they share (per-query vs 4096-row batches)",
                "  (no pass/fail: decide from these numbers whether the int8 model is good enough)",
            ]
        return "\n".join(lines)


def _validation_rows(data: Path, contract, rows: int) -> Batch:
    batch = next(iter_batches(data, contract, batch_rows=rows), None)
    if batch is None or len(batch) < 2:
        raise InvalidInputError(f"{data} has fewer than 2 rows; parity against torch needs validation rows")
    return batch


def _file_mode() -> int:
    """0666 minus the process umask: what `open()` would have created."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _meta_problems(meta: Mapping[str, Any]) -> list[str]:
    return [f"meta lacks '{key}'; the checkpoint must record it (fusionguard.training.checkpoint.save_checkpoint)" for key in REQUIRED_META if not meta.get(key)]


def export_model(
    model: torch.nn.Module, meta: Mapping[str, Any], out: str | Path, config: ExportConfig = ExportConfig()
) -> ExportResult:
    """Export a torch model that follows the training seam, verify it, and write it to `out`.

    Args:
        model: the ranker (forward, input_specs, modalities, attention_keys, n_heads).
        meta: checkpoint meta: variant, config_sha256, data_sha256, data_dir (holding val.parquet).
        out: the ONNX file to write (its folder is created).
        config: export options.
    Returns:
        ExportResult with the checks, parity per batch size and optional int8 numbers.
    Raises:
        ConfigError / InvalidInputError (exit 2): bad options, meta or validation data.
        ContractError (exit 2): the model does not describe itself consistently.
        ExportFailedError (exit 3): the exporter could not convert the model.
        ExportVerificationError (exit 1): the model failed a check; kept as <stem>.failed.onnx.
    """
    problems = config.problems() + _meta_problems(meta)
    out = Path(out)
    if out.suffix != ".onnx":
        problems.append(f"output {out} must end in .onnx")
    if out.is_dir():
        problems.append(f"output {out} is a directory; give a file name such as {out / 'model.onnx'}")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        problems.append(f"output {out} cannot be created: {blocking} is a file, not a directory")
    if problems:
        raise ConfigError("export options", problems)
    data = Path(meta["data_dir"]) / VAL_FILE
    if not data.is_file():
        raise InvalidInputError(
            f"validation data {data} (meta data_dir + {VAL_FILE}) does not exist; parity needs real rows: "
            "restore the training data directory or fix data_dir in the checkpoint's meta.json"
        )
    model = model.eval()
    contract = contract_for(model, meta, config.opset)
    rows = _validation_rows(data, contract, max(config.parity_rows, config.example_rows + 2))
    n_example = min(example_batch_size(contract, config.example_rows), len(rows))
    example = {name: rows.feeds[name][:n_example] for name in contract.input_names}
    check_example_outputs(model, contract, example)
    proto = to_onnx(model, contract, example, config.opset)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".partial.onnx")
    except OSError as err:
        raise InvalidInputError(f"cannot write {out} ({err}); pick a writable --out") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        onnx.save(proto, str(tmp))  # one self-contained file: the tiny rankers are far below 2 GiB
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; a served model must be readable by the server's uid
        report = verify_model(
            tmp,
            model,
            contract,
            rows,
            batch_sizes=config.batch_sizes,
            tolerance=config.tolerance,
            tie_tolerance=config.tie_tolerance,
            threads=config.threads,
        )
        if not report.ok:
            failed = out.with_name(f"{out.stem}.failed.onnx")
            os.replace(tmp, failed)
            raise ExportVerificationError(str(out), report.failures(), kept_as=failed)
        os.replace(tmp, out)
        out.with_name(f"{out.stem}.failed.onnx").unlink(missing_ok=True)  # a stale failure from an earlier run
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("wrote %s (variant %s)", out, contract.variant)

    quantization = None
    if config.quantize == "int8":
        q_path = quantize_int8(out, int8_path(out), contract)
        quantization = compare_int8(out, q_path, data, contract, threads=config.threads)
    return ExportResult(out, contract.variant, report, quantization, dict(contract.provenance))
