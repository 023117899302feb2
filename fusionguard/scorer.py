"""The one scorer: an ONNX Runtime session that scores rows with any modalities masked.

The gate, the offline evaluation and the monitor all score through `Scorer`. One call to
`Scorer.run` builds every masked copy of the feeds, stacks them on the batch axis and makes a
single `session.run`, so the unmasked pass and the ablations of a request share one kernel
launch (and, on a GPU, one host-to-device copy).

The concepts around it live in their own modules: what a mask means (`fusionguard.masking`),
feed validation (`fusionguard.feeds`), providers and the session (`fusionguard.session`), and
how a dataset is cut into batches (`fusionguard.batches`). This module re-exports the names it
used to define, so `from fusionguard.scorer import Mask, Scorer, feed_problems` keeps working.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from fusionguard.batches import data_batches, describe, row_count, whole_queries
from fusionguard.contract import ModelContract, load_contract, validate_contract
from fusionguard.dataset import Batch
from fusionguard.devices import DEVICES
from fusionguard.errors import EvaluationError, InvalidInputError, ProblemsError
from fusionguard.feeds import InvalidFeedsError, check_feeds, feed_problems
from fusionguard.iobinding import CudaIOBinding
from fusionguard.masking import STRATEGIES, Mask, fill_masked, permutation
from fusionguard.session import CPU, CUDA, ORT_ERRORS, file_sha256, make_session, select_providers

logger = logging.getLogger(__name__)

SESSION_BATCH_ROWS = 4096  # rows per session.run in score_dataset, counting every masked copy

# Re-exported: the scorer's public surface before feeds, masking and session had modules of their own.
__all__ = [
    "CPU",
    "CUDA",
    "DEVICES",
    "STRATEGIES",
    "SESSION_BATCH_ROWS",
    "Mask",
    "Outputs",
    "Scorer",
    "DatasetScores",
    "InvalidFeedsError",
    "select_providers",
    "feed_problems",
    "check_feeds",
    "permutation",
]


# ----- outputs ---------------------------------------------------------------------------------

@dataclass
class Outputs:
    """One pass's outputs."""

    score: np.ndarray  # (N,) float32
    attention: np.ndarray | None  # (N, H, K) float32, or None when the model has no attention output


# ----- dataset results --------------------------------------------------------------------------

@dataclass
class DatasetScores:
    """Scores of a whole dataset, in its row order."""

    query_id: np.ndarray  # (N,)
    item_id: np.ndarray  # (N,)
    label: np.ndarray  # (N,) int64
    scores: dict[Mask, np.ndarray] = field(default_factory=dict)  # mask -> (N,) float32
    attention: np.ndarray | None = None  # (N, H, K) of the unmasked pass, if run and the model has it

    def __len__(self) -> int:
        return int(self.label.shape[0])


# ----- the scorer -------------------------------------------------------------------------------

