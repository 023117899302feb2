"""The Ray engine: Ray Data reads the eval set, an actor pool of ONNX Runtime scorers reduces it.

`ray_partials` is the Ray counterpart of the local engine's producer (gate/streaming.py):

- Ray Data reads the Parquet dataset (`ray.data.read_parquet`: a file, a directory of files or
  any URI pyarrow's filesystems understand) with order preserved, only the columns the model reads;
- the driver cuts the stream into the local engine's whole-query batches (the same fixed chunks
  re-cut at query ends, `fusionguard.streaming.whole_query_batches`): the ``permute`` masks
  shuffle within a batch, so equal batches are what makes the numbers equal to the last bit;
- each batch goes, through the object store, to one of a pool of actors, each holding its own
  ONNX Runtime session (one CPU each, or one GPU each with ``--device cuda``), which scores it
  under every mask and reduces it to per-query values (`gate.streaming.reduce_batch`);
- the driver consumes the partials in order, at most two per actor in flight (bounded memory),
  and `gate.streaming.assemble` turns them into the measures the checks read, as locally.

The driver only moves bytes (a batch of inputs out, a partial of scalars back); scoring, the
masks' copies and the reductions run in the actors. Ray is imported only when this engine runs
(the `ray` extra).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard.contract import ModelContract
from fusionguard.dataset import ID_COLUMNS, Batch, _resolve_inputs, _to_batch
from fusionguard.errors import InvalidInputError
from fusionguard.scorer import Mask, Scorer
from fusionguard.streaming import READ_ROWS, whole_query_batches

from gate.engine import EngineConfig
from gate.measures import PassPlan
from gate.policy import Policy
from gate.streaming import BatchPartial, chunk_rows, reduce_batch

logger = logging.getLogger(__name__)

__all__ = ["ScorerActor", "ray_partials", "ray_query_batches"]


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InvalidInputError("--engine ray needs Ray: pip install 'fusionguard[ray]'") from None
    return ray


def connect(address: str | None) -> Any:
    """Join `address` (or start a local Ray) unless this process is already connected."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


class ScorerActor:
    """One ONNX Runtime session in a Ray actor; reduces whole-query batches (see the module docstring)."""

    def __init__(self, model: bytes, contract: ModelContract, device: str) -> None:
        import onnx

        self.scorer = Scorer(onnx.load_from_string(model), contract, device=device, threads=1)

    def reduce(self, batch: Batch, masks: list[Mask], plan: PassPlan | None, policy: Policy, features: bool,
               means: dict[str, np.ndarray] | None) -> BatchPartial:
        return reduce_batch(self.scorer, batch, masks, plan, policy, features=features, means=means)

    def provider(self) -> str:
        return self.scorer.provider


def ray_query_batches(data: str | Path, contract: ModelContract, rows: int) -> Iterator[Batch]:
    """The local engine's whole-query batches, read by Ray Data (order preserved)."""
    ray = _ray()
    wanted = _resolve_inputs(contract, None)
    columns = [*ID_COLUMNS, *(w[0] for w in wanted)]
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    # num_cpus=0: the read tasks reserve no CPU, so they are never starved by the scorer actors,
    # which reserve one CPU each (Ray Data would otherwise wait for a free CPU forever).
    dataset = ray.data.read_parquet(str(data), num_cpus=0).select_columns(columns)

    def batches() -> Iterator[Batch]:
        for table in dataset.iter_batches(batch_size=READ_ROWS, batch_format="pyarrow", prefetch_batches=2):
            for record_batch in table.select(columns).to_batches():
                yield _to_batch(record_batch, wanted, Path(str(data)))

    return whole_query_batches(batches(), rows, data)


def _pool_size(ray: Any, engine: EngineConfig, device: str) -> int:
    if engine.workers is not None:
        return engine.workers
    resources = ray.cluster_resources()
    key = "GPU" if device == "cuda" else "CPU"
    return max(1, int(resources.get(key, 1)))


def ray_partials(
    scorer: Scorer, data: str | Path, masks: list[Mask], plan: PassPlan | None, policy: Policy, engine: EngineConfig,
    features: bool, progress: bool,
) -> Iterator[BatchPartial]:
    """The Ray engine's partials, in file order (the producer `gate.streaming.stream_measures` consumes)."""
    ray = connect(engine.ray_address)
    if scorer.path is None:
        raise InvalidInputError("the Ray engine needs a model file")
    rows = chunk_rows(policy, masks)
    batches = ray_query_batches(data, scorer.contract, rows)
    # Start the read before the actors take the CPUs: Ray Data lists the files in a task that
    # needs one CPU.
    first = next(batches, None)
    device = scorer.device
    cuda = device == "cuda"
    size = _pool_size(ray, engine, device)
    model = ray.put(Path(scorer.path).read_bytes())
    remote = ray.remote(ScorerActor).options(num_cpus=0 if cuda else 1, num_gpus=1 if cuda else 0)
    actors = [remote.remote(model, scorer.contract, device) for _ in range(size)]
    means = None
    if any(m.strategy == "mean" and m.modalities for m in masks):
        means = scorer.reference_means(data)
    logger.info("ray engine: %d actor(s) on %s", size, device)
    try:
        pending: deque = deque()
        for i, batch in enumerate(itertools.chain([] if first is None else [first], batches)):
            pending.append(actors[i % size].reduce.remote(batch, masks, plan, policy, features, means))
            if len(pending) >= 2 * size:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())
    finally:
        for actor in actors:
            ray.kill(actor)
