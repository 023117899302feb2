"""The one scorer: an ONNX Runtime session that scores rows with any modalities masked.

The gate, the offline evaluation and the monitor all score through `Scorer`. One call to
`Scorer.run` builds every masked copy of the feeds, stacks them on the batch axis and makes a
single `session.run`, so the unmasked pass and the ablations of a request share one kernel
launch (and, on a GPU, one host-to-device copy).

Masking strategies (DESIGN.md, "Modality ablation drop"); masking a modality masks every input
the contract lists under it:
- ``zero``: the inputs are replaced by zeros;
- ``mean``: by the per-row mean tensor of a reference set (`Scorer.reference_means`);
- ``permute``: rows are shuffled across candidates, within each query when `groups` is given,
  with a numpy Generator seeded by `Mask.seed`. All inputs of one modality get the same
  permutation (so a candidate's tokens stay together); each masked modality draws its own.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from fusionguard.contract import ModelContract, load_contract, validate_contract
from fusionguard.dataset import Batch, iter_batches, open_parquet
from fusionguard.errors import EvaluationError, InvalidInputError, ProblemsError
from fusionguard.iobinding import CudaIOBinding

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
STRATEGIES = ("zero", "mean", "permute")
DEFAULT_BATCH_ROWS = 4096  # rows per session.run in score_dataset, counting every masked copy

# The exceptions ONNX Runtime raises from C++ (they derive from Exception, not RuntimeError).
_ORT_ERRORS: tuple[type[BaseException], ...] = (RuntimeError,) + tuple(
    getattr(_ort_state, name)
    for name in (
        "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
        "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail",
    )
    if isinstance(getattr(_ort_state, name, None), type)
)

__all__ = [
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


# ----- masks and outputs ------------------------------------------------------------------------

@dataclass(frozen=True)
class Mask:
    """Which modalities to mask in one pass, and how. Hashable, so it keys result dicts."""

    modalities: frozenset[str] = frozenset()  # empty = the real, unmasked pass
    strategy: str = "zero"  # "zero" | "mean" | "permute"
    seed: int = 0  # for "permute"

    def __post_init__(self) -> None:
        if isinstance(self.modalities, str):  # Mask("visual") would otherwise become {"v", "i", ...}
            object.__setattr__(self, "modalities", frozenset({self.modalities}))
        elif not isinstance(self.modalities, frozenset):
            object.__setattr__(self, "modalities", frozenset(self.modalities))
        if self.strategy not in STRATEGIES:
            raise InvalidInputError(f"mask strategy '{self.strategy}' is unknown; use one of {list(STRATEGIES)}")

    @property
    def is_unmasked(self) -> bool:
        return not self.modalities

    def __str__(self) -> str:
        if not self.modalities:
            return "full"
        seed = f"/seed{self.seed}" if self.strategy == "permute" else ""
        return f"-{'+'.join(sorted(self.modalities))}({self.strategy}{seed})"


@dataclass
class Outputs:
    """One pass's outputs."""

    score: np.ndarray  # (N,) float32
    attention: np.ndarray | None  # (N, H, K) float32, or None when the model has no attention output


# ----- providers --------------------------------------------------------------------------------

def select_providers(device: str = "auto") -> list[str]:
    """The provider list to ask ONNX Runtime for.

    Args:
        device: "auto" (CUDA when onnxruntime-gpu is installed and sees a GPU, else CPU),
            "cpu", or "cuda" (CUDA required).
    Raises:
        InvalidInputError: an unknown device, or "cuda" when the CUDA provider is unavailable.
    """
    if device not in DEVICES:
        raise InvalidInputError(f"device '{device}' is unknown; use one of {list(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise InvalidInputError(
            f"device 'cuda' was requested but ONNX Runtime offers only {available}; install the 'gpu' extra "
            "(onnxruntime-gpu, never together with onnxruntime) on a machine with an NVIDIA GPU, or use --device cpu"
        )
    return [CPU]


# ----- feed validation (shared with the monitor's HTTP path) --------------------------------------

