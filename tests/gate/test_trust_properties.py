"""Property tests: random corruptions of a registry and of a gate report never give a traceback,
never exit 1 for a damaged registry, and never promote or serve a model that did not pass.

Registry side: `registry list/show/rollback` and the monitor's loading path (`ModelService`, what
`monitor serve` and its hot reload run) on a registry with random damage. Report side: `promote`
on a passing report with random edits, byte damage or a changed model, unsigned and signed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fusionguard import signing
from fusionguard.cli import cli
from fusionguard.errors import FusionGuardError
from fusionguard.registry import Registry, model_manifest
from fusionguard.gate.promotion import report_problems
from fusionguard.monitor.service import ModelService, ServiceConfig

KEY = "property-test-key"
# FUSIONGUARD_PROPERTY_EXAMPLES=500 searches longer with fresh random draws; the default run is
# a fixed, reproducible sample that keeps the suite fast.
_EXAMPLES = os.environ.get("FUSIONGUARD_PROPERTY_EXAMPLES")
SETTINGS = settings(
    max_examples=int(_EXAMPLES or 40), deadline=None, derandomize=_EXAMPLES is None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    # A traceback would surface here as an exception other than SystemExit.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def world(toys, tmp_path_factory):
    """A model, its passing signed report, and a registry holding it as v0001 and v0002."""
    root = tmp_path_factory.mktemp("world")
    model_dir = root / "model"
    model_dir.mkdir()
    model = model_dir / "model.onnx"
    shutil.copyfile(toys.fusion, model)
    report = root / "report"
    gate = ["gate", "--candidate", model, "--baseline", toys.v1, "--data", toys.data, "--policy", toys.policy, "--out", report]
    assert invoke(*gate, env={signing.KEY_ENV: KEY}).exit_code == 0
    registry = root / "registry"
    for _ in range(2):
        assert invoke("promote", "--report", report, "--registry", registry, env={signing.KEY_ENV: KEY}).exit_code == 0
    return {"model": model, "report": report, "registry": registry, "manifest": model_manifest(model)}


# ----- corruptions ------------------------------------------------------------------------------

REGISTRY_TARGETS = [
    "current", "history.jsonl", "versions", "versions/v0002", "versions/v0002/meta.json",
    "versions/v0002/model.onnx", "versions/v0002/report.json", "versions/v0002/profile.json",
    "versions/v0001/meta.json", "versions/v0001/model.onnx",
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
OPERATIONS = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=64)),
    st.tuples(st.just("text"), st.sampled_from(["v0001", "v0002", "v9999", "../../evil", "v0001/../v0002", "", "\n", "v1"])),
    st.tuples(st.just("json"), JSON_VALUES),
    st.tuples(st.just("flip"), st.integers(min_value=0, max_value=10_000)),
    st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=10_000)),
    st.tuples(st.just("deep"), st.integers(min_value=100, max_value=100_000)),
    st.tuples(st.just("directory"), st.none()),
    st.tuples(st.just("symlink"), st.sampled_from(["/etc/passwd", "../../outside", "versions/v0001"])),
    st.tuples(st.just("delete"), st.none()),
)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def corrupt(path: Path, operation: tuple) -> None:
    """Apply one damage to `path` (a file or directory, possibly absent)."""
    kind, arg = operation
    if not path.parent.is_dir() or path.parent.is_symlink():
        return  # an earlier damage removed the folder this one would go into
    if kind in ("flip", "truncate"):
        if not path.is_file() or path.is_symlink():
            return
        raw = bytearray(path.read_bytes())
        if not raw:
            return
        if kind == "flip":
            raw[arg % len(raw)] ^= 0xFF
        else:
            raw = raw[: arg % len(raw)]
        path.write_bytes(bytes(raw))
        return
    _remove(path)
    if kind == "bytes":
        path.write_bytes(arg)
    elif kind == "text":
        path.write_text(arg + "\n")
    elif kind == "json":
        path.write_text(json.dumps(arg))
    elif kind == "deep":
        path.write_text("[" * arg + "]" * arg)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(arg)


def _fresh(world, tmp_path: Path, name: str) -> Path:
    target = Path(tempfile.mkdtemp(dir=tmp_path)) / name
    shutil.copytree(world[name], target, symlinks=True)
    return target


@SETTINGS
@given(damage=st.lists(st.tuples(st.sampled_from(REGISTRY_TARGETS), OPERATIONS), min_size=1, max_size=3))
def test_a_damaged_registry_is_refused_or_still_serves_only_what_passed(world, tmp_path, damage):
    registry = _fresh(world, tmp_path, "registry")
    for target, operation in damage:
        corrupt(registry / target, operation)

    for args in (["list"], ["show"], ["show", "v0001"], ["rollback", "--to", "v0001"], ["rollback"]):
        result = invoke("registry", args[0], "--registry", registry, *args[1:])
        assert result.exit_code in (0, 2), (args, result.exit_code, result.output)

    try:
        service = ModelService(ServiceConfig(registry=registry, device="cpu"))
    except FusionGuardError as err:
        assert err.exit_code == 2, str(err)
        event("monitor refused the registry")
        return
    event("monitor served")
    # Whatever is served must be byte for byte the model that passed the gate.
    info = Registry(registry).get(service.state.version)
    assert model_manifest(info.model_path) == world["manifest"]
    assert service.state.scorer.sha256 == world["manifest"]["model.onnx"]
    try:
        state, _ = service.reload()
    except FusionGuardError as err:
        assert err.exit_code == 2
    else:
        assert state.scorer.sha256 == world["manifest"]["model.onnx"]


def _edit(report: dict, path: list, value) -> None:
    """Set report[path...] = value where the path exists (random JSON surgery)."""
    node = report
    for i, step in enumerate(path):
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not keys:
            return
        key = keys[step % len(keys)]
        if i == len(path) - 1 or not isinstance(node[key], (dict, list)):
            node[key] = value
            return
        node = node[key]


REPORT_DAMAGE = st.one_of(
    st.tuples(st.just("edit"), st.lists(st.integers(0, 50), min_size=1, max_size=5), JSON_VALUES),
    st.tuples(st.just("report"), OPERATIONS),
    st.tuples(st.just("profile"), OPERATIONS),
    st.tuples(st.just("model"), OPERATIONS),
)


@SETTINGS
@given(damage=st.lists(REPORT_DAMAGE, min_size=1, max_size=3), signed=st.booleans())
def test_a_damaged_report_never_promotes_a_model_that_did_not_pass(world, tmp_path, damage, signed):
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    report = work / "report"
    shutil.copytree(world["report"], report)
    model = work / "model.onnx"
    shutil.copyfile(world["model"], model)
    data = json.loads((report / "report.json").read_text())
    data["candidate"]["path"] = str(model)
    data = signing.sign(data, KEY.encode()) if signed else {k: v for k, v in data.items() if k != "signature"}
    original = signing.canonical_bytes(data)
    (report / "report.json").write_text(json.dumps(data))
    for kind, *args in damage:
        if kind == "edit":
            try:
                current = json.loads((report / "report.json").read_text())
            except (OSError, ValueError, RecursionError):
                continue  # an earlier damage left nothing to edit
            if isinstance(current, dict):
                _edit(current, *args)
                (report / "report.json").write_text(json.dumps(current))
        else:
            corrupt({"report": report / "report.json", "profile": report / "profile.json", "model": model}[kind], args[0])

    env = {signing.KEY_ENV: KEY} if signed else {}
    result = invoke("promote", "--report", report, "--registry", work / "reg", env=env)
    assert result.exit_code in (0, 1, 2), result.output
    event(f"promote exit {result.exit_code} ({'signed' if signed else 'unsigned'})")
    if result.exit_code != 0:
        assert not (work / "reg" / "versions" / "v0001").exists()
        return
    info = Registry(work / "reg").verified()
    assert info.files == world["manifest"], "promoted a model other than the one that passed"
    promoted = json.loads(info.report_path.read_text())
    assert report_problems(promoted) == [], "promoted on a report whose evidence does not pass"
    if signed:
        assert signing.canonical_bytes(promoted) == original, "a signed report was changed yet promoted"
    assert os.stat(info.model_path).st_mode & 0o044 == 0o044  # readable by the serving uid
