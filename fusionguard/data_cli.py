"""`fusionguard data ...`: dataset commands. Other packages add theirs through the
`fusionguard.data_commands` entry points (training's `synth`), loaded lazily."""

from __future__ import annotations

from pathlib import Path

import click

from fusionguard.cli import DataLocation, LazyGroup
from fusionguard.commands import DATA_COMMANDS_GROUP, Subcommand

COMMAND = Subcommand("fusionguard.data_cli:data", "Generate and validate datasets.")


@click.group(cls=LazyGroup, entry_points=DATA_COMMANDS_GROUP)
def data() -> None:
    """Generate and validate datasets (Parquet, one row per query-candidate pair)."""


@data.command("validate")
@click.argument("file", type=DataLocation(exists=False))  # a missing file is listed as a problem
@click.option("--model", "models", multiple=True, type=click.Path(path_type=Path),
              help="ONNX model whose contract the data must satisfy (repeatable).")
@click.option("--contract", "sidecar", type=click.Path(path_type=Path), default=None,
              help="Sidecar contract JSON: for the single --model that lacks an embedded contract, "
                   "or on its own to check the data against it without a model.")
@click.option("--max-label", type=int, default=None, help="Largest allowed label (default: no upper bound).")
def validate(file: Path, models: tuple[Path, ...], sidecar: Path | None, max_label: int | None) -> None:
    """Check a dataset and list every problem at once, with counts.

    Exits 0 when the dataset is valid (printing its row and query counts) and 2 otherwise.

    Example: fusionguard data validate eval.parquet --model v2.onnx --model v1.onnx
    """
    from fusionguard.contract import ModelContract, load_contract
    from fusionguard.validation import ensure_valid
    from fusionguard.errors import InvalidInputError

    if sidecar is not None and len(models) > 1:
        raise click.UsageError("--contract describes one model; give at most one --model with it")
    if sidecar is not None and not models:
        if not sidecar.is_file():
            raise InvalidInputError(f"contract sidecar {sidecar} does not exist; check the path")
        contracts = [ModelContract.from_json(sidecar.read_text(encoding="utf-8"), source=str(sidecar))]
    else:
        contracts = [load_contract(model, sidecar) for model in models]
    report = ensure_valid(file, contracts, max_label=max_label)
    click.echo(report.summary())
    from fusionguard.streaming import check_grouped

    grouping = check_grouped(file)
    if not grouping.grouped:  # valid, but the gate and eval stream whole queries and will refuse it
        click.echo(f"note: {grouping.n_split} queries (first {grouping.first_split!r}) have rows spread over the file; "
                   f"`fusionguard gate` and `fusionguard eval` need them contiguous: fusionguard data group {file} GROUPED.parquet")


@data.command("group")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--bucket-rows", type=int, default=262_144, show_default=True,
              help="Rows sorted in memory at a time (memory grows with it; a query must fit).")
def group(src: Path, dst: Path, bucket_rows: int) -> None:
    """Write a copy of SRC in which each query's rows are contiguous.

    The gate and `fusionguard eval` stream the eval set one run of query rows at a time and refuse
    (exit 2) a file where a query's rows are spread out. This external grouping keeps the queries
    in first-occurrence order and each query's rows in file order, with memory bounded by
    --bucket-rows rows plus one entry per query (fusionguard/streaming.py).

    Example: fusionguard data group logged.parquet grouped.parquet
    """
    from fusionguard.streaming import group_queries

    report = group_queries(src, dst, bucket_rows=bucket_rows)
    click.echo(f"{dst}: {report.n_rows} rows, {report.n_queries} queries "
               f"({report.n_split} were spread over {src} and are now contiguous)")
