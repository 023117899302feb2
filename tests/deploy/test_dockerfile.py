"""Static checks of the Dockerfile (no container engine here): stages, user, health check,
entrypoint, no torch, and COPY sources that exist and are not excluded by .dockerignore."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib

import pytest

from tests.deploy._deploy import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    assert not current, "Dockerfile ends inside a line continuation"
    out = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _args() -> dict[str, str]:
    out = {}
    for keyword, args in _instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in args:
            key, value = args.split("=", 1)
            out[key] = value
    return out


def _base(from_args: str) -> str:
    image = from_args.split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda m: _args()[m.group(1)], image)


def test_multi_stage_on_a_cuda_cudnn_runtime_base_matching_onnxruntime_gpu() -> None:
    stages = _stages()
    assert len(stages) >= 2
    names = [s[0][1].split()[-1] for s in stages]
    assert names[-1] == "runtime" and "build" in names
    for stage in stages:
        base = _base(stage[0][1])
        # pinned by digest: a re-pushed tag cannot change the image underneath
        assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+@sha256:[0-9a-f]{64}", base), base
    # onnxruntime-gpu 1.31 on PyPI is built for CUDA 13 / cuDNN 9: keep the pin and the base together.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["optional-dependencies"]["gpu"] == ["onnxruntime-gpu==1.31.*"]


def test_installs_the_serve_and_gpu_extras_under_the_lock_and_never_torch() -> None:
    runs = [args for stage in _stages() for keyword, args in stage if keyword == "RUN"]
    installs = [r for r in runs if "pip install" in r and '".[' in r]
    # the serving install, plus the opt-in gate-on-Ray image (build arg WITH_RAY=1, default 0)
    serving = [r for r in installs if "WITH_RAY" not in r]
    assert all(r.startswith('if [ "$WITH_RAY" = 1 ]') for r in installs if r not in serving), installs
    assert re.search(r"^ARG WITH_RAY=0$", DOCKERFILE.read_text(), re.M)
    installs = serving
    assert len(installs) == 1 and '".[serve,gpu]"' in installs[0], installs
    assert "-c constraints.txt" in installs[0]
    copies = [args for stage in _stages() for keyword, args in stage if keyword == "COPY"]
    assert "requirements/serve-gpu.txt ./constraints.txt" in copies
    extras = set(re.search(r'"\.\[([\w,]+)\]"', installs[0]).group(1).split(","))
    assert extras == {"serve", "gpu"}  # never train (torch), gate or cpu (both ONNX Runtime flavours)
    assert "torch" not in installs[0]
    guard = next(r for r in runs if "find_spec" in r)
    for module in ("torch", "pandas", "pyarrow", "scipy", "great_expectations", "matplotlib"):
        assert f"'{module}'" in guard, f"the build should fail if {module} slipped in"


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_pins_every_serving_requirement_and_nothing_of_the_gate() -> None:
    """requirements/serve-gpu.txt (`make lock`) must be regenerated when the serving dependencies change."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    lines = (ROOT / "requirements" / "serve-gpu.txt").read_text(encoding="utf-8").splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    pinned = {_name(n) for n in pins}
    wanted = {_name(r) for r in [*project["dependencies"], *extras["serve"], *extras["gpu"]]}
    assert wanted <= pinned, f"run `make lock`: {sorted(wanted - pinned)} are not pinned"
    assert all(re.fullmatch(r"[\w.+!-]+", v) for v in pins.values())
    assert not pinned & {_name(r) for r in extras["gate"] + extras["train"]}


def test_runtime_stage_user_healthcheck_entrypoint_cmd() -> None:
    runtime = dict(_stages()[-1])
    user = runtime["USER"].split(":")[0]
    assert user not in {"root", "0"}
    healthcheck = runtime["HEALTHCHECK"]
    assert "/v2/health/ready" in healthcheck and ":8000" in healthcheck
    assert json.loads(runtime["ENTRYPOINT"]) == ["fusionguard"]
    cmd = json.loads(runtime["CMD"])
    assert cmd[:2] == ["monitor", "serve"]
    assert cmd[cmd.index("--registry") + 1] == "/models" and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "8000" in runtime["EXPOSE"]
    # The runtime stage copies the environment from the build stage, not the sources.
    copies = [args for keyword, args in _stages()[-1] if keyword == "COPY"]
    assert copies and all(c.startswith("--from=build") for c in copies)


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str) -> bool:
    ignored = False
    for pattern in _dockerignore():
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern, pattern.removeprefix("**/")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for p in prefixes for c in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "fusionguard", "gate", "monitor", "tests", ".venv", "x/model.onnx"])
def test_dockerignore_matcher(path: str) -> None:
    assert _ignored(path) == (path in {"tests", ".venv", "x/model.onnx"})


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    sources = []
    for stage in _stages():
        for keyword, args in stage:
            if keyword in {"COPY", "ADD"} and not args.startswith("--from"):
                words = [w for w in shlex.split(args) if not w.startswith("--")]
                sources += words[:-1]
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert (ROOT / path).exists(), f"COPY source {source} does not exist"
        assert not _ignored(path), f"COPY source {source} is excluded by .dockerignore"
    # Everything setuptools needs to build the wheel is copied.
    assert {"pyproject.toml", "README.md", "fusionguard", "monitor"} <= {s.rstrip("/") for s in sources}
