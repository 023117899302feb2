"""The gate's and the evaluation's measures, streamed: bounded memory, the same numbers.

`measure_model` (gate/measures.py) scores a loaded dataset and keeps every pass's per-row scores
and the (N, H, K) attention. Here the eval set is read in whole-query batches
(`fusionguard.streaming.query_batches`, cut exactly as `Scorer.score_dataset` cuts the loaded
dataset), each batch is scored under every mask and reduced at once (`reduce_batch`) to

- per query: NDCG@k under each mask, mean visual Shapley share, mean attention mass / entropy;
- per row, scalars only: the unmasked score, the two Shapley values and the visual share, the
  head-mean attention mass and each input's L2 norm (the reference profile's distributions, global
  Pearson and mean |phi| need them: about 8 bytes per value, against ~2 KB per row of inputs);
- per head: the batch's attention rows, folded in row order into running sums by the driver.

`assemble` puts the partials back into dataset order and computes what `measure_model` computes
from them, with the same numpy calls on the same values, so per-query values and report numbers
are identical to the in-memory path (tests/gate/test_streaming.py compares them bit for bit).

Batches are independent, so `workers` threads score and reduce them in parallel, each on its own
ONNX Runtime session with one intra-op thread; results are consumed in order. The Ray engine
(gate/engine_ray.py) runs `reduce_batch` in actors and `assemble` on the driver.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionguard import metrics
from fusionguard.dataset import Batch, iter_batches
from fusionguard.errors import EvaluationError, InvalidInputError
from fusionguard.scorer import Mask, Scorer
from fusionguard.source import ParquetSource, data_location, spans_files
from fusionguard.streaming import query_batches, whole_query_batches

from fusionguard.engine import EngineConfig
from fusionguard.gate.measures import AttentionSummary, ModelMeasures, PassPlan, plan_passes
from fusionguard.gate.partials import BatchPartial, chunk_rows, reduce_batch  # re-exported: the per-batch step
from fusionguard.gate.policy import Policy

logger = logging.getLogger(__name__)

__all__ = [
    "AttentionSummary",
    "BatchPartial",
    "StreamedData",
    "assemble",
    "chunk_rows",
    "default_workers",
    "read_ids",
    "reduce_batch",
    "stream_baseline",
    "stream_measures",
]


def default_workers() -> int:
    """Parallel batches by default: one per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _ordered(fn: Callable[[Batch], BatchPartial], batches: Iterable[Batch], workers: int) -> Iterator[BatchPartial]:
    """map(fn, batches) with `workers` threads and at most 2 x workers batches in flight, in order."""
    if workers <= 1:
        yield from map(fn, batches)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fusionguard-score") as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.submit(fn, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _worker_scorers(scorer: Scorer, workers: int) -> list[Scorer]:
    """One session per worker, one intra-op thread each (the workers are the parallelism)."""
    if workers <= 1:
        return [scorer]
    if scorer.path is None:
        raise InvalidInputError("parallel streaming needs a model file; pass workers=1 for an in-memory model")
    return [Scorer(scorer.path, scorer.contract, device=scorer.device, threads=1) for _ in range(workers)]


def _run_partials(
    scorer: Scorer, data: str | Path, masks: list[Mask], plan: PassPlan | None, policy: Policy, engine: EngineConfig,
    features: bool, progress: bool,
) -> Iterator[BatchPartial]:
    """The local engine: whole-query batches from the file, reduced on `engine.workers` threads."""
    data = data_location(data)
    workers = default_workers() if engine.workers is None else engine.workers
    rows = chunk_rows(policy, masks)
    mean_masks = any(m.strategy == "mean" and m.modalities for m in masks)
    if spans_files(data):  # a URI, or a directory of files read in path order as one
        source = ParquetSource.open(data)
        means = source.input_means(scorer.contract) if mean_masks else None
        batches = whole_query_batches(source.read(0, source.n_rows, scorer.contract), rows, data)
    else:
        means = scorer.reference_means(data) if mean_masks else None
        batches = query_batches(data, scorer.contract, rows)
    scorers = _worker_scorers(scorer, workers)
    local = threading.local()
    free = list(scorers)
    lock = threading.Lock()

    def work(batch: Batch) -> BatchPartial:
        s = getattr(local, "scorer", None)
        if s is None:
            with lock:
                s = local.scorer = free.pop()
        return reduce_batch(s, batch, masks, plan, policy, features=features, means=means)

    bar = None
    if progress:
        from tqdm import tqdm

        from fusionguard.source import open_dataset

        bar = tqdm(total=int(open_dataset(data).metadata.num_rows), unit="row", desc="scoring")
    try:
        for part in _ordered(work, batches, min(workers, len(scorers))):
            if bar is not None:
                bar.update(part.label.shape[0])
            yield part
    finally:
        if bar is not None:
            bar.close()


