"""The filesystem registry: promotion only of passing, unchanged models with their external data;
strict `current`; files re-hashed whenever a version is served, shown or rolled back to."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from fusionguard import signing
from fusionguard import toymodels as tm
from fusionguard.errors import CheckFailedError, InvalidInputError
from fusionguard.registry import Registry, file_sha256, model_manifest


def accept(report, source):  # the gate's re-validation is tested in tests/gate/test_promotion.py
    return None


def _model(tmp_path: Path, name: str, weight: float = 1.0, external: bool = False) -> Path:
    folder = tmp_path / f"m-{name}"
    folder.mkdir(exist_ok=True)
    path = folder / "model.onnx"
    proto = tm.build_fusion_model(weight)
    if external:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="weights.bin", size_threshold=0)
    else:
        tm.save(proto, path)
    return path


def _report(tmp_path: Path, name: str, model: Path, outcome: str = "passed", **extra) -> Path:
    out = tmp_path / f"report-{name}"
    out.mkdir()
    manifest = model_manifest(model)
    report = {
        "report_version": 1,
        "outcome": outcome,
        "exit_code": 0 if outcome == "passed" else 1,
        "candidate": {"path": str(model), "sha256": manifest["model.onnx"], "files": manifest, "variant": name},
        "checks": [{"name": "visual_ablation", "outcome": "passed" if outcome == "passed" else "failed", "exit_code": 0}],
        **extra,
    }
    (out / "report.json").write_text(json.dumps(report))
    return out


def _promote(reg: Registry, report: Path, **kw):
    from fusionguard.gate.promotion import read_verdict  # the gate reads its report; the registry gets the verdict

    return reg.promote(None, read_verdict(report, verify_report=accept, environ=kw.pop("environ", {}), **kw))


def test_promote_sets_current_and_copies_files(tmp_path):
    reg = Registry(tmp_path / "reg")
    assert reg.current() is None and reg.current_model_path() is None and reg.versions() == []
    model = _model(tmp_path, "a")
    info = _promote(reg, _report(tmp_path, "a", model))
    assert info.version == "v0001" and info.is_current
    assert reg.current_model_path().read_bytes() == model.read_bytes()
    assert file_sha256(info.model_path) == file_sha256(model)
    assert (info.path / "report.json").is_file()
    assert (tmp_path / "reg" / "current").read_text().strip() == "v0001"
    assert [h["action"] for h in reg.history()] == ["promote"]


def test_external_data_is_hashed_copied_and_verified(tmp_path):
    reg = Registry(tmp_path / "reg")
    model = _model(tmp_path, "x", external=True)
    assert set(model_manifest(model)) == {"model.onnx", "weights.bin"}
    report = _report(tmp_path, "x", model)
    weights = bytearray((model.parent / "weights.bin").read_bytes())
    weights[0] ^= 1
    (model.parent / "weights.bin").write_bytes(bytes(weights))
    with pytest.raises(CheckFailedError, match="weights.bin"):
        _promote(reg, report)
    assert reg.versions() == []

    model = _model(tmp_path, "y", external=True)
    info = _promote(reg, _report(tmp_path, "y", model))
    assert (info.path / "weights.bin").read_bytes() == (model.parent / "weights.bin").read_bytes()
    assert reg.verified().version == info.version
    onnx.load(str(info.model_path))  # loads with its weights from the registry
    (info.path / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(InvalidInputError, match="weights.bin"):
        reg.verified()


def test_promoted_files_are_readable_by_other_users_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        info = _promote(Registry(tmp_path / "reg"), _report(tmp_path, "a", _model(tmp_path, "a", external=True)))
    finally:
        os.umask(old)
    for path in [tmp_path / "reg", tmp_path / "reg" / "versions", info.path]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    for path in [*info.path.iterdir(), tmp_path / "reg" / "current", tmp_path / "reg" / "history.jsonl"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_rollback_walks_to_older_versions(tmp_path):
    reg = Registry(tmp_path / "reg")
    for i, name in enumerate("abc"):
        _promote(reg, _report(tmp_path, name, _model(tmp_path, name, 1.0 + i)))
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


def test_rollback_refuses_a_tampered_version(tmp_path):
    reg = Registry(tmp_path / "reg")
    first = _promote(reg, _report(tmp_path, "a", _model(tmp_path, "a")))
    _promote(reg, _report(tmp_path, "b", _model(tmp_path, "b", 2.0)))
    tm.save(tm.build_visual_blind_model(), first.model_path)
    with pytest.raises(InvalidInputError, match="changed after promotion"):
        reg.rollback()
    assert reg.current().version == "v0002"


def test_refuses_failed_report_without_writing(tmp_path):
    reg = Registry(tmp_path / "reg")
    report = _report(tmp_path, "bad", _model(tmp_path, "bad"), outcome="failed")
    with pytest.raises(CheckFailedError, match="visual_ablation"):
        _promote(reg, report)
    assert reg.current() is None and reg.versions() == []


def test_refuses_a_report_whose_outcome_was_edited_but_checks_failed(tmp_path):
    model = _model(tmp_path, "a")
    report = _report(tmp_path, "a", model)
    data = json.loads((report / "report.json").read_text())
    data["checks"][0]["outcome"] = "failed"  # outcome/exit_code still say passed
    (report / "report.json").write_text(json.dumps(data))
    with pytest.raises(CheckFailedError, match="visual_ablation"):
        _promote(Registry(tmp_path / "reg"), report)


def test_refuses_changed_model(tmp_path):
    reg = Registry(tmp_path / "reg")
    model = _model(tmp_path, "a")
    report = _report(tmp_path, "a", model)
    tm.save(tm.build_fusion_model(0.5), model)
    with pytest.raises(CheckFailedError, match="model.onnx differs"):
        _promote(reg, report)
    assert reg.current() is None and reg.versions() == []
    assert not list((tmp_path / "reg").glob(".tmp-*"))


@pytest.mark.parametrize("target", ["hostname", "symlink"])
def test_refuses_a_report_pointing_at_a_non_model_or_a_symlink(tmp_path, target):
    model = _model(tmp_path, "a")
    report = _report(tmp_path, "a", model)
    data = json.loads((report / "report.json").read_text())
    if target == "hostname":
        other = tmp_path / "hostname"
        other.write_text("build-host\n")
        data["candidate"]["path"] = str(other)
        data["candidate"]["files"] = {"model.onnx": file_sha256(other)}
        data["candidate"]["sha256"] = file_sha256(other)
        needle = "not a readable ONNX model"
    else:
        link = tmp_path / "link.onnx"
        link.symlink_to(model)
        data["candidate"]["path"] = str(link)
        needle = "symbolic link"
    (report / "report.json").write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match=needle):
        _promote(Registry(tmp_path / "reg"), report)


def test_refuses_external_data_outside_the_model_directory(tmp_path):
    model = _model(tmp_path, "a", external=True)
    proto = onnx.load(str(model), load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(proto, str(model))
    with pytest.raises(InvalidInputError, match="not a plain relative path"):
        model_manifest(model)


def test_profile_symlink_is_refused(tmp_path):
    report = _report(tmp_path, "a", _model(tmp_path, "a"))
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0\n")
    (report / "profile.json").symlink_to(secret)
    with pytest.raises(InvalidInputError, match="symbolic link"):
        _promote(Registry(tmp_path / "reg"), report)
    assert not (tmp_path / "reg" / "versions" / "v0001").exists()


def test_signed_reports(tmp_path):
    key = {signing.KEY_ENV: "s3cret"}
    reg = Registry(tmp_path / "reg")
    report = _report(tmp_path, "a", _model(tmp_path, "a"))
    with pytest.raises(CheckFailedError, match="not signed"):
        _promote(reg, report, environ=key)
    data = json.loads((report / "report.json").read_text())
    (report / "report.json").write_text(json.dumps(signing.sign(data, b"other")))
    with pytest.raises(CheckFailedError, match="does not match"):
        _promote(reg, report, environ=key)
    signed = signing.sign(data, b"s3cret")
    (report / "report.json").write_text(json.dumps(signed, indent=3))  # layout does not matter
    assert _promote(reg, report, environ=key).version == "v0001"
    signed["candidate"]["variant"] = "edited"
    (report / "report.json").write_text(json.dumps(signed))
    with pytest.raises(CheckFailedError, match="does not match"):
        _promote(reg, report, environ=key)
    with pytest.raises(InvalidInputError, match="empty"):
        _promote(reg, report, environ={signing.KEY_ENV: ""})


def test_canonical_form_is_the_documented_one():
    report = {"b": [1, 2.5, "é"], "a": {"y": None, "x": True}, "signature": {"value": "ignored"}}
    assert signing.canonical_bytes(report) == b'{"a":{"x":true,"y":null},"b":[1,2.5,"\\u00e9"]}'
    import hashlib
    import hmac

    expected = hmac.new(b"k", signing.canonical_bytes(report), hashlib.sha256).hexdigest()
    assert signing.sign(report, b"k")["signature"]["value"] == expected


def test_missing_report_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="no gate report"):
        _promote(Registry(tmp_path / "reg"), tmp_path)


def test_failure_during_copy_leaves_current_untouched(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "reg")
    _promote(reg, _report(tmp_path, "a", _model(tmp_path, "a")))
    report = _report(tmp_path, "b", _model(tmp_path, "b", 2.0))
    import fusionguard.registry as registry_module

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(registry_module.os, "rename", boom)
    with pytest.raises(InvalidInputError, match="disk full"):
        _promote(reg, report)
    assert reg.current().version == "v0001"
    assert [v.version for v in reg.versions()] == ["v0001"]
    assert not list((tmp_path / "reg").glob(".tmp-*"))


def _one_version(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "reg")
    _promote(reg, _report(tmp_path, "a", _model(tmp_path, "a")))
    return reg


CORRUPTIONS = {
    "dangling": lambda root: (root / "current").write_text("v0007\n"),
    "traversal": lambda root: (root / "current").write_text("../../evil_version\n"),
    "garbage": lambda root: (root / "current").write_text("hello world\n"),
    "binary": lambda root: (root / "current").write_bytes(b"\xff\xfe\x00v0001"),
    "huge": lambda root: (root / "current").write_text("v0001" * 100),
    "directory": lambda root: ((root / "current").unlink(), (root / "current").mkdir()),
    "symlinked_version": lambda root: (
        (root / "elsewhere").mkdir(), (root / "versions" / "v0002").symlink_to(root / "elsewhere"),
        (root / "current").write_text("v0002\n"),
    ),
    "meta_not_object": lambda root: (root / "versions" / "v0001" / "meta.json").write_text("[1, 2]"),
    "meta_binary": lambda root: (root / "versions" / "v0001" / "meta.json").write_bytes(b"\x80\x81"),
    "meta_deep": lambda root: (root / "versions" / "v0001" / "meta.json").write_text("[" * 100_000 + "]" * 100_000),
    "meta_bad_sha": lambda root: (root / "versions" / "v0001" / "meta.json").write_text('{"sha256": 5}'),
    "model_swapped": lambda root: tm.save(tm.build_visual_blind_model(), root / "versions" / "v0001" / "model.onnx"),
    "model_missing": lambda root: (root / "versions" / "v0001" / "model.onnx").unlink(),
    "model_symlink": lambda root: (
        (root / "versions" / "v0001" / "model.onnx").rename(root / "m.onnx"),
        (root / "versions" / "v0001" / "model.onnx").symlink_to(root / "m.onnx"),
    ),
    "report_edited": lambda root: (root / "versions" / "v0001" / "report.json").write_text("{}"),
    "profile_symlink": lambda root: (root / "versions" / "v0001" / "profile.json").symlink_to("/etc/passwd"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_every_corruption_is_refused_with_invalid_input(tmp_path, kind):
    reg = _one_version(tmp_path)
    CORRUPTIONS[kind](tmp_path / "reg")
    with pytest.raises(InvalidInputError):
        reg.verified()


def test_registry_path_that_is_a_file(tmp_path):
    (tmp_path / "reg").write_text("not a directory")
    reg = Registry(tmp_path / "reg")
    for call in (reg.versions, reg.current, reg.verified, reg.rollback):
        with pytest.raises(InvalidInputError, match="not a directory"):
            call()
    with pytest.raises(InvalidInputError, match="not a directory"):
        _promote(reg, _report(tmp_path, "a", _model(tmp_path, "a")))


def test_read_only_registry_is_invalid_input(tmp_path, monkeypatch):
    reg = _one_version(tmp_path)
    report = _report(tmp_path, "b", _model(tmp_path, "b", 2.0))
    import fusionguard.registry as registry_module

    def read_only(*args, **kwargs):  # what a read-only mount gives, also to root
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(registry_module.tempfile, "mkdtemp", read_only)
    with pytest.raises(InvalidInputError, match="could not be written.*Read-only"):
        _promote(reg, report)
    monkeypatch.setattr(registry_module.Registry, "_set_current", read_only)
    with pytest.raises(InvalidInputError, match="Read-only"):
        reg.rollback("v0001")
    assert reg.verified().version == "v0001"


def test_rollback_with_explicit_version_repairs_a_damaged_current(tmp_path):
    reg = _one_version(tmp_path)
    (tmp_path / "reg" / "current").write_text("../../evil_version\n")
    with pytest.raises(InvalidInputError, match="not a version id"):
        reg.current()
    assert reg.rollback("v0001").version == "v0001"
    assert reg.verified().version == "v0001"


def test_external_data_behind_a_symlinked_folder_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    path = folder / "model.onnx"
    (folder / "sub").mkdir()
    onnx.save_model(tm.build_fusion_model(1.0), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="sub/weights.bin", size_threshold=0)
    assert set(model_manifest(path)) == {"model.onnx", "sub/weights.bin"}
    old = os.umask(0o077)
    try:
        info = _promote(Registry(tmp_path / "reg"), _report(tmp_path, "sub", path))
    finally:
        os.umask(old)
    assert stat.S_IMODE((info.path / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((info.path / "sub" / "weights.bin").stat().st_mode) == 0o644
    (folder / "sub").rename(outside / "sub")
    (folder / "sub").symlink_to(outside / "sub")
    with pytest.raises(InvalidInputError, match="symbolic link"):
        model_manifest(path)


def test_the_registry_decides_from_a_verdict_object_not_a_report_format(tmp_path):
    """A Verdict built inline, with no report.json format involved: a failing one is refused with
    its reason and nothing is written; a passing one promotes the model it describes."""
    from fusionguard.registry import Verdict

    model = _model(tmp_path, "a")
    evidence = tmp_path / "evidence.txt"
    evidence.write_bytes(b"any evidence bytes")
    passing = Verdict(passed=True, reason="", source="inline verdict", model_files=model_manifest(model),
                      model_path=str(model), variant="inline", signed=False, evidence=evidence,
                      evidence_sha256=file_sha256(evidence))
    reg = Registry(tmp_path / "reg")
    with pytest.raises(CheckFailedError, match="the gate said no"):
        reg.promote(None, replace(passing, passed=False, reason="the gate said no"))
    assert reg.versions() == []
    info = reg.promote(None, passing)
    assert info.variant == "inline" and info.sha256 == passing.model_files["model.onnx"]
    assert (info.path / "report.json").read_bytes() == b"any evidence bytes"
