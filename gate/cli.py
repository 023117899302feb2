"""`fusionguard gate`, `promote`, `registry` and `eval`: thin wrappers over the library.

Each command parses its options, calls one library function, prints the result and exits with
its code (0 passed, 1 blocked, 2 invalid input, 3 could not evaluate). Nothing here imports torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from fusionguard.cli import LazyGroup
from fusionguard.registry import Registry

from gate.engine import EngineConfig, engine_options

logger = logging.getLogger(__name__)

_EXISTING = click.Path(path_type=Path)


@click.command("gate")
@click.option("--candidate", required=True, type=_EXISTING, help="Candidate ONNX model.")
@click.option("--baseline", type=_EXISTING, default=None, help="Baseline (V1) ONNX model; required unless the policy sets baseline.required = false.")
@click.option("--data", "data", required=True, type=_EXISTING, help="Eval set (Parquet).")
@click.option("--policy", type=_EXISTING, default=None, help="Policy TOML (defaults: docs/gate.md).")
@click.option("--candidate-contract", type=_EXISTING, default=None, help="Sidecar JSON contract for the candidate.")
@click.option("--baseline-contract", type=_EXISTING, default=None, help="Sidecar JSON contract for the baseline.")
@click.option("--out", required=True, type=_EXISTING, help="Report directory (report.json, report.md, junit.xml, plots, profile.json).")
@click.option("--progress/--no-progress", default=False, help="Show progress bars while scoring.")
@engine_options
def gate(candidate, baseline, data, policy, candidate_contract, baseline_contract, out, progress, engine, workers, ray_address) -> None:  # noqa: ANN001
    """Release gate: block collapsed or V1-in-disguise candidates before promotion.

    Checks, in order: data, contract, visual ablation, integrity vs the baseline, quality
    (non-inferiority of NDCG@k), attention. Exit codes: 0 passed, 1 blocked, 2 invalid input,
    3 a check could not be evaluated.

    Example: fusionguard gate --candidate v2.onnx --baseline v1.onnx --data eval.parquet --out report/
    """
    from gate.runner import run_gate  # numpy/onnxruntime load only when the command runs

    result = run_gate(
        candidate, data, out, baseline=baseline, policy=policy,
        candidate_contract=candidate_contract, baseline_contract=baseline_contract, progress=progress,
        engine=EngineConfig(engine, workers, ray_address),
    )
    for check in result.checks:
        click.echo(f"{check.name:<16} {check.outcome:<8} {check.summary}")
    click.echo(f"gate: {result.outcome} (exit {result.exit_code}); reports in {result.report_dir}")
    if result.exit_code:
        label = "blocked" if result.outcome == "blocked" else "error"
        for line in result.message.splitlines():
            click.echo(f"{label}: {line}", err=True)
    raise SystemExit(result.exit_code)


@click.command("promote")
@click.option("--report", "report_dir", required=True, type=_EXISTING, help="The gate's report directory.")
@click.option("--registry", "registry_dir", required=True, type=_EXISTING, help="Registry directory (created if missing).")
@click.option("--model", type=_EXISTING, default=None, help="Model file; defaults to the candidate path in the report.")
def promote(report_dir, registry_dir, model) -> None:  # noqa: ANN001
    """Promote a model whose gate report passed into a registry and make it current.

    Refuses (exit 1) when the report did not pass or the model changed since the gate ran.

    Example: fusionguard promote --report report/ --registry /srv/models/ranker
    """
    info = Registry(registry_dir).promote(model, report_dir)
    click.echo(f"promoted {info.source} as {info.version} (sha256 {info.sha256[:12]}) in {registry_dir}; it is current")


@click.group("registry", cls=LazyGroup, lazy={})
def registry() -> None:
    """List, show and roll back the models promoted into a registry.

    Example: fusionguard registry list --registry /srv/models/ranker
    """


_REGISTRY_OPTION = click.option("--registry", "registry_dir", required=True, type=_EXISTING, help="Registry directory.")


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
    """Show one version (default: the current one) as JSON.

    Example: fusionguard registry show --registry /srv/models/ranker v0002
    """
    reg = Registry(registry_dir)
    info = reg.get(version) if version else reg.current()
    if info is None:
        click.echo(f"registry {registry_dir} has no current version", err=True)
        raise SystemExit(1)
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
@click.option("--models", required=True, multiple=True, type=_EXISTING, help="Fusion models; repeat or list them. The first is the reference of the p-values.")
@click.argument("more_models", nargs=-1, type=_EXISTING)
@click.option("--baseline", type=_EXISTING, default=None, help="Text-only V1 for the Spearman column.")
@click.option("--data", "data", required=True, type=_EXISTING, help="Eval set (Parquet).")
@click.option("--policy", type=_EXISTING, default=None, help="Policy TOML (k, masking, resamples, seed).")
@click.option("--out", required=True, type=_EXISTING, help="Output directory (table.csv/.md/.tex, per_query.csv).")
@click.option("--progress/--no-progress", default=False, help="Show progress bars while scoring.")
@engine_options
def eval_command(models, more_models, baseline, data, policy, out, progress, engine, workers, ray_address) -> None:  # noqa: ANN001
    """Offline evaluation table of several models, with CIs, Holm-corrected p-values and effect sizes.

    Example: fusionguard eval --models v2.onnx v2-mitigated.onnx --baseline v1.onnx --data eval.parquet --out table/
    """
    from gate.evaluation import evaluate, markdown_table, write_eval

    result = evaluate([*models, *more_models], data, baseline=baseline, policy=policy, progress=progress,
                      engine=EngineConfig(engine, workers, ray_address))
    paths = write_eval(result, out)
    click.echo(markdown_table(result))
    click.echo("wrote " + ", ".join(str(p) for p in paths))
