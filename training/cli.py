"""`fusionguard train` and `fusionguard data synth` (registered lazily by the root CLI)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click

from fusionguard.cli import envvar, progress_option
from fusionguard.devices import DEVICES
from fusionguard.errors import ConfigError
from fusionguard.training.config import load_config, read_toml
from fusionguard.training.variants import VARIANTS


@click.command()
@click.option("--variant", type=click.Choice(VARIANTS), default=None, help="Model/mitigation to train (overrides the config's).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), required=True, help="Benchmark directory with train/val/test.parquet.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Checkpoint directory (resumed if it holds resume.pt).")
@click.option("--config", "config_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None, help="TOML file with every hyperparameter.")
@click.option("--seed", type=int, default=None, help="Random seed (overrides the config's).")
@click.option("--device", type=click.Choice(DEVICES), default=None, help="auto picks CUDA when present (overrides the config's).", **envvar("device"))
@click.option("--fresh", is_flag=True, help="Ignore OUT/resume.pt and start over.")
@progress_option
@click.option("--quiet", is_flag=True, hidden=True, help="Deprecated alias of --no-progress.")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True,
              help="Log the run to this MLflow tracking server or store (needs the 'tracking' extra); off by default.")
def train(variant, data_dir, out, config_path, seed, device, fresh, progress, quiet, mlflow_uri) -> None:
    """Train a ranker variant; log per-epoch diagnostics to OUT/train_log.jsonl.

    The config is validated whole (with the data directory) before training starts; every problem
    is listed and the exit code is 2.

    Example: fusionguard train --variant mbl --data bench/ --out runs/mbl --config training/configs/default.toml
    """
    from fusionguard.training.data import data_problems
    from fusionguard.training.trainer import train as run_training  # torch loads only when the command runs

    try:
        config = load_config(config_path, variant=variant, seed=seed, device=device)
    except ConfigError as err:  # list the data directory's problems in the same message
        needs_visual = variant != "v1" if variant is not None else True
        raise ConfigError(err.source, err.problems + data_problems(data_dir, needs_visual)) from None
    if quiet:
        click.echo("warning: --quiet is deprecated; use --no-progress", err=True)
    if mlflow_uri:
        from fusionguard.training.tracking import require_mlflow

        require_mlflow()  # fail before training when the extra is missing
    result = run_training(config, data_dir, out, progress=progress and not quiet, resume=not fresh)
    click.echo(result.summary())
    if mlflow_uri:
        from fusionguard.training.tracking import log_training_run

        run_id = log_training_run(mlflow_uri, config, out)
        click.echo(f"logged to MLflow {mlflow_uri} as run {run_id}")


@click.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Directory for train/val/test.parquet and synth.json.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None, help="TOML file with generator knobs (SynthConfig fields).")
@click.option("--seed", type=int, default=None, help="Generator seed (overrides the config's).")
@click.option("--queries", type=int, default=None, help="Training queries (val/test keep their configured sizes).")
def synth(out, config_path, seed, queries) -> None:
    """Generate the synthetic image-search benchmark (deterministic by seed).

    Prints the oracle's test NDCG@10 with and without the visual modality.

    Example: fusionguard data synth --out bench/ --seed 0
    """
    from fusionguard.training.synth import SynthConfig, write_benchmark

    data = read_toml(config_path) if config_path is not None else {}
    if seed is not None:
        data["seed"] = seed
    if queries is not None:
        data["n_train"] = queries
    known = {f.name for f in fields(SynthConfig)}
    problems = [f"unknown key '{key}'; known keys: {sorted(known)}" for key in sorted(set(data) - known)]
    if problems:
        raise ConfigError(str(config_path or "synth options"), problems)
    if "grade_quantiles" in data:
        data["grade_quantiles"] = tuple(data["grade_quantiles"])
    result = write_benchmark(SynthConfig(**data), out)
    click.echo(result.summary())
