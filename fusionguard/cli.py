"""The root command. Subcommands load lazily so `fusionguard --help` and `fusionguard gate` never
import torch (the gate and the monitor run on ONNX Runtime alone)."""

from __future__ import annotations

import importlib
import logging
import sys

import click

from fusionguard import __version__
from fusionguard.errors import FusionGuardError

# name -> ("module:attribute", one-line help shown by --help without importing the module)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("fusionguard.data_cli:data", "Generate and validate datasets."),
    "train": ("training.cli:train", "Train a fusion model variant (needs the 'train' extra)."),
    "export": ("export.cli:export", "Export a checkpoint to ONNX with its modality contract."),
    "gate": ("gate.cli:gate", "Release gate: block collapsed or V1-in-disguise candidates."),
    "promote": ("gate.cli:promote", "Promote a model whose gate report passed into a registry."),
    "registry": ("gate.cli:registry", "List, show and roll back promoted models."),
    "eval": ("gate.cli:eval_command", "Offline evaluation table of several models."),
    "monitor": ("monitor.cli:monitor", "Serve models over the Open Inference Protocol with telemetry."),
    "experiment": ("training.experiment_cli:experiment", "Run the paper's experiment grid and report."),
}

# Which optional extra a subcommand needs when its import fails.
_EXTRA_HINT = {
    "torch": "pip install 'fusionguard[train]' (or `make install`)",
    "onnxscript": "pip install 'fusionguard[train]' (or `make install`)",
    "onnxruntime": "pip install 'fusionguard[cpu]' or 'fusionguard[gpu]'",
    "mlflow": "pip install 'fusionguard[tracking]'",
}


def run_guarded(ctx: click.Context, fn, *args, **kwargs):
    """Call `fn`, turning a FusionGuardError into its message and exit code (no traceback)."""
    try:
        return fn(*args, **kwargs)
    except FusionGuardError as err:
        click.echo(f"error: {err}", err=True)
        ctx.exit(err.exit_code)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use.

    `lazy` maps a subcommand name to ("module:attr", short help). FusionGuardError raised anywhere
    below becomes `error: <message>` on stderr and the error's exit code.
    """

    def __init__(self, *args, lazy: dict[str, tuple[str, str]] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            return self._load(name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists lazy commands from their registered one-liners: nothing is imported.
        rows = [(name, self.lazy[name][1]) for name in sorted(self.lazy)]
        rows += [
            (name, cmd.get_short_help_str())
            for name, cmd in sorted(self.commands.items())
            if name not in self.lazy and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))

    def _load(self, name: str) -> click.Command:
        target, _ = self.lazy[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            missing = (err.name or "").split(".")[0]
            hint = _EXTRA_HINT.get(missing)
            if hint is None:
                raise
            raise click.ClickException(
                f"`fusionguard {name}` needs the package '{missing}', which is not installed: {hint}"
            ) from None
        return getattr(module, attr)

    def invoke(self, ctx: click.Context):
        return run_guarded(ctx, super().invoke, ctx)


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="fusionguard")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """fusionguard keeps multimodal (text + image) ranking models honest.

    It trains fusion models that resist modality collapse, exports them to ONNX with a modality
    contract, blocks collapsed or V1-in-disguise candidates in CI, and watches the visual
    contribution of live traffic.

    Exit codes: 0 passed, 1 blocked (a check failed), 2 bad usage or invalid input,
    3 a check could not be evaluated.

    Example: fusionguard gate --candidate v2.onnx --baseline v1.onnx --data eval.parquet --out report/
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv if argv is not None else sys.argv[1:], prog_name="fusionguard")


if __name__ == "__main__":  # pragma: no cover
    main()