class InvalidFeedsError(ProblemsError):
    """Model inputs that do not match the contract. `reasons` holds one low-cardinality tag per
    problem (missing_input, unexpected_input, not_an_array, wrong_dtype, wrong_shape,
    row_mismatch, empty, non_finite), e.g. for a Prometheus label."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.reasons = tuple(reason for reason, _ in problems)
        super().__init__("invalid model inputs", [message for _, message in problems])


def feed_problems(contract: ModelContract, feeds: Mapping[str, object]) -> list[tuple[str, str]]:
    """Every way `feeds` disagrees with the contract, as (reason, message) pairs; [] when fine."""
    problems: list[tuple[str, str]] = []
    expected = list(contract.input_names)
    for name in expected:
        if name not in feeds:
            problems.append(("missing_input", f"input '{name}' is missing; the model needs {expected}"))
    for name in feeds:
        if name not in expected:
            problems.append(("unexpected_input", f"input '{name}' is not a model input; the model takes {expected}"))
    rows: dict[str, int] = {}
    for spec in contract.inputs:
        value = feeds.get(spec.name)
        if value is None:
            continue
        if not isinstance(value, np.ndarray):
            problems.append(("not_an_array", f"input '{spec.name}' is a {type(value).__name__}; pass a numpy array"))
            continue
        want = ("N", *spec.shape)
        if value.dtype != np.dtype(spec.dtype):
            problems.append(
                ("wrong_dtype", f"input '{spec.name}' has dtype {value.dtype}; the contract says {spec.dtype} "
                 f"(convert with .astype('{spec.dtype}'))")
            )
        if value.ndim != 1 + len(spec.shape) or tuple(value.shape[1:]) != spec.shape:
            problems.append(
                ("wrong_shape", f"input '{spec.name}' has shape {list(value.shape)}; the contract says "
                 f"{list(want)} (N rows, one per candidate)")
            )
            continue
        rows[spec.name] = int(value.shape[0])
        # a finite sum proves every value finite without a full-size boolean temporary; only a
        # non-finite sum (a NaN/inf, or an overflow) pays for the exact count
        if value.dtype.kind == "f" and not _sum_is_finite(value):
            bad = ~np.isfinite(value)
            n_bad = int(np.count_nonzero(bad))
            if n_bad:
                first_row = int(np.argwhere(bad)[0][0])
                problems.append(
                    ("non_finite", f"input '{spec.name}' holds {n_bad} NaN/inf values (first in row {first_row}); "
                     "every value must be finite")
                )
    if len(set(rows.values())) > 1:
        problems.append(("row_mismatch", f"inputs disagree on the number of rows N: {rows}; axis 0 must count the same candidates"))
    elif rows and next(iter(rows.values())) == 0:
        problems.append(("empty", "the inputs have 0 rows; send at least one candidate"))
    return problems


def _sum_is_finite(value: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(value.sum()))


def check_feeds(contract: ModelContract, feeds: Mapping[str, object]) -> int:
    """Validate `feeds` against the contract and return the number of rows N.

    Raises:
        InvalidFeedsError: (exit 2) listing every problem, each naming its tensor.
    """
    problems = feed_problems(contract, feeds)
    if problems:
        raise InvalidFeedsError(problems)
    return int(next(iter(feeds.values())).shape[0])  # type: ignore[union-attr]


def permutation(n: int, seed: int | np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """A random permutation of range(n) that maps each row to a row of the same group.

    perm[i] is the row whose values row i receives. Without groups it is rng.permutation(n).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if groups is None:
        return rng.permutation(n)
    return _GroupOrder(groups).permutation(rng)


