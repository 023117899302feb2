"""Ray Data plumbing shared by the Ray engines (gate/engine_ray.py, monitor/replay_ray.py).

The engines read a Parquet eval set (or traffic file) as a Ray Data dataset of **spans**: row
ranges that start and end on a unit the engine must not cut (a whole-query batch for the gate, a
whole request for the replay). `span_dataset` builds it from `SpanDatasource`: one read task per
span reads the span's rows of the needed columns through the dataset's pyarrow filesystem
(`fusionguard.source.ParquetSource.read_records`), wherever Ray schedules the task, and produces
them as one Arrow block tagged with the span's index (column `SPAN_COLUMN`). The engine's
``map_batches`` callable (an actor pool) then takes one block per call, checks with `span_of`
that it is exactly one whole span, and returns one small row: the span index, its row count and
its pickled results. `ordered_results` gives those results back in span order, whatever order
the actors finished in.

Ray Data may reshape blocks (merge small ones, split large ones) unless block shaping is off;
`data_context` turns it off for the run (``target_max_block_size = None``: one block per read
task), and `span_of` refuses any block that is not one span instead of working on part of one.
"""

from __future__ import annotations

import heapq
import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fusionguard.dataset import ID_COLUMNS, Batch, _to_batch
from fusionguard.errors import FusionGuardError, InvalidInputError
from fusionguard.source import ParquetSource

SPAN_COLUMN = "__fusionguard_span"  # the span index each block carries

__all__ = [
    "SPAN_COLUMN", "SpanDatasource", "actor_scorer", "block_batches", "columns_of", "data_context", "ordered_results",
    "plan_spans", "read_span", "result_row", "row_bytes", "span_actor_pool", "span_of",
]


def plan_spans(ends: np.ndarray, span_rows: int) -> list[tuple[int, np.ndarray]]:
    """Consecutive units (whole-query batches, whole requests) ending at `ends` grouped into
    spans of at least `span_rows` rows (the last may be shorter): [(first row, the span's unit ends)]."""
    spans = []
    start, first = 0, 0
    for i, end in enumerate(ends.tolist()):
        if end - start >= span_rows or i == len(ends) - 1:
            spans.append((start, ends[first:i + 1]))
            start, first = end, i + 1
    return spans


def read_span(source: ParquetSource, index: int, start: int, stop: int, columns: list[str]) -> Iterator[Any]:
    """A read task's body: rows [start, stop) of `columns` as one Arrow table with the span index."""
    import pyarrow as pa

    records = [rb for _, rb in source.read_records(start, stop, columns)]
    table = pa.Table.from_batches(records) if records else None
    if table is None or table.num_rows != stop - start:
        raise InvalidInputError(f"the dataset {source.uri} changed while it was read: rows {start}-{stop} are short")
    yield table.append_column(SPAN_COLUMN, pa.array(np.full(table.num_rows, index, dtype=np.int64)))


def _datasource_class() -> type:
    """`SpanDatasource`'s class, defined on first use so that importing this module does not import Ray."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class _SpanDatasource(Datasource):
        """A Parquet dataset as Ray Data reads it: one read task per span."""

        def __init__(self, source: ParquetSource, spans: list[tuple[int, int]], wanted: list) -> None:
            super().__init__()
            self.source, self.spans = source, spans
            self.columns, self.row_bytes = columns_of(wanted), row_bytes(wanted)

        def estimate_inmemory_data_size(self) -> int | None:
            return self.source.n_rows * self.row_bytes

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list:
            return [
                ReadTask(lambda i=i, a=a, z=z: read_span(self.source, i, a, z, self.columns),
                         BlockMetadata(num_rows=z - a, size_bytes=(z - a) * self.row_bytes, input_files=None,
                                       exec_stats=None))
                for i, (a, z) in enumerate(self.spans)
            ]

        def get_name(self) -> str:
            return "FusionguardSpans"

    return _SpanDatasource


def SpanDatasource(source: ParquetSource, spans: list[tuple[int, int]], wanted: list):  # noqa: ANN201, N802
    """A `ray.data.Datasource` over the row ranges `spans` = [(start, stop)] of `source`, reading
    the ids and the `wanted` inputs (as `fusionguard.dataset._resolve_inputs` gives them)."""
    return _datasource_class()(source, spans, wanted)


def span_actor_pool(ray: Any, source: ParquetSource, spans: list[tuple[int, int]], contract: Any, actor: type,
                    args: tuple, size: int, device: str) -> Any:
    """The Ray Data pipeline both engines run: `source` read as one block per span (row ranges
    `spans`), each block handed to `actor` (a callable class built with `args`) in a pool of
    `size` actors, one CPU each or one GPU each on cuda. Build it inside `data_context()`."""
    from fusionguard.dataset import _resolve_inputs

    cuda = device == "cuda"
    dataset = ray.data.read_datasource(SpanDatasource(source, spans, _resolve_inputs(contract, None)),
                                       override_num_blocks=len(spans))
    return dataset.map_batches(actor, batch_size=None, batch_format="pyarrow", zero_copy_batch=True,
                               compute=ray.data.ActorPoolStrategy(size=size), fn_constructor_args=args,
                               num_cpus=0 if cuda else 1, num_gpus=1 if cuda else 0)


def actor_scorer(model: bytes, contract: Any, device: str) -> Any:
    """An actor's own ONNX Runtime session (one intra-op thread: the pool is the parallelism)."""
    import onnx

    from fusionguard.scorer import Scorer

    return Scorer(onnx.load_from_string(model), contract, device=device, threads=1)


