"""Exact chunking, the grouping check and the external grouping of unsorted files."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fusionguard.cli import cli
from fusionguard.dataset import Batch, load_dataset, write_dataset
from fusionguard.streaming import check_grouped, fixed_chunks, group_queries, query_batches


def _batch(n: int, start: int = 0) -> Batch:
    r = np.arange(start, start + n)
    return Batch(r // 3, r, r % 2, {"x": r[:, None].astype(np.float32)})


@pytest.mark.parametrize("sizes", [[7], [3, 4, 5], [1, 1, 1, 1, 1, 1, 1], [10, 2]])
@pytest.mark.parametrize("rows", [1, 4, 5, 100])
def test_fixed_chunks_cut_exactly(sizes, rows):
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    chunks = list(fixed_chunks((_batch(n, s) for n, s in zip(sizes, starts)), rows))
    lengths = [len(c) for c in chunks]
    total = sum(sizes)
    assert lengths == [rows] * (total // rows) + ([total % rows] if total % rows else [])
    np.testing.assert_array_equal(np.concatenate([c.item_id for c in chunks]), np.arange(total))


def _unsorted(tmp_path, n_queries: int = 12, per_query: int = 5):
    """Queries spread over the file: rows dealt round-robin (q0, q1, ..., q0, q1, ...)."""
    rng = np.random.default_rng(0)
    qid = np.tile(np.array([f"q{i}" for i in range(n_queries)], dtype=object), per_query)
    iid = np.arange(qid.shape[0])
    label = rng.integers(0, 3, qid.shape[0])
    x = rng.normal(size=(qid.shape[0], 4)).astype(np.float32)
    return write_dataset(tmp_path / "unsorted.parquet", qid, iid, label, {"x": x}), (qid, iid, label, x)


def test_check_grouped(tmp_path):
    path, _ = _unsorted(tmp_path)
    report = check_grouped(path)
    assert not report.grouped and report.n_split == 12 and report.n_queries == 12 and report.first_split == "q0"
    b = _batch(30)
    grouped = write_dataset(tmp_path / "g.parquet", b.query_id, b.item_id, b.label, b.feeds)
    assert check_grouped(grouped).grouped


@pytest.mark.parametrize("bucket_rows", [5, 7, 1000])
def test_group_queries_makes_queries_contiguous_keeping_order(tmp_path, bucket_rows):
    path, (qid, iid, label, x) = _unsorted(tmp_path)
    out = tmp_path / f"grouped{bucket_rows}.parquet"
    report = group_queries(path, out, bucket_rows=bucket_rows, read_rows=7)
    assert report.n_split == 12
    assert check_grouped(out).grouped
    got = load_dataset(out, inputs=["x"])
    # Reference: a stable sort by first occurrence of the query.
    first = {q: i for i, q in reversed(list(enumerate(qid)))}
    order = np.argsort([first[q] for q in qid], kind="stable")
    np.testing.assert_array_equal(got.query_id, qid[order])
    np.testing.assert_array_equal(got.item_id, iid[order])
    np.testing.assert_array_equal(got.label, label[order])
    np.testing.assert_array_equal(got.feeds["x"], x[order])
    assert pq.ParquetFile(out).schema_arrow == pq.ParquetFile(path).schema_arrow


def test_group_queries_leaves_a_grouped_file_unchanged(tmp_path):
    b = _batch(40)
    src = write_dataset(tmp_path / "g.parquet", b.query_id, b.item_id, b.label, b.feeds)
    group_queries(src, tmp_path / "copy.parquet", bucket_rows=9)
    assert pq.read_table(tmp_path / "copy.parquet").equals(pq.read_table(src))


def test_query_larger_than_the_bucket_is_refused(tmp_path):
    path, _ = _unsorted(tmp_path)
    with pytest.raises(Exception, match="bucket_rows"):
        group_queries(path, tmp_path / "o.parquet", bucket_rows=3)


def test_query_batches_never_split_a_query(tmp_path):
    b = _batch(50)
    src = write_dataset(tmp_path / "g.parquet", b.query_id, b.item_id, b.label, b.feeds)
    seen = []
    for batch in query_batches(src, None, 4, read_rows=7):
        seen.extend(np.unique(batch.query_id).tolist())
    assert sorted(seen) == seen == list(range(17))


def test_cli_group(tmp_path):
    path, _ = _unsorted(tmp_path)
    result = CliRunner().invoke(cli, ["data", "group", str(path), str(tmp_path / "o.parquet")])
    assert result.exit_code == 0, result.output
    assert "12 queries (12 were spread" in result.output
    assert check_grouped(tmp_path / "o.parquet").grouped


def test_cli_validate_notes_an_unsorted_file(tmp_path):
    path, _ = _unsorted(tmp_path)
    result = CliRunner().invoke(cli, ["data", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "12 queries (first 'q0') have rows spread" in result.output and "fusionguard data group" in result.output


# ----- batch ends from the ids, and row ranges read from a source --------------------------------

@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rows", [1, 3, 10, 64])
def test_batch_ends_are_where_query_batches_cut(tmp_path, seed, rows):
    """The ends computed from the ids alone are those of the streamed whole-query batches."""
    from fusionguard.streaming import batch_ends

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 25, size=int(rng.integers(1, 15)))
    qid = np.repeat(rng.permutation(1000)[: sizes.shape[0]], sizes)
    n = qid.shape[0]
    path = write_dataset(tmp_path / "q.parquet", qid, np.arange(n), np.zeros(n, np.int64),
                         {"x": np.zeros((n, 1), np.float32)})
    streamed = np.cumsum([len(b) for b in query_batches(path, None, rows, read_rows=7)])
    np.testing.assert_array_equal(batch_ends(qid, rows, path), streamed)


def test_batch_ends_refuse_a_split_query(tmp_path):
    from fusionguard.streaming import UnsortedDataError, batch_ends

    with pytest.raises(UnsortedDataError, match="1 query \\(first 'b'\\)"):
        batch_ends(np.array(["a", "b", "c", "b"], dtype=object), 2, tmp_path / "x.parquet")


def _split_files(tmp_path, n: int = 50):
    """One dataset as a file, and as a directory of three files (with a _SUCCESS marker and
    row groups of 4 rows), the rows in the same order."""
    b = _batch(n)
    one = write_dataset(tmp_path / "one.parquet", b.query_id, b.item_id, b.label, b.feeds)
    table = pq.read_table(one)
    folder = tmp_path / "parts"
    folder.mkdir()
    for i, (a, z) in enumerate([(0, 13), (13, 31), (31, n)]):
        pq.write_table(table.slice(a, z - a), folder / f"part-{i}.parquet", row_group_size=4)
    (folder / "_SUCCESS").write_text("")
    return one, folder


@pytest.mark.parametrize(("start", "stop"), [(0, 50), (0, 1), (3, 17), (12, 14), (13, 31), (30, 50), (49, 50), (5, 5)])
@pytest.mark.parametrize("uri", [False, True])
def test_source_reads_any_row_range_of_a_directory(tmp_path, start, stop, uri):
    from fusionguard.source import ParquetSource

    one, folder = _split_files(tmp_path)
    source = ParquetSource.open(folder.as_uri() if uri else folder)
    assert source.n_rows == 50 and len(source.files) == 3
    got = list(source.read(start, stop, None, read_rows=3))
    want = load_dataset(one)
    ids = np.concatenate([g.item_id for g in got]) if got else np.zeros(0, np.int64)
    np.testing.assert_array_equal(ids, want.item_id[start:stop])
    np.testing.assert_array_equal(np.concatenate([g.query_id for g in got]) if got else ids, want.query_id[start:stop])


def test_source_refuses_what_it_cannot_read(tmp_path):
    from fusionguard.errors import InvalidInputError
    from fusionguard.source import ParquetSource

    with pytest.raises(InvalidInputError, match="does not exist"):
        ParquetSource.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="holds no Parquet files"):
        ParquetSource.open(tmp_path / "empty")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InvalidInputError, match="cannot read the Parquet dataset"):
        ParquetSource.open(tmp_path / "bad.parquet")
