"""The dataset: Parquet, one row per (query, candidate) pair.

Schema (docs/interfaces.md, "dataset.py"): `query_id`, `item_id` (int64 or string), `label` (int64, graded relevance
>= 0) and one column per model input, named like the input, holding the row's tensor flattened
as a ``list<float32>`` (floating inputs) or ``list<int64>`` (integer inputs). Per-row shapes are
not stored in the file; they come from the model contract.

Reading streams record batches with pyarrow and reads only the columns asked for, so a file of a
million rows never needs all its columns in memory at once. Each list column is turned into an
``(n, *spec.shape)`` array through its flat values buffer plus one length check: no Python loop
per row. Validation lives in `fusionguard.validation` (Great Expectations, imported lazily), which
reads through this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fusionguard.contract import ModelContract
from fusionguard.errors import DataValidationError, InvalidInputError

# pyarrow (the 'gate' extra) is imported inside the functions that read or write Parquet: the
# serving install scores in-memory feeds through `Batch` and never touches a file.
if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

ID_COLUMNS = ("query_id", "item_id", "label")
READ_BATCH_ROWS = 65_536  # rows per record batch read from Parquet (iter_batches, validation's scan)
_ROW_GROUP_ROWS = 65_536  # rows per Parquet row group written; bounds the memory of one read batch
_INT32_MAX = 2**31 - 1
_READ_BUFFER_BYTES = 1 << 22  # buffered column-chunk reads: bounds the memory of streaming

__all__ = [
    "Batch",
    "ID_COLUMNS",
    "concat_batches",
    "slice_batch",
    "iter_batches",
    "load_dataset",
    "open_parquet",
    "write_dataset",
]


@dataclass
class Batch:
    """Rows of a dataset with their model inputs as arrays."""

    query_id: np.ndarray  # (n,) int64 or str (object)
    item_id: np.ndarray  # (n,) int64 or str (object)
    label: np.ndarray  # (n,) int64, graded relevance >= 0
    feeds: dict[str, np.ndarray]  # input name -> (n, *spec.shape) in spec.dtype; (n, L) without a contract

    def __len__(self) -> int:
        return int(self.label.shape[0])


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start, stop) of `batch` (numpy views, no copy)."""
    return Batch(
        query_id=batch.query_id[start:stop],
        item_id=batch.item_id[start:stop],
        label=batch.label[start:stop],
        feeds={name: value[start:stop] for name, value in batch.feeds.items()},
    )


def concat_batches(parts: Sequence[Batch]) -> Batch:
    """The rows of `parts`, in order, as one Batch (a single part is returned as it is)."""
    if len(parts) == 1:
        return parts[0]
    return Batch(
        query_id=np.concatenate([p.query_id for p in parts]),
        item_id=np.concatenate([p.item_id for p in parts]),
        label=np.concatenate([p.label for p in parts]),
        feeds={name: np.concatenate([p.feeds[name] for p in parts]) for name in parts[0].feeds},
    )


# ----- writing ----------------------------------------------------------------------------------

def _id_array(values: np.ndarray, name: str) -> pa.Array:
    import pyarrow as pa

    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return pa.array(values.astype(np.int64, copy=False), type=pa.int64())
    if values.dtype.kind in "UO":
        return pa.array(values.astype(str), type=pa.string())
    raise InvalidInputError(f"{name} has dtype {values.dtype}; use integers or strings")


def _list_array(values: np.ndarray, name: str, n: int) -> pa.Array:
    """(n, *shape) -> list<float32|int64> with one flattened tensor per row."""
    import pyarrow as pa

    values = np.asarray(values)
    if values.ndim == 0 or values.shape[0] != n:
        raise InvalidInputError(
            f"input '{name}' has shape {values.shape}; axis 0 must count the {n} rows (one per query-candidate pair)"
        )
    if values.dtype.kind == "f":
        flat = values.astype(np.float32, copy=False).reshape(-1)
        value_type = pa.float32()
    elif values.dtype.kind in "iub":
        flat = values.astype(np.int64, copy=False).reshape(-1)
        value_type = pa.int64()
    else:
        raise InvalidInputError(f"input '{name}' has dtype {values.dtype}; use a floating or integer array")
    width = flat.size // n if n else int(np.prod(values.shape[1:], dtype=np.int64))
    offsets = np.arange(n + 1, dtype=np.int64) * width
    if flat.size > _INT32_MAX:
        return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat, type=value_type))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, type=value_type))


