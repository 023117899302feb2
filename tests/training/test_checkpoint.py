"""Checkpoints round-trip through weights_only loading; models honour the contract seam."""

import json

import pytest
import torch

from fusionguard.training.checkpoint import load_checkpoint, load_resume_state, save_checkpoint, save_resume_state
from fusionguard.training.models import InputDims, build_model

from .conftest import tiny_config

DIMS = InputDims(d=8, lt=2, lv=3)


def _inputs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randn(n, 2, 8, generator=g), torch.randn(n, 3, 8, generator=g)


@pytest.mark.parametrize("variant", ["v1", "baseline", "progressive", "combined", "ogm-ge", "late-fusion"])
def test_checkpoint_round_trip(tmp_path, variant):
    config = tiny_config(variant)
    model = build_model(variant, DIMS, config.model).eval()
    save_checkpoint(tmp_path, model, config, {"data_sha256": "abc", "data_dir": "bench"})
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config == config
    assert not ckpt.model.training
    meta = json.loads((tmp_path / "meta.json").read_text())
    for key in ("variant", "config_sha256", "data_sha256", "data_dir", "fusionguard_version"):
        assert key in meta and meta[key] == ckpt.meta[key]
    assert meta["variant"] == variant and meta["config_sha256"] == config.sha256()
    q, t, v = _inputs()
    s1, a1 = model(q, t, v)
    s2, a2 = ckpt.model(q, t, v)
    torch.testing.assert_close(s1, s2)
    if a1 is None:  # late fusion has no attention output
        assert a2 is None and model.n_heads is None and model.attention_keys == {}
    else:
        torch.testing.assert_close(a1, a2)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())


@pytest.mark.parametrize("variant", ["v1", "baseline", "progressive"])
def test_model_contract_shapes(variant):
    model = build_model(variant, DIMS, tiny_config(variant).model).eval()
    q, t, v = _inputs(n=6)
    score, attention = model(q, t, v if model.has_visual else None)
    n_keys = 2 + (3 if model.has_visual else 0)
    assert score.shape == (6,) and attention.shape == (6, model.n_heads, n_keys)
    torch.testing.assert_close(attention.sum(-1), torch.ones(6, model.n_heads))
    assert max(stop for _, stop in model.attention_keys.values()) == n_keys
    names = [s.name for s in model.input_specs()]
    assert names == ["query", "text_tokens"] + (["visual_tokens"] if model.has_visual else [])
    assert sorted(n for members in model.modalities.values() for n in members) == sorted(names)


def test_train_outputs_match_forward_and_aux_heads_stay_out():
    model = build_model("mbl", DIMS, tiny_config("mbl").model).eval()
    q, t, v = _inputs()
    out = model.train_outputs(q, t, v, aux=True)
    score, attention = model(q, t, v)
    torch.testing.assert_close(out.score, score)
    torch.testing.assert_close(out.attention, attention)
    assert out.text_score.shape == (5,) and out.visual_score.shape == (5,)


def test_resume_state_round_trip(tmp_path):
    assert load_resume_state(tmp_path) is None
    model = build_model("baseline", DIMS, tiny_config().model)
    opt = torch.optim.AdamW(model.parameters())
    save_resume_state(tmp_path, {"epoch": 3, "best": 0.5, "model": model.state_dict(), "optimizer": opt.state_dict(),
                                 "torch_rng": torch.get_rng_state()})
    state = load_resume_state(tmp_path)
    assert state["epoch"] == 3 and state["best"] == 0.5
    torch.testing.assert_close(state["torch_rng"], torch.get_rng_state())


def test_default_toml_matches_the_dataclass_defaults():
    from pathlib import Path

    from fusionguard.training.config import TrainConfig, load_config

    path = Path(__file__).resolve().parents[2] / "training" / "configs" / "default.toml"
    assert load_config(path) == TrainConfig()


def test_late_fusion_trains_through_the_trainer_and_reloads(tmp_path, tiny_bench):
    from fusionguard.training.late_fusion import LateFusionRanker
    from fusionguard.training.trainer import train_late_fusion

    model, meta = train_late_fusion(tiny_config("baseline", max_epochs=2), tiny_bench, tmp_path, progress=False)
    assert isinstance(model, LateFusionRanker) and not model.training
    assert meta["variant"] == "late-fusion" and meta["val_ndcg"] > 0
    for key in ("config_sha256", "data_sha256", "data_dir", "epoch"):
        assert key in meta
    reloaded = load_checkpoint(tmp_path).model
    q, t, v = (torch.randn(4, 8), torch.randn(4, 2, 8), torch.randn(4, 3, 8))
    torch.testing.assert_close(model(q, t, v)[0], reloaded(q, t, v)[0])
    s_text, s_visual = model.unimodal(q, t, v)
    torch.testing.assert_close(model(q, t, v)[0], s_text + s_visual)  # the score is the sum of the heads


class _Evil:
    """Unpickling this would run a shell command; weights_only loading must refuse it."""

    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def _saved(tmp_path):
    config = tiny_config("baseline")
    save_checkpoint(tmp_path, build_model("baseline", DIMS, config.model), config, {"data_sha256": "abc", "data_dir": "bench"})
    return tmp_path


def test_a_malicious_pickle_is_refused_cleanly_through_the_cli(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fusionguard.cli import cli
    from fusionguard.errors import InvalidInputError

    ckpt = _saved(tmp_path / "ckpt")
    torch.save({"weights": _Evil()}, ckpt / "model.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match="refusing to load") as err:
        load_checkpoint(ckpt)
    assert "weights_only" not in str(err.value)
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2, result.output
    assert "refusing to load" in result.output and "weights_only" not in result.output
    assert "Traceback" not in result.output and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    ("dims", "needle"),
    [
        ({"d": 50_000_000, "lt": 2, "lv": 3}, "input_dims.d must be an integer in [1, 16,384]"),
        ({"d": -8, "lt": 2, "lv": 3}, "input_dims.d"),
        ({"d": 8, "lt": 2.5, "lv": 3}, "input_dims.lt"),
        ({"d": 8, "lt": 2, "lv": "3"}, "input_dims.lv"),
        ([8, 2, 3], "lacks input_dims"),
    ],
)
def test_meta_sizes_are_checked_before_anything_is_allocated(tmp_path, dims, needle):
    from fusionguard.errors import InvalidInputError

    ckpt = _saved(tmp_path)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["input_dims"] = dims
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidInputError, match=needle.replace("[", r"\[")):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("text", ["[1, 2]", "[" * 50_000 + "]" * 50_000, "\xff"])
def test_meta_that_is_not_an_object_is_invalid_input(tmp_path, text):
    from fusionguard.errors import InvalidInputError

    ckpt = _saved(tmp_path)
    (ckpt / "meta.json").write_text(text, encoding="latin-1")
    with pytest.raises(InvalidInputError):
        load_checkpoint(ckpt)


def test_export_out_under_a_regular_file_exits_2(tmp_path):
    from click.testing import CliRunner

    from fusionguard.cli import cli

    ckpt = _saved(tmp_path / "ckpt")
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "afile" / "m.onnx")])
    assert result.exit_code == 2 and "is a file, not a directory" in result.output, result.output
