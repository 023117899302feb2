"""`fusionguard promote --registry mlflow://NAME` against a local MLflow tracking server.

The test starts `mlflow server` on a free loopback port with a sqlite backend and an artifact
store under tmp_path (uploads go through the server, as from a CI runner), gates toy models and
promotes them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from fusionguard.cli import cli
from fusionguard.registry import file_sha256
from fusionguard.gate.mlflow_registry import mlflow_target

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.integration

NAME = "ranker"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=root,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def invoke(*args, env=None):
    return CliRunner(env=env).invoke(cli, [str(a) for a in args])


def gated(toys, out: Path, candidate: Path) -> Path:
    invoke("gate", "--candidate", candidate, "--baseline", toys.v1, "--data", toys.data, "--policy", toys.policy, "--out", out)
    return out


def test_promotion_registers_the_exact_model_with_its_report_and_moves_the_alias_only_on_pass(server, toys, tmp_path):
    client = mlflow.MlflowClient(tracking_uri=server)
    candidate = tmp_path / "v2.onnx"
    shutil.copyfile(toys.fusion, candidate)
    ok = gated(toys, tmp_path / "ok", candidate)
    assert json.loads((ok / "report.json").read_text())["outcome"] == "passed"

    result = invoke("promote", "--report", ok, "--registry", f"mlflow://{NAME}", "--mlflow-uri", server)
    assert result.exit_code == 0, result.output
    assert "alias 'champion' now points to it" in result.output
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.tags["fusionguard.gate.outcome"] == "passed"
    assert champion.tags["fusionguard.sha256"] == file_sha256(candidate)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", tracking_uri=server))
    assert (local / "model.onnx").read_bytes() == candidate.read_bytes()  # the exact gated file
    info = mlflow.models.get_model_info(str(local))
    assert {"onnx", "python_function"} <= set(info.flavors)
    assert [i["name"] for i in json.loads(info.signature.to_dict()["inputs"])] == ["query", "text_tokens", "visual_tokens"]
    report_files = {Path(a.path).name for a in client.list_artifacts(champion.run_id, "gate_report")}
    assert {"report.json", "report.md", "junit.xml", "profile.json"} <= report_files

    # A blocked candidate is registered for the record; the alias stays on the passing version.
    blind = tmp_path / "blind.onnx"
    shutil.copyfile(toys.blind, blind)
    blocked = gated(toys, tmp_path / "blocked", blind)
    assert json.loads((blocked / "report.json").read_text())["outcome"] == "blocked"
    result = invoke("promote", "--report", blocked, "--registry", f"mlflow://{NAME}", env={"MLFLOW_TRACKING_URI": server})
    assert result.exit_code == 1, result.output
    assert "no alias was moved" in result.output
    versions = {v.version: v for v in client.search_model_versions(f"name='{NAME}'")}
    assert len(versions) == 2
    newest = versions[max(versions, key=int)]
    assert newest.tags["fusionguard.gate.outcome"] == "blocked"
    assert client.get_model_version_by_alias(NAME, "champion").version == champion.version

    # A blocked report edited to say "passed" (its failed checks left in place) is not a pass:
    # the alias moves only when the evidence itself shows one (fusionguard.gate.promotion.report_problems).
    forged = json.loads((blocked / "report.json").read_text())
    forged.update(outcome="passed", exit_code=0)
    (blocked / "report.json").write_text(json.dumps(forged))
    result = invoke("promote", "--report", blocked, "--registry", f"mlflow://{NAME}", env={"MLFLOW_TRACKING_URI": server})
    assert result.exit_code == 1 and "no alias was moved" in result.output and "check visual_ablation is 'failed'" in result.output, result.output
    versions = {v.version: v for v in client.search_model_versions(f"name='{NAME}'")}
    assert versions[max(versions, key=int)].tags["fusionguard.gate.outcome"] == "unverified"
    assert client.get_model_version_by_alias(NAME, "champion").version == champion.version


def test_a_model_changed_after_the_gate_is_not_registered(server, toys, tmp_path):
    client = mlflow.MlflowClient(tracking_uri=server)
    candidate = tmp_path / "v2.onnx"
    shutil.copyfile(toys.fusion, candidate)
    report = gated(toys, tmp_path / "ok", candidate)
    before = len(client.search_model_versions("name='tampered'"))
    shutil.copyfile(toys.monotone, candidate)  # another valid model under the gated name
    result = invoke("promote", "--report", report, "--registry", "mlflow://tampered", "--mlflow-uri", server)
    assert result.exit_code == 1 and "differ from those the gate evaluated" in result.output, result.output
    assert len(client.search_model_versions("name='tampered'")) == before == 0


def test_no_tracking_server_is_a_usage_error(toys, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    report = gated(toys, tmp_path / "ok", toys.fusion)
    result = invoke("promote", "--report", report, "--registry", f"mlflow://{NAME}")
    assert result.exit_code == 2
    assert "MLFLOW_TRACKING_URI" in result.output


@pytest.mark.parametrize(
    "target, name",
    [("mlflow://ranker", "ranker"), ("mlflow:/ranker", "ranker"), ("/srv/models/ranker", None), ("registry", None)],
)
def test_mlflow_targets(target, name):
    assert mlflow_target(target) == name
    assert mlflow_target(Path(target)) == name  # what click's Path type leaves of it


@pytest.mark.parametrize("target", ["mlflow://", "mlflow://a/b"])
def test_malformed_mlflow_targets_are_rejected(target):
    from fusionguard.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="mlflow://NAME"):
        mlflow_target(target)
