"""A Parquet eval set wherever it lives, read by global row range wherever the reader runs.

`ParquetSource.open(data)` takes a local file, a local directory of Parquet files, or a URI that
pyarrow's filesystems understand (``file://``, ``s3://``, ``gs://``, ``hdfs://``, ``abfs://``).
Its rows are the files' rows in path order, each file's row groups in order: for one file, the
order in which the local engine streams it. A directory is listed recursively, skipping names
that start with ``_`` or ``.`` (``_SUCCESS``, ``.crc``), as `pyarrow.dataset` does.

The source holds the filesystem, the file paths and the rows of each row group, nothing else, so
it is small and picklable: a Ray actor takes it and reads a range of global rows itself
(`ParquetSource.read`), through the same filesystem, instead of receiving the bytes from the
driver. A range starting inside a row group decodes that row group from its start (Parquet has
no finer random access here); readers take long ranges, so this costs little.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fusionguard.contract import ModelContract
from fusionguard.dataset import _READ_BUFFER_BYTES, ID_COLUMNS, Batch, _resolve_inputs, _to_batch, read_batches
from fusionguard.errors import DataValidationError, InvalidInputError

READ_ROWS = 8192  # rows per Parquet read (as fusionguard.streaming)

MEANS_ROWS = 65_536  # Scorer.reference_means's chunk: the same sums in the same order

__all__ = ["ParquetSource", "data_location", "dataset_sha256", "is_uri", "open_dataset", "spans_files"]


def is_uri(data: object) -> bool:
    """True for a URI (``scheme://...``), which must stay a string: `Path` would fold its ``//``."""
    return "://" in str(data)


def spans_files(data: str | Path) -> bool:
    """True for a URI or a local directory: read through `ParquetSource` (files in path order as
    one), not as one local Parquet file."""
    return is_uri(data) or Path(data).is_dir()


def data_location(data: str | Path) -> str | Path:
    """An eval set's location as the readers take it: a URI as its string, anything else a `Path`."""
    return str(data) if is_uri(data) else Path(data)


def _hidden(path: str, root: str) -> bool:
    rel = PurePosixPath(path).relative_to(PurePosixPath(root)) if path.startswith(root) else PurePosixPath(path)
    return any(part.startswith(("_", ".")) for part in rel.parts)


@dataclass(frozen=True)
class ParquetSource:
    """The files of a Parquet dataset in read order (see the module docstring)."""

    uri: str  # what the caller passed, for messages
    fs: pafs.FileSystem  # picklable: an actor reads through the same filesystem
    files: tuple[str, ...]  # paths inside `fs`, in read order
    row_groups: tuple[tuple[int, ...], ...]  # rows of each row group, per file

    @classmethod
    def open(cls, data: str | Path) -> ParquetSource:
        """Resolve `data` and read every file's footer (row counts); no data pages are read.

        Raises:
            InvalidInputError: nothing there, an empty directory, or a file that is not Parquet.
        """
        text = str(data)
        try:
            if "://" in text:
                fs, root = pafs.FileSystem.from_uri(text)
            else:
                fs, root = pafs.LocalFileSystem(), str(Path(text).resolve())
            info = fs.get_file_info(root)
            if info.type == pafs.FileType.NotFound:
                raise InvalidInputError(
                    f"dataset {text} does not exist; pass a Parquet file, a directory of Parquet files or a URI"
                )
            if info.type == pafs.FileType.Directory:
                listing = fs.get_file_info(pafs.FileSelector(root, recursive=True))
                files = sorted(f.path for f in listing if f.type == pafs.FileType.File and not _hidden(f.path, root))
                if not files:
                    raise InvalidInputError(f"the directory {text} holds no Parquet files")
            else:
                files = [root]
            groups = []
            for path in files:
                meta = pq.ParquetFile(fs.open_input_file(path)).metadata
                groups.append(tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)))
        except (pa.ArrowException, OSError, ValueError) as err:
            raise InvalidInputError(
                f"cannot read the Parquet dataset {text} ({type(err).__name__}: {' '.join(str(err).split())}); "
                "pass a Parquet file, a directory of Parquet files or a URI pyarrow understands (s3://, gs://, file://)"
            ) from None
        return cls(text, fs, tuple(files), tuple(groups))

    @property
    def file_rows(self) -> tuple[int, ...]:
        return tuple(sum(g) for g in self.row_groups)

    @property
    def n_rows(self) -> int:
        return sum(self.file_rows)

    def ids(self, *, read_rows: int = 1 << 20) -> Iterator[Batch]:
        """query_id, item_id and label of every row, in order (no feature column is read)."""
        return self.read(0, self.n_rows, None, read_rows=read_rows)

    def query_ids(self) -> np.ndarray:
        """Every row's query id, in order (only that column's pages are decoded)."""
        ids = [b.query_id for b in self.ids()]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def read(
        self, start: int, stop: int, contract: ModelContract | None, *, read_rows: int = READ_ROWS
    ) -> Iterator[Batch]:
        """Rows [start, stop) of the dataset, in order, as Batches of at most `read_rows` rows
        (the ids, and the contract's inputs shaped as its feeds; None: the ids only).

        Raises:
            DataValidationError: a file lacks a needed column.
            InvalidInputError: a damaged data page.
        """
        wanted = _resolve_inputs(contract, None)
        for path, rb in self.read_records(start, stop, [*ID_COLUMNS, *(w[0] for w in wanted)], read_rows=read_rows):
            yield _to_batch(rb, wanted, Path(path))

    def read_records(
        self, start: int, stop: int, columns: list[str], *, read_rows: int = READ_ROWS
    ) -> Iterator[tuple[str, pa.RecordBatch]]:
        """Rows [start, stop) of the dataset's `columns`, in order, as (file path, Arrow record
        batch of at most `read_rows` rows), undecoded (the Ray Data source's blocks).

        Raises:
            DataValidationError: a file lacks a needed column.
            InvalidInputError: a damaged data page.
        """
        offset = 0
        for path, groups in zip(self.files, self.row_groups):
            n = sum(groups)
            lo, hi = max(start - offset, 0), min(stop - offset, n)
            if lo < hi:
                for rb in self._read_file(path, groups, lo, hi, columns, read_rows):
                    yield path, rb
            offset += n
            if offset >= stop:
                return

    def _read_file(self, path: str, groups: tuple[int, ...], lo: int, hi: int, columns: list[str],
                   read_rows: int) -> Iterator[pa.RecordBatch]:
        bounds = np.cumsum((0, *groups))
        first = int(np.searchsorted(bounds, lo, side="right")) - 1  # the row group holding row `lo`
        last = int(np.searchsorted(bounds, hi, side="left"))  # one past the row group holding row hi - 1
        try:
            pf = pq.ParquetFile(self.fs.open_input_file(path), pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
        except (pa.ArrowException, OSError) as err:
            raise InvalidInputError(f"cannot open {path} of the dataset {self.uri} ({err})") from None
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing:
            raise DataValidationError(
                path, [f"missing columns {missing} (the file has {sorted(pf.schema_arrow.names)}); regenerate the dataset"]
            )
        pos = int(bounds[first])
        for rb in read_batches(pf, path, batch_size=read_rows, row_groups=range(first, last), columns=columns):
            a, b = max(lo - pos, 0), min(hi - pos, rb.num_rows)
            pos += rb.num_rows
            if a < b:
                yield rb.slice(a, b - a)
            if pos >= hi:
                return

    def input_means(self, contract: ModelContract) -> dict[str, np.ndarray]:
        """`Scorer.reference_means` of the dataset (for "mean" masks): the same 65,536-row chunks
        summed in the same order, so the means equal those of the files concatenated, to the bit."""
        from fusionguard.batches import fixed_chunks

        sums: dict[str, np.ndarray] = {}
        count = 0
        for batch in fixed_chunks(self.read(0, self.n_rows, contract, read_rows=MEANS_ROWS), MEANS_ROWS):
            for spec in contract.inputs:
                part = batch.feeds[spec.name].sum(axis=0, dtype=np.float64)
                sums[spec.name] = sums[spec.name] + part if spec.name in sums else part
            count += len(batch)
        if count == 0:
            raise InvalidInputError(f"the dataset {self.uri} has no rows; means need at least one")
        return {spec.name: (sums[spec.name] / count).astype(spec.dtype) for spec in contract.inputs}

    def sha256(self, chunk_bytes: int = 1 << 20) -> str:
        """SHA-256 over the files in read order: each file's path relative to the dataset root
        and its bytes (a single file: the file's bytes alone, as `dataset_sha256`)."""
        digest = hashlib.sha256()
        root = self.files[0] if len(self.files) == 1 else None
        for path in self.files:
            if root is None:
                digest.update(str(PurePosixPath(path).relative_to(PurePosixPath(self.files[0]).parent)).encode() + b"\0")
            with self.fs.open_input_stream(path) as fh:
                for chunk in iter(lambda: fh.read(chunk_bytes), b""):
                    digest.update(chunk)
        return digest.hexdigest()

    def as_file(self) -> _Files:
        """The files read as one `ParquetFile` (the members validation and the grouping check use)."""
        return _Files(self)


class _Files:
    """A ParquetSource behind the few `pyarrow.parquet.ParquetFile` members that
    `fusionguard.validation` and `fusionguard.streaming.check_grouped` use: its schema (the first
    file's), its row count, and `iter_batches` over every file in order."""

    def __init__(self, source: ParquetSource) -> None:
        self.source = source
        self.metadata = SimpleNamespace(num_rows=source.n_rows)
        self.schema_arrow = pq.ParquetFile(source.fs.open_input_file(source.files[0])).schema_arrow

    def iter_batches(self, **kwargs: object) -> Iterator[pa.RecordBatch]:
        for path in self.source.files:
            pf = pq.ParquetFile(self.source.fs.open_input_file(path), pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
            yield from pf.iter_batches(**kwargs)


def open_dataset(data: str | Path) -> pq.ParquetFile | _Files:
    """A local Parquet file as `fusionguard.dataset.open_parquet` opens it; a directory of files
    or a URI as one file-like reader over its files (`ParquetSource`)."""
    from fusionguard.dataset import open_parquet

    if not spans_files(data):
        return open_parquet(data)
    return ParquetSource.open(data).as_file()


def dataset_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 of a dataset file's bytes, read in chunks (a directory of Parquet files or a URI:
    `ParquetSource.sha256`, which for one file is the same hash of its bytes)."""
    if spans_files(path):
        return ParquetSource.open(path).sha256(chunk_bytes)
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"dataset {path} does not exist; check the path")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()
