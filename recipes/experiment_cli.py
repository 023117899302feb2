"""`fusionguard experiment run|report`: the paper's grid from one command."""

from __future__ import annotations

from pathlib import Path

import click

from fusionguard.cli import LazyGroup, progress_option


@click.group(cls=LazyGroup, lazy={})
def experiment() -> None:
    """Run the paper's experiment grid and rebuild its tables and figures.

    Example: fusionguard experiment run --config training/configs/paper.toml --out runs/paper --scale small
    """


@experiment.command("run")
@click.option("--config", "config", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Grid TOML (training/configs/paper.toml).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Experiment directory (resumable).")
@click.option("--scale", type=click.Choice(["small", "full"]), default="small", show_default=True, help="small: this CPU machine; full: a GPU machine.")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="MLflow tracking URI (a local path works); off by default. Needs the 'tracking' extra.")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The real track's data: the Flickr8k feature folder for track = 'flickr' (default ../shared/data/flickr8k "
                   "when present), the emoji cache for track = 'emoji' (python -m fusionguard.training.tracks.emoji --cache DIR).")
@progress_option
def run_command(config: Path, out: Path, scale: str, mlflow_uri: str | None, data_root: Path | None, progress: bool) -> None:
    """Train (or reuse), export and evaluate every run of the grid, then write the report.

    Example: fusionguard experiment run --config training/configs/flickr.toml --out runs/flickr --scale small
    """
    from fusionguard.recipes.experiment import run_experiment

    result = run_experiment(config, out, scale=scale, mlflow_uri=mlflow_uri, data_root=data_root, progress=progress)
    click.echo(result.summary())
    raise SystemExit(result.exit_code)


@experiment.command("report")
@click.argument("out", type=click.Path(file_okay=False, exists=True, path_type=Path))
def report_command(out: Path) -> None:
    """Rebuild all tables and figures from the stored per-query results (no retraining).

    Example: fusionguard experiment report runs/paper
    """
    from fusionguard.recipes.experiment_report import build_report

    click.echo(build_report(out).summary())
