"""The KubeRay RayJob for a gate run: it parses, its command is a valid `fusionguard gate` call on
the Ray engine, and its paths and volumes fit together."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from tests.deploy._deploy import DEPLOY, ROOT

RAYJOB = DEPLOY / "ray" / "rayjob-gate.yaml"


def _job() -> dict:
    (doc,) = [d for d in yaml.safe_load_all(RAYJOB.read_text(encoding="utf-8")) if d is not None]
    return doc


def _pods(job: dict) -> list[dict]:
    spec = job["spec"]["rayClusterSpec"]
    return [spec["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in spec["workerGroupSpecs"])]


def _parse(args: list[str]):  # noqa: ANN202 - a click Context
    """`fusionguard gate`'s parse of `args`, as in the pod: the gate checks that its input files
    exist, and those live on the cluster's volumes, so existence is not checked here (every other
    option is parsed and converted as the CLI would)."""
    import copy

    import click

    from fusionguard.cli import DataLocation
    from fusionguard.gate.cli import gate

    params = []
    for param in gate.params:
        param = copy.copy(param)
        if isinstance(param.type, click.Path) and param.type.exists:
            param.type = copy.copy(param.type)
            param.type.exists = False
        elif isinstance(param.type, DataLocation):  # --data: a path (or URI) on the cluster's volumes
            param.type = DataLocation(exists=False)
        params.append(param)
    return click.Command("gate", params=params).make_context("gate", args)


def test_rayjob_runs_the_gate_on_the_ray_engine() -> None:
    job = _job()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:2] == ["fusionguard", "gate"]
    ctx = _parse(args[2:])  # raises on an unknown or malformed option
    assert ctx.params["engine"] == "ray" and ctx.params["ray_address"] == "auto"
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_rayjob_paths_sit_on_mounted_volumes() -> None:
    job = _job()
    params = _parse(shlex.split(job["spec"]["entrypoint"])[2:]).params
    head, *workers = _pods(job)
    assert workers, "the scoring runs on a worker group"
    for pod in (head, *workers):
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        (container,) = pod["containers"]
        assert container["image"] == head["containers"][0]["image"]
        volumes = {v["name"] for v in pod["volumes"]}
        assert {m["name"] for m in container["volumeMounts"]} <= volumes

    def mount_of(pod: dict, path: Path) -> dict | None:
        mounts = pod["containers"][0]["volumeMounts"]
        return next((m for m in mounts if path.is_relative_to(m["mountPath"])), None)

    # The driver (head) reads models and data and writes reports; the scorer actors read the data on workers.
    for key in ("candidate", "baseline", "data"):
        assert mount_of(head, Path(params[key])) is not None, key
    for pod in workers:
        assert mount_of(pod, Path(params["data"])) is not None
    out = mount_of(head, Path(params["out"]))
    assert out is not None and not out.get("readOnly", False)


def test_the_image_can_be_built_with_the_ray_extra() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG WITH_RAY=0" in dockerfile and '".[serve,gpu,gate,ray]"' in dockerfile
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'ray = ["ray[data]>=' in pyproject  # Ray Data reads the eval set
    assert "--build-arg WITH_RAY=1" in RAYJOB.read_text(encoding="utf-8")
