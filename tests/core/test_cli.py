"""The root CLI: help lists every subcommand lazily, --version, error handling, and no torch import."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from fusionguard import __version__
from fusionguard.cli import LazyGroup, cli
from fusionguard.commands import COMMANDS_GROUP, Subcommand, subcommands
from fusionguard.errors import CheckFailedError, DataValidationError, EvaluationError


def test_help_lists_every_subcommand():
    registered = subcommands(COMMANDS_GROUP)
    assert set(registered) == {"data", "train", "export", "gate", "promote", "registry", "eval", "monitor", "experiment"}
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name, spec in registered.items():
        line = next((ln for ln in result.stdout.splitlines() if ln.strip().startswith(name + " ")), None)
        assert line is not None, f"{name} missing from --help"
        assert spec.help.split()[0] in line
    assert "Exit codes" in result.stdout and "Example:" in result.stdout


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_short_and_long_help(flag):
    assert CliRunner().invoke(cli, [flag]).exit_code == 0


def test_subcommands_come_from_entry_points_and_each_loads(monkeypatch):
    """The core names no subsystem: every command arrives as a Subcommand spec through the
    entry points, and its target is a click command."""
    import importlib

    for name, spec in subcommands(COMMANDS_GROUP).items():
        assert isinstance(spec, Subcommand) and spec.help.endswith("."), name
        module, attr = spec.target.split(":")
        assert isinstance(getattr(importlib.import_module(module), attr), click.Command), name


def test_an_entry_point_of_a_missing_package_is_listed_and_names_what_to_install(monkeypatch):
    from importlib.metadata import EntryPoint

    import fusionguard.commands as commands_module

    absent = EntryPoint("frob", "fusionguard_absent_package.commands:FROB", "fusionguard.test_commands")
    monkeypatch.setattr(commands_module, "entry_points", lambda group: [absent] if group == "fusionguard.test_commands" else [])
    root = LazyGroup(name="root", entry_points="fusionguard.test_commands")
    assert "Not in this install" in CliRunner().invoke(root, ["--help"]).stdout
    result = CliRunner().invoke(root, ["frob"])
    assert result.exit_code == 2 and "'fusionguard_absent_package'" in result.stderr and "full checkout" in result.stderr


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"fusionguard, version {__version__}"


def test_unknown_subcommand_is_a_usage_error():
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.stderr


def test_data_group_lists_validate():
    result = CliRunner().invoke(cli, ["data", "--help"])
    assert result.exit_code == 0
    assert "validate" in result.stdout and "synth" in result.stdout


def _group_raising(error: Exception) -> click.Group:
    @click.group(cls=LazyGroup)
    def root() -> None:
        """A tiny root built inline."""

    @root.command()
    def boom() -> None:
        raise error

    return root


@pytest.mark.parametrize(
    "error, code",
    [
        (CheckFailedError("the candidate collapsed"), 1),
        (DataValidationError("d.parquet", ["3 rows contain NaN"]), 2),
        (EvaluationError("no query has a relevant item"), 3),
    ],
)
def test_fusionguard_errors_become_a_message_and_their_exit_code(error, code):
    result = CliRunner().invoke(_group_raising(error), ["boom"])
    assert result.exit_code == code
    assert result.stderr == f"error: {error}\n"
    assert "Traceback" not in result.output


def test_a_missing_extra_names_the_install_command(monkeypatch):
    import fusionguard.cli as cli_module

    monkeypatch.setitem(cli_module._EXTRA_HINT, "fusionguard_absent_extra", "pip install 'fusionguard[tracking]'")
    root = LazyGroup(name="root", lazy={"track": ("fusionguard_absent_extra.cli:track", "Track runs.")})
    result = CliRunner().invoke(root, ["track"])
    assert result.exit_code == 2
    assert "needs the package 'fusionguard_absent_extra'" in result.stderr
    assert "pip install 'fusionguard[tracking]'" in result.stderr


@pytest.mark.parametrize("package, extra", [("pandas", "gate"), ("scipy", "gate"), ("matplotlib", "gate"),
                                             ("great_expectations", "gate"), ("starlette", "serve"), ("mlflow", "tracking")])
def test_a_command_importing_a_missing_extra_exits_2_naming_the_extra(package, extra):
    @click.group(cls=LazyGroup)
    def root() -> None:
        """A tiny root built inline."""

    @root.command()
    def work() -> None:
        raise ModuleNotFoundError(f"No module named '{package}'", name=f"{package}.sub")

    result = CliRunner().invoke(root, ["work"])
    assert result.exit_code == 2, result.output
    assert f"`root work` needs the package '{package}'" in result.stderr
    assert f"fusionguard[{extra},cpu]" in result.stderr
    assert "Traceback" not in result.output


def test_an_unrelated_missing_module_is_not_hidden():
    @click.group(cls=LazyGroup)
    def root() -> None:
        """A tiny root built inline."""

    @root.command()
    def work() -> None:
        raise ModuleNotFoundError("No module named 'not_an_extra'", name="not_an_extra")

    result = CliRunner().invoke(root, ["work"])
    assert isinstance(result.exception, ModuleNotFoundError)


@pytest.mark.parametrize("typo, suggestion", [("gaet", "gate"), ("promot", "promote"), ("experimnet", "experiment")])
def test_a_mistyped_subcommand_gets_a_suggestion(typo, suggestion):
    result = CliRunner().invoke(cli, [typo])
    assert result.exit_code == 2
    assert f"No such command '{typo}'. Did you mean '{suggestion}'" in result.stderr


@pytest.mark.parametrize("group", [[], ["registry"], ["monitor"], ["experiment"], ["data"]])
def test_group_listings_show_whole_first_sentences(group):
    result = CliRunner().invoke(cli, [*group, "--help"])
    assert result.exit_code == 0, result.output
    listing = result.stdout.split("Commands:")[1]
    assert "..." not in listing
    rows: list[str] = []
    for line in filter(str.strip, listing.splitlines()):
        if line.startswith("    "):  # a wrapped continuation of the row above
            rows[-1] += " " + line.strip()
        else:
            rows.append(line.strip())
    assert rows
    for row in rows:
        assert row.endswith((".", ")")), row


_PROBE = """
import sys
from fusionguard.cli import main
try:
    main({argv!r})
except SystemExit as exit:
    code = exit.code
# the packages' command specs (fusionguard.training.commands, ...) are read, never their code: no model,
# trainer or exporter module, and none of the heavy libraries
heavy = ("torch", "great_expectations", "onnxruntime", "fusionguard.training.models", "fusionguard.training.cli", "fusionguard.export.pipeline", "fusionguard.gate.cli", "fusionguard.monitor.app")
heavy = sorted(m for m in heavy if m in sys.modules)
print("EXIT", code, "HEAVY", ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["data", "--help"], ["data", "validate", "--help"]])
def test_help_imports_neither_torch_nor_heavy_libraries(argv):
    out = subprocess.run([sys.executable, "-c", _PROBE.format(argv=argv)], capture_output=True, text=True, timeout=60)
    last = out.stdout.strip().splitlines()[-1]
    assert last == "EXIT 0 HEAVY -", out.stdout + out.stderr


def test_console_script_help_under_importtime_never_imports_torch():
    code = "import sys; from fusionguard.cli import main; sys.argv = ['fusionguard', '--help']; main()"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "fusionguard.cli" in out.stderr  # the import log is there...
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}  # ...and has no torch in it
