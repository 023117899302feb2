"""The Ray engine: Ray Data reads the eval set in whole-query spans, an actor pool of ONNX
Runtime scorers reduces them, the driver assembles the local engine's measures.

`ray_partials` is the Ray counterpart of the local engine's producer (gate/streaming.py):

1. The driver opens the dataset (`fusionguard.source.ParquetSource`: a file, a directory of
   files or a URI pyarrow's filesystems understand), reads its ``query_id`` column only and
   computes where the local engine's whole-query batches end (`fusionguard.streaming.batch_ends`).
   A query whose rows are not one contiguous run is refused there (`UnsortedDataError`, exit 2),
   before Ray starts any work. The batches must be the local engine's: the ``permute`` masks
   shuffle within a batch, so equal batches are what makes the numbers equal to the last bit.
2. Consecutive batches are grouped into spans of about `SPAN_ROWS` rows, and the spans become a
   Ray Data dataset (`fusionguard.raydata.SpanDatasource`, read with ``ray.data.read_datasource``):
   one read task per span reads the span's rows of the needed columns through the dataset's
   pyarrow filesystem, wherever Ray schedules it, and produces them as one Arrow block.
3. ``map_batches`` runs `SpanReducer` in an actor pool (`ray.data.ActorPoolStrategy`; one CPU
   per actor, or one GPU per actor with ``--device cuda``), one block per call: the actor cuts the
   block into the span's batches, scores each under every mask on its own ONNX Runtime session
   and reduces it to per-query values (`fusionguard.gate.partials.reduce_batch`). Ray Data fuses
   the read into the actors' tasks, so the rows are decoded where they are scored; only the small
   partials (pickled, one row per span) travel to the driver.
4. The driver takes the spans' partials back, puts them in dataset order (so the reduction does
   not depend on which actor finished first) and `fusionguard.gate.streaming.assemble` turns
   them into the measures the checks read, as locally.

Block shaping is off for the run (one block per read task) and every actor checks that its block
is exactly one whole span, refusing anything else instead of scoring part of a batch
(fusionguard/raydata.py). The actors must see the dataset at the same URI
as the driver (shared storage, an object store URI, or a local file on a one-machine cluster).

Why spans rather than ``ray.data.read_parquet``: its blocks do not follow the local engine's batch
cuts (the permute shuffles would differ), and with Ray 2.60 its ``iter_batches`` returned a
multi-row-group file's row groups out of order even with ``preserve_order`` set (found by
benchmarks/streaming.py). `assemble` still checks the row order against the ids.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard.contract import ModelContract
from fusionguard.dataset import _resolve_inputs
from fusionguard.engine import EngineConfig, connect, pool_size
from fusionguard.errors import InvalidInputError
from fusionguard.raydata import (
    actor_scorer, block_batches, data_context, ordered_results, plan_spans, result_row, span_actor_pool, span_of,
)
from fusionguard.scorer import Mask, Scorer
from fusionguard.source import ParquetSource
from fusionguard.streaming import batch_ends, sized_chunks

from fusionguard.gate.measures import PassPlan
from fusionguard.gate.policy import Policy
from fusionguard.gate.partials import BatchPartial, chunk_rows, reduce_batch

logger = logging.getLogger(__name__)

SPAN_ROWS = 65_536  # rows per read task / actor call (a range starting mid row group decodes it from its start)

__all__ = ["SPAN_ROWS", "SpanReducer", "plan_spans", "ray_partials"]


class SpanReducer:
    """The ``map_batches`` callable of the actor pool: one ONNX Runtime session per actor; each
    call takes one span's block and returns its partials (`fusionguard.raydata.result_row`)."""

    def __init__(self, model: bytes, contract: ModelContract, device: str, spans: list[tuple[int, np.ndarray]],
                 masks: list[Mask], plan: PassPlan | None, policy: Policy, features: bool,
                 means: dict[str, np.ndarray] | None, uri: str) -> None:
        self.scorer = actor_scorer(model, contract, device)
        self.spans, self.masks, self.plan, self.policy = spans, masks, plan, policy
        self.ranges = [(start, int(ends[-1])) for start, ends in spans]
        self.features, self.means, self.uri = features, means, uri
        self.wanted = _resolve_inputs(contract, None)

    def __call__(self, table: Any) -> Any:  # a pyarrow Table in, one out
        index = span_of(table, self.ranges)
        start, ends = self.spans[index]
        sizes = np.diff(np.concatenate(([start], ends))).tolist()
        batches = block_batches(table, self.wanted, self.uri)
        parts = [reduce_batch(self.scorer, b, self.masks, self.plan, self.policy, features=self.features,
                              means=self.means) for b in sized_chunks(batches, sizes)]
        return result_row(index, table.num_rows, parts)


def ray_partials(
    scorer: Scorer, data: str | Path, masks: list[Mask], plan: PassPlan | None, policy: Policy, engine: EngineConfig,
    features: bool, progress: bool,
) -> Iterator[BatchPartial]:
    """The Ray engine's partials, in dataset order (the producer `fusionguard.gate.streaming.stream_measures` consumes)."""
    if scorer.path is None:
        raise InvalidInputError("the Ray engine needs a model file")
    source = ParquetSource.open(data)
    ends = batch_ends(source.query_ids(), chunk_rows(policy, masks), data)  # refuses split queries before Ray starts
    if ends.shape[0] == 0:
        return
    means = source.input_means(scorer.contract) if any(m.strategy == "mean" and m.modalities for m in masks) else None
    ray = connect(engine.ray_address)
    device = scorer.device
    size = pool_size(ray, engine, device)
    spans = plan_spans(ends, min(SPAN_ROWS, max(1, source.n_rows // (2 * size))))  # >= 2 spans per actor when it can
    logger.info("ray engine: Ray Data, %d read task(s) of whole-query spans, %d actor(s) on %s, %d batches",
                len(spans), size, device, ends.shape[0])
    with data_context():
        reduced = span_actor_pool(
            ray, source, [(a, int(e[-1])) for a, e in spans], scorer.contract, SpanReducer,
            (Path(scorer.path).read_bytes(), scorer.contract, device, spans, masks, plan, policy, features, means,
             source.uri), size, device)
        for parts in ordered_results(reduced, len(spans), _bar(progress, source.n_rows)):
            yield from parts


def _bar(progress: bool, total: int):  # noqa: ANN202
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="row", desc="scoring (ray)")
