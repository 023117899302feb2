"""Verification of an exported model before anyone may use it.

Checks, in order (each is passed / failed / skipped, kept apart):

1. ``load``: the file parses as ONNX.
2. ``checker``: ``onnx.checker.check_model(full_check=True)``.
3. ``shape_inference``: ``onnx.shape_inference.infer_shapes(check_type=True, strict_mode=True)``.
4. ``dynamic_batch``: axis 0 of every input and output is symbolic, so any batch size is accepted.
5. ``contract``: the contract read back from the file (``fusionguard.contract.load_contract``, which
   also checks it against the graph) equals the one the exporter meant to write.
6. ``session``: the core scorer (``fusionguard.scorer.Scorer``, ONNX Runtime on the CPU) opens it.
7. ``parity``: at each batch size, ONNX Runtime and torch eager score the same validation rows;
   the max abs difference of score (and attention) must be <= the tolerance and no query may be
   ranked differently. Two candidates whose torch scores are closer than ``tie_tolerance`` count
   as tied: float32 noise between two runtimes may order them either way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from fusionguard.contract import ModelContract, load_contract
from fusionguard.dataset import Batch
from fusionguard.errors import FusionGuardError
from fusionguard.scorer import Scorer

from fusionguard.export.exporter import torch_outputs

logger = logging.getLogger(__name__)

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass(frozen=True)
class Check:
    """The outcome of one verification check."""

    name: str
    outcome: str  # "passed" | "failed" | "skipped"
    detail: str = ""  # what was measured, or why it failed / was skipped


@dataclass(frozen=True)
class BatchParity:
    """ONNX Runtime vs torch eager on the same rows, fed in batches of `batch_size`."""

    batch_size: int
    rows: int  # validation rows compared (in ceil(rows / batch_size) runs)
    max_abs_score_diff: float
    max_abs_attention_diff: float | None  # None for a model without attention output
    queries: int  # queries among the rows
    queries_reordered: int  # queries whose ranking differs between the runtimes
    passed: bool


@dataclass(frozen=True)
class VerificationReport:
    """Every check's outcome plus the parity numbers per batch size."""

    checks: tuple[Check, ...]
    parity: tuple[BatchParity, ...]
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(c.outcome == PASSED for c in self.checks)

    def failures(self) -> list[str]:
        """One line per check that did not pass, with its measured numbers."""
        return [f"{c.name} {c.outcome}: {c.detail}" for c in self.checks if c.outcome != PASSED]

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "tolerance": self.tolerance,
            "checks": [{"name": c.name, "outcome": c.outcome, "detail": c.detail} for c in self.checks],
            "parity": [vars(p).copy() for p in self.parity],
        }


def _reordered_queries(query_id: np.ndarray, reference: np.ndarray, other: np.ndarray, tie_tolerance: float) -> tuple[int, int]:
    """(queries, queries whose order differs): a pair ordered by more than `tie_tolerance` in
    `reference` must keep its strict order in `other`."""
    reference = reference.astype(np.float64)
    other = other.astype(np.float64)
    _, inverse = np.unique(query_id, return_inverse=True)
    n_queries = int(inverse.max()) + 1 if len(inverse) else 0
    reordered = 0
    for q in range(n_queries):
        rows = np.flatnonzero(inverse == q)
        a, b = reference[rows], other[rows]
        above = (a[:, None] - a[None, :]) > tie_tolerance  # (n, n): i clearly above j in the reference
        not_above = (b[:, None] - b[None, :]) <= 0.0  # i not above j in the other runtime
        if np.any(above & not_above):
            reordered += 1
    return n_queries, reordered


def batch_parity(
    scorer: Scorer,
    model: torch.nn.Module,
    contract: ModelContract,
    rows: Batch,
    batch_size: int,
    tolerance: float,
    tie_tolerance: float,
) -> BatchParity:
    """Score `rows` with both runtimes in chunks of `batch_size` and compare."""
    names = contract.input_names
    ort_scores, torch_scores, ort_attn, torch_attn = [], [], [], []
    n = len(rows)
    for start in range(0, n, batch_size):
        feeds = {name: rows.feeds[name][start:start + batch_size] for name in names}
        got = scorer.run(feeds)[0]
        score, attention = torch_outputs(model, contract, feeds)
        ort_scores.append(got.score)
        torch_scores.append(score)
        if contract.attention_output is not None:
            ort_attn.append(got.attention)
            torch_attn.append(attention)
    a, b = np.concatenate(torch_scores), np.concatenate(ort_scores)
    score_diff = float(np.max(np.abs(a.astype(np.float64) - b))) if n else 0.0
    attn_diff = None
    if contract.attention_output is not None and n:
        attn_diff = float(np.max(np.abs(np.concatenate(torch_attn).astype(np.float64) - np.concatenate(ort_attn))))
    queries, reordered = _reordered_queries(rows.query_id, a, b, tie_tolerance)
    passed = bool(
        np.isfinite(score_diff)
        and score_diff <= tolerance
        and (attn_diff is None or (np.isfinite(attn_diff) and attn_diff <= tolerance))
        and reordered == 0
    )
    return BatchParity(batch_size, n, score_diff, attn_diff, queries, reordered, passed)


