"""The filesystem registry: promotion only of passing, unchanged models; atomic `current`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fusionguard.errors import CheckFailedError, InvalidInputError
from fusionguard.registry import Registry, file_sha256


def _report(tmp_path: Path, name: str, payload: bytes, outcome: str = "passed") -> tuple[Path, Path]:
    model = tmp_path / f"{name}.onnx"
    model.write_bytes(payload)
    out = tmp_path / f"report-{name}"
    out.mkdir()
    report = {
        "outcome": outcome,
        "exit_code": 0 if outcome == "passed" else 1,
        "candidate": {"path": str(model), "sha256": hashlib.sha256(payload).hexdigest(), "variant": name},
        "checks": [{"name": "visual_ablation", "outcome": "passed" if outcome == "passed" else "failed"}],
    }
    (out / "report.json").write_text(json.dumps(report))
    (out / "profile.json").write_text("{}")
    return model, out


def test_promote_sets_current_and_copies_files(tmp_path):
    reg = Registry(tmp_path / "reg")
    assert reg.current() is None and reg.current_model_path() is None and reg.versions() == []
    model, report = _report(tmp_path, "a", b"model-a")
    info = reg.promote(None, report)
    assert info.version == "v0001" and info.is_current
    assert reg.current_model_path().read_bytes() == b"model-a"
    assert file_sha256(info.model_path) == hashlib.sha256(b"model-a").hexdigest()
    assert (info.path / "report.json").is_file() and info.profile_path is not None
    assert (tmp_path / "reg" / "current").read_text().strip() == "v0001"
    assert [h["action"] for h in reg.history()] == ["promote"]


def test_rollback_walks_to_older_versions(tmp_path):
    reg = Registry(tmp_path / "reg")
    for name in "abc":
        reg.promote(None, _report(tmp_path, name, name.encode())[1])
    assert [v.version for v in reg.versions()] == ["v0001", "v0002", "v0003"]
    assert reg.rollback().version == "v0002"
    assert reg.rollback().version == "v0001"
    with pytest.raises(InvalidInputError, match="oldest"):
        reg.rollback()
    assert reg.rollback("v0003").version == "v0003"
    assert reg.current().version == "v0003"
    with pytest.raises(InvalidInputError, match="no version 'v0009'"):
        reg.rollback("v0009")
    assert [h["action"] for h in reg.history()] == ["promote"] * 3 + ["rollback"] * 3


def test_refuses_failed_report_without_writing(tmp_path):
    reg = Registry(tmp_path / "reg")
    _, report = _report(tmp_path, "bad", b"x", outcome="failed")
    with pytest.raises(CheckFailedError, match="visual_ablation"):
        reg.promote(None, report)
    assert reg.current() is None and reg.versions() == []


def test_refuses_changed_model(tmp_path):
    reg = Registry(tmp_path / "reg")
    model, report = _report(tmp_path, "a", b"original")
    model.write_bytes(b"tampered")
    with pytest.raises(CheckFailedError, match="sha256"):
        reg.promote(None, report)
    assert reg.current() is None and reg.versions() == []
    assert not list((tmp_path / "reg").glob(".tmp-*"))


def test_missing_report_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="no gate report"):
        Registry(tmp_path / "reg").promote(None, tmp_path)


def test_failure_during_copy_leaves_current_untouched(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "reg")
    reg.promote(None, _report(tmp_path, "a", b"a")[1])
    _, report = _report(tmp_path, "b", b"b")
    import fusionguard.registry as registry_module

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(registry_module.os, "rename", boom)
    with pytest.raises(OSError):
        reg.promote(None, report)
    assert reg.current().version == "v0001"
    assert [v.version for v in reg.versions()] == ["v0001"]
    assert not list((tmp_path / "reg").glob(".tmp-*"))


def test_dangling_current_is_reported(tmp_path):
    reg = Registry(tmp_path / "reg")
    (tmp_path / "reg").mkdir()
    (tmp_path / "reg" / "current").write_text("v0007\n")
    with pytest.raises(InvalidInputError, match="missing"):
        reg.current()
