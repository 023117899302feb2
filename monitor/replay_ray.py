"""`monitor replay --engine ray`: the requests' model passes run in an actor pool of ONNX Runtime
scorers; everything else runs on the driver exactly as in the local replay.

The driver reads the traffic and cuts it into requests (monitor/replay.py), draws each request's
telemetry decision from the service's seeded sampler and validates its tensors (`admit`) in
request order, as the local replay does. Requests are then grouped into chunks of about
`CHUNK_ROWS` rows; each chunk goes to one actor, which runs every request's passes with
`Scorer.run_valid` (the call `ModelService.run` makes) on its own session, one CPU each (one GPU
each with ``--device cuda``). The driver takes the outputs back in request order, at most two
chunks per actor in flight, and builds the same `Scored` the local replay scores, so
`record_scored` and the telemetry worker (Shapley shares, attention, drift, and the shadow model,
which runs on the driver) see the same values in the same order: the exported metrics are the
local replay's except the timing histograms. A request's duration is the actor's model time plus
the driver's recording time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from fusionguard.contract import ModelContract
from fusionguard.dataset import Batch
from fusionguard.engine import EngineConfig, connect, get, pool_size
from fusionguard.errors import InvalidInputError
from fusionguard.scorer import InvalidFeedsError, Mask, Outputs, Scorer
from fusionguard.monitor.service import ModelService, Scored

CHUNK_ROWS = 8192  # request rows per actor call (whole requests)

__all__ = ["CHUNK_ROWS", "ReplayActor", "ray_scored"]


class ReplayActor:
    """One ONNX Runtime session in a Ray actor; runs admitted requests' passes."""

    def __init__(self, model: bytes, contract: ModelContract, device: str) -> None:
        import onnx

        self.scorer = Scorer(onnx.load_from_string(model), contract, device=device, threads=1)

    def run(self, requests: list[tuple[dict, tuple[Mask, ...]]]) -> list[tuple[list[Outputs], float]]:
        out = []
        for feeds, masks in requests:
            start = time.perf_counter()
            outputs = self.scorer.run_valid(feeds, masks)
            out.append((outputs, time.perf_counter() - start))
        return out


def ray_scored(service: ModelService, requests: Iterator[Batch], engine: EngineConfig
               ) -> Iterator[tuple[Batch, bool, Scored | InvalidFeedsError, float]]:
    """(request, telemetry drawn, its Scored or its validation error, start time), in request order."""
    state = service.state
    if state is None or state.scorer.path is None:
        raise InvalidInputError("the Ray engine needs a model file")
    ray = connect(engine.ray_address)
    device = state.scorer.device
    cuda = device == "cuda"
    size = pool_size(ray, engine, device)
    model = ray.put(Path(state.scorer.path).read_bytes())
    remote = ray.remote(ReplayActor).options(num_cpus=0 if cuda else 1, num_gpus=1 if cuda else 0)
    actors = [remote.remote(model, state.scorer.contract, device) for _ in range(size)]

    def chunks() -> Iterator[list[tuple[Batch, bool, tuple[Mask, ...] | InvalidFeedsError]]]:
        chunk, rows = [], 0
        for request in requests:
            telemetry = service.sampler()
            try:
                admitted, masks = service.admit(request.feeds, telemetry)
            except InvalidFeedsError as err:
                chunk.append((request, telemetry, err))
            else:
                if admitted is not state:
                    raise InvalidInputError("the model changed during the replay")
                chunk.append((request, telemetry, masks))
                rows += len(request)
            if rows >= CHUNK_ROWS:
                yield chunk
                chunk, rows = [], 0
        if chunk:
            yield chunk

    def results(chunk, ref):  # noqa: ANN001, ANN202
        outputs = iter(get(ray, ref))
        for request, telemetry, masks in chunk:
            if isinstance(masks, InvalidFeedsError):
                yield request, telemetry, masks, time.perf_counter()
                continue
            outs, seconds = next(outputs)
            yield request, telemetry, service.scored(state, request.feeds, outs, masks, seconds), time.perf_counter() - seconds

    try:
        pending: deque = deque()
        for i, chunk in enumerate(chunks()):
            work = [(request.feeds, masks) for request, _, masks in chunk if not isinstance(masks, InvalidFeedsError)]
            pending.append((chunk, actors[i % size].run.remote(work)))
            if len(pending) >= 2 * size:
                yield from results(*pending.popleft())
        while pending:
            yield from results(*pending.popleft())
    finally:
        for actor in actors:
            ray.kill(actor)
