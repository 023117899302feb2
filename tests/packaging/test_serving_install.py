"""The serving install holds the monitor and nothing of the gate's data stack, and still serves.

A fresh virtual environment gets `pip install "<checkout>[serve,cpu]"` (a copy of the sources the
serving image copies, so nothing is built inside the repository) with pip's ordinary index and
cache. Measured on the 2-core machine: 16.5 s for the install and 38 s for the module, under the
~60 s that would make it a slow test, so it runs in the default suite.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fusionguard import toymodels
from fusionguard.registry import file_sha256
from tests.packaging.sources import copy_sources

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("great_expectations", "pandas", "pyarrow", "matplotlib", "scipy", "torch", "tqdm", "mlflow")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def serving_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serve-install")
    src = copy_sources(tmp / "src")  # what the Dockerfile copies
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    started = time.perf_counter()
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{src}[serve,cpu]"],
        capture_output=True, text=True, timeout=900,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    print(f"pip install .[serve,cpu] into a fresh venv: {time.perf_counter() - started:.1f} s")
    return venv


def _run(venv: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # run outside the checkout: with the checkout as the working directory, `python -c` would import
    # its fusionguard/ folder instead of the installed package
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, cwd=venv.parent,
    )


def test_the_serving_install_lacks_the_gate_stack_and_torch(serving_venv):
    probe = "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None for m in %r}))" % (HEAVY,)
    out = _run(serving_venv, "python", "-c", probe)
    assert out.returncode == 0, out.stderr
    present = {m for m, found in json.loads(out.stdout).items() if found}
    assert present == set(), f"the serving install pulled in {sorted(present)}"
    for module in ("onnxruntime", "prometheus_client", "starlette", "uvicorn"):
        assert _run(serving_venv, "python", "-c", f"import {module}").returncode == 0, module
    # drift (PSI and the KS p-value) runs without scipy
    drift = (
        "import numpy as np; from fusionguard.profile import build_profile; from fusionguard.monitor.drift import DriftTracker\n"
        "rng = np.random.default_rng(0)\n"
        "p = build_profile('0' * 64, rng.uniform(0, 1, 500), {}, requests=np.arange(500), shapley_strategy='zero')\n"
        "t = DriftTracker(p, window=200)\n"
        "[t.add({'visual_share': v}) for v in rng.uniform(0.5, 1, 200)]; [r] = t.results(); print(r.psi, r.pvalue)"
    )
    out = _run(serving_venv, "python", "-c", drift)
    assert out.returncode == 0, out.stderr
    psi, pvalue = map(float, out.stdout.split())
    assert psi > 0.25 and 0.0 <= pvalue < 0.01


def test_monitor_serve_help_works_and_gate_names_its_extra(serving_venv, tmp_path):
    help_ = _run(serving_venv, "fusionguard", "monitor", "serve", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "FUSIONGUARD_PORT" in help_.stdout
    model = toymodels.save(toymodels.build_fusion_model(1.0), tmp_path / "m.onnx")
    data = tmp_path / "eval.parquet"
    data.write_bytes(b"PAR1")  # exists; the gate must stop at its missing extra before reading it
    gate = _run(serving_venv, "fusionguard", "gate", "--candidate", str(model), "--data", str(data), "--out", str(tmp_path / "r"))
    assert gate.returncode == 2, gate.stdout + gate.stderr
    assert "fusionguard[gate,cpu]" in gate.stderr and "Traceback" not in gate.stderr
    # ops commands of the image need only the core: list and roll back the registry
    listing = _run(serving_venv, "fusionguard", "registry", "list", "--registry", str(tmp_path / "reg"))
    assert listing.returncode == 0 and "holds no versions" in listing.stdout, listing.stderr
    # commands whose extra the image lacks say what to install, without a traceback
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text(json.dumps(
        {"outcome": "passed", "exit_code": 0, "candidate": {"path": str(model), "sha256": file_sha256(model)}}))
    promote = ["promote", "--report", str(report), "--registry", "mlflow://ranker", "--mlflow-uri", "http://127.0.0.1:9"]
    # promotion re-validates the report with the gate's policy rules, so MLflow promotion needs the
    # gate extra as well as tracking; the first missing one is named
    train = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]  # --help works without torch
    for command, needle in ((train, "fusionguard[train,cpu]"), (promote, "fusionguard[gate,cpu]")):
        out = _run(serving_venv, "fusionguard", *command)
        assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr, (command, out.stderr)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_serving_install_serves_a_model(serving_venv, tmp_path):
    model = toymodels.save(toymodels.build_fusion_model(1.0), tmp_path / "m.onnx")
    port = _free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:  # port and device from the environment, as a deployment sets them
        proc = subprocess.Popen(
            [str(serving_venv / "bin" / "fusionguard"), "monitor", "serve", "--model", str(model)],
            stdout=out, stderr=subprocess.STDOUT, env={"FUSIONGUARD_PORT": str(port), "FUSIONGUARD_DEVICE": "cpu"},
        )
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    ready = r.status == 200
                    break
            except OSError:
                time.sleep(0.5)
        assert ready, log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"fusionguard_" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


_PROBE = """
import sys
from fusionguard.cli import main
from fusionguard.monitor.server import build  # the serving path itself, as `monitor serve` runs it
import fusionguard.gate.cli  # promote and registry
for argv in (["monitor", "serve", "--help"], ["registry", "list", "--help"], ["promote", "--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


def test_the_serving_path_imports_nothing_of_the_gate_stack_in_the_dev_environment():
    """The quick twin of the fresh-venv test: in the full environment, serving imports none of them."""
    out = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
