"""The root command. Subcommands load lazily so `fusionguard --help` and `fusionguard gate` never
import torch (the gate and the monitor run on ONNX Runtime alone)."""

from __future__ import annotations

import difflib
import importlib
import logging
import sys
from pathlib import Path

import click

from fusionguard import __version__
from fusionguard.commands import _ABSENT_PACKAGE_HINT, _ABSENT_PACKAGES, COMMANDS_GROUP, package_of, subcommands
from fusionguard.errors import FusionGuardError

# Subcommands arrive through entry points: see fusionguard/commands.py.
# The extra that brings each optional top-level package (pyproject.toml), for the message a
# command gives when it is missing.
_EXTRAS = {
    "serve": ("prometheus_client", "starlette", "uvicorn", "anyio"),
    "gate": ("pandas", "pyarrow", "scipy", "great_expectations", "matplotlib", "tqdm"),
    "train": ("torch", "onnxscript"),
    "tracking": ("mlflow",),
}
_EXTRA_HINT = {pkg: f"pip install 'fusionguard[{extra},cpu]'" for extra, pkgs in _EXTRAS.items() for pkg in pkgs}
_EXTRA_HINT["onnxruntime"] = "pip install 'fusionguard[cpu]' or 'fusionguard[gpu]'"
_EXTRA_HINT["torch"] = _EXTRA_HINT["onnxscript"] = "pip install 'fusionguard[train,cpu]' (or `make install`)"


class DataLocation(click.ParamType):
    """An eval set or traffic file option: a Parquet file or a directory of Parquet files (which
    must exist when `exists`: checked before any work), or a URI pyarrow's filesystems understand
    (``file://``, ``s3://``, ``gs://``...), kept as a string (`Path` would fold its ``//``) and
    opened by the readers (fusionguard/source.py)."""

    name = "path|uri"

    def __init__(self, exists: bool = True) -> None:
        self._local = click.Path(path_type=Path, exists=exists)

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201 - click's signature
        if isinstance(value, str) and "://" in value:  # fusionguard.source.is_uri (not imported: it loads pyarrow)
            return value
        return self._local.convert(value, param, ctx)


DATA_LOCATION = DataLocation()


def envvar(option: str) -> dict:
    """click keyword arguments that let FUSIONGUARD_<OPTION> set an option a deployment sets
    (registry, device, host, port), shown in --help: `click.option(..., **envvar("port"))`."""
    return {"envvar": f"FUSIONGUARD_{option.upper().replace('-', '_')}", "show_envvar": True}


class MissingExtraError(click.ClickException):
    """A command needs a package of an optional extra that is not installed (exit 2)."""

    exit_code = 2

    def __init__(self, command: str, package: str, hint: str) -> None:
        super().__init__(f"`{command}` needs the package '{package}', which is not installed: {hint}")


def missing_extra(err: ModuleNotFoundError, command: str) -> MissingExtraError | None:
    """The MissingExtraError for an import of an optional extra's package, else None."""
    missing = package_of(err.name or "")
    hint = _EXTRA_HINT.get(missing) or (_ABSENT_PACKAGE_HINT if missing in _ABSENT_PACKAGES else None)
    return None if hint is None else MissingExtraError(command, missing, hint)


def _resolve_progress(ctx: click.Context, param: click.Parameter, value: bool | None) -> bool:
    return sys.stderr.isatty() if value is None else value


def progress_option(fn):  # noqa: ANN001, ANN201 - click decorator
    """`--progress/--no-progress`, one convention for every command: on when stderr is a terminal."""
    return click.option(
        "--progress/--no-progress", default=None, callback=_resolve_progress,
        help="Progress bars on stderr [default: on when stderr is a terminal].",
    )(fn)


def run_guarded(ctx: click.Context, fn, *args, **kwargs):
    """Call `fn`, turning a FusionGuardError into its message and exit code (no traceback)."""
    try:
        return fn(*args, **kwargs)
    except FusionGuardError as err:
        click.echo(f"error: {err}", err=True)
        ctx.exit(err.exit_code)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use.

    `lazy` maps a subcommand name to ("module:attr", short help); `entry_points` names an
    entry-point group whose `Subcommand` specs are added to it when the commands are first asked
    for. FusionGuardError raised anywhere below becomes `error: <message>` on stderr and the
    error's exit code.
    """

    def __init__(self, *args, lazy: dict[str, tuple[str, str]] | None = None, entry_points: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})
        self._group = entry_points

    @property
    def lazy(self) -> dict[str, tuple[str, str]]:
        if self._group is not None:  # read once, on first use (not at import)
            self._lazy.update({name: (spec.target, spec.help) for name, spec in subcommands(self._group).items()})
            self._group = None
        return self._lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            return self._load(ctx, name)
        return super().get_command(ctx, name)

    def resolve_command(self, ctx: click.Context, args: list[str]):  # noqa: ANN201 - click's tuple
        name = args[0]
        if not ctx.resilient_parsing and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            ctx.fail(f"No such command '{name}'.{hint}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists lazy commands from their registered one-liners: nothing is imported. Each
        # line is the whole first sentence (click cuts it at 45 characters by default).
        rows = [(name, self.lazy[name][1]) for name in sorted(self.lazy)]
        rows += [
            (name, cmd.get_short_help_str(limit=200))
            for name, cmd in sorted(self.commands.items())
            if name not in self.lazy and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))

    def _load(self, ctx: click.Context, name: str) -> click.Command:
        target, _ = self.lazy[name]
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            missing = missing_extra(err, f"{ctx.command_path} {name}")
            if missing is None:
                raise
            raise missing from None
        return getattr(module, attr)

    def invoke(self, ctx: click.Context):
        try:
            return run_guarded(ctx, super().invoke, ctx)
        except ModuleNotFoundError as err:  # a command imports its extra's packages when it runs
            missing = missing_extra(err, f"{ctx.command_path} {ctx.invoked_subcommand or ''}".strip())
            if missing is None:
                raise
            raise missing from None


@click.group(
    cls=LazyGroup, entry_points=COMMANDS_GROUP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
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
