"""The Ray engine: an actor pool of ONNX Runtime scorers reduces the eval set's batches.

`ray_partials` is the Ray counterpart of the local engine's producer (gate/streaming.py):

- the driver reads the Parquet dataset (a file, a directory of files or any URI pyarrow's
  filesystems understand) in file order, only the columns the model reads, and cuts it into the
  local engine's whole-query batches (`fusionguard.streaming.whole_query_batches`): the
  ``permute`` masks shuffle within a batch, so equal batches are what makes the numbers equal
  to the last bit (why not Ray Data: `ray_query_batches`);
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
from fusionguard.streaming import READ_ROWS, query_batches, whole_query_batches

from gate.engine import EngineConfig
from gate.measures import PassPlan
from gate.policy import Policy
from gate.partials import BatchPartial, chunk_rows, reduce_batch

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
    """The local engine's whole-query batches, read on the driver in file order.

    A local file streams through `fusionguard.streaming.query_batches`; a directory of files or a
    URI pyarrow's filesystems understand (s3://, gs://, hdfs://) through `pyarrow.dataset`, its
    files in path order and each file's row groups in order.

    Not Ray Data: with Ray 2.60, `ray.data.read_parquet(...).iter_batches()` returned the row
    groups of a multi-row-group file out of order although `preserve_order` was set (found by
    benchmarks/streaming.py on 100,000 rows: the permute shuffles and the row-level correlations
    came out wrong). The batches must be the file's, in order, for the numbers to be the local
    engine's; `assemble` now also checks the streamed row order against the file and refuses a
    mismatch.
    """
    local = Path(str(data))
    if local.is_file():
        return query_batches(local, contract, rows)
    import pyarrow.dataset as ds

    wanted = _resolve_inputs(contract, None)
    columns = [*ID_COLUMNS, *(w[0] for w in wanted)]
    try:
        dataset = ds.dataset(str(data), format="parquet")
    except (OSError, ValueError) as err:
        raise InvalidInputError(f"cannot read the Parquet dataset {data} ({err}); pass a file, a directory or a URI") from None
    fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)

    def batches() -> Iterator[Batch]:
        for fragment in fragments:
            for record_batch in fragment.to_batches(columns=columns, batch_size=READ_ROWS):
                yield _to_batch(record_batch, wanted, Path(fragment.path))

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
    first = next(batches, None)  # fail on unreadable data before starting actors
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
