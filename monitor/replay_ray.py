"""`monitor replay --engine ray`: Ray Data reads the traffic in spans of whole requests, an actor
pool of ONNX Runtime scorers validates and scores them, and the driver records every request as
the local replay does.

1. The driver opens the traffic (`fusionguard.source.ParquetSource`: a file, a directory of files
   or a URI), reads its ``query_id`` column only and cuts it into requests (runs of consecutive
   rows with the same query id, as the local replay's `fusionguard.batches.query_runs`). It draws
   every request's telemetry decision from the service's seeded sampler, in request order, as
   the local replay does, and groups consecutive requests into spans of about `CHUNK_ROWS` rows.
2. Ray Data reads the spans (`fusionguard.raydata.SpanDatasource`, one read task per span, the
   reads fused into the actors' tasks) and ``map_batches`` runs `ReplayScorer` in an actor pool
   (one CPU per actor, one GPU with ``--device cuda``): the actor cuts its block into the span's
   requests, validates each once (`fusionguard.feeds.feed_problems`, as `ModelService.admit`) and
   runs the passes admission would choose (the Shapley passes for a sampled request on a
   two-modality model, else the unmasked pass) with `Scorer.run_valid`, on its own session.
3. The driver takes the spans back in request order (`fusionguard.raydata.ordered_results`) and
   builds the same `Scored` the local replay builds, so `record_scored` and the telemetry worker
   (Shapley shares, attention, drift, and the shadow model, which runs on the driver) see the same
   values in the same order: the exported metrics are the local replay's except the timing
   histograms. A request's duration is the actor's model time plus the driver's recording time.

The requests' tensors come back to the driver with their outputs: the telemetry and the shadow
model read them there, as in the local replay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard.contract import ModelContract
from fusionguard.dataset import Batch, _resolve_inputs, concat_batches, slice_batch
from fusionguard.engine import EngineConfig, connect, pool_size
from fusionguard.errors import InvalidInputError
from fusionguard.feeds import feed_problems
from fusionguard.raydata import (
    actor_scorer, block_batches, data_context, ordered_results, plan_spans, result_row, span_actor_pool, span_of,
)
from fusionguard.scorer import InvalidFeedsError, Mask, Outputs
from fusionguard.source import ParquetSource
from fusionguard.streaming import _run_starts
from fusionguard.monitor.service import ModelService, Scored

CHUNK_ROWS = 8192  # traffic rows per read task / actor call (whole requests)

__all__ = ["CHUNK_ROWS", "ReplayScorer", "ray_scored"]

Result = tuple[Batch, "tuple[Mask, ...] | InvalidFeedsError", "list[Outputs] | None", float]


class ReplayScorer:
    """The ``map_batches`` callable of the replay's actor pool: one ONNX Runtime session per
    actor; each call takes one span's block and returns, per request, (request, its passes or
    its validation error, the outputs, the model seconds)."""

    def __init__(self, model: bytes, contract: ModelContract, device: str,
                 spans: list[tuple[int, np.ndarray, int]], passes: list[tuple[Mask, ...]], uri: str) -> None:
        self.scorer = actor_scorer(model, contract, device)
        self.spans, self.passes, self.uri = spans, passes, uri
        self.ranges = [(start, int(ends[-1])) for start, ends, _ in spans]
        self.wanted = _resolve_inputs(contract, None)

    def __call__(self, table: Any) -> Any:  # a pyarrow Table in, one out
        index = span_of(table, self.ranges)
        start, ends, first = self.spans[index]
        block = concat_batches(list(block_batches(table, self.wanted, self.uri)))
        bounds = np.concatenate(([0], ends - start)).tolist()
        results: list[Result] = []
        for k, (a, z) in enumerate(zip(bounds[:-1], bounds[1:])):
            request = slice_batch(block, a, z)
            problems = feed_problems(self.scorer.contract, request.feeds)
            if problems:
                results.append((request, InvalidFeedsError(problems), None, 0.0))
                continue
            masks = self.passes[first + k]
            t0 = time.perf_counter()
            outputs = self.scorer.run_valid(request.feeds, masks)
            results.append((request, masks, outputs, time.perf_counter() - t0))
        return result_row(index, table.num_rows, results)


def request_ends(query_id: np.ndarray) -> np.ndarray:
    """Where each request ends: runs of consecutive rows with the same query id (as `query_runs`)."""
    if query_id.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.append(_run_starts(query_id)[1:], query_id.shape[0]).astype(np.int64)


def ray_scored(service: ModelService, data: str | Path, engine: EngineConfig
               ) -> Iterator[tuple[Batch, bool, Scored | InvalidFeedsError, float]]:
    """(request, telemetry drawn, its Scored or its validation error, start time), in request order."""
    state = service.state
    if state is None or state.scorer.path is None:
        raise InvalidInputError("the Ray engine needs a model file")
    source = ParquetSource.open(data)
    ends = request_ends(source.query_ids())
    if ends.shape[0] == 0:
        return
    telemetry = [service.sampler() for _ in range(ends.shape[0])]  # the local replay's draws, in request order
    passes = [service.masks_for(state, t) for t in telemetry]
    spans, first = [], 0
    for start, span_ends in plan_spans(ends, CHUNK_ROWS):
        spans.append((start, span_ends, first))
        first += span_ends.shape[0]
    ray = connect(engine.ray_address)
    device = state.scorer.device
    with data_context():
        scored = span_actor_pool(
            ray, source, [(a, int(e[-1])) for a, e, _ in spans], state.scorer.contract, ReplayScorer,
            (Path(state.scorer.path).read_bytes(), state.scorer.contract, device, spans, passes, source.uri),
            pool_size(ray, engine, device), device)
        i = 0
        for results in ordered_results(scored, len(spans)):
            for request, masks, outputs, seconds in results:
                if isinstance(masks, InvalidFeedsError):
                    yield request, telemetry[i], masks, time.perf_counter()
                else:
                    yield (request, telemetry[i], service.scored(state, request.feeds, outputs, masks, seconds),
                           time.perf_counter() - seconds)
                i += 1