class _GroupOrder:
    """The query-group structure of a batch, computed once and reused by every permuted mask.

    `permutation(rng)` is, for a given generator state, the same permutation whatever integer
    labels the groups get: within each group the k-th row (in row order) receives the row of
    that group with the k-th smallest random key, so only the partition into groups matters.
    """

    def __init__(self, groups: np.ndarray) -> None:
        self.codes = _group_codes(np.asarray(groups))
        self.n = int(self.codes.shape[0])
        # Rows sorted by group; None when the groups are already contiguous and in label order.
        self.by_group = None if bool(np.all(self.codes[1:] >= self.codes[:-1])) else np.argsort(self.codes, kind="stable")
        # Whether a group label fits above the 53 random bits of a uint64 sort key.
        self.packable = self.n == 0 or int(self.codes.max()) < 2**11

    def permutation(self, rng: np.random.Generator) -> np.ndarray:
        keys = rng.random(self.n)
        if self.packable:
            # rng.random returns k * 2^-53 for an integer k < 2^53, so (code << 53) | k orders rows
            # exactly as lexsort((keys, codes)) does, ties included (both stable), in one integer sort.
            packed = (self.codes.astype(np.uint64) << np.uint64(53)) | (keys * 2.0**53).astype(np.uint64)
            shuffled = np.argsort(packed, kind="stable")
        else:
            shuffled = np.lexsort((keys, self.codes))  # rows sorted by group, random inside each group
        if self.by_group is None:
            return shuffled
        perm = np.empty(self.n, dtype=np.int64)
        perm[self.by_group] = shuffled  # the k-th row of a group receives the k-th shuffled row of that group
        return perm