@dataclass
class StreamedData:
    """The eval set's query grouping, read without the feature columns."""

    groups: metrics.QueryGroups  # built from query_id, item_id and label of every row


def read_ids(data: str | Path) -> StreamedData:
    """query_id, item_id and label of every row (the only per-row columns the statistics need):
    a Parquet file, or (for the Ray engine) a directory of files or a URI (fusionguard/source.py)."""
    if not spans_files(data):
        parts = [b for b in iter_batches(data, None, batch_rows=1 << 20, inputs=()) if len(b)]
    else:  # a directory of files or a URI
        parts = [b for b in ParquetSource.open(data).ids() if len(b)]
    if not parts:
        raise InvalidInputError(f"the dataset {data} has no rows; nothing to score")
    qid = np.concatenate([p.query_id for p in parts])
    iid = np.concatenate([p.item_id for p in parts])
    lab = np.concatenate([p.label for p in parts])
    return StreamedData(metrics.QueryGroups.from_arrays(qid, iid, lab))


class _HeadSums:
    """Per-head column sums folded in row order: equal to (N, H).sum(axis=0), which numpy adds row
    after row (a reduction over the outer axis), so the mean is that of the in-memory array."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.n = 0

    def add(self, rows: np.ndarray) -> None:
        if self.total is None:
            self.total = rows.sum(axis=0)
        else:
            self.total = np.concatenate([self.total[None, :], rows]).sum(axis=0)
        self.n += rows.shape[0]

    def mean(self) -> np.ndarray:
        return self.total / self.n  # type: ignore[operator]


class _FileOrder:
    """Checks, part by part, that the partials' rows are the file's rows in the file's order
    (every per-row array is aligned by position with the other model's and with the grouping);
    fails closed otherwise. The file order is rebuilt from the grouping once (16 bytes a row)."""

    def __init__(self, groups: metrics.QueryGroups) -> None:
        order = groups.order
        self.query_ids = groups.query_ids
        self.query = np.empty(order.shape[0], dtype=np.int64)  # file row -> index into groups.query_ids
        self.query[order] = groups.query_index_sorted
        self.item = np.empty(order.shape[0], dtype=groups.item_id_sorted.dtype)
        self.item[order] = groups.item_id_sorted
        self.start = 0

    def check(self, query_id: np.ndarray, item_id: np.ndarray) -> slice:
        """The file rows of the next part; raises unless they hold these ids."""
        rows = slice(self.start, self.start + query_id.shape[0])
        if rows.stop > self.query.shape[0] or not (
            np.array_equal(self.query_ids[self.query[rows]], query_id) and np.array_equal(self.item[rows], item_id)
        ):
            raise EvaluationError("the scored rows came back in another order than the file's; the per-row "
                                  "measures would be misaligned, so nothing is reported")
        self.start = rows.stop
        return rows


class _Rows:
    """Per-row values written into arrays of the dataset's length as the parts arrive: no list of
    parts and no final concatenation (which held every per-row value twice at the end)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, name: str, rows: slice, values: np.ndarray, dtype: type = np.float64) -> None:
        if name not in self.arrays:
            self.arrays[name] = np.empty(self.n, dtype=dtype)
        self.arrays[name][rows] = values


