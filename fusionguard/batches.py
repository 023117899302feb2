"""Cutting streams of rows into batches: the one place that slices, joins and re-cuts `Batch`es.

The scorer reads a dataset in fixed chunks and never splits a query between two of them
(`data_batches`, `whole_queries`); streaming evaluation re-cuts Parquet reads the same way
(`fusionguard.streaming`), so permuted masks see the same batches whatever the file's row
groups; the monitor's replay cuts traffic into one request per query (`query_runs`). Pure numpy:
nothing here needs the gate's data stack.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from fusionguard.contract import ModelContract
from fusionguard.dataset import Batch, concat_batches, iter_batches, open_parquet, slice_batch
from fusionguard.errors import InvalidInputError

__all__ = ["concat_batches", "data_batches", "fixed_chunks", "query_runs", "sized_chunks", "slice_batch", "whole_queries"]


def fixed_chunks(batches: Iterator[Batch], rows: int) -> Iterator[Batch]:
    """Re-cut a stream of batches into chunks of exactly `rows` rows (the last may be shorter),
    whatever the sizes of the incoming batches (Parquet readers stop at row-group ends)."""
    if rows < 1:
        raise InvalidInputError(f"rows must be >= 1, got {rows}")
    return sized_chunks(batches, itertools.repeat(rows))


def sized_chunks(batches: Iterator[Batch], sizes: Iterable[int]) -> Iterator[Batch]:
    """Re-cut a stream of batches into chunks of the given sizes, in order; rows left over
    when `sizes` runs out come as one last chunk."""
    sizes = iter(sizes)
    want = next(sizes, None)
    pending: list[Batch] = []
    have = 0
    for batch in batches:
        start = 0
        n = len(batch)
        while start < n:
            take = n - start if want is None else min(want - have, n - start)
            pending.append(slice_batch(batch, start, start + take))
            have += take
            start += take
            if have == want:
                yield concat_batches(pending)
                pending, have = [], 0
                want = next(sizes, None)
    if have:
        yield concat_batches(pending)


def whole_queries(batches: Iterator[Batch]) -> Iterator[Batch]:
    """Re-cut batches so that a query whose rows are contiguous is never split between two
    batches: the trailing rows of each batch that share its last query id move to the next."""
    carry = None
    for batch in batches:
        if carry is not None:
            batch = concat_batches([carry, batch])
            carry = None
        qid = batch.query_id
        others = np.flatnonzero(qid != qid[-1])
        start = int(others[-1]) + 1 if others.size else 0  # first row of the trailing run of the last query
        if start == 0:  # the whole batch is one query: keep accumulating
            carry = batch
            continue
        if start < len(batch):
            carry = slice_batch(batch, start, len(batch))
            batch = slice_batch(batch, 0, start)
        yield batch
    if carry is not None:
        yield carry


def query_runs(batches: Iterator[Batch]) -> Iterator[Batch]:
    """Cut a stream of batches into runs of consecutive rows with the same query id (one
    request per run; a run that straddles two batches is joined)."""
    carry: Batch | None = None
    for batch in batches:
        if carry is not None:
            batch = concat_batches([carry, batch])
            carry = None
        qid = batch.query_id
        n = len(qid)
        if n == 0:
            continue
        starts = np.flatnonzero(np.concatenate(([True], qid[1:] != qid[:-1])))
        bounds = list(starts) + [n]
        for a, b in zip(bounds[:-2], bounds[1:-1]):
            yield slice_batch(batch, a, b)
        carry = slice_batch(batch, bounds[-2], n)
    if carry is not None:
        yield carry


def data_batches(data: str | Path | Batch, contract: ModelContract, batch_rows: int) -> Iterator[Batch]:
    """Non-empty Batches of at most batch_rows rows from a Parquet path or an in-memory Batch.

    A path is cut into exact chunks across row-group ends: the same batches as for the loaded
    dataset, so "permute" shuffles and "mean" sums do not depend on how the file was written.
    """
    if isinstance(data, Batch):
        n = len(data)
        for start in range(0, n, batch_rows):
            yield slice_batch(data, start, min(start + batch_rows, n))
    elif isinstance(data, (str, Path)):
        yield from fixed_chunks((b for b in iter_batches(data, contract, batch_rows=batch_rows) if len(b)), batch_rows)
    else:
        raise InvalidInputError(
            f"cannot score a {type(data).__name__}; pass a Parquet dataset path or a fusionguard.dataset.Batch"
        )


def row_count(data: object) -> int | None:
    """The number of rows of a Parquet path (from its metadata) or a sized object, else None."""
    if isinstance(data, (str, Path)):
        return int(open_parquet(data).metadata.num_rows)
    length = getattr(data, "__len__", None)
    return int(length()) if length is not None else None


def describe(data: object) -> str:
    """A short name of a data source for messages: the path, or <TypeName>."""
    return str(data) if isinstance(data, (str, Path)) else f"<{type(data).__name__}>"
