"""The monitor loads registry versions only through `Registry.verified`: a version whose files no
longer hash to meta.json, or a `current` that escapes versions/, is refused at start and on hot
reload (the previous model keeps serving)."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from fusionguard import toymodels
from fusionguard.cli import cli
from fusionguard.errors import InvalidInputError
from fusionguard.monitor.service import ModelService, ServiceConfig
from tests.monitor.conftest import make_registry, set_current


def _service(root):
    return ModelService(ServiceConfig(registry=root, device="cpu"))


def test_a_model_swapped_after_promotion_is_not_served(tmp_path, models):
    root = make_registry(tmp_path / "reg", [models["fusion"], models["fusion_w0.3"]])
    toymodels.save(toymodels.build_visual_blind_model(), root / "versions" / "v0001" / "model.onnx")
    with pytest.raises(InvalidInputError, match="changed after promotion"):
        _service(root)


def test_current_outside_versions_is_refused_at_start_and_on_reload(tmp_path, models):
    root = make_registry(tmp_path / "reg", [models["fusion"]])
    service = _service(root)
    evil = tmp_path / "evil_version"
    shutil.copytree(root / "versions" / "v0001", evil)
    set_current(root, "../../evil_version")
    with pytest.raises(InvalidInputError, match="not a version id"):
        service.reload()
    assert service.state.version == "v0001"
    with pytest.raises(InvalidInputError, match="not a version id"):
        _service(root)


def test_reload_refuses_a_tampered_new_version_and_keeps_serving(tmp_path, models):
    root = make_registry(tmp_path / "reg", [models["fusion"], models["fusion_w0.3"]])
    service = _service(root)
    (root / "versions" / "v0002" / "model.onnx").write_bytes(models["text"].read_bytes())
    set_current(root, "v0002")
    with pytest.raises(InvalidInputError, match="v0002"):
        service.reload()
    assert service.state.version == "v0001"


@pytest.mark.parametrize("current", [b"\xff\xfe garbage", b"v0001/../v0001", b"v9999"])
def test_monitor_serve_on_a_damaged_registry_exits_2(tmp_path, models, current):
    root = make_registry(tmp_path / "reg", [models["fusion"]])
    (root / "current").write_bytes(current)
    result = CliRunner().invoke(cli, ["monitor", "serve", "--registry", str(root), "--device", "cpu", "--port", "1"])
    assert result.exit_code == 2, result.output
    assert "damaged" in result.output and "Traceback" not in result.output