def write_dataset(
    path: str | Path,
    query_id: np.ndarray,
    item_id: np.ndarray,
    label: np.ndarray,
    feeds: Mapping[str, np.ndarray],
    extra: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a dataset as Parquet, one row per (query, candidate) pair.

    Args:
        path: the Parquet file to write (parent folders are created).
        query_id, item_id: (n,) integer or string ids.
        label: (n,) integer graded relevance (integral floats are accepted and stored as int64).
        feeds: input name -> (n, *shape) array; each row's tensor is stored flattened, floats
            as float32 and integers as int64.
        extra: more columns (e.g. a split name or a caption), 1-D arrays stored as they are,
            higher-rank arrays flattened per row like feeds.
    Returns:
        The path written.
    Raises:
        InvalidInputError: arrays of different lengths, unusable dtypes, or a name clash. Nothing
            is written then. Content (NaN, duplicate pairs, label range) is left to validation.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    label = np.asarray(label)
    n = int(label.shape[0]) if label.ndim == 1 else -1
    problems: list[str] = []
    if label.ndim != 1:
        problems.append(f"label has shape {label.shape}; it must be 1-D with one value per row")
    elif label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or not np.all(label == np.round(label)):
            problems.append("label holds non-integer values; graded relevance must be integers >= 0")
    elif label.dtype.kind not in "iub":
        problems.append(f"label has dtype {label.dtype}; use integers")
    for name, arr in (("query_id", query_id), ("item_id", item_id)):
        arr = np.asarray(arr)
        if arr.ndim != 1 or arr.shape[0] != n:
            problems.append(f"{name} has shape {arr.shape}; it must be 1-D with the label's {max(n, 0)} rows")
    extra = dict(extra or {})
    clash = sorted((set(feeds) | set(extra)) & set(ID_COLUMNS)) + sorted(set(feeds) & set(extra))
    if clash:
        problems.append(f"column names {clash} are used twice or clash with {list(ID_COLUMNS)}; rename them")
    if problems:
        raise DataValidationError(str(path), problems)

    columns: dict[str, pa.Array] = {
        "query_id": _id_array(query_id, "query_id"),
        "item_id": _id_array(item_id, "item_id"),
        "label": pa.array(label.astype(np.int64), type=pa.int64()),
    }
    for name, values in feeds.items():
        columns[name] = _list_array(values, name, n)
    for name, values in extra.items():
        values = np.asarray(values)
        if values.ndim == 1 and values.shape[0] == n:
            columns[name] = pa.array(values if values.dtype.kind != "U" else values.astype(object))
        else:
            columns[name] = _list_array(values, name, n)
    table = pa.table(columns)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=_ROW_GROUP_ROWS)
    logger.info("wrote %d rows to %s", n, path)
    return path


# ----- reading ----------------------------------------------------------------------------------

def open_parquet(path: str | Path) -> pq.ParquetFile:
    """Open a Parquet file, turning a missing or unreadable file into InvalidInputError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"dataset {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise InvalidInputError(f"dataset {path} is an empty file (0 bytes), not Parquet; regenerate it")
    try:
        # pre_buffer=False: pyarrow's default pre-buffering reads every row group's column chunks
        # up front (all 1M rows), which defeats streaming; a bounded read buffer keeps peak memory
        # at about one batch (measured: 346 -> ~50 MiB of Arrow memory on a 1M-row, 300 MB file).
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    except (pa.ArrowException, OSError) as err:
        raise InvalidInputError(
            f"dataset {path} is not a readable Parquet file ({type(err).__name__}: {err}); "
            "write datasets with fusionguard.dataset.write_dataset or pandas.DataFrame.to_parquet"
        ) from None


def read_batches(pf: pq.ParquetFile, path: str | Path, **kwargs: Any) -> Iterator[pa.RecordBatch]:
    """`pf.iter_batches(**kwargs)`, with a corrupt data page (a valid footer over damaged column
    chunks) reported as InvalidInputError instead of pyarrow's OSError/ArrowException."""
    import pyarrow as pa

    batches = pf.iter_batches(**kwargs)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as err:
            raise InvalidInputError(
                f"dataset {path} is damaged: a data page cannot be read ({type(err).__name__}: "
                f"{' '.join(str(err).split())}); regenerate or re-copy the file"
            ) from None
        yield batch


def _as_list(arr: pa.Array) -> pa.Array:
    """Fixed-size lists as plain lists, so offsets exist."""
    import pyarrow as pa

    if pa.types.is_fixed_size_list(arr.type):
        return arr.cast(pa.list_(arr.type.value_type))
    return arr


