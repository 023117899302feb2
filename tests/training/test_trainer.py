"""A tiny end-to-end run, resuming, determinism, the synth generator and the CLI's config errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from fusionguard.cli import cli
from fusionguard.dataset import load_dataset
from fusionguard.training.synth import generate, oracle_ndcg
from fusionguard.training.trainer import LOG_FILE, train

from .conftest import TINY_SYNTH, tiny_config


@pytest.mark.parametrize(
    ("variant", "must_lower"),
    # The adversarial, OGM-GE and modality-dropout runs perturb the task gradient on purpose; on a
    # 12-query benchmark four epochs are not enough for them to lower the task loss reliably, so
    # for them this is a smoke test of the loop and its logged quantities.
    [("baseline", True), ("v1", True), ("mbl", True), ("combined", True), ("late-fusion", True),
     ("separate-softmax", True), ("unimodal-heads", True), ("adversarial", False), ("ogm-ge", False),
     ("modality-dropout", False), ("opm", False), ("agm", False), ("pmr", False), ("mmpareto", False)],
)
def test_tiny_training_run(tmp_path, tiny_bench, variant, must_lower):
    result = train(tiny_config(variant, max_epochs=4, patience=10), tiny_bench, tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert len(log) == 4
    if must_lower:
        assert log[-1]["task_loss"] < log[0]["task_loss"]
    assert 0 <= result.test["ndcg"] <= 1
    for key in ("val_ndcg", "val_visual_drop", "val_text_drop", "val_visual_attention_mass", "val_attention_entropy"):
        assert key in log[0]
    assert log[0]["grad_norm_text"] > 0
    if variant == "late-fusion":  # no attention: the attention columns are logged as null
        assert log[0]["val_visual_attention_mass"] is None and log[0]["val_attention_entropy"] is None
        assert result.test["visual_drop"] is not None
    own_keys = {"ogm-ge": {"rho_text", "coef_text", "coef_visual", "ogm_active"}, "agm": {"coef_text", "agm_loss_visual"},
                "pmr": {"pce_visual", "weight_visual"}, "mmpareto": {"pareto_cos_visual"}, "opm": {"opm_q_text"},
                "adversarial": {"adversary_mse"}}
    assert own_keys.get(variant, set()) <= set(log[0])
    if variant != "v1":
        assert log[0]["grad_norm_visual"] >= 0 and log[0]["grad_ratio_visual_text"] >= 0
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "result.json").is_file()


def test_training_is_deterministic_and_resumable(tmp_path, tiny_bench):
    config = tiny_config(max_epochs=4, patience=10)
    full = train(config, tiny_bench, tmp_path / "a", progress=False)
    again = train(config, tiny_bench, tmp_path / "b", progress=False, resume=False)
    assert [h["val_ndcg"] for h in full.history] == [h["val_ndcg"] for h in again.history]
    # interrupt after epoch 2: keep the resume state and log of epochs 0-1, then resume
    import torch

    from fusionguard.training.checkpoint import RESUME_FILE

    cut = tmp_path / "c"
    train(config, tiny_bench, cut, progress=False)
    state = torch.load(cut / RESUME_FILE, weights_only=True)
    partial = tmp_path / "partial"
    train(tiny_config(max_epochs=2, patience=10), tiny_bench, partial, progress=False)
    state2 = torch.load(partial / RESUME_FILE, weights_only=True)
    state2["config_sha256"] = state["config_sha256"]  # pretend the 4-epoch run was interrupted after 2 epochs
    state2["finished"] = False
    torch.save(state2, partial / RESUME_FILE)
    resumed = train(config, tiny_bench, partial, progress=False)
    assert [h["epoch"] for h in resumed.history] == [2, 3]
    assert [h["val_ndcg"] for h in resumed.history] == [h["val_ndcg"] for h in full.history[2:]]
    # a finished run is not trained further when resumed: it is only re-tested
    again_resumed = train(config, tiny_bench, partial, progress=False)
    assert again_resumed.history == [] and again_resumed.epochs_run == 4
    assert again_resumed.test == resumed.test


def test_synth_is_deterministic_and_oracle_gains_from_visual():
    a, b = generate(TINY_SYNTH), generate(TINY_SYNTH)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(a[split].label, b[split].label)
        np.testing.assert_array_equal(a[split].feeds["visual_tokens"], b[split].feeds["visual_tokens"])
    assert set(np.unique(a["train"].label)) <= {0, 1, 2, 3, 4}
    oracle = oracle_ndcg(a["test"])
    assert oracle["with_visual"] > oracle["text_only"]


def test_synth_cli_writes_readable_parquet(tmp_path):
    config = tmp_path / "synth.toml"
    config.write_text("n_train = 4\nn_val = 2\nn_test = 2\nn_candidates = 6\ndim = 4\ntext_tokens = 2\nvisual_tokens = 2\nobject_patches = 1\n")
    result = CliRunner().invoke(cli, ["data", "synth", "--out", str(tmp_path / "b"), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "oracle NDCG@10" in result.output
    batch = load_dataset(tmp_path / "b" / "train.parquet", inputs=["query", "text_tokens", "visual_tokens"])
    assert batch.feeds["visual_tokens"].shape == (24, 8)


def test_bad_config_exits_2_listing_every_problem(tmp_path, tiny_bench):
    bad = tmp_path / "bad.toml"
    bad.write_text('variant = "nope"\nbogus = 1\n[mitigation]\nlambda_visual = -0.5\n[optim]\nlr = "fast"\n')
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert result.exit_code == 2
    for needle in ("unknown variant 'nope'", "unknown key 'bogus'", "lambda_visual = -0.5", "optim.lr", "missing does not exist", "5 problems"):
        assert needle in result.output, result.output


def test_data_problems_are_listed_with_the_config(tmp_path, tiny_bench):
    text_only = tmp_path / "text_only"
    text_only.mkdir()
    for split in ("train", "val", "test"):
        b = load_dataset(tiny_bench / f"{split}.parquet", inputs=["query", "text_tokens"])
        from fusionguard.dataset import write_dataset

        write_dataset(text_only / f"{split}.parquet", b.query_id, b.item_id, b.label, b.feeds)
    cfg = tmp_path / "neg.toml"
    cfg.write_text("[mitigation]\nogm_alpha = -1.0\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--variant", "mbl", "--data", str(text_only), "--out", str(tmp_path / "o"), "--config", str(cfg)])
    assert result.exit_code == 2
    assert "ogm_alpha" in result.output and "lacks columns ['visual_tokens']" in result.output, result.output
    missing = runner.invoke(cli, ["train", "--variant", "baseline", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


@pytest.mark.parametrize("option, value, a_choice", [("--variant", "bogus", "'mbl'"), ("--device", "tpu", "'cuda'")])
def test_cli_enumerations_are_choices_checked_before_any_work(tmp_path, option, value, a_choice):
    """--variant and --device are click Choices: a typo is a usage error (exit 2) naming the choices."""
    result = CliRunner().invoke(cli, ["train", option, value, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output and a_choice in result.output, result.output
    assert "mbl" in CliRunner().invoke(cli, ["train", "--help"]).output  # the choices are listed in --help


def test_device_comes_from_the_environment(tmp_path):
    result = CliRunner(env={"FUSIONGUARD_DEVICE": "tpu"}).invoke(
        cli, ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "Invalid value for '--device'" in result.output, result.output


@pytest.mark.parametrize("variant", ["agm", "pmr"])
def test_stateful_variants_resume_where_they_stopped(tmp_path, tiny_bench, variant):
    # AGM's running means and PMR's prototypes live in resume.pt: a run cut after 2 epochs and
    # resumed follows the uninterrupted run exactly
    import torch

    from fusionguard.training.checkpoint import RESUME_FILE

    config = tiny_config(variant, max_epochs=4, patience=10)
    full = train(config, tiny_bench, tmp_path / "full", progress=False)
    cut = tmp_path / "cut"
    train(tiny_config(variant, max_epochs=2, patience=10), tiny_bench, cut, progress=False)
    state = torch.load(cut / RESUME_FILE, weights_only=True)
    assert state["mitigation_state"]
    state["config_sha256"], state["finished"] = config.sha256(), False
    torch.save(state, cut / RESUME_FILE)
    resumed = train(config, tiny_bench, cut, progress=False)
    assert [h["val_ndcg"] for h in resumed.history] == [h["val_ndcg"] for h in full.history[2:]]


def test_train_cli_runs_a_new_variant(tmp_path, tiny_bench):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('device = "cpu"\n[model]\nd_model = 16\nn_heads = 4\n[optim]\nmax_epochs = 1\n')
    result = CliRunner().invoke(cli, ["train", "--variant", "mmpareto", "--data", str(tiny_bench), "--out", str(tmp_path / "o"),
                                      "--config", str(cfg), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("mmpareto:")
