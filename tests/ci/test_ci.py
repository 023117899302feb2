"""The CI integration: action.yml, the example workflows and the GitLab template are linted and
validated offline, and the action's gate step (ci/github/gate.sh) and the template's gate script
run for real against the toy models."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / "action.yml"
GATE_SH = ROOT / "ci" / "github" / "gate.sh"
INSTALL_SH = ROOT / "ci" / "github" / "install.sh"
GITHUB_EXAMPLE = ROOT / "examples" / "ci" / "github-workflow.yml"
GITLAB_TEMPLATE = ROOT / "ci" / "gitlab" / "fusionguard-gate.gitlab-ci.yml"
GITLAB_EXAMPLE = ROOT / "examples" / "ci" / "gitlab-ci.yml"
BIN = Path(sys.executable).parent  # the dev extra installs actionlint, shellcheck, check-jsonschema here
# Any attempt to reach the network fails fast: the validation must work offline.
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


def tool(name: str) -> str:
    """Path of a dev tool; FAILS (never skips) when it is missing: the dev extra installs it."""
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"`{name}` is not installed; pip install -e '.[dev]' (or `make install`)")
    return path


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command offline; stdout/stderr decoded as UTF-8 with CR kept (GitLab's markers use it)."""
    full_env = {**os.environ, **OFFLINE, **(env or {})}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=full_env, capture_output=True, timeout=120)
    result.stdout, result.stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8")
    return result


# ----- linting and schemas ---------------------------------------------------------------------

