"""Kubernetes manifests and the compose file: they parse, fit together and reference real files."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

from tests.deploy._deploy import DEPLOY, ROOT, RULES_FILE, load_rules

K8S = DEPLOY / "k8s"
GENERATOR = K8S / "generate_prometheusrule.py"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _by_kind() -> dict[str, dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    out = {}
    for name in kustomization["resources"]:
        path = K8S / name
        assert path.is_file(), f"kustomization lists {name}, which does not exist"
        for doc in _docs(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{name}: not a Kubernetes object"
            out[doc["kind"]] = doc
    return out


def test_every_manifest_parses_and_is_listed_in_the_kustomization() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk
    kinds = set(_by_kind())
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"} <= kinds


def test_deployment_requests_a_gpu_probes_oip_health_and_runs_non_root() -> None:
    deployment = _by_kind()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", 8000)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The container args are the CLI after the image's ENTRYPOINT `fusionguard`.
    args = container["args"]
    assert args[:2] == ["monitor", "serve"] and "--registry" in args
    assert args[args.index("--host") + 1] == "0.0.0.0" and args[args.index("--port") + 1] == "8000"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(volumes)
    assert mounts["registry"]["mountPath"] == args[args.index("--registry") + 1]
    assert mounts["registry"]["readOnly"] is True
    claim = volumes["registry"]["persistentVolumeClaim"]["claimName"]
    assert _by_kind()["PersistentVolumeClaim"]["metadata"]["name"] == claim


def test_service_hpa_and_servicemonitor_select_the_deployment() -> None:
    kinds = _by_kind()
    deployment = kinds["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = kinds["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The ServiceMonitor's job label is the Service name; FusionGuardMonitorDown matches it.
    assert service["metadata"]["name"] == "fusionguard-monitor"
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    monitor = kinds["ServiceMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"


def test_prometheusrule_carries_exactly_the_rule_file() -> None:
    rule = _by_kind()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == load_rules()["groups"]


def test_prometheusrule_is_generated_and_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_generator_output_follows_the_rule_file() -> None:
    """render() of an edited rule file differs, so --check would catch a stale manifest."""
    spec = importlib.util.spec_from_file_location("generate_prometheusrule", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = RULES_FILE.read_text(encoding="utf-8")
    edited = text.replace("> 0.25", "> 0.3")
    assert edited != text
    assert module.render(edited) != module.render(text)
    assert yaml.safe_load(module.render(edited))["spec"]["groups"] == yaml.safe_load(edited)["groups"]


def test_compose_parses_and_mounts_files_that_exist() -> None:
    compose_file = DEPLOY / "compose.yaml"
    compose = yaml.safe_load(compose_file.read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"monitor", "prometheus", "grafana"}
    build = services["monitor"]["build"]
    assert (compose_file.parent / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile"
    assert services["monitor"]["command"][:2] == ["monitor", "serve"]
    checked = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):  # a bind mount of a repository file (others: named volumes, ${VAR})
                assert (compose_file.parent / source).exists(), f"{name}: mount source {source} does not exist"
                checked += 1
        for published in service.get("ports", []):
            assert published.startswith("127.0.0.1:"), f"{name} publishes {published} beyond loopback"
    assert checked >= 4
    prometheus_mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    assert prometheus_mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    # rule_files in prometheus.yml are relative to the config file, so the rules dir sits beside it.
    assert prometheus_mounts["./prometheus/rules"] == "/etc/prometheus/rules"
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["rules/*.yml"]
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "fusionguard-monitor")
    assert job["static_configs"][0]["targets"] == ["monitor:8000"]


def test_compose_gpu_overlay_parses() -> None:
    overlay = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text(encoding="utf-8"))
    (device,) = overlay["services"]["monitor"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_deployment_args_are_valid_serve_options_and_probes_mean_what_they_say() -> None:
    from fusionguard.monitor.cli import serve

    (container,) = _by_kind()["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    ctx = serve.make_context("serve", list(args[2:]))  # click parses them as the CLI would
    assert ctx.params["registry_poll_seconds"] > 0  # promotions reach an unready pod without a restart
    # Liveness must not depend on a model: a pod waiting for its first promotion stays alive.
    assert container["startupProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
