"""Dataset validation: every problem of a Parquet dataset at once, each with its count.

Where each check runs, and why:

- **pyarrow** (no Great Expectations): the file exists, is non-empty and is Parquet; the column
  types (ids, an integer or float label, numeric list columns for model inputs); and two
  contracts that disagree about an input's per-row size. These are facts about the file or its
  schema, not about rows. The list columns are then **streamed** batch by batch (only the needed
  columns are read) and each is reduced to two per-row numbers computed from the list's offsets
  and flat values buffer, without a Python loop per row: its length (null for a null row) and its
  count of NaN/inf/null values. GE works on a DataFrame of scalars, so a million rows of
  flattened tensors never reach it: what reaches it is a frame of id/label columns plus these
  derived columns, a few bytes per row.
- **Great Expectations** (ephemeral context, progress bars and analytics off), on that frame:
  column existence (a list input appears under its own name as its per-row length), not-null ids
  and labels and non-null list rows, label range (`>= 0`, `<= max_label` when given), integral
  labels (when the label is stored as float), per-row vector length equal to the contract's size
  (or, without a contract, to the column's most common length), no NaN/inf, and uniqueness of the
  compound key (query_id, item_id). A second, per-query frame (candidates and best label per
  query, from a pandas group-by) carries "at least two candidates" and "at least one relevant item".

GE takes ~5 s to import, so it is imported inside `validate_dataset`, never when
`fusionguard.dataset` is imported.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from fusionguard.contract import ModelContract
from fusionguard.dataset import ID_COLUMNS, read_batches
from fusionguard.errors import DataValidationError, InvalidInputError
from fusionguard.source import data_location, open_dataset

logger = logging.getLogger(__name__)

NONFINITE_SUFFIX = "__nonfinite"  # derived column: NaN/inf/null values per row of a list input
INTEGRAL_LABEL = "label__integral"  # derived column: the float label is a finite integer
_PROGRESS_ROWS = 200_000  # files at least this long get a progress bar on a terminal
# Rows per streamed read. The reader decodes every input column of a batch at once (2.2 KB a row
# for the demo's data), so this bounds the scan's memory: peak RSS of `fusionguard data validate`
# on 100,000 demo rows 924 MiB with 65,536-row reads, 477 MiB with 8,192 (and faster).
SCAN_ROWS = 8192

__all__ = ["ValidationReport", "ensure_valid", "validate_dataset"]


@dataclass(frozen=True)
class ValidationReport:
    """The outcome of `validate_dataset`."""

    path: str
    problems: tuple[str, ...]  # one fix-it line per problem; empty when the dataset is valid
    n_rows: int
    n_queries: int
    counts: Mapping[str, int] = field(default_factory=dict)  # check -> offending rows (or queries)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"{self.path}: valid, {self.n_rows} rows, {self.n_queries} queries"
        return str(DataValidationError(self.path, self.problems))


# ----- streaming pass (pyarrow) -----------------------------------------------------------------

def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _row_stats(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a list column: its length (NaN for a null row) and its NaN/inf/null count."""
    if pa.types.is_fixed_size_list(arr.type):
        arr = arr.cast(pa.list_(arr.type.value_type))
    offsets = arr.offsets.to_numpy()  # (n + 1,), index into arr.values (which ignores slicing)
    lengths = np.diff(offsets).astype(np.float64)
    values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    flat = values.to_numpy(zero_copy_only=False)  # nulls become NaN (floats) or make a float array
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        nonfinite = np.zeros(lengths.shape[0], dtype=np.int64)  # the usual case: nothing to locate
    else:
        cumulative = np.concatenate([[0], np.cumsum(~np.isfinite(flat), dtype=np.int64)])
        rel = offsets - offsets[0]
        nonfinite = cumulative[rel[1:]] - cumulative[rel[:-1]]
    if arr.null_count:
        lengths[~arr.is_valid().to_numpy(zero_copy_only=False)] = np.nan
    return lengths, nonfinite


def _scan(pf, path: Path, scalar_cols: list[str], list_cols: list[str], batch_rows: int) -> pd.DataFrame:
    """One streaming pass: id/label columns as they are, list columns reduced to per-row stats."""
    parts: list[pd.DataFrame] = []
    n_rows = pf.metadata.num_rows
    # The bar shows on a terminal for large files only (disable=None: off when not a TTY).
    bar = tqdm(total=n_rows, unit="rows", desc="validating", disable=None if n_rows >= _PROGRESS_ROWS else True)
    for batch in read_batches(pf, path, batch_size=batch_rows, columns=scalar_cols + list_cols):
        bar.update(batch.num_rows)
        frame = {c: batch.column(c).to_pandas() for c in scalar_cols}
        for c in list_cols:
            lengths, nonfinite = _row_stats(batch.column(c))
            frame[c] = lengths
            frame[c + NONFINITE_SUFFIX] = nonfinite
        parts.append(pd.DataFrame(frame))
    bar.close()
    if not parts:
        empty: dict[str, Any] = {c: pd.Series([], dtype=object) for c in scalar_cols}
        for c in list_cols:
            empty[c] = pd.Series([], dtype=np.float64)
            empty[c + NONFINITE_SUFFIX] = pd.Series([], dtype=np.int64)
        return pd.DataFrame(empty)
    return pd.concat(parts, ignore_index=True)


