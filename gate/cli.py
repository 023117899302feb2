"""`fusionguard gate`, `promote`, `registry` and `eval`: thin wrappers over the library.

Each command parses its options, calls one library function, prints the result and exits with
its code (0 passed, 1 blocked, 2 invalid input, 3 could not evaluate). Nothing here imports torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from fusionguard.cli import DATA_LOCATION, LazyGroup, envvar, progress_option
from fusionguard.errors import FusionGuardError, InvalidInputError
from fusionguard.registry import Registry

from fusionguard.gate.outcomes import GateOutcome
from fusionguard.gate.engine import EngineConfig, engine_options

logger = logging.getLogger(__name__)

_EXISTING = click.Path(path_type=Path)  # a path the command reads or creates
_FILE = click.Path(path_type=Path, exists=True, dir_okay=False)  # an input file: checked before any work

_DATA = DATA_LOCATION  # a Parquet file, a directory of Parquet files, or a URI


@click.command("gate")
@click.option("--candidate", required=True, type=_FILE, help="Candidate ONNX model.")
@click.option("--baseline", type=_FILE, default=None, help="Baseline (V1) ONNX model; required unless the policy sets baseline.required = false.")
@click.option("--data", "data", required=True, type=_DATA, help="Eval set: a Parquet file, a directory of Parquet files, or a URI (file://, s3://, gs://...).")
@click.option("--policy", type=_FILE, default=None, help="Policy TOML (defaults: docs/gate.md).")
@click.option("--candidate-contract", type=_FILE, default=None, help="Sidecar JSON contract for the candidate.")
@click.option("--baseline-contract", type=_FILE, default=None, help="Sidecar JSON contract for the baseline.")
@click.option("--out", required=True, type=_EXISTING, help="Report directory (report.json, report.md, junit.xml, plots, profile.json).")
@progress_option
@click.option(
    "--summary", type=click.Choice(["plain", "github", "gitlab"]), default="plain", show_default=True,
    help="Where the verdict goes besides the report directory: plain (terminal lines); github (also an "
    "::error annotation per failed check, and the report Markdown appended to the job summary); gitlab "
    "(also the reasons in a collapsed log section; the merge request reads junit.xml).",
)
@click.option(
    "--summary-file", type=_EXISTING, default=None, envvar="GITHUB_STEP_SUMMARY", show_envvar=True,
    help="With --summary github: the Markdown file to append the report to.",
)
@engine_options
def gate(candidate, baseline, data, policy, candidate_contract, baseline_contract, out, progress, summary, summary_file,  # noqa: ANN001
         engine, workers, ray_address) -> None:
    """Release gate: block collapsed or V1-in-disguise candidates before promotion.

    Checks, in order: data, contract, visual ablation, integrity vs the baseline, quality
    (non-inferiority of NDCG@k), attention. Exit codes: 0 passed, 1 blocked, 2 invalid input,
    3 a check could not be evaluated. In CI, see docs/ci.md.

    Example: fusionguard gate --candidate v2.onnx --baseline v1.onnx --data eval.parquet --out report/ --summary github
    """
    if summary == "github" and summary_file is None:
        raise click.UsageError("--summary github needs the job summary file: set $GITHUB_STEP_SUMMARY (GitHub Actions does) or pass --summary-file")
    from fusionguard.gate import summary as ci  # numpy/onnxruntime load only when the command runs
    from fusionguard.gate.report import report_dict
    from fusionguard.gate.runner import run_gate

    try:
        result = run_gate(
            candidate, data, out, baseline=baseline, policy=policy,
            candidate_contract=candidate_contract, baseline_contract=baseline_contract, progress=progress,
            engine=EngineConfig(engine, workers, ray_address),
        )
    except FusionGuardError as err:  # stopped before any report: still tell the pull request why
        if summary == "github":
            annotation, text = ci.github_stopped(str(err), err.exit_code)
            click.echo(annotation)
            _append_summary(summary_file, text)
        raise
    report = report_dict(result)
    if summary == "gitlab":
        lines = ci.gitlab_lines(report, result.report_dir)
    else:
        lines = ci.check_lines(report, result.report_dir)
    if summary == "github":
        lines += ci.github_annotations(report)
        _append_summary(summary_file, ci.github_markdown(report, result.report_dir))
    for line in lines:
        # click drops ANSI codes when stdout is no terminal (a CI log); GitLab's section markers need them.
        click.echo(line, color=True if summary == "gitlab" else None)
    if result.exit_code:
        label = "blocked" if result.outcome == GateOutcome.BLOCKED else "error"
        for line in result.message.splitlines():
            click.echo(f"{label}: {line}", err=True)
    raise SystemExit(result.exit_code)


def _append_summary(path: Path, text: str) -> None:
    """The job summary is for reading only: a write problem is a warning, never a different verdict."""
    from fusionguard.gate.summary import append_summary

    try:
        append_summary(path, text)
    except OSError as err:
        click.echo(f"warning: could not write the job summary {path} ({err}); the report directory has report.md", err=True)


@click.command("promote")
@click.option("--report", "report_dir", required=True, type=_EXISTING, help="The gate's report directory.")
@click.option("--registry", "registry_dir", required=True, type=_EXISTING, help="Registry directory (created if missing), or mlflow://NAME for an MLflow Model Registry.", **envvar("registry"))
@click.option("--model", type=_EXISTING, default=None, help="Model file; defaults to the candidate path in the report.")
@click.option("--policy", type=_EXISTING, default=None, help="Require the report to have been made under this policy TOML.")
@click.option("--mlflow-uri", default=None, envvar="MLFLOW_TRACKING_URI", show_envvar=True, help="MLflow tracking server of an mlflow://NAME registry.")
@click.option("--alias", default="champion", show_default=True, help="MLflow alias moved to the new version when the gate passed.")
def promote(report_dir, registry_dir, model, policy, mlflow_uri, alias) -> None:  # noqa: ANN001
    """Promote a model whose gate report passed into a registry and make it current.

    The report is re-validated against the policy it records (every check passed, every number
    on the passing side of its threshold); the model and its external-data files must hash to
    the report's manifest. With FUSIONGUARD_SIGNING_KEY set, the report must carry the gate's
    signature made with that key (docs/gate.md). Refuses with exit 1 when the evidence does not
    show a pass, exit 2 on unusable input. With --registry mlflow://NAME the exact gated file
    becomes a new version of NAME in MLflow's Model Registry with the gate report attached; the
    alias moves only when the same evidence shows a pass (docs/gate.md).

    Example: fusionguard promote --report report/ --registry /srv/models/ranker
    """
    from fusionguard.gate.mlflow_registry import mlflow_target

    if (name := mlflow_target(registry_dir)) is not None:
        from fusionguard.gate.mlflow_registry import promote_to_mlflow

        result = promote_to_mlflow(name, report_dir, model, tracking_uri=mlflow_uri, alias=alias, policy=policy)
        click.echo(result.summary())
        raise SystemExit(result.exit_code)
    from fusionguard.gate.promotion import promote as promote_model

    info = promote_model(report_dir, registry_dir, model, policy)
    click.echo(f"promoted {info.source} as {info.version} (sha256 {info.sha256[:12]}) in {registry_dir}; it is current")


@click.group("registry", cls=LazyGroup, lazy={})
def registry() -> None:
    """List, show and roll back the models promoted into a registry.

    Example: fusionguard registry list --registry /srv/models/ranker
    """


_REGISTRY_OPTION = click.option("--registry", "registry_dir", required=True, type=_EXISTING, help="Registry directory.", **envvar("registry"))


@registry.command("list")
@_REGISTRY_OPTION
def list_versions(registry_dir) -> None:  # noqa: ANN001
    """List every promoted version, oldest first; * marks the current one.

    Example: fusionguard registry list --registry /srv/models/ranker
    """
    versions = Registry(registry_dir).versions()
    if not versions:
        click.echo(f"registry {registry_dir} holds no versions yet")
    for v in versions:
        click.echo(f"{'*' if v.is_current else ' '} {v.version}  {v.promoted_at}  {v.sha256[:12]}  {v.variant}  {v.source}")


@registry.command("show")
@_REGISTRY_OPTION
@click.argument("version", required=False)
def show(registry_dir, version) -> None:  # noqa: ANN001
    """Show one version (default: the current one) as JSON, after verifying its files' sha256.

    Example: fusionguard registry show --registry /srv/models/ranker v0002
    """
    info = Registry(registry_dir).verified(version)  # re-hashes the files against meta.json
    if info is None:
        raise InvalidInputError(f"registry {registry_dir} has no current version; promote one with `fusionguard promote`")
    click.echo(json.dumps(info.to_dict(), indent=2))


@registry.command("rollback")
@_REGISTRY_OPTION
@click.option("--to", "version", default=None, help="Version to make current (default: the one before the current).")
def rollback(registry_dir, version) -> None:  # noqa: ANN001
    """Make an earlier version current again.

    Example: fusionguard registry rollback --registry /srv/models/ranker --to v0001
    """
    info = Registry(registry_dir).rollback(version)
    click.echo(f"{info.version} is current again (sha256 {info.sha256[:12]})")


@click.command("eval")
@click.option("--models", required=True, multiple=True, type=_FILE, help="Fusion models; repeat or list them. The first is the reference of the p-values.")
@click.argument("more_models", nargs=-1, type=_FILE)
@click.option("--baseline", type=_FILE, default=None, help="Text-only V1 for the Spearman column.")
@click.option("--data", "data", required=True, type=_DATA, help="Eval set: a Parquet file, a directory of Parquet files, or a URI (file://, s3://, gs://...).")
@click.option("--policy", type=_FILE, default=None, help="Policy TOML (k, masking, resamples, seed).")
@click.option("--out", required=True, type=_EXISTING, help="Output directory (table.csv/.md/.tex, per_query.csv).")
@progress_option
@engine_options
def eval_command(models, more_models, baseline, data, policy, out, progress, engine, workers, ray_address) -> None:  # noqa: ANN001
    """Offline evaluation table of several models, with CIs, Holm-corrected p-values and effect sizes.

    Example: fusionguard eval --models v2.onnx v2-mitigated.onnx --baseline v1.onnx --data eval.parquet --out table/
    """
    from fusionguard.gate.evaluation import evaluate, markdown_table, write_eval

    result = evaluate([*models, *more_models], data, baseline=baseline, policy=policy, progress=progress,
                      engine=EngineConfig(engine, workers, ray_address))
    paths = write_eval(result, out)
    click.echo(markdown_table(result))
    click.echo("wrote " + ", ".join(str(p) for p in paths))
