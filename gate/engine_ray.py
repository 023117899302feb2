"""The Ray engine: an actor pool of ONNX Runtime scorers reads and reduces the eval set.

`ray_partials` is the Ray counterpart of the local engine's producer (gate/streaming.py):

1. The driver opens the dataset (`fusionguard.source.ParquetSource`: a file, a directory of
   files or a URI pyarrow's filesystems understand), reads its ``query_id`` column only and
   computes where the local engine's whole-query batches end (`fusionguard.streaming.batch_ends`).
   A query whose rows are not one contiguous run is refused there (`UnsortedDataError`, exit 2),
   before any actor starts. The batches must be the local engine's: the ``permute`` masks
   shuffle within a batch, so equal batches are what makes the numbers equal to the last bit.
2. Consecutive batches are grouped into spans of about `SPAN_ROWS` rows. Each span goes to one
   actor as a few integers (its first row and its batch ends); the actor reads those rows itself
   from the dataset, through the same pyarrow filesystem, cuts them into the same batches,
   scores each under every mask on its own ONNX Runtime session (one CPU each, or one GPU each
   with ``--device cuda``) and reduces it to per-query values (`fusionguard.gate.streaming.reduce_batch`).
3. The driver takes the spans' partials back in dataset order (so the reduction does not depend
   on which actor finished first), at most two spans per actor in flight, and
   `fusionguard.gate.streaming.assemble` turns them into the measures the checks read, as locally.

Only ids and small partials cross the network: the input tensors are read where they are
scored. The actors must see the dataset at the same URI as the driver (shared storage, an
object store URI, or a local file on a one-machine cluster).

Why not Ray Data's ``read_parquet``: its blocks do not follow the local engine's batch cuts (the
permute shuffles would differ), and with Ray 2.60 its ``iter_batches`` returned a multi-row-group
file's row groups out of order even with ``preserve_order`` set (found by benchmarks/streaming.py;
the row-level correlations came out misaligned). Reading explicit row ranges keeps both exact;
`assemble` still checks the row order against the ids and refuses a mismatch.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard.contract import ModelContract
from fusionguard.engine import EngineConfig, connect, get, pool_size
from fusionguard.errors import InvalidInputError
from fusionguard.scorer import Mask, Scorer
from fusionguard.source import ParquetSource
from fusionguard.streaming import batch_ends, sized_chunks

from fusionguard.gate.measures import PassPlan
from fusionguard.gate.policy import Policy
from fusionguard.gate.partials import BatchPartial, chunk_rows, reduce_batch

logger = logging.getLogger(__name__)

SPAN_ROWS = 65_536  # rows one actor task reads and reduces (a range starting mid row group decodes it from its start)

__all__ = ["SPAN_ROWS", "ScorerActor", "plan_spans", "ray_partials"]


class ScorerActor:
    """One ONNX Runtime session in a Ray actor; reads and reduces spans of whole-query batches."""

    def __init__(self, model: bytes, contract: ModelContract, device: str) -> None:
        import onnx

        self.scorer = Scorer(onnx.load_from_string(model), contract, device=device, threads=1)

    def reduce_span(self, source: ParquetSource, start: int, ends: np.ndarray, masks: list[Mask], plan: PassPlan | None,
                    policy: Policy, features: bool, means: dict[str, np.ndarray] | None) -> list[BatchPartial]:
        """Rows [start, ends[-1]) read here, cut at `ends`, each batch reduced."""
        sizes = np.diff(np.concatenate(([start], ends))).tolist()
        batches = sized_chunks(source.read(start, int(ends[-1]), self.scorer.contract), sizes)
        return [reduce_batch(self.scorer, b, masks, plan, policy, features=features, means=means) for b in batches]

    def provider(self) -> str:
        return self.scorer.provider


def plan_spans(ends: np.ndarray, span_rows: int) -> list[tuple[int, np.ndarray]]:
    """Consecutive batches grouped into spans of at least `span_rows` rows (the last may be
    shorter): [(first row, the span's batch ends)]."""
    spans = []
    start, first = 0, 0
    for i, end in enumerate(ends.tolist()):
        if end - start >= span_rows or i == len(ends) - 1:
            spans.append((start, ends[first:i + 1]))
            start, first = end, i + 1
    return spans


def ray_partials(
    scorer: Scorer, data: str | Path, masks: list[Mask], plan: PassPlan | None, policy: Policy, engine: EngineConfig,
    features: bool, progress: bool,
) -> Iterator[BatchPartial]:
    """The Ray engine's partials, in dataset order (the producer `fusionguard.gate.streaming.stream_measures` consumes)."""
    if scorer.path is None:
        raise InvalidInputError("the Ray engine needs a model file")
    source = ParquetSource.open(data)
    ids = [b.query_id for b in source.ids()]
    query_id = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    del ids
    ends = batch_ends(query_id, chunk_rows(policy, masks), data)  # refuses split queries before Ray starts
    del query_id
    if ends.shape[0] == 0:
        return
    means = source.input_means(scorer.contract) if any(m.strategy == "mean" and m.modalities for m in masks) else None
    ray = connect(engine.ray_address)
    device = scorer.device
    cuda = device == "cuda"
    size = pool_size(ray, engine, device)
    spans = plan_spans(ends, min(SPAN_ROWS, max(1, source.n_rows // (2 * size))))  # >= 2 spans per actor when it can
    model = ray.put(Path(scorer.path).read_bytes())
    remote = ray.remote(ScorerActor).options(num_cpus=0 if cuda else 1, num_gpus=1 if cuda else 0)
    actors = [remote.remote(model, scorer.contract, device) for _ in range(size)]
    source_ref = ray.put(source)
    logger.info("ray engine: %d actor(s) on %s, %d span(s) of %d batches", size, device, len(spans), ends.shape[0])
    bar = _bar(progress, source.n_rows)
    try:
        pending: deque = deque()
        for i, (start, span_ends) in enumerate(spans):
            pending.append(actors[i % size].reduce_span.remote(source_ref, start, span_ends, masks, plan, policy,
                                                               features, means))
            if len(pending) >= 2 * size:
                yield from _take(ray, pending.popleft(), bar)
        while pending:
            yield from _take(ray, pending.popleft(), bar)
    finally:
        if bar is not None:
            bar.close()
        for actor in actors:
            ray.kill(actor)


def _take(ray: Any, ref: Any, bar: Any) -> Iterator[BatchPartial]:
    parts = get(ray, ref)
    if bar is not None:
        bar.update(sum(p.label.shape[0] for p in parts))
    yield from parts


def _bar(progress: bool, total: int):  # noqa: ANN202
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="row", desc="scoring (ray)")