# ----- Great Expectations -----------------------------------------------------------------------

def _ge_run(frames: Mapping[str, tuple[pd.DataFrame, list[Any]]]) -> dict[str, list[Any]]:
    """Validate each frame with its expectations in an ephemeral GE context; results per frame."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("fusionguard")
    results: dict[str, list[Any]] = {}
    try:
        for name, (frame, expectations) in frames.items():
            definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
            suite = gx.ExpectationSuite(name=f"fusionguard-{name}")
            for expectation in expectations:
                suite.add_expectation(expectation)
            outcome = definition.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format="BASIC")
            results[name] = list(outcome.results)
    finally:
        # GE keeps the last context as its project (a module global), and through the data source
        # every validated frame: 69 MiB at 1,000,000 rows, held while the gate then scores.
        context.data_sources.delete("fusionguard")
    return results


def _unexpected(result: Any) -> int:
    return int((result.result or {}).get("unexpected_count") or 0)


def validate_dataset(
    path: str | Path,
    contracts: Sequence[ModelContract] = (),
    *,
    max_label: int | None = None,
    batch_rows: int = SCAN_ROWS,
) -> ValidationReport:
    """Check a dataset against the schema and, if given, the models' contracts.

    Args:
        path: the Parquet dataset.
        contracts: the contracts of the models that will read it; each input must be a list
            column holding `spec.size` values per row. Without contracts every list column is
            checked for NaN/inf and a constant per-row length.
        max_label: the largest allowed label, if any.
        batch_rows: rows per streamed batch.
    Returns:
        A ValidationReport; `ok` is False when `problems` is non-empty. Never raises for a bad file.
    """
    report = _validate(path, contracts, max_label, batch_rows)
    # The per-row frame sits in reference cycles (GE's data source, pandas' group-by), so it would
    # outlive this call until a full collection: 120-190 MiB at 1,000,000 rows, while the gate
    # scores. Collect now.
    gc.collect()
    return report


def _validate(path: str | Path, contracts: Sequence[ModelContract], max_label: int | None, batch_rows: int
              ) -> ValidationReport:
    label = str(path)
    path = data_location(path)
    try:
        pf = open_dataset(path)  # a file, a directory of files read as one, or a URI
    except InvalidInputError as err:
        return ValidationReport(label, (str(err),), 0, 0, {"unreadable": 1})

    problems: list[str] = []
    counts: dict[str, int] = {}
    schema = pf.schema_arrow
    types = {f.name: f.type for f in schema}

    # Expected per-row sizes from the contracts (one size per input name).
    sizes: dict[str, int] = {}
    for contract in contracts:
        for spec in contract.inputs:
            if spec.name in sizes and sizes[spec.name] != spec.size:
                problems.append(
                    f"the models disagree on input '{spec.name}': {sizes[spec.name]} vs {spec.size} values per row"
                )
                counts["contract_conflicts"] = counts.get("contract_conflicts", 0) + 1
            sizes.setdefault(spec.name, spec.size)
    inputs = list(sizes) if contracts else [n for n, t in types.items() if _is_list(t) and n not in ID_COLUMNS]

    # Column types (schema facts, pyarrow).
    list_cols: list[str] = []
    for name in inputs:
        t = types.get(name)
        if t is None:
            continue  # reported as missing by GE below
        if not _is_list(t) or not (pa.types.is_integer(t.value_type) or pa.types.is_floating(t.value_type)):
            problems.append(
                f"column '{name}' has type {t}; a model input must be a list of numbers (the row's tensor flattened)"
            )
            counts[f"bad_type:{name}"] = 1
        else:
            list_cols.append(name)
    label_type = types.get("label")
    label_usable = label_type is not None and (pa.types.is_integer(label_type) or pa.types.is_floating(label_type))
    if label_type is not None and not label_usable:
        problems.append(f"column 'label' has type {label_type}; labels must be integer grades >= 0")
        counts["bad_type:label"] = 1

    scalar_cols = [c for c in ID_COLUMNS if c in types and (c != "label" or label_usable)]
    try:
        rows = _scan(pf, path, scalar_cols, list_cols, batch_rows)
    except InvalidInputError as err:  # a corrupt data page under a valid footer
        return ValidationReport(label, (str(err),), 0, 0, {"unreadable": 1})
    n_rows = int(pf.metadata.num_rows)
    if n_rows == 0:
        problems.append("the dataset has no rows; write at least one query with two candidates")
        counts["empty"] = 1

    # Row-level expectations.
    gxe = _expectations()
    row_checks: list[tuple[Any, str, str]] = []  # (expectation, count key, message template with {n})
    for column in (*ID_COLUMNS, *inputs):
        if column in types and column not in scalar_cols and column not in list_cols:
            continue  # present with a wrong type, already reported
        row_checks.append((gxe.ExpectColumnToExist(column=column), "missing_columns", column))
    for column in scalar_cols:
        row_checks.append((gxe.ExpectColumnValuesToNotBeNull(column=column), f"null:{column}",
                           f"column '{column}': {{n}} rows are null; every row needs a {column}"))
    if "label" in scalar_cols:
        row_checks.append((gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=max_label),
                           "label_out_of_range",
                           f"column 'label': {{n}} rows are outside [0, {max_label if max_label is not None else 'inf'}];"
                           " labels are graded relevance >= 0"))
        if pa.types.is_floating(label_type):
            values = rows["label"].to_numpy(dtype=np.float64, na_value=np.nan)
            rows[INTEGRAL_LABEL] = np.where(np.isnan(values), None, np.isfinite(values) & (values == np.round(values)))
            row_checks.append((gxe.ExpectColumnValuesToBeInSet(column=INTEGRAL_LABEL, value_set=[True]),
                               "label_not_integer", "column 'label': {n} rows are not integers; labels are integer grades"))
    for column in list_cols:
        lengths = rows[column].dropna()
        if column in sizes:
            expected, why = sizes[column], "the contract's per-row size"
        else:
            expected = int(lengths.mode().iloc[0]) if len(lengths) else 0
            why = "the column's most common length"
        row_checks.append((gxe.ExpectColumnValuesToNotBeNull(column=column), f"null_rows:{column}",
                           f"column '{column}': {{n}} rows are null; every row needs its tensor"))
        row_checks.append((gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[float(expected)]),
                           f"wrong_length:{column}",
                           f"column '{column}': {{n}} rows do not hold {expected} values ({why}); "
                           "flatten each row's tensor to the model's per-row shape"))
        row_checks.append((gxe.ExpectColumnValuesToBeBetween(column=column + NONFINITE_SUFFIX, max_value=0),
                           f"nonfinite:{column}",
                           f"column '{column}': {{n}} rows contain NaN, inf or null values; clean or drop them"))
    if {"query_id", "item_id"} <= set(scalar_cols):
        row_checks.append((gxe.ExpectCompoundColumnsToBeUnique(column_list=["query_id", "item_id"]), "duplicate_pairs",
                           "{n} rows share their (query_id, item_id) pair with another row; keep one row per pair"))

    # Query-level expectations.
    query_checks: list[tuple[Any, str, str]] = []
    queries = pd.DataFrame({"n_candidates": pd.Series([], dtype=np.int64)})
    n_queries = 0
    if "query_id" in scalar_cols:
        grouped = rows.groupby("query_id", sort=False, dropna=True)
        queries = pd.DataFrame({"n_candidates": grouped.size()})
        if "label" in scalar_cols:
            queries["max_label"] = grouped["label"].max()
        n_queries = len(queries)
        query_checks.append((gxe.ExpectColumnValuesToBeBetween(column="n_candidates", min_value=2), "short_queries",
                             "{n} queries have fewer than two candidates; a ranking needs at least two"))
        if "label" in scalar_cols:
            query_checks.append((gxe.ExpectColumnValuesToBeBetween(column="max_label", min_value=1),
                                 "queries_without_relevant",
                                 "{n} queries have no relevant item (label > 0); they carry no ranking signal"))

    results = _ge_run({"rows": (rows, [c[0] for c in row_checks]), "queries": (queries.reset_index(drop=True),
                                                                              [c[0] for c in query_checks])})
    missing: list[str] = []
    for checks, outcomes in ((row_checks, results["rows"]), (query_checks, results["queries"])):
        by_config = {_config_key(r.expectation_config): r for r in outcomes}
        for expectation, key, message in checks:
            outcome = by_config[_config_key(expectation.configuration)]
            if outcome.success:
                continue
            if key == "missing_columns":
                missing.append(message)
                continue
            n = _unexpected(outcome)
            counts[key] = n
            problems.append(message.format(n=n))
    if missing:
        counts["missing_columns"] = len(missing)
        problems.insert(0, f"missing columns {missing} (the file has {sorted(types)}); "
                           "each model input needs a column named like the input")
    return ValidationReport(label, tuple(problems), n_rows, n_queries, counts)


def _import_gx():
    """Import Great Expectations quietly: no analytics, and its config module's logger (which GE
    pins to INFO) follows the application's log level like every other logger."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.NOTSET)
    return gx


def _expectations():
    return _import_gx().expectations


def _config_key(config: Any) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    return f"{config.type}:{sorted(kwargs.items(), key=lambda kv: kv[0])!r}"


def ensure_valid(
    path: str | Path,
    contracts: Sequence[ModelContract] = (),
    *,
    max_label: int | None = None,
    batch_rows: int = SCAN_ROWS,
) -> ValidationReport:
    """`validate_dataset`, raising DataValidationError (exit 2) that lists every problem."""
    report = validate_dataset(path, contracts, max_label=max_label, batch_rows=batch_rows)
    if not report.ok:
        raise DataValidationError(report.path, report.problems)
    return report