def _group_codes(groups: np.ndarray) -> np.ndarray:
    """(n,) int64 labels, equal exactly for rows of the same group.

    Queries usually arrive as contiguous runs of rows: then the run index is the label, found with
    one vectorised comparison of neighbours (no sort of, say, string ids). A group split over
    several runs falls back to `np.unique`.
    """
    g = groups.reshape(-1)
    if g.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if g.dtype.kind in "iubUSO":
        change = np.asarray(g[1:] != g[:-1], dtype=bool)
        starts = g[np.concatenate(([0], np.flatnonzero(change) + 1))]
        if len(set(starts.tolist())) == starts.shape[0]:  # every group is one run
            codes = np.empty(g.shape[0], dtype=np.int64)
            codes[0] = 0
            np.cumsum(change, out=codes[1:])
            return codes
    _, codes = np.unique(g, return_inverse=True)
    return codes.reshape(-1).astype(np.int64, copy=False)


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
            self.sha256 = _file_sha256(self.path)
            source = str(self.path)
            session_input = str(self.path)
        self.contract: ModelContract = contract
        self.device = device
        self._session = _make_session(session_input, source, device, threads)
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
        except _ORT_ERRORS as err:
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
        # Group labels once per batch, shared by every permuted mask and modality.
        order = _GroupOrder(groups) if groups is not None and any(m.strategy == "permute" for m in masks) else None
        for i, mask in enumerate(masks):
            masked: dict[str, np.ndarray | None] = {}  # input -> row permutation (None for zero/mean)
            rng = np.random.default_rng(mask.seed)
            for modality in sorted(mask.modalities):
                perm = None
                if mask.strategy == "permute":
                    perm = order.permutation(rng) if order is not None else rng.permutation(n)
                for name in self.contract.modalities[modality]:
                    masked[name] = perm
            for name, x in ((spec.name, feeds[spec.name]) for spec in self.contract.inputs):
                block = stacked[name][start + i * n:start + (i + 1) * n]
                if name not in masked:
                    block[...] = x
                elif mask.strategy == "zero":
                    block.fill(0)
                elif mask.strategy == "mean":
                    block[...] = np.asarray(means[name], dtype=x.dtype)  # type: ignore[index]
                else:
                    np.take(x, masked[name], axis=0, out=block)

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
        for batch in self._batches(data, batch_rows):
            for spec in self.contract.inputs:
                part = batch.feeds[spec.name].sum(axis=0, dtype=np.float64)
                sums[spec.name] = sums[spec.name] + part if spec.name in sums else part
            count += len(batch)
        if count == 0:
            raise InvalidInputError(f"the reference set {_describe(data)} has no rows; means need at least one")
        return {spec.name: (sums[spec.name] / count).astype(spec.dtype) for spec in self.contract.inputs}

    def score_dataset(
        self,
        data: str | Path | Batch,
        masks: Sequence[Mask] = (Mask(),),
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
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
        bar = _progress(progress, _row_count(data))
        try:
            for batch in _whole_queries(self._batches(data, rows_per_read)):
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
            raise InvalidInputError(f"the dataset {_describe(data)} has no rows; nothing to score")
        return DatasetScores(
            query_id=np.concatenate([q for q, _, _ in ids]),
            item_id=np.concatenate([it for _, it, _ in ids]),
            label=np.concatenate([lab for _, _, lab in ids]),
            scores={mask: np.concatenate(parts[i]) for i, mask in enumerate(masks)},
            attention=np.concatenate(attn_parts) if attn_parts else None,
        )

    def _batches(self, data: str | Path | Batch, batch_rows: int) -> Iterator[Batch]:
        """Non-empty Batches of at most batch_rows rows from a path or an in-memory Batch."""
        if isinstance(data, Batch):
            n = len(data)
            for start in range(0, n, batch_rows):
                yield _slice(data, start, min(start + batch_rows, n))
        elif isinstance(data, (str, Path)):
            # Exact chunks across row-group ends: the same batches as for the loaded dataset, so
            # "permute" shuffles and "mean" sums do not depend on how the file was written.
            from fusionguard.streaming import fixed_chunks  # pyarrow: not in the serving install

            yield from fixed_chunks((b for b in iter_batches(data, self.contract, batch_rows=batch_rows) if len(b)), batch_rows)
        else:
            raise InvalidInputError(
                f"cannot score a {type(data).__name__}; pass a Parquet dataset path or a fusionguard.dataset.Batch"
            )


# ----- helpers ----------------------------------------------------------------------------------

def _make_session(model: str | bytes, source: str, device: str, threads: int | None) -> ort.InferenceSession:
    providers = select_providers(device)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except _ORT_ERRORS as err:
        if providers[0] != CUDA:
            raise InvalidInputError(f"ONNX Runtime cannot load {source}: {err}") from None
        if device == "cuda":
            raise InvalidInputError(
                f"device 'cuda' was requested but ONNX Runtime could not create a CUDA session for {source} ({err}); "
                "check the CUDA/cuDNN libraries that onnxruntime-gpu needs, or use --device cpu"
            ) from None
        logger.warning("CUDA session for %s failed (%s); falling back to the CPU provider", source, err)
        return _make_session(model, source, "cpu", threads)
    got = session.get_providers()
    if providers[0] == CUDA and (not got or got[0] != CUDA):
        if device == "cuda":
            raise InvalidInputError(
                f"device 'cuda' was requested but the session for {source} got {got}; check the CUDA/cuDNN "
                "libraries that onnxruntime-gpu needs, or use --device cpu"
            )
        logger.warning("CUDA provider is installed but unusable for %s (session got %s); using the CPU", source, got)
    return session


def _file_sha256(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(
        query_id=batch.query_id[start:stop],
        item_id=batch.item_id[start:stop],
        label=batch.label[start:stop],
        feeds={name: value[start:stop] for name, value in batch.feeds.items()},
    )


def _concat(a: Batch, b: Batch) -> Batch:
    return Batch(
        query_id=np.concatenate([a.query_id, b.query_id]),
        item_id=np.concatenate([a.item_id, b.item_id]),
        label=np.concatenate([a.label, b.label]),
        feeds={name: np.concatenate([a.feeds[name], b.feeds[name]]) for name in a.feeds},
    )


def _whole_queries(batches: Iterator[Batch]) -> Iterator[Batch]:
    """Re-cut batches so that a query whose rows are contiguous is never split between two
    batches: the trailing rows of each batch that share its last query id move to the next."""
    carry = None
    for batch in batches:
        if carry is not None:
            batch = _concat(carry, batch)
            carry = None
        qid = batch.query_id
        others = np.flatnonzero(qid != qid[-1])
        start = int(others[-1]) + 1 if others.size else 0  # first row of the trailing run of the last query
        if start == 0:  # the whole batch is one query: keep accumulating
            carry = batch
            continue
        if start < len(batch):
            carry = _slice(batch, start, len(batch))
            batch = _slice(batch, 0, start)
        yield batch
    if carry is not None:
        yield carry


def _row_count(data: object) -> int | None:
    if isinstance(data, (str, Path)):
        return int(open_parquet(data).metadata.num_rows)
    length = getattr(data, "__len__", None)
    return int(length()) if length is not None else None


def _progress(enabled: bool, total: int | None):  # noqa: ANN202
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="row", desc="scoring")


def _describe(data: object) -> str:
    return str(data) if isinstance(data, (str, Path)) else f"<{type(data).__name__}>"