def columns_of(wanted: list) -> list[str]:
    """The columns a span block holds: the ids and the wanted inputs."""
    return [*ID_COLUMNS, *(w[0] for w in wanted)]


def block_batches(table: Any, wanted: list, uri: str) -> Iterator[Batch]:
    """A span block (an Arrow table) as Batches shaped by the contract, in row order."""
    return (_to_batch(rb, wanted, Path(uri)) for rb in table.select(columns_of(wanted)).to_batches() if rb.num_rows)


def row_bytes(wanted: list) -> int:
    """A decoded row's size estimate for Ray Data's memory budgeting: ids, label and 4-byte
    feeds (`wanted` as `fusionguard.dataset._resolve_inputs` gives it)."""
    return 24 + sum(4 * int(np.prod(shape or (1,))) for _, shape, _ in wanted)


def span_of(table: Any, spans: list[tuple[int, int]]) -> int:
    """The span index of a block handed to an actor; refuses a block that is not exactly one
    whole span (nothing is computed from it)."""
    tags = table.column(SPAN_COLUMN).to_numpy() if table.num_rows else np.zeros(0, dtype=np.int64)
    if tags.shape[0] == 0 or not (tags == tags[0]).all():
        raise InvalidInputError("Ray Data handed an actor a block that is not one span (block shaping is on?); "
                                "nothing was computed from it")
    index = int(tags[0])
    start, stop = spans[index]
    if tags.shape[0] != stop - start:
        raise InvalidInputError(f"Ray Data handed an actor {tags.shape[0]} of span {index}'s {stop - start} rows "
                                "(block shaping is on?); nothing was computed from it")
    return index


def result_row(index: int, rows: int, results: object) -> Any:
    """An actor's answer for one span: one Arrow row (span index, rows, pickled results)."""
    import pyarrow as pa

    blob = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
    return pa.table({"span": pa.array([index], pa.int64()), "rows": pa.array([rows], pa.int64()),
                     "results": pa.array([blob], pa.large_binary())})


def ordered_results(dataset: Any, n_spans: int, bar: Any = None) -> Iterator[Any]:
    """Each span's unpickled results, in span order (spans that finish early wait, pickled, in a
    heap); `bar` (tqdm) advances by each span's rows as it arrives and is closed at the end. An
    actor's FusionGuardError comes back as itself (its message and exit code), not wrapped."""
    heap: list[tuple[int, bytes]] = []
    want = 0
    try:
        for span, rows, blob in _rows(dataset):
            if bar is not None:
                bar.update(rows)
            heapq.heappush(heap, (span, blob))
            while heap and heap[0][0] == want:
                yield pickle.loads(heapq.heappop(heap)[1])
                want += 1
    finally:
        if bar is not None:
            bar.close()
    if want != n_spans:
        raise InvalidInputError(f"Ray Data returned {want} of {n_spans} spans in order (missing or repeated spans)")


def _rows(dataset: Any) -> Iterator[tuple[int, int, bytes]]:
    try:
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0):
            yield from zip(table.column("span").to_pylist(), table.column("rows").to_pylist(),
                           table.column("results").to_pylist())
    except Exception as err:  # noqa: BLE001 (unwrapped below, or re-raised as it is)
        cause = fusionguard_cause(err)
        if cause is not None:
            raise cause from None
        raise


def fusionguard_cause(err: BaseException) -> FusionGuardError | None:
    """The FusionGuardError a Ray worker raised, found in the chain Ray wraps it in."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, FusionGuardError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


class data_context:  # noqa: N801 (a context manager)
    """Ray Data's DataContext while an engine builds and runs its dataset: one block per read task
    (no block shaping), no Ray progress bars or start banner (the engines draw their own bar),
    order preserved, Ray Data's INFO and WARNING lines off the terminal; restored afterwards. A
    dataset keeps a copy of the context it was built under; the log level matters while it runs."""

    FIELDS = {"target_max_block_size": None, "enable_progress_bars": False, "print_on_execution_start": False}

    def __init__(self) -> None:
        import ray.data

        self.ctx = ray.data.DataContext.get_current()
        self.log = logging.getLogger("ray.data")

    def __enter__(self) -> None:
        self.saved = {k: getattr(self.ctx, k) for k in self.FIELDS}
        self.saved_order = self.ctx.execution_options.preserve_order
        self.level = self.log.level
        for k, v in self.FIELDS.items():
            setattr(self.ctx, k, v)
        self.ctx.execution_options.preserve_order = True
        self.log.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for k, v in self.saved.items():
            setattr(self.ctx, k, v)
        self.ctx.execution_options.preserve_order = self.saved_order
        self.log.setLevel(self.level)
