"""`promote` decides from evidence: re-validated reports, hashed files, signatures; the gate never
leaves stale artefacts; deep JSON and damaged inputs exit 2 without a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fusionguard import signing
from fusionguard import toymodels as tm
from fusionguard.cli import cli
from fusionguard.registry import Registry, file_sha256, model_manifest
from fusionguard.gate.promotion import report_problems

DEEP = "[" * 50_000 + "]" * 50_000


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def gate_args(toys, out, candidate=None, data=None, **extra):
    args = ["gate", "--candidate", candidate or toys.fusion, "--baseline", toys.v1,
            "--data", data or toys.data, "--policy", toys.policy, "--out", out]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return args


@pytest.fixture(scope="module")
def passed(toys, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("passed") / "report"
    assert invoke(*gate_args(toys, out)).exit_code == 0
    return out


@pytest.fixture(scope="module")
def blocked(toys, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("blocked") / "report"
    assert invoke(*gate_args(toys, out, candidate=toys.blind)).exit_code == 1
    return out


def _copy(report: Path, tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "report"
    shutil.copytree(report, out)
    return out, json.loads((out / "report.json").read_text())


def _save(out: Path, data: dict) -> None:
    (out / "report.json").write_text(json.dumps(data))


def test_the_gate_records_a_manifest_and_its_report_passes_re_validation(passed, toys):
    data = json.loads((passed / "report.json").read_text())
    assert data["candidate"]["files"] == model_manifest(toys.fusion)
    assert report_problems(data) == []
    assert "signature" not in data  # no key in the environment
    assert not list(passed.glob(".fusionguard-gate-*"))


EDITS = {
    # a blocked report with its verdict fields rewritten to "passed"
    "verdict_only": lambda d: None,
    "number_below_threshold": lambda d: d["checks"][2]["numbers"]["visual_drop"].update(high=-0.5),
    "number_removed": lambda d: d["checks"][4]["numbers"].pop("difference"),
    "number_nan": lambda d: d["checks"][3]["numbers"]["pearson"].update(high=None),
    "correlation_too_high": lambda d: d["checks"][3]["numbers"]["spearman_mean"].update(high=0.999),
    "check_dropped": lambda d: d["checks"].pop(3),
    "check_skipped": lambda d: d["checks"][2].update(outcome="skipped"),
    "policy_invalid": lambda d: d["policy"]["quality"].update(margin=5.0),
    "policy_removed": lambda d: d.pop("policy"),
    "baseline_removed": lambda d: d.update(baseline=None),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_report_is_refused(passed, blocked, tmp_path, edit):
    out, data = _copy(blocked if edit == "verdict_only" else passed, tmp_path)
    data.update(outcome="passed", exit_code=0)
    for c in data["checks"]:
        if edit == "verdict_only":
            c["exit_code"] = 0  # leave the failed outcome in place
    EDITS[edit](data)
    _save(out, data)
    result = invoke("promote", "--report", out, "--registry", tmp_path / "reg")
    assert result.exit_code == 1, result.output
    assert "refusing to promote" in result.output
    assert not (tmp_path / "reg" / "versions" / "v0001").exists()


def test_promote_copies_the_model_and_registry_serves_it(passed, tmp_path):
    result = invoke("promote", "--report", passed, "--registry", tmp_path / "reg")
    assert result.exit_code == 0, result.output
    info = Registry(tmp_path / "reg").verified()
    assert info.version == "v0001" and info.files == json.loads((passed / "report.json").read_text())["candidate"]["files"]
    shown = invoke("registry", "show", "--registry", tmp_path / "reg")
    assert shown.exit_code == 0 and json.loads(shown.output)["files"] == info.files


def test_promote_requires_the_expected_policy_when_given(passed, toys, tmp_path):
    assert invoke("promote", "--report", passed, "--registry", tmp_path / "r1", "--policy", toys.policy).exit_code == 0
    other = tmp_path / "other.toml"
    other.write_text(toys.policy.read_text() + "[quality]\nmargin = 0.5\n")
    result = invoke("promote", "--report", passed, "--registry", tmp_path / "r2", "--policy", other)
    assert result.exit_code == 1 and "another policy" in result.output


def test_signed_reports_end_to_end(toys, tmp_path):
    key = {signing.KEY_ENV: "ci-secret-0123456789"}
    out = tmp_path / "signed"
    assert invoke(*gate_args(toys, out), env=key).exit_code == 0
    data = json.loads((out / "report.json").read_text())
    assert data["signature"]["algorithm"] == "HMAC-SHA256"
    assert invoke("promote", "--report", out, "--registry", tmp_path / "reg", env={signing.KEY_ENV: "wrong"}).exit_code == 1
    # pointing the signed report at another model (with its manifest) breaks the signature
    other = tm.save(tm.build_fusion_model(0.8), tmp_path / "other.onnx")
    forged = dict(data, candidate=dict(data["candidate"], path=str(other), sha256=file_sha256(other), files=model_manifest(other)))
    shutil.copytree(out, tmp_path / "forged")
    _save(tmp_path / "forged", forged)
    result = invoke("promote", "--report", tmp_path / "forged", "--registry", tmp_path / "reg", env=key)
    assert result.exit_code == 1 and "signature does not match" in result.output
    unsigned = tmp_path / "unsigned"
    assert invoke(*gate_args(toys, unsigned), env={}).exit_code == 0
    result = invoke("promote", "--report", unsigned, "--registry", tmp_path / "reg", env=key)
    assert result.exit_code == 1 and "not signed" in result.output
    assert invoke("promote", "--report", out, "--registry", tmp_path / "reg", env=key).exit_code == 0


def _corrupt_data_page(src: Path, dst: Path, column: int) -> Path:
    raw = bytearray(src.read_bytes())
    chunk = pq.ParquetFile(src).metadata.row_group(0).column(column)
    start = chunk.data_page_offset + 8
    for i in range(start, min(start + 256, chunk.data_page_offset + chunk.total_compressed_size)):
        raw[i] ^= 0x5A
    dst.write_bytes(bytes(raw))
    pq.ParquetFile(dst)  # the footer still reads
    return dst


@pytest.mark.parametrize("column", [0, 3, 5])
def test_corrupt_data_page_exits_2_in_every_command(toys, passed, tmp_path, column):
    bad = _corrupt_data_page(toys.data, tmp_path / "bad.parquet", column)
    validate = invoke("data", "validate", bad, "--model", toys.fusion)
    assert validate.exit_code == 2 and "damaged" in validate.output
    out, _ = _copy(passed, tmp_path)  # an earlier run's passing artefacts are in --out
    gate = invoke(*gate_args(toys, out, data=bad))
    assert gate.exit_code == 2 and "damaged" in gate.output
    assert json.loads((out / "report.json").read_text())["outcome"] == "invalid"
    assert 'failures="0" errors="0"' not in (out / "junit.xml").read_text()
    assert not (out / "profile.json").exists()
    replay = invoke("monitor", "replay", "--model", toys.fusion, "--data", bad, "--out", tmp_path / "m.prom")
    assert replay.exit_code == 2 and "damaged" in replay.output


def test_an_early_stop_leaves_no_artefact_of_an_earlier_run(toys, passed, tmp_path):
    out, _ = _copy(passed, tmp_path)
    (out / ".fusionguard-gate-killed").mkdir()  # the staging folder of a run killed mid-write
    policy = tmp_path / "bad.toml"
    policy.write_text("[bootstrap]\nn_resamples = 1000000000000\n")
    result = invoke(*gate_args(toys, out)[:-4], "--policy", policy, "--out", out)
    assert result.exit_code == 2 and "n_resamples" in result.output
    left = sorted(p.name for p in out.iterdir())
    assert left == [], left


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[quality]\nmargin = inf\n", "finite"),
        ("[ablation]\nmin_visual_drop = nan\n", "finite"),
        ("[quality]\nmargin = 1.5\n", "quality.margin"),
        ("[bootstrap]\nn_resamples = 1000001\n", "1,000,000"),
        ("[metric]\ngain = 'exponential'\n[data]\nmax_label = 1024\n", "max_label"),
    ],
)
def test_unbounded_policies_exit_2(toys, tmp_path, text, needle):
    policy = tmp_path / "p.toml"
    policy.write_text(text)
    result = invoke(*gate_args(toys, tmp_path / "out")[:-4], "--policy", policy, "--out", tmp_path / "out")
    assert result.exit_code == 2 and needle in result.output


def test_exponential_gain_with_large_labels_is_invalid_data_not_a_dropped_query(toys, tmp_path):
    table = pq.read_table(toys.data)
    labels = table.column("label").to_numpy().copy()
    labels[labels == labels.max()] = 1024
    import pyarrow as pa

    data = tmp_path / "big.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, table.schema.field("label").type)), data)
    policy = tmp_path / "exp.toml"
    policy.write_text(toys.policy.read_text() + "[metric]\ngain = 'exponential'\n")
    result = invoke(*gate_args(toys, tmp_path / "out", data=data)[:-4], "--policy", policy, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "outside [0, 30]" in result.output


def test_deeply_nested_json_exits_2(toys, passed, tmp_path):
    sidecar = tmp_path / "contract.json"
    sidecar.write_text(DEEP)
    result = invoke(*gate_args(toys, tmp_path / "o1", candidate_contract=sidecar))
    assert result.exit_code == 2 and "nested" in result.output

    proto = onnx.load(str(toys.fusion))
    for prop in proto.metadata_props:
        if prop.key.startswith("fusionguard"):
            prop.value = DEEP
    deep_model = tmp_path / "deep.onnx"
    onnx.save(proto, str(deep_model))
    result = invoke(*gate_args(toys, tmp_path / "o2", candidate=deep_model))
    assert result.exit_code == 2 and "nested" in result.output

    out, _ = _copy(passed, tmp_path)
    (out / "report.json").write_text(DEEP)
    result = invoke("promote", "--report", out, "--registry", tmp_path / "reg")
    assert result.exit_code == 2 and "nested" in result.output


@pytest.mark.parametrize(
    "command",
    [("registry", "list"), ("registry", "show"), ("registry", "rollback"), ("registry", "rollback", "--to", "v0001"), ("promote",)],
)
def test_registry_commands_on_a_path_that_is_a_file_exit_2(passed, tmp_path, command):
    (tmp_path / "reg").write_text("not a registry")
    extra = ["--report", passed] if command == ("promote",) else []
    result = invoke(*command[:2], "--registry", tmp_path / "reg", *extra, *command[2:])
    assert result.exit_code == 2 and "not a directory" in result.output, result.output


def test_show_on_an_empty_registry_is_exit_2_not_blocked(tmp_path):
    result = invoke("registry", "show", "--registry", tmp_path / "reg")
    assert result.exit_code == 2 and "no current version" in result.output