class Scorer:
    """An ONNX Runtime session plus the model's contract.

    Attributes:
        path: the model file, or None for an in-memory proto.
        sha256: SHA-256 of the model file's bytes (of the serialised proto when in memory).
        contract: the model contract.
        provider: the execution provider the session got, e.g. "CPUExecutionProvider".
    """

    def __init__(
        self,
        model: str | Path | onnx.ModelProto,
        contract: ModelContract | None = None,
        *,
        sidecar: str | Path | None = None,
        device: str = "auto",
        threads: int | None = None,
    ) -> None:
        """
        Args:
            model: an ONNX file or a loaded proto.
            contract: the contract to use; by default the sidecar's, else the embedded one.
            sidecar: a JSON contract file for models without an embedded contract.
            device: "auto", "cpu" or "cuda" (see `select_providers`).
            threads: ONNX Runtime intra-op threads; None lets ONNX Runtime decide.
        Raises:
            InvalidInputError: unreadable model, bad device/threads, or CUDA required but unusable.
            ContractError: the contract is missing or disagrees with the graph.
        """
        if threads is not None and threads < 1:
            raise InvalidInputError(f"threads must be >= 1 (or None for ONNX Runtime's default), got {threads}")
        if isinstance(model, onnx.ModelProto):
            self.path: Path | None = None
            model_bytes = model.SerializeToString()
            self.sha256 = hashlib.sha256(model_bytes).hexdigest()
            source = "<in-memory model>"
            if contract is None:
                contract = load_contract(model, sidecar)
            else:
                validate_contract(model, contract, source)
            session_input: str | bytes = model_bytes
        else:
            self.path = Path(model)
            if contract is None:
                contract = load_contract(self.path, sidecar)  # also checks that the file exists and parses
            else:
                validate_contract(onnx.load(str(self.path), load_external_data=False), contract, str(self.path))
            self.sha256 = file_sha256(self.path)
            source = str(self.path)
            session_input = str(self.path)
        self.contract: ModelContract = contract
        self.device = device
        self._session = make_session(session_input, source, device, threads)
        self.provider: str = self._session.get_providers()[0]
        self._outputs = [contract.score_output] + ([contract.attention_output] if contract.attention_output else [])
        # On CUDA: I/O binding with pinned staging buffers (fusionguard.iobinding); on CPU, plain run.
        self._binding: CudaIOBinding | None = CudaIOBinding(self._session, self._outputs) if self.provider == CUDA else None
        logger.info("scorer for %s on %s (sha256 %s)", source, self.provider, self.sha256[:12])

    # ----- one batched call ------------------------------------------------------------------
    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        masks: Sequence[Mask] = (Mask(),),
        *,
        groups: np.ndarray | None = None,
        means: Mapping[str, np.ndarray] | None = None,
        max_rows: int | None = None,
    ) -> list[Outputs]:
        """Score `feeds` once per mask with a single session.run (several with `max_rows`).

        Args:
            feeds: input name -> (N, *spec.shape) array in the contract's dtype.
            masks: the passes to run; outputs come back in the same order.
            groups: (N,) query ids; "permute" then shuffles only within a query.
            means: input name -> per-row mean tensor, needed by "mean" masks (`reference_means`).
            max_rows: the most rows one session.run sees (None: no limit). The masked copies are
                then built and scored a few masks at a time, which bounds the memory of the
                stacked inputs and of ONNX Runtime's activations; each mask's copy is the same
                as in one call, so the outputs equal the single call's wherever the model scores
                each row independently of the others in its batch (streaming relies on this;
                tests/gate/test_streaming.py checks it).
        Returns:
            one Outputs per mask, score (N,) float32, attention (N, H, K) or None.
        Raises:
            InvalidFeedsError: the feeds disagree with the contract.
            InvalidInputError: bad masks, groups or means.
            EvaluationError: ONNX Runtime failed, or the outputs have the wrong shape.
        """
        n = check_feeds(self.contract, feeds)
        masks = list(masks)
        self._check_masks(masks, n, groups, means)
        return self._run_checked(feeds, masks, n, groups, means, max_rows)

    def run_valid(self, feeds: Mapping[str, np.ndarray], masks: Sequence[Mask] = (Mask(),)) -> list[Outputs]:
        """`run` for feeds the caller has already validated with `feed_problems` (the monitor does,
        to count each problem's reason) and zero/mean-free masks: the feeds are not checked again.

        Raises:
            EvaluationError: ONNX Runtime failed, or the outputs have the wrong shape.
        """
        n = int(next(iter(feeds.values())).shape[0])
        return self._run_checked(feeds, list(masks), n, None, None)

    def run_many(self, requests: Sequence[tuple[Mapping[str, np.ndarray], Sequence[Mask]]]) -> list[list[Outputs]]:
        """Several validated requests' passes in ONE session.run (the monitor's dynamic batching).

        Each request's masked copies are written, request after request, into one preallocated
        array per input; the outputs are split back in the same order. Row i of a request gets
        the same values as `run_valid(feeds, masks)` would compute when the graph's kernels treat
        rows independently of the batch size (tests/monitor/test_batching.py checks the served
        models; see docs/monitor.md for what is guaranteed).

        Args:
            requests: (feeds, masks) per request; feeds validated, masks zero-strategy or unmasked.
        Returns:
            per request, one Outputs per mask.
        Raises:
            EvaluationError: ONNX Runtime failed, or the outputs have the wrong shape.
        """
        sizes = [int(next(iter(feeds.values())).shape[0]) for feeds, _ in requests]
        if len(requests) == 1:
            return [self._run_checked(requests[0][0], list(requests[0][1]), sizes[0], None, None)]
        total = sum(n * len(masks) for n, (_, masks) in zip(sizes, requests))
        stacked = {
            spec.name: np.empty((total, *spec.shape), dtype=requests[0][0][spec.name].dtype)
            for spec in self.contract.inputs
        }
        start = 0
        for n, (feeds, masks) in zip(sizes, requests):
            self._fill(stacked, start, feeds, list(masks), n, None, None)
            start += n * len(masks)
        score, attention = self._session_run(stacked, total, f"{len(requests)} merged requests")
        out: list[list[Outputs]] = []
        start = 0
        for n, (_, masks) in zip(sizes, requests):
            passes = []
            for _ in masks:
                passes.append(Outputs(score[start:start + n], None if attention is None else attention[start:start + n]))
                start += n
            out.append(passes)
        return out

    def _run_checked(
        self,
        feeds: Mapping[str, np.ndarray],
        masks: list[Mask],
        n: int,
        groups: np.ndarray | None,
        means: Mapping[str, np.ndarray] | None,
        max_rows: int | None = None,
    ) -> list[Outputs]:
        if max_rows is not None and max_rows < 1:
            raise InvalidInputError(f"max_rows must be >= 1, got {max_rows}")
        if max_rows is None or n * len(masks) <= max_rows:
            return self._run_masks(feeds, masks, n, groups, means, None)
        per_call = max(1, max_rows // max(n, 1))  # masks per group
        outputs: list[Outputs] = []
        for i in range(0, len(masks), per_call):
            outputs += self._run_masks(feeds, masks[i:i + per_call], n, groups, means, max_rows)
        return outputs

    def _run_masks(
        self, feeds: Mapping[str, np.ndarray], masks: list[Mask], n: int, groups: np.ndarray | None,
        means: Mapping[str, np.ndarray] | None, max_rows: int | None,
    ) -> list[Outputs]:
        if len(masks) == 1 and masks[0].is_unmasked:
            stacked: Mapping[str, np.ndarray] = feeds
        else:
            stacked = self._stack(feeds, masks, n, groups, means)
        rows = n * len(masks)
        what = f"{n} rows x {len(masks)} masks"
        if max_rows is None or rows <= max_rows:
            score, attention = self._session_run(stacked, rows, what)
        else:
            parts = [self._session_raw({k: v[i:i + max_rows] for k, v in stacked.items()}, what)
                     for i in range(0, rows, max_rows)]
            raw = [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
            score, attention = self._check_outputs(raw, rows)
        return [
            Outputs(
                score=score[i * n:(i + 1) * n],
                attention=None if attention is None else attention[i * n:(i + 1) * n],
            )
            for i in range(len(masks))
        ]

    def _session_run(
        self, feeds: Mapping[str, np.ndarray], rows: int, what: str
    ) -> tuple[np.ndarray, np.ndarray | None]:
        return self._check_outputs(self._session_raw(feeds, what), rows)

    def _session_raw(self, feeds: Mapping[str, np.ndarray], what: str) -> list[np.ndarray]:
        """One session.run (through the CUDA I/O binding when there is one), outputs unchecked."""
        try:
            if self._binding is not None:
                return self._binding.run(feeds)
            return self._session.run(self._outputs, dict(feeds))
        except ORT_ERRORS as err:
            raise EvaluationError(f"ONNX Runtime failed to score {what}: {err}") from None

    def _check_masks(
        self, masks: list[Mask], n: int, groups: np.ndarray | None, means: Mapping[str, np.ndarray] | None
    ) -> None:
        problems: list[str] = []
        if not masks:
            problems.append("no masks given; pass at least Mask() for the unmasked pass")
        known = sorted(m for m in self.contract.modalities if self.contract.modalities[m])
        for mask in masks:
            if not isinstance(mask, Mask):
                problems.append(f"{mask!r} is not a fusionguard.scorer.Mask")
                continue
            unknown = sorted(mask.modalities - set(known))
            if unknown:
                problems.append(f"mask {mask} names modalities {unknown} the model does not have (it has {known})")
            if mask.strategy == "mean" and mask.modalities:
                for name in self._inputs_of(mask):
                    spec = self.contract.input(name)
                    mean = None if means is None else means.get(name)
                    if mean is None:
                        problems.append(
                            f"mask {mask} needs the mean of input '{name}'; pass means=scorer.reference_means(data)"
                        )
                    elif np.shape(mean) != spec.shape:
                        problems.append(f"means['{name}'] has shape {list(np.shape(mean))}; expected {list(spec.shape)}")
        if groups is not None and np.shape(groups) != (n,):
            problems.append(f"groups has shape {list(np.shape(groups))}; expected one query id per row, ({n},)")
        if problems:
            raise ProblemsError("invalid scoring request", problems)

    def _inputs_of(self, mask: Mask) -> list[str]:
        return [name for modality in sorted(mask.modalities) for name in self.contract.modalities.get(modality, ())]

    def _stack(
        self,
        feeds: Mapping[str, np.ndarray],
        masks: list[Mask],
        n: int,
        groups: np.ndarray | None,
        means: Mapping[str, np.ndarray] | None,
    ) -> dict[str, np.ndarray]:
        """The masked copies of every input, stacked on axis 0: rows [i*n, (i+1)*n) are mask i.

        Each block is written in place into one preallocated array per input (no per-mask
        temporaries, no concatenate), which halves the memory traffic of building the batch.
        """
        stacked = {
            spec.name: np.empty((len(masks) * n, *spec.shape), dtype=feeds[spec.name].dtype)
            for spec in self.contract.inputs
        }
        self._fill(stacked, 0, feeds, masks, n, groups, means)
        return stacked

    def _fill(
        self,
        stacked: dict[str, np.ndarray],
        start: int,
        feeds: Mapping[str, np.ndarray],
        masks: list[Mask],
        n: int,
        groups: np.ndarray | None,
        means: Mapping[str, np.ndarray] | None,
    ) -> None:
        """Write the masked copies of `feeds` into rows [start, start + len(masks) * n) of `stacked`."""
        fill_masked(stacked, start, feeds, masks, n, self.contract.modalities, groups, means)

    def _check_outputs(self, raw: list[np.ndarray], rows: int) -> tuple[np.ndarray, np.ndarray | None]:
        score = np.asarray(raw[0])
        if score.shape == (rows, 1):
            score = score.reshape(rows)
        if score.shape != (rows,):
            raise EvaluationError(
                f"model output '{self.contract.score_output}' has shape {list(score.shape)} for {rows} rows; "
                "the contract requires (N,) or (N, 1)"
            )
        attention = None
        if len(raw) > 1:
            attention = np.asarray(raw[1], dtype=np.float32)
            if attention.ndim != 3 or attention.shape[0] != rows:
                raise EvaluationError(
                    f"model output '{self.contract.attention_output}' has shape {list(attention.shape)} for {rows} rows; "
                    "the contract requires (N, H, K)"
                )
        return score.astype(np.float32, copy=False), attention

    # ----- datasets --------------------------------------------------------------------------
    def reference_means(self, data: str | Path | Batch, *, batch_rows: int = 65_536) -> dict[str, np.ndarray]:
        """Per-row mean tensor of each input over a reference set (Parquet path or Batch), for "mean" masks."""
        sums: dict[str, np.ndarray] = {}
        count = 0
        for batch in data_batches(data, self.contract, batch_rows):
            for spec in self.contract.inputs:
                part = batch.feeds[spec.name].sum(axis=0, dtype=np.float64)
                sums[spec.name] = sums[spec.name] + part if spec.name in sums else part
            count += len(batch)
        if count == 0:
            raise InvalidInputError(f"the reference set {describe(data)} has no rows; means need at least one")
        return {spec.name: (sums[spec.name] / count).astype(spec.dtype) for spec in self.contract.inputs}

    def score_dataset(
        self,
        data: str | Path | Batch,
        masks: Sequence[Mask] = (Mask(),),
        *,
        batch_rows: int = SESSION_BATCH_ROWS,
        progress: bool = False,
        means: Mapping[str, np.ndarray] | None = None,
        keep_attention: bool = True,
    ) -> DatasetScores:
        """Score a whole dataset under every mask, streaming it in bounded batches.

        Args:
            data: a Parquet dataset path or a `fusionguard.dataset.Batch`.
            masks: the passes; "permute" shuffles within each query.
            batch_rows: the most rows one session.run sees, counting every masked copy (a batch
                reads batch_rows // len(masks) dataset rows). A query whose rows are contiguous
                in the data is never split between batches, so a batch can exceed this by one
                query; a query whose rows are scattered is permuted within each batch's part.
            progress: show a tqdm bar over the rows.
            means: per-row means for "mean" masks; by default the dataset's own (one extra pass).
            keep_attention: keep the unmasked pass's attention (N, H, K) when the model has it.
        Returns:
            DatasetScores in the dataset's row order.
        """
        masks = list(masks)
        if batch_rows < 1:
            raise InvalidInputError(f"batch_rows must be >= 1, got {batch_rows}")
        if any(m.strategy == "mean" and m.modalities for m in masks) and means is None:
            means = self.reference_means(data)
        rows_per_read = max(1, batch_rows // max(len(masks), 1))
        unmasked = next((i for i, m in enumerate(masks) if m.is_unmasked), None)
        ids: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        parts: list[list[np.ndarray]] = [[] for _ in masks]
        attn_parts: list[np.ndarray] = []
        bar = _progress(progress, row_count(data))
        try:
            for batch in whole_queries(data_batches(data, self.contract, rows_per_read)):
                outs = self.run(batch.feeds, masks, groups=batch.query_id, means=means)
                ids.append((batch.query_id, batch.item_id, batch.label))
                for i, out in enumerate(outs):
                    parts[i].append(out.score)
                if keep_attention and unmasked is not None and outs[unmasked].attention is not None:
                    attn_parts.append(outs[unmasked].attention)
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        if not ids:
            raise InvalidInputError(f"the dataset {describe(data)} has no rows; nothing to score")
        return DatasetScores(
            query_id=np.concatenate([q for q, _, _ in ids]),
            item_id=np.concatenate([it for _, it, _ in ids]),
            label=np.concatenate([lab for _, _, lab in ids]),
            scores={mask: np.concatenate(parts[i]) for i, mask in enumerate(masks)},
            attention=np.concatenate(attn_parts) if attn_parts else None,
        )


# ----- helpers ----------------------------------------------------------------------------------

def _progress(enabled: bool, total: int | None):  # noqa: ANN202
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="row", desc="scoring")