def assemble(
    parts: Iterable[BatchPartial], data: StreamedData, plan: PassPlan, masks: list[Mask], n_passes: int, provider: str
) -> tuple[ModelMeasures, dict[str, np.ndarray]]:
    """Partials (in file order) -> the ModelMeasures `measure_model` gives, plus per-row feature norms."""
    groups = data.groups
    qids, ndcgs, shares, masses, entropies = [], [], [], [], []
    rows, feats = _Rows(groups.n_rows), _Rows(groups.n_rows)
    mass_heads, entropy_heads = _HeadSums(), _HeadSums()
    file_order = _FileOrder(groups)
    n = 0
    for p in parts:
        n += p.label.shape[0]
        if n > groups.n_rows:
            break
        at = file_order.check(p.row_query_id, p.item_id)
        qids.append(p.query_id)
        ndcgs.append(p.ndcg)
        shares.append(p.share_per_query)
        rows.put("score", at, p.score)  # float32 -> float64, exactly
        for key, value in (("phi_t", p.phi_text), ("phi_v", p.phi_visual), ("share", p.share)):
            rows.put(key, at, value)
        if p.mass_rows is not None and p.entropy_rows is not None:
            masses.append(p.mass_per_query)
            entropies.append(p.entropy_per_query)
            mass_heads.add(p.mass_rows)
            entropy_heads.add(p.entropy_rows)
            rows.put("mass_row", at, p.mass_rows.mean(axis=1))
        for name, v in p.features.items():
            feats.put(name, at, v)
    if n != groups.n_rows:
        raise InvalidInputError(f"streaming read {n} rows but the dataset has {groups.n_rows}; was the file modified?")
    # Per-query values come in batch order; the global QueryGroups orders queries by id.
    q = np.concatenate(qids)
    order = np.argsort(q, kind="stable")
    if q.shape[0] != groups.n_queries or not np.array_equal(q[order], groups.query_ids):
        raise InvalidInputError("the streamed queries differ from the dataset's; was the file modified?")

    def by_query(values: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(values, axis=-1)[..., order]

    ndcg_all = by_query(ndcgs)  # (M, Q)
    by_mask = dict(zip(masks, ndcg_all))
    ndcg = by_mask[plan.full]
    ndcg_v = np.mean([by_mask[m] for m in plan.visual], axis=0)
    ndcg_t = np.mean([by_mask[m] for m in plan.text], axis=0)
    attention = None
    if masses:
        attention = AttentionSummary(by_query(masses), by_query(entropies), mass_heads.mean(), entropy_heads.mean(),
                                     rows.arrays["mass_row"])
    m = ModelMeasures(
        scores=rows.arrays["score"],
        ndcg=ndcg,
        ndcg_visual_masked=ndcg_v,
        ndcg_text_masked=ndcg_t,
        visual_drop=metrics.ablation_drop(ndcg, ndcg_v),
        text_drop=metrics.ablation_drop(ndcg, ndcg_t),
        phi_text=rows.arrays["phi_t"],
        phi_visual=rows.arrays["phi_v"],
        visual_share=rows.arrays["share"],
        visual_share_per_query=by_query(shares),
        attention_mass=None,
        attention_entropy=None,
        n_passes=n_passes,
        provider=provider,
        attention=attention,
    )
    return m, feats.arrays


def _source(engine: EngineConfig | None):  # noqa: ANN202
    """The partials' producer of an engine, and its worker count."""
    engine = engine or EngineConfig()
    if engine.engine == "ray":
        from fusionguard.gate.engine_ray import ray_partials

        return ray_partials, engine
    return _run_partials, engine


def stream_measures(
    scorer: Scorer, data: str | Path, streamed: StreamedData, policy: Policy, *, engine: EngineConfig | None = None,
    features: bool = False, progress: bool = False,
) -> tuple[ModelMeasures, dict[str, np.ndarray]]:
    """`measure_model` on a Parquet eval set, streamed. Returns the measures and, with
    `features`, each input's per-row L2 norms (the reference profile's feature distributions).

    Raises:
        UnsortedDataError: a query's rows are not contiguous.
        EvaluationError: ONNX Runtime failed or the outputs are unusable.
    """
    plan = plan_passes(policy)
    masks = plan.masks
    source, engine = _source(engine)
    parts = source(scorer, data, masks, plan, policy, engine, features, progress)
    return assemble(parts, streamed, plan, masks, len(masks), scorer.provider)


def stream_baseline(
    scorer: Scorer, data: str | Path, streamed: StreamedData, policy: Policy, *, engine: EngineConfig | None = None
) -> np.ndarray:
    """`score_baseline`, streamed: (N,) unmasked scores in file order (float32)."""
    source, engine = _source(engine)
    groups = streamed.groups
    scores = np.empty(groups.n_rows, dtype=np.float32)
    file_order = _FileOrder(groups)
    n = 0
    for p in source(scorer, data, [Mask()], None, policy, engine, False, False):
        n += p.label.shape[0]
        if n > groups.n_rows:
            break
        scores[file_order.check(p.row_query_id, p.item_id)] = p.score
    if n != groups.n_rows:
        raise InvalidInputError(f"streaming read {n} rows but the dataset has {groups.n_rows}")
    return scores