def _check_dynamic_batch(proto: onnx.ModelProto) -> Check:
    initializers = {init.name for init in proto.graph.initializer}
    fixed = []
    for vi in [*proto.graph.input, *proto.graph.output]:
        if vi.name in initializers:
            continue
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            fixed.append(f"{vi.name} axis 0 = {dims[0].dim_value if dims else 'missing'}")
    if fixed:
        return Check("dynamic_batch", FAILED, f"batch axis is not symbolic: {fixed} (export with an example batch >= 2)")
    return Check("dynamic_batch", PASSED, "axis 0 of every input and output is symbolic")


def verify_model(
    path: str | Path,
    model: torch.nn.Module,
    contract: ModelContract,
    rows: Batch,
    *,
    batch_sizes: Sequence[int] = (1, 7, 50, 128),
    tolerance: float = 1e-4,
    tie_tolerance: float = 1e-6,
    threads: int | None = None,
) -> VerificationReport:
    """Run every check on the ONNX file at `path` against the torch `model` it came from.

    Args:
        path: the exported ONNX file.
        model: the torch module, in eval mode.
        contract: the contract the exporter meant to embed.
        rows: validation rows with feeds for the contract's inputs.
        batch_sizes: parity is measured once per batch size.
        tolerance: max abs score (and attention) difference allowed.
        tie_tolerance: torch score gaps at or below this count as ties when comparing rankings.
        threads: ONNX Runtime intra-op threads (None: its default).
    Returns:
        The report; nothing is raised for a failing model (see `VerificationReport.ok`).
    """
    path = Path(path)
    checks: list[Check] = []
    parity: list[BatchParity] = []

    def finish(*skipped: str) -> VerificationReport:
        checks.extend(Check(name, SKIPPED, "an earlier check failed") for name in skipped)
        return VerificationReport(tuple(checks), tuple(parity), tolerance)

    try:
        proto = onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError and others on a corrupt file
        checks.append(Check("load", FAILED, f"{type(err).__name__}: {err}"))
        return finish("checker", "shape_inference", "dynamic_batch", "contract", "session", "parity")
    checks.append(Check("load", PASSED, f"{len(proto.graph.node)} nodes, opset {[o.version for o in proto.opset_import]}"))

    try:
        onnx.checker.check_model(proto, full_check=True)
        checks.append(Check("checker", PASSED, "check_model(full_check=True)"))
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        checks.append(Check("checker", FAILED, str(err).strip().splitlines()[0]))

    inferred = None
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        checks.append(Check("shape_inference", PASSED, "infer_shapes(check_type=True, strict_mode=True)"))
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as err:
        checks.append(Check("shape_inference", FAILED, str(err).strip().splitlines()[0]))
    checks.append(_check_dynamic_batch(inferred if inferred is not None else proto))

    try:
        found = load_contract(path)
    except FusionGuardError as err:
        checks.append(Check("contract", FAILED, str(err).replace("\n", " ")))
        return finish("session", "parity")
    if found.to_dict() != contract.to_dict():
        expected, got = contract.to_dict(), found.to_dict()
        differing = sorted(k for k in expected if expected[k] != got.get(k))
        checks.append(Check("contract", FAILED, f"the embedded contract differs from the exported one in {differing}"))
        return finish("session", "parity")
    checks.append(Check("contract", PASSED, f"variant '{found.variant}', inputs {list(found.input_names)}"))

    try:
        scorer = Scorer(path, device="cpu", threads=threads)
    except FusionGuardError as err:
        checks.append(Check("session", FAILED, str(err).replace("\n", " ")))
        return finish("parity")
    checks.append(Check("session", PASSED, f"ONNX Runtime {scorer.provider}"))

    try:
        for size in batch_sizes:
            parity.append(batch_parity(scorer, model, contract, rows, size, tolerance, tie_tolerance))
    except FusionGuardError as err:
        checks.append(Check("parity", FAILED, f"scoring failed: {str(err).replace(chr(10), ' ')}"))
        return finish()
    summary = "; ".join(
        f"batch {p.batch_size}: max|Δscore| {p.max_abs_score_diff:.2e}"
        + (f", max|Δattention| {p.max_abs_attention_diff:.2e}" if p.max_abs_attention_diff is not None else "")
        + f", {p.queries_reordered}/{p.queries} queries reordered"
        for p in parity
    )
    outcome = PASSED if parity and all(p.passed for p in parity) else FAILED
    checks.append(Check("parity", outcome, f"{summary} (tolerance {tolerance:g}, {len(rows)} rows)"))
    return finish()


def report_lines(report: VerificationReport, short: dict[str, str] | None = None) -> list[str]:
    """Human-readable lines, one per check; `short` replaces the detail of passed checks by name."""
    short = short or {}
    return [
        f"{c.name:<16} {c.outcome:<8} {short[c.name] if c.outcome == PASSED and c.name in short else c.detail}"
        for c in report.checks
    ]

