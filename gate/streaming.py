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
from fusionguard.streaming import query_batches

from gate.engine import EngineConfig
from gate.measures import AttentionSummary, ModelMeasures, PassPlan, plan_passes
from gate.partials import BatchPartial, chunk_rows, reduce_batch  # re-exported: the per-batch step
from gate.policy import Policy

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
    data = Path(data)
    workers = default_workers() if engine.workers is None else engine.workers
    rows = chunk_rows(policy, masks)
    means = scorer.reference_means(data) if any(m.strategy == "mean" and m.modalities for m in masks) else None
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

        from fusionguard.dataset import open_parquet

        bar = tqdm(total=int(open_parquet(data).metadata.num_rows), unit="row", desc="scoring")
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
    """query_id, item_id and label of every row (the only per-row columns the statistics need)."""
    parts = [b for b in iter_batches(data, None, batch_rows=1 << 20, inputs=()) if len(b)]
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


def _check_row_order(groups: metrics.QueryGroups, qids: list[np.ndarray], iids: list[np.ndarray]) -> None:
    """Fail closed unless the partials' rows are the file's rows in the file's order (every
    per-row array is aligned by position with the other model's and with the grouping).
    Compared part by part against the file order rebuilt from the grouping (16 bytes a row)."""
    order = groups.order
    query = np.empty(order.shape[0], dtype=np.int64)  # file row -> index into groups.query_ids
    query[order] = groups.query_index_sorted
    item = np.empty(order.shape[0], dtype=groups.item_id_sorted.dtype)
    item[order] = groups.item_id_sorted
    start = 0
    for q, i in zip(qids, iids):
        stop = start + q.shape[0]
        if not (np.array_equal(groups.query_ids[query[start:stop]], q) and np.array_equal(item[start:stop], i)):
            raise EvaluationError("the scored rows came back in another order than the file's; the per-row "
                                  "measures would be misaligned, so nothing is reported")
        start = stop


def assemble(
    parts: Iterable[BatchPartial], data: StreamedData, plan: PassPlan, masks: list[Mask], n_passes: int, provider: str
) -> tuple[ModelMeasures, dict[str, np.ndarray]]:
    """Partials (in file order) -> the ModelMeasures `measure_model` gives, plus per-row feature norms."""
    qids, ndcgs, shares, masses, entropies = [], [], [], [], []
    rows: dict[str, list[np.ndarray]] = {"score": [], "phi_t": [], "phi_v": [], "share": [], "mass_row": []}
    feats: dict[str, list[np.ndarray]] = {}
    mass_heads, entropy_heads = _HeadSums(), _HeadSums()
    row_qids: list[np.ndarray] = []
    row_iids: list[np.ndarray] = []
    n = 0
    for p in parts:
        qids.append(p.query_id)
        ndcgs.append(p.ndcg)
        shares.append(p.share_per_query)
        for key, value in (("score", p.score), ("phi_t", p.phi_text), ("phi_v", p.phi_visual), ("share", p.share)):
            rows[key].append(value)
        if p.mass_rows is not None and p.entropy_rows is not None:
            masses.append(p.mass_per_query)
            entropies.append(p.entropy_per_query)
            mass_heads.add(p.mass_rows)
            entropy_heads.add(p.entropy_rows)
            rows["mass_row"].append(p.mass_rows.mean(axis=1))
        for name, v in p.features.items():
            feats.setdefault(name, []).append(v)
        n += p.label.shape[0]
        row_qids.append(p.row_query_id)
        row_iids.append(p.item_id)
    groups = data.groups
    if n != groups.n_rows:
        raise InvalidInputError(f"streaming read {n} rows but the dataset has {groups.n_rows}; was the file modified?")
    _check_row_order(groups, row_qids, row_iids)
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
                                     np.concatenate(rows["mass_row"]))
    share = np.concatenate(rows["share"])
    m = ModelMeasures(
        scores=np.concatenate(rows["score"]).astype(np.float64),
        ndcg=ndcg,
        ndcg_visual_masked=ndcg_v,
        ndcg_text_masked=ndcg_t,
        visual_drop=metrics.ablation_drop(ndcg, ndcg_v),
        text_drop=metrics.ablation_drop(ndcg, ndcg_t),
        phi_text=np.concatenate(rows["phi_t"]),
        phi_visual=np.concatenate(rows["phi_v"]),
        visual_share=share,
        visual_share_per_query=by_query(shares),
        attention_mass=None,
        attention_entropy=None,
        n_passes=n_passes,
        provider=provider,
        attention=attention,
    )
    return m, {name: np.concatenate(v) for name, v in feats.items()}


def _source(engine: EngineConfig | None):  # noqa: ANN202
    """The partials' producer of an engine, and its worker count."""
    engine = engine or EngineConfig()
    if engine.engine == "ray":
        from gate.engine_ray import ray_partials

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
    parts = list(source(scorer, data, [Mask()], None, policy, engine, False, False))  # (n,) scalars per batch
    scores = np.concatenate([p.score for p in parts])
    if scores.shape[0] != streamed.groups.n_rows:
        raise InvalidInputError(f"streaming read {scores.shape[0]} rows but the dataset has {streamed.groups.n_rows}")
    _check_row_order(streamed.groups, [p.row_query_id for p in parts], [p.item_id for p in parts])
    return scores
