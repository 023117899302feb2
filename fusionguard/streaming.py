"""Whole-query batches with bounded memory, and the external grouping of unsorted files.

The gate and the offline evaluation stream the eval set instead of loading it: `query_batches`
yields exactly the batches `Scorer.score_dataset` cuts from a fully loaded dataset (fixed chunks
of `rows` rows, re-cut so that no query is split), so the streamed scores, including the
``permute`` masks whose shuffles depend on the batch, equal the in-memory ones bit for bit. At
most about two chunks of feature rows are held at a time.

A query whose rows are spread over the file (not one contiguous run) cannot be streamed: its
rows would land in different batches. `check_grouped` finds such files by reading the
``query_id`` column only, and `group_queries` writes a grouped copy with bounded memory:

1. read ``query_id``: each query's first-occurrence ordinal and row count (O(queries) memory);
2. assign consecutive queries to buckets of at most `bucket_rows` rows, and stream the file once,
   appending each row to its bucket's temporary Parquet file;
3. read the buckets in order, stable-sort each by query ordinal, and append it to the output.

The output keeps the queries in first-occurrence order and each query's rows in file order, so a
file that is already grouped comes out unchanged.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusionguard.batches import fixed_chunks, sized_chunks, whole_queries
from fusionguard.contract import ModelContract
from fusionguard.dataset import Batch, iter_batches, open_parquet, read_batches
from fusionguard.errors import InvalidInputError

logger = logging.getLogger(__name__)

READ_ROWS = 8192  # rows per Parquet read (bounds the decoded columns); the chunks are cut from these
GROUP_BUCKET_ROWS = 262_144  # rows sorted in memory at a time by `group_queries`

__all__ = [
    "GroupingReport",
    "UnsortedDataError",
    "batch_ends",
    "check_grouped",
    "fixed_chunks",
    "group_queries",
    "query_batches",
    "sized_chunks",
    "whole_query_batches",
]


class UnsortedDataError(InvalidInputError):
    """The rows of a query are not contiguous in the file (exit 2)."""

    def __init__(self, path: str | Path, query_id: object, n_split: int) -> None:
        self.path = str(path)
        self.query_id = query_id
        self.n_split = n_split
        super().__init__(
            f"the eval set {path} is not grouped by query: {n_split} quer{'y' if n_split == 1 else 'ies'} "
            f"(first {query_id!r}) have rows spread over the file, and streaming evaluation needs each "
            f"query's rows contiguous; write a grouped copy with `fusionguard data group {path} GROUPED.parquet` "
            "and pass that"
        )


def batch_ends(query_id: np.ndarray, rows: int, source: str | Path) -> np.ndarray:
    """Where `query_batches` (fixed chunks of `rows` rows, each extended to the end of its last
    query) ends each batch, computed from the query ids alone: (n_batches,) row indices, the last
    equal to the row count. A reader that knows these can cut the same batches from any range
    of rows, so the Ray engine's actors read their own rows and still score the local engine's
    batches (the ``permute`` shuffles depend on them).

    Raises:
        UnsortedDataError: a query's rows are not one contiguous run.
    """
    n = query_id.shape[0]
    starts = _run_starts(query_id)
    runs = query_id[starts]
    if len(set(runs.tolist())) != runs.shape[0]:
        seen: set = set()
        split = []
        for q in runs.tolist():
            if q in seen:
                split.append(q)
            seen.add(q)
        raise UnsortedDataError(source, split[0], len(set(split)))
    ends: list[int] = []
    pos = 0
    for end in range(rows, n + rows, rows):  # the fixed chunks' ends
        end = min(end, n)
        run = int(starts[np.searchsorted(starts, end - 1, side="right") - 1])  # the last row's query starts here
        if run > pos:  # the batch ends before that query, which moves on to the next batch
            ends.append(run)
            pos = run
    if pos < n:
        ends.append(n)
    return np.asarray(ends, dtype=np.int64)


def query_batches(
    path: str | Path,
    contract: ModelContract | None,
    rows: int,
    *,
    inputs: Sequence[str] | None = None,
    read_rows: int = READ_ROWS,
) -> Iterator[Batch]:
    """The whole-query batches `Scorer.score_dataset` scores for the loaded dataset, streamed.

    Args:
        path: a Parquet dataset whose queries are contiguous runs of rows (`check_grouped`).
        contract: the model contract (shapes and dtypes of the feeds); None reads ids only.
        rows: the chunk size (`Scorer.score_dataset`'s rows per read: batch_rows // masks).
        inputs: input names to read (default: all of the contract's).
        read_rows: rows per Parquet read.
    Raises:
        UnsortedDataError: a query's rows are not contiguous (found while streaming).
    """
    yield from whole_query_batches(iter_batches(path, contract, batch_rows=read_rows, inputs=inputs), rows, path)


def whole_query_batches(batches: Iterator[Batch], rows: int, source: str | Path) -> Iterator[Batch]:
    """`query_batches` over any stream of batches in file order (e.g. read by Ray Data).

    Raises:
        UnsortedDataError: a query's rows are not contiguous in the stream.
    """
    chunks = fixed_chunks((b for b in batches if len(b)), rows)
    seen: set = set()
    for batch in whole_queries(chunks):
        runs = _run_starts(batch.query_id)
        ids = batch.query_id[runs].tolist()
        fresh = set(ids)
        if len(fresh) != len(ids) or not seen.isdisjoint(fresh):
            dup = next((q for q in ids if q in seen or ids.count(q) > 1), ids[0])
            raise UnsortedDataError(source, dup, 1)
        seen |= fresh
        yield batch


def _run_starts(qid: np.ndarray) -> np.ndarray:
    """Indices where a new run of equal query ids starts."""
    if qid.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.concatenate(([True], qid[1:] != qid[:-1])))


# ----- grouping ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupingReport:
    """What `check_grouped` found."""

    n_rows: int
    n_queries: int
    n_split: int  # queries whose rows form more than one run
    first_split: object | None  # one such query id

    @property
    def grouped(self) -> bool:
        return self.n_split == 0


def _query_ids(pf: pq.ParquetFile, read_rows: int) -> Iterator[np.ndarray]:
    for rb in read_batches(pf, "the eval set", batch_size=read_rows, columns=["query_id"]):
        arr = rb.column(0)
        yield arr.to_numpy(zero_copy_only=False) if pa.types.is_integer(arr.type) else np.asarray(
            arr.to_numpy(zero_copy_only=False), dtype=object)


def _runs(pf: pq.ParquetFile, read_rows: int) -> Iterator[tuple[object, int]]:
    """(query id, run length) for each run of consecutive equal query ids, in file order."""
    current, length = None, 0
    started = False
    for qid in _query_ids(pf, read_rows):
        if qid.shape[0] == 0:
            continue
        starts = _run_starts(qid)
        bounds = np.append(starts, qid.shape[0])
        for a, b in zip(bounds[:-1], bounds[1:]):
            q = qid[a].item() if hasattr(qid[a], "item") else qid[a]
            if started and q == current:
                length += int(b - a)
                continue
            if started:
                yield current, length
            current, length, started = q, int(b - a), True
    if started:
        yield current, length


def check_grouped(path: str | Path, *, read_rows: int = READ_ROWS) -> GroupingReport:
    """Whether every query's rows form one contiguous run (reads the query_id column only).

    Raises:
        InvalidInputError: the file is missing or not Parquet, or has no query_id column.
    """
    from fusionguard.source import open_dataset

    pf = open_dataset(path)  # a file, or a directory of files read as one
    if "query_id" not in pf.schema_arrow.names:
        raise InvalidInputError(f"dataset {path} has no query_id column; see docs/interfaces.md, \"dataset.py\"")
    seen: set = set()
    split: set = set()
    first = None
    for q, _ in _runs(pf, read_rows):
        if q in seen:
            if first is None:
                first = q
            split.add(q)
        seen.add(q)
    return GroupingReport(int(pf.metadata.num_rows), len(seen), len(split), first)


def group_queries(
    src: str | Path,
    dst: str | Path,
    *,
    bucket_rows: int = GROUP_BUCKET_ROWS,
    read_rows: int = READ_ROWS,
    tmp_dir: str | Path | None = None,
) -> GroupingReport:
    """Write a copy of `src` where each query's rows are contiguous (the external grouping in the
    module docstring). Memory: O(queries) plus about `bucket_rows` rows. Returns the report on `src`.

    Raises:
        InvalidInputError: unreadable input, `dst` equal to `src`, or a query larger than the
            bucket (raise `bucket_rows`).
    """
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise InvalidInputError(f"the grouped copy must go to a new file, not over {src}")
    if bucket_rows < 1:
        raise InvalidInputError(f"bucket_rows must be >= 1, got {bucket_rows}")
    pf = open_parquet(src)
    ordinal: dict = {}
    sizes: list[int] = []
    split: set = set()
    first = None
    for q, length in _runs(pf, read_rows):
        if q in ordinal:
            split.add(q)
            first = q if first is None else first
            sizes[ordinal[q]] += length
        else:
            ordinal[q] = len(sizes)
            sizes.append(length)
    report = GroupingReport(int(pf.metadata.num_rows), len(sizes), len(split), first)
    # Consecutive queries (by first occurrence) share a bucket up to bucket_rows rows.
    bucket_of = np.zeros(len(sizes), dtype=np.int64)
    bucket, filled = 0, 0
    for i, size in enumerate(sizes):
        if size > bucket_rows:
            raise InvalidInputError(
                f"query #{i} of {src} has {size} rows, more than bucket_rows = {bucket_rows}; raise --bucket-rows"
            )
        if filled + size > bucket_rows:
            bucket, filled = bucket + 1, 0
        bucket_of[i] = bucket
        filled += size
    n_buckets = bucket + 1 if sizes else 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    schema = pf.schema_arrow
    with tempfile.TemporaryDirectory(dir=tmp_dir, prefix="fusionguard-group-") as tmp:
        paths = [Path(tmp) / f"bucket{b:05d}.parquet" for b in range(n_buckets)]
        writers: dict[int, pq.ParquetWriter] = {}
        try:
            for rb in read_batches(pf, src, batch_size=read_rows):
                qid = rb.column("query_id").to_pylist()
                ords = np.fromiter((ordinal[q] for q in qid), dtype=np.int64, count=len(qid))
                buckets = bucket_of[ords]
                table = pa.Table.from_batches([rb]).append_column("__ordinal", pa.array(ords))
                for b in np.unique(buckets):
                    part = table.filter(pa.array(buckets == b))
                    if int(b) not in writers:
                        writers[int(b)] = pq.ParquetWriter(paths[int(b)], part.schema)
                    writers[int(b)].write_table(part)
        finally:
            for w in writers.values():
                w.close()
        with pq.ParquetWriter(dst, schema) as out:
            for path in paths:
                part = pq.read_table(path)
                order = np.argsort(part.column("__ordinal").to_numpy(), kind="stable")
                out.write_table(part.drop_columns(["__ordinal"]).take(pa.array(order)).cast(schema),
                                row_group_size=READ_ROWS)
    logger.info("grouped %d rows of %d queries (%d split) into %s", report.n_rows, report.n_queries, report.n_split, dst)
    return report