def _list_column(arr: pa.Array, name: str, shape: tuple[int, ...] | None, dtype: str | None, path: Path) -> np.ndarray:
    """A list column -> (n, *shape) array via the flat values buffer (no per-row Python)."""
    import pyarrow as pa

    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type)):
        raise DataValidationError(str(path), [f"column '{name}' has type {arr.type}; model inputs must be list columns"])
    arr = _as_list(arr)
    n = len(arr)
    if arr.null_count:
        raise DataValidationError(str(path), [f"column '{name}': {arr.null_count} rows are null; every row needs a value"])
    offsets = arr.offsets.to_numpy()
    lengths = np.diff(offsets)
    if shape is None:
        width = int(lengths[0]) if n else 0
        shape = (width,)
    width = int(np.prod(shape, dtype=np.int64)) if shape else 1
    bad = int(np.count_nonzero(lengths != width))
    if bad:
        raise DataValidationError(
            str(path),
            [f"column '{name}': {bad} of {n} rows do not hold {width} values (per-row shape {list(shape)}); "
             "run `fusionguard data validate` for a full report"],
        )
    values = arr.values.slice(int(offsets[0]), n * width) if n else arr.values.slice(0, 0)
    if values.null_count:
        raise DataValidationError(str(path), [f"column '{name}': {values.null_count} values inside the lists are null"])
    flat = values.to_numpy(zero_copy_only=False)
    out = flat.reshape((n, *shape))
    return out.astype(dtype, copy=False) if dtype is not None else out


def _id_numpy(arr: pa.Array) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_integer(arr.type):
        return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)


def _label_numpy(arr: pa.Array, path: Path) -> np.ndarray:
    if arr.null_count:
        raise DataValidationError(str(path), [f"column 'label': {arr.null_count} rows are null"])
    values = arr.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        raise DataValidationError(str(path), ["column 'label' holds non-integer values; labels are integer grades >= 0"])
    if values.dtype.kind not in "iuf":
        raise DataValidationError(str(path), [f"column 'label' has type {arr.type}; labels are integer grades >= 0"])
    return values.astype(np.int64, copy=False)


def _resolve_inputs(
    contract: ModelContract | None, inputs: Sequence[str] | None
) -> list[tuple[str, tuple[int, ...] | None, str | None]]:
    if contract is None:
        return [(name, None, None) for name in (inputs or ())]
    names = list(inputs) if inputs is not None else list(contract.input_names)
    unknown = [n for n in names if n not in contract.input_names]
    if unknown:
        raise InvalidInputError(f"inputs {unknown} are not in the model contract (inputs: {list(contract.input_names)})")
    return [(n, contract.input(n).shape, contract.input(n).dtype) for n in names]


def iter_batches(
    path: str | Path,
    contract: ModelContract | None = None,
    batch_rows: int = READ_BATCH_ROWS,
    inputs: Sequence[str] | None = None,
) -> Iterator[Batch]:
    """Stream a dataset in batches of at most `batch_rows` rows, reading only the needed columns.

    Args:
        path: a Parquet dataset.
        contract: gives each input's per-row shape and dtype; feeds come out as
            (n, *spec.shape) in spec.dtype. Without it, feeds are the flat (n, L) arrays of the
            columns named in `inputs` (none by default), in their stored dtype.
        batch_rows: the most rows per batch.
        inputs: input names to read; by default all of the contract's inputs.
    Raises:
        InvalidInputError: the file is missing or not Parquet, or `inputs` names an input the
            contract lacks.
        DataValidationError: columns are missing, or rows hold the wrong number of values.
    """
    import pyarrow as pa

    if batch_rows <= 0:
        raise InvalidInputError(f"batch_rows must be positive, got {batch_rows}")
    path = Path(path)
    pf = open_parquet(path)
    wanted = _resolve_inputs(contract, inputs)
    present = set(pf.schema_arrow.names)
    missing = [c for c in (*ID_COLUMNS, *(w[0] for w in wanted)) if c not in present]
    if missing:
        raise DataValidationError(
            str(path), [f"missing columns {missing} (the file has {sorted(present)}); regenerate the dataset"]
        )
    columns = [*ID_COLUMNS, *(w[0] for w in wanted)]
    yielded = False
    for record_batch in read_batches(pf, path, batch_size=batch_rows, columns=columns):
        yielded = True
        yield _to_batch(record_batch, wanted, path)
    if not yielded:  # an empty file still yields one empty batch with the right shapes
        schema = pa.schema([pf.schema_arrow.field(c) for c in columns])
        empty = pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)
        yield _to_batch(empty, wanted, path)


def _to_batch(record_batch: pa.RecordBatch, wanted, path: Path) -> Batch:
    feeds = {
        name: _list_column(record_batch.column(name), name, shape, dtype, path) for name, shape, dtype in wanted
    }
    return Batch(
        query_id=_id_numpy(record_batch.column("query_id")),
        item_id=_id_numpy(record_batch.column("item_id")),
        label=_label_numpy(record_batch.column("label"), path),
        feeds=feeds,
    )


def load_dataset(
    path: str | Path, contract: ModelContract | None = None, inputs: Sequence[str] | None = None
) -> Batch:
    """The whole dataset as one Batch (see `iter_batches` for the arguments)."""
    return concat_batches(list(iter_batches(path, contract=contract, inputs=inputs)))