def _local_action_repo(tmp_path: Path, workflow_text: str) -> Path:
    """A repository whose workflow calls the action as `uses: ./`, so actionlint reads action.yml
    (it lints action metadata only through a workflow that uses it) and checks the inputs."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(ACTION, repo / "action.yml")
    shutil.copytree(ROOT / "ci", repo / "ci")
    text = workflow_text.replace("uses: OWNER/fusionguard@REF", "uses: ./")
    assert "uses: ./" in text
    (repo / ".github" / "workflows" / "gate.yml").write_text(text)
    return repo


def test_example_workflow_and_action_pass_actionlint(tmp_path):
    result = run(tool("actionlint"), "-shellcheck", tool("shellcheck"), "-pyflakes", "", GITHUB_EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    repo = _local_action_repo(tmp_path, GITHUB_EXAMPLE.read_text())
    result = run(tool("actionlint"), "-shellcheck", tool("shellcheck"), "-pyflakes", "", cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        ("workflow", 'input "outt" is not defined'),  # a typo in the example's inputs
        ("action", 'requires "shell" key'),  # a composite run step without shell
    ],
)
def test_actionlint_catches_mistakes_in_the_workflow_and_the_action(tmp_path, mutate, needle):
    text = GITHUB_EXAMPLE.read_text()
    if mutate == "workflow":
        text = text.replace("          out: gate-report", "          outt: gate-report")
    repo = _local_action_repo(tmp_path, text)
    if mutate == "action":
        action = (repo / "action.yml").read_text()
        (repo / "action.yml").write_text(action.replace("      shell: bash\n", "", 1))
    result = run(tool("actionlint"), "-shellcheck", "", "-pyflakes", "", cwd=repo)
    assert result.returncode == 1 and needle in result.stdout, result.stdout + result.stderr


def test_action_and_workflow_match_their_schemas():
    for schema, path in (("vendor.github-actions", ACTION), ("vendor.github-workflows", GITHUB_EXAMPLE)):
        result = run(tool("check-jsonschema"), "--builtin-schema", schema, path)
        assert result.returncode == 0, result.stdout + result.stderr


def _visible(doc: dict) -> dict:
    """The template with its hidden jobs made visible: GitLab's schema accepts anything under a
    key starting with '.', so only visible jobs get their keys checked."""
    def name(key):
        return key[1:] if isinstance(key, str) and key.startswith(".fusionguard") else key

    out = {}
    for key, job in doc.items():
        if isinstance(job, dict) and "extends" in job:
            job = {**job, "extends": name(job["extends"])}
        out[name(key)] = job
    return out


def _check_gitlab(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    target = tmp_path / "visible.gitlab-ci.yml"
    target.write_text(yaml.safe_dump(_visible(yaml.safe_load(text)), sort_keys=False))
    return run(tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", target)


def test_gitlab_template_and_example_match_the_gitlab_ci_schema_offline(tmp_path):
    result = _check_gitlab(tmp_path, GITLAB_TEMPLATE.read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", GITLAB_EXAMPLE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The validation is live: a misspelled key in a (formerly hidden) job is reported.
    bad = _check_gitlab(tmp_path, GITLAB_TEMPLATE.read_text().replace("    reports:\n", "    reportz:\n"))
    assert bad.returncode == 1 and "reportz" in bad.stdout, bad.stdout + bad.stderr


def test_gitlab_template_reports_junit_and_keeps_the_report_directory():
    jobs = yaml.safe_load(GITLAB_TEMPLATE.read_text())
    gate, promote = jobs[".fusionguard-gate"], jobs[".fusionguard-promote"]
    assert gate["artifacts"]["reports"]["junit"] == "fusionguard-report/junit.xml"
    assert gate["artifacts"]["paths"] == ["fusionguard-report/"] and gate["artifacts"]["when"] == "always"
    assert "--out fusionguard-report" in gate["script"][0]
    assert promote["rules"] == [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
    assert "fusionguard promote --report fusionguard-report" in promote["script"][0]


def test_ci_scripts_pass_shellcheck():
    result = run(tool("shellcheck"), GATE_SH, INSTALL_SH)
    assert result.returncode == 0, result.stdout + result.stderr


# ----- the action's gate step, run as a plain shell script ------------------------------------

def _gate_sh(toys, tmp_path: Path, candidate: Path, **extra: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    summary, outputs = tmp_path / "step_summary.md", tmp_path / "github_output"
    summary.write_text("earlier step\n")  # the gate appends: other steps' summaries stay
    env = {
        "GATE_CANDIDATE": str(candidate), "GATE_BASELINE": str(toys.v1), "GATE_DATA": str(toys.data),
        "GATE_POLICY": str(toys.policy), "GATE_OUT": "gate-report",
        "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(outputs),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FUSIONGUARD_SIGNING_KEY": "",
        **extra,
    }
    return run("bash", GATE_SH, cwd=tmp_path, env=env), summary, outputs


def _outputs(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_gate_step_passes_a_fusion_model(toys, tmp_path):
    result, summary, outputs = _gate_sh(toys, tmp_path, toys.fusion)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "::error" not in result.stdout
    assert "gate: passed (exit 0)" in result.stdout
    text = summary.read_text()
    assert text.startswith("earlier step\n")
    assert "fusionguard gate: **PASSED** (exit 0)" in text
    assert _outputs(outputs) == {"exit-code": "0", "outcome": "passed", "report-dir": "gate-report"}
    for name in ("report.json", "report.md", "junit.xml"):
        assert (tmp_path / "gate-report" / name).is_file()


def test_gate_step_blocks_a_visual_blind_model(toys, tmp_path):
    result, summary, outputs = _gate_sh(toys, tmp_path, toys.blind)
    assert result.returncode == 1, result.stdout + result.stderr
    annotations = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    titles = [re.match(r"::error title=([^:]*)::", a).group(1) for a in annotations]
    assert titles == ["fusionguard gate%3A visual_ablation failed", "fusionguard gate%3A integrity failed"]
    assert all("%0A" in a and "\n" not in a for a in annotations)  # one line each, reasons escaped
    text = summary.read_text()
    verdict = text.index("**BLOCKED** (exit 1)")
    assert verdict < text.index("| visual_ablation | ❌ failed |") < text.index("### Why")
    assert "ndcg_difference.png" in text  # the plots are named; they are in the artifact
    assert _outputs(outputs) == {"exit-code": "1", "outcome": "blocked", "report-dir": "gate-report"}


def test_gate_step_without_required_inputs_is_bad_usage_not_blocked(toys, tmp_path):
    result, summary, outputs = _gate_sh(toys, tmp_path, toys.fusion, GATE_DATA="")
    assert result.returncode == 2
    assert result.stdout.startswith("::error title=fusionguard gate::missing action input(s): data")


# ----- the GitLab template's gate script, run as the runner would ------------------------------

def test_gitlab_gate_script_blocks_with_junit_and_a_collapsed_section(toys, tmp_path):
    job = yaml.safe_load(GITLAB_TEMPLATE.read_text())[".fusionguard-gate"]
    env = {name: "" for name in job["variables"]}
    env.update({
        "GATE_CANDIDATE": str(toys.blind), "GATE_BASELINE": str(toys.v1), "GATE_DATA": str(toys.data),
        "GATE_POLICY": str(toys.policy), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    result = run("bash", "-e", "-c", "\n".join(job["script"]), cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"\x1b\[0Ksection_start:\d+:fusionguard_gate_reasons\[collapsed=true\]\r\x1b\[0K", result.stdout)
    assert re.search(r"\x1b\[0Ksection_end:\d+:fusionguard_gate_reasons\r\x1b\[0K", result.stdout)
    junit = (tmp_path / "fusionguard-report" / "junit.xml").read_text()
    assert junit.count("<failure") == 2
