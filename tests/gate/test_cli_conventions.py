"""One CLI convention across commands: progress flags, environment variables, input checks first."""

from __future__ import annotations

import io
import time

import click
import pytest
from click.testing import CliRunner

import fusionguard.cli as root_cli
from fusionguard.cli import cli, progress_option


def invoke(*args, **kwargs):
    return CliRunner(**kwargs).invoke(cli, [str(a) for a in args])


def test_a_missing_candidate_fails_before_any_work(toys, tmp_path, monkeypatch):
    import fusionguard.gate.runner

    def never(*args, **kwargs):  # the data check would start here
        raise AssertionError("run_gate was called for a missing candidate")

    monkeypatch.setattr(fusionguard.gate.runner, "run_gate", never)
    started = time.perf_counter()
    result = invoke("gate", "--candidate", tmp_path / "nope.onnx", "--baseline", toys.v1, "--data", toys.data,
                    "--out", tmp_path / "report")
    assert result.exit_code == 2
    assert "'--candidate'" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "report").exists()
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("option", ["--data", "--baseline", "--policy"])
def test_every_gate_input_file_is_checked_up_front(toys, tmp_path, option):
    args = {"--candidate": toys.fusion, "--baseline": toys.v1, "--data": toys.data, "--policy": toys.policy}
    args[option] = tmp_path / "absent"
    result = invoke("gate", *[x for kv in args.items() for x in kv], "--out", tmp_path / "r")
    assert result.exit_code == 2 and f"'{option}'" in result.stderr and "does not exist" in result.stderr


@click.command()
@progress_option
def _probe(progress: bool) -> None:
    click.echo(f"progress={progress}")


@pytest.mark.parametrize("args, expected", [([], "False"), (["--progress"], "True"), (["--no-progress"], "False")])
def test_progress_defaults_off_without_a_terminal(args, expected):
    assert CliRunner().invoke(_probe, args).output.strip() == f"progress={expected}"


def test_progress_defaults_on_for_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(root_cli.sys, "stderr", Tty())
    assert root_cli._resolve_progress(None, None, None) is True  # type: ignore[arg-type]
    assert root_cli._resolve_progress(None, None, False) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "command",
    [["gate"], ["eval"], ["train"], ["experiment", "run"], ["monitor", "replay"]],
)
def test_every_long_command_has_the_same_progress_flags(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # help wraps lines
    assert "--progress / --no-progress" in text
    assert "on when stderr is a terminal" in text


def test_old_progress_flags_still_work_as_hidden_aliases(tmp_path):
    help_text = invoke("train", "--help").stdout
    assert "--quiet" not in help_text
    result = invoke("train", "--quiet", "--data", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert "No such option" not in result.output
    assert result.exit_code == 2 and "does not exist" in result.output  # reached the config check


@pytest.mark.parametrize(
    "command, variables",
    [
        (["monitor", "serve"], ["FUSIONGUARD_REGISTRY", "FUSIONGUARD_DEVICE", "FUSIONGUARD_HOST", "FUSIONGUARD_PORT"]),
        (["monitor", "replay"], ["FUSIONGUARD_REGISTRY", "FUSIONGUARD_DEVICE"]),
        (["promote"], ["FUSIONGUARD_REGISTRY"]),
        (["registry", "list"], ["FUSIONGUARD_REGISTRY"]),
        (["train"], ["FUSIONGUARD_DEVICE", "MLFLOW_TRACKING_URI"]),
        (["experiment", "run"], ["MLFLOW_TRACKING_URI"]),
    ],
)
def test_deployment_options_read_and_show_their_environment_variable(command, variables):
    result = invoke(*command, "--help")
    text = " ".join(result.stdout.split())  # help wraps lines
    for variable in variables:
        assert f"env var: {variable}" in text, (variable, result.stdout)


def test_the_registry_comes_from_the_environment(tmp_path):
    result = invoke("registry", "list", env={"FUSIONGUARD_REGISTRY": str(tmp_path / "reg")})
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "reg") in result.output
