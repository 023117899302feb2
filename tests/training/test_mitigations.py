"""The published math of each balancing method on tiny hand-computed cases, and the registry.

Expected numbers are written out by hand (with the arithmetic in a comment) so that a formula that
drifts from the released code fails here, not in a 40-epoch run.
"""

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusionguard.cli import cli
from fusionguard.metrics import shapley_values
from fusionguard.training import losses, mitigations
from fusionguard.training.config import ModelConfig, TrainConfig, config_problems
from fusionguard.training.models import CrossAttentionRanker, InputDims, ProgressiveFusionRanker, build_model
from fusionguard.training.variants import ALIASES, REGISTRY, VARIANTS, canonical

from .conftest import tiny_config

DIMS = InputDims(d=4, lt=2, lv=3)
CFG = ModelConfig(d_model=8, n_heads=2, depth=1)


LABEL, GROUP = torch.tensor([0, 2, 1, 0, 3, 0]), torch.tensor([0, 0, 0, 1, 1, 1])  # two queries of three rows


def _rows(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, DIMS.d, generator=g), torch.randn(n, DIMS.lt, DIMS.d, generator=g),
            torch.randn(n, DIMS.lv, DIMS.d, generator=g))


# ----- OGM-GE ----------------------------------------------------------------------------------------

def test_ogm_coefficient_hand_cases():
    # text leads: rho_v = 0.3/0.6 = 0.5, rho_t = 2; k_t = 1 - tanh(0.5 * 2) = 1 - 0.761594 = 0.238406
    c = losses.ogm_coefficients(0.6, 0.3, 0.5)
    assert c["coef_text"] == pytest.approx(0.238406, abs=1e-6) and c["coef_visual"] == 1.0
    # visual leads: rho_v = 0.9/0.3 = 3; k_v = 1 - tanh(0.1 * 3) = 1 - 0.291313 = 0.708687
    c = losses.ogm_coefficients(0.3, 0.9, 0.1)
    assert c["coef_visual"] == pytest.approx(0.708687, abs=1e-6) and c["coef_text"] == 1.0
    # a tie takes the released else-branch: text (the audio role) is dampened, k_t = 1 - tanh(0.8)
    c = losses.ogm_coefficients(0.4, 0.4, 0.8)
    assert c["coef_text"] == pytest.approx(1 - 0.664037, abs=1e-6) and c["coef_visual"] == 1.0


def test_ogm_ge_noise_has_the_unmodulated_gradients_std():
    # g = [1, 3]: unbiased std = sqrt(2); k = 0.25; noise = (sqrt(2) + 1e-8) * eps, eps from the same seed
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    p.grad = torch.tensor([1.0, 3.0], dtype=torch.float64)
    losses.modulate_gradients([p], 0.25, noise=1.0, generator=torch.Generator().manual_seed(7))
    eps = torch.randn(2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(p.grad, torch.tensor([0.25, 0.75], dtype=torch.float64) + (math.sqrt(2) + 1e-8) * eps)


def test_ogm_ge_noise_scale_is_std_of_g_not_of_kg_and_reaches_the_undampened_modality():
    g = torch.linspace(-1, 1, 20_000)
    for k in (0.1, 1.0):  # k = 1: the undampened modality gets the GE noise too, as released
        p = torch.nn.Parameter(torch.zeros(20_000))
        p.grad = g.clone()
        losses.modulate_gradients([p], k, noise=1.0, generator=torch.Generator().manual_seed(0))
        noise_std = float((p.grad - k * g).std())
        assert noise_std == pytest.approx(float(g.std()), rel=0.03)  # not k * std(g)


def test_ogm_window_is_inclusive_as_released():
    assert [losses.in_window(e, 0, 20) for e in (0, 20, 21)] == [True, True, False]


def test_split_shares_add_up_to_the_fused_representation():
    torch.manual_seed(0)
    model = CrossAttentionRanker(DIMS, CFG)
    q, t, v = _rows()
    parts = model.split(q, t, v)
    score, attn = model(q, t, v)
    torch.testing.assert_close(model.head_score(parts.qp, parts.text + parts.visual), score, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts.attention, attn)
    # the text share by hand: W_o (sum over text keys of a_k v_k) + b_o / 2
    vt = model.v_text(t).unflatten(-1, (CFG.n_heads, -1))  # (N, Lt, H, dh)
    manual = torch.einsum("nhk,nkhd->nhd", attn[..., : DIMS.lt], vt).flatten(1) @ model.wo.weight.T + model.wo.bias / 2
    torch.testing.assert_close(parts.text, manual, rtol=1e-5, atol=1e-6)


def test_ogm_ge_damps_every_encoder_parameter_only_inside_the_window():
    torch.manual_seed(0)
    config = tiny_config("ogm-ge")
    model = build_model("ogm-ge", DIMS, CFG)
    q, t, v = _rows()
    label, group = LABEL, GROUP
    text_enc = {id(p) for p in model.encoder_parameters()["text"]}
    assert {id(p) for p in model.query_in.parameters()} <= text_enc  # not only K/V
    for epoch, active in ((0, True), (config.mitigation.ogm_modulation_ends + 1, False)):
        model.zero_grad()
        loss, _, after = mitigations.step_loss(model, config, q, t, v, label, group, 2, epoch, {}, torch.Generator().manual_seed(0))
        loss.backward()
        before = {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}
        info = after()
        changed = {id(p) for p in model.parameters() if p.grad is not None and not torch.equal(p.grad, before[id(p)])}
        enc = {id(p) for ps in model.encoder_parameters().values() for p in ps if p.grad is not None and p.numel() > 1}
        assert info["ogm_active"] == float(active)
        assert changed == (enc if active else set())


# ----- adversarial -----------------------------------------------------------------------------------

def test_adversary_has_its_own_encoder_and_reversal_only_on_the_ranker_side():
    torch.manual_seed(0)
    model = build_model("adversarial", DIMS, CFG)
    adv_ids = {id(p) for p in model.adversary.parameters()}
    ranker_ids = {id(p) for n, p in model.named_parameters() if not n.startswith("adversary.")}
    assert adv_ids and not adv_ids & ranker_ids
    q, t, v = _rows()
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    parts = model.split(q, t, v)
    pred = model.adversary(q, t)
    losses.adversarial_residual_loss(parts.visual, pred, group, 2, scale=0.5).backward()
    reversed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    # the same loss without reversal: the adversary's gradients equal, the ranker's are -0.5 times
    parts = model.split(q, t, v)
    plain = ((model.adversary(q, t) - losses.standardize_per_query(parts.visual, group, 2)) ** 2).mean()
    plain.backward()
    for n, p in model.named_parameters():
        if p.grad is None:
            assert n not in reversed_grads
            continue
        expected = p.grad if n.startswith("adversary.") else -0.5 * p.grad
        torch.testing.assert_close(reversed_grads[n], expected, rtol=1e-5, atol=1e-7)
    assert not any(n.startswith(("head.", "aux_")) for n in reversed_grads)  # the score head gets nothing


def test_adversary_objective_cannot_reward_anticorrelation():
    # one query, one column: share [1, 2, 3] standardises to z = [-1.2247, 0, 1.2247] (population std sqrt(2/3))
    share = torch.tensor([[1.0], [2.0], [3.0]])
    group = torch.zeros(3, dtype=torch.long)
    z = torch.tensor([[-1.224744], [0.0], [1.224744]])
    loss = lambda pred: float(losses.adversarial_residual_loss(share, pred, group, 1, 1.0))  # noqa: E731
    assert loss(torch.zeros(3, 1)) == pytest.approx(1.0, abs=1e-5)  # predicting 0 always costs 1
    assert loss(z) == pytest.approx(0.0, abs=1e-5)
    # scaling the share changes nothing: the ranker cannot win by inflating it
    assert float(losses.adversarial_residual_loss(10 * share, z, group, 1, 1.0)) == pytest.approx(0.0, abs=1e-5)


# ----- separate-softmax control ------------------------------------------------------------------------

def test_separate_softmax_is_the_two_stream_model_without_bridges():
    bridged, control = build_model("bridged-two-stream", DIMS, CFG), build_model("separate-softmax", DIMS, CFG)
    assert isinstance(control, ProgressiveFusionRanker)
    names = {n for n, _ in control.named_parameters()}
    assert not any("bridge" in n for n in names)
    assert names == {n for n, _ in bridged.named_parameters() if "bridge" not in n}
    score, attn = control(*_rows())
    torch.testing.assert_close(attn.sum(-1), torch.ones(6, CFG.n_heads))


# ----- AGM -----------------------------------------------------------------------------------------------

def test_agm_coefficient_hand_case():
    # L_t 0.5, L_v 1.0; running means 0.8, 1.0; alpha 1
    # r_t = e^0.5 = 1.648721, r̄_t = e^0.2 = 1.221403, c_t = e^(1.221403 - 1.648721) = e^-0.427318 = 0.652256
    # r_v = e^-0.5 = 0.606531, r̄_v = e^-0.2 = 0.818731, c_v = e^(0.212200) = 1.236395
    c = losses.agm_coefficients(0.5, 1.0, 0.8, 1.0, 1.0)
    assert c["coef_text"] == pytest.approx(0.652256, abs=2e-6)
    assert c["coef_visual"] == pytest.approx(1.236395, abs=2e-6)
    big = losses.agm_coefficients(10.0, 0.0, 0.0, 30.0, 0.5)  # r̄_t - r_t is huge: clamped at 10 -> e^5
    assert big["coef_text"] == pytest.approx(math.exp(5.0))
    assert losses.running_mean(losses.running_mean(2.0, 4.0, 2), 6.0, 3) == pytest.approx(4.0)  # mean of 2, 4, 6


def test_agm_shapley_matches_the_core_measure_and_routes_scaled_gradients():
    s = [torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True) for _ in range(4)]
    with torch.no_grad():
        for x, shift in zip(s, (0.0, 0.5, -0.7, 0.1), strict=True):
            x.add_(shift)
    phi_t, phi_v = losses.shapley_pair(*s)
    ref_t, ref_v, _ = shapley_values(*(x.detach().numpy() for x in s))
    np.testing.assert_allclose(phi_t.detach().numpy(), ref_t)
    np.testing.assert_allclose(phi_v.detach().numpy(), ref_v)
    # score = φ_t (grad x c_t) + φ_v (grad x c_v), L = Σ score: d/ds_tv = (c_t + c_v)/2,
    # d/ds_t = (c_t - c_v)/2, d/ds_v = (c_v - c_t)/2, d/ds_none = -(c_t + c_v)/2
    c_t, c_v = 0.5, 2.0
    (losses.scale_grad(phi_t, c_t) + losses.scale_grad(phi_v, c_v)).sum().backward()
    for x, expected in zip(s, (1.25, -0.75, 0.75, -1.25), strict=True):
        torch.testing.assert_close(x.grad, torch.full((3,), expected, dtype=torch.float64))


# ----- PMR -------------------------------------------------------------------------------------------------

def test_pmr_prototype_loss_hand_case():
    # h = (0, 0); prototypes (0, 0) and (3, 4): logits -0, -5; CE at class 0 = log(1 + e^-5) = 0.0067153
    feats, protos = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert float(losses.prototypical_ce(feats, protos, torch.tensor([0]))) == pytest.approx(0.0067153, abs=1e-6)
    # at class 1: log(1 + e^5) = 5.0067153
    assert float(losses.prototypical_ce(feats, protos, torch.tensor([1]))) == pytest.approx(5.0067153, abs=1e-6)
    assert losses.prototype_score(feats, protos, torch.tensor([0])) == pytest.approx(1 / (1 + math.exp(-5)))


def test_pmr_prototypes_and_weights():
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    first = losses.class_prototypes(feats, labels, 3, None, 0.2)
    torch.testing.assert_close(first, torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
    # momentum 0.2: new = 0.8 * now + 0.2 * old; class 2 has no rows and keeps its old prototype
    old = torch.tensor([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    torch.testing.assert_close(losses.class_prototypes(feats, labels, 3, old, 0.2), torch.tensor([[1.6, 0.0], [0.0, 1.6], [5.0, 5.0]]))
    assert losses.pmr_weights(0.8, 0.4, 1.0) == {"pmr_rho": 2.0, "weight_text": 0.0, "weight_visual": 1.0}
    assert losses.pmr_weights(0.2, 0.4, 0.5)["weight_text"] == 0.5


# ----- MMPareto ----------------------------------------------------------------------------------------------

def test_mmpareto_min_norm_and_combination_hand_cases():
    # g1 = (1, 0), g2 = (-1, 1): v11 = 1, v12 = -1, v22 = 2, c = -(v12 - v22) / (v11 + v22 - 2 v12) = 3/5
    assert losses.min_norm_weights(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])) == pytest.approx((0.6, 0.4))
    assert losses.min_norm_weights(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]))[0] == pytest.approx(0.999)
    # conflict (cos < 0): new = 2*0.6*(1,0) + 2*0.4*(-1,1) = (0.4, 0.8), |new| = 0.894427;
    # total = (0, 1), r = 1 / 0.894427 = 1.118034 > 1 -> 1.5 * r * new = (0.670820, 1.341641)
    out, info = losses.mmpareto_combine([torch.tensor([1.0, 0.0])], [torch.tensor([-1.0, 1.0])], [torch.tensor([0.0, 1.0])], 1.5)
    torch.testing.assert_close(out[0], torch.tensor([0.670820, 1.341641]), rtol=1e-5, atol=1e-6)
    assert info["cos"] < 0 and info["weight_mm"] == pytest.approx(0.6)
    # agreement (cos > 0): weights 1/2, new = g_mm + g_uni = (2, 1) = total, r = 1 -> 1.5 * new
    out, info = losses.mmpareto_combine([torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])], [torch.tensor([2.0, 1.0])], 1.5)
    torch.testing.assert_close(out[0], torch.tensor([3.0, 1.5]))


def test_mmpareto_step_rewrites_only_the_modality_encoders():
    torch.manual_seed(0)
    model = build_model("mmpareto", DIMS, CFG)
    q, t, v = _rows()
    label, group = LABEL, GROUP
    loss, _, after = mitigations.step_loss(model, tiny_config("mmpareto"), q, t, v, label, group, 2, 0, {}, torch.Generator())
    loss.backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    after()
    changed = {n for n, p in model.named_parameters() if p.grad is not None and not torch.equal(p.grad, before[n])}
    assert changed and all(n.split(".")[0] in ("k_text", "v_text", "k_visual", "v_visual") for n in changed)


# ----- OPM -----------------------------------------------------------------------------------------------------

def test_opm_drop_probability_hand_cases():
    # s_t 0.6, s_v 0.3: tanh(relu(2 - 1)) = 0.761594; q_t = 0.5 * (1 + 0.5 * 0.761594) = 0.690399; q_v = 0
    q_t, q_v = losses.opm_drop_probabilities(0.6, 0.3, 0.5, 0.5)
    assert q_t == pytest.approx(0.690399, abs=1e-6) and q_v == 0.0
    assert losses.opm_drop_probabilities(0.3, 0.3, 0.5, 0.5) == (0.0, 0.0)  # a tie drops nothing
    assert losses.opm_drop_probabilities(0.1, 5.0, 0.9, 0.5) == (0.0, 1.0)  # 0.9 * (1 + 0.5 * 0.99999) clipped to 1
    # theta = (64 * 0.6 + 64 * 0) / 128 = 0.3 -> kept features x 1 / 0.7
    assert losses.opm_feature_scale(0.6, 0.0, 64, 64) == pytest.approx(1 / 0.7)


def test_opm_drops_only_after_warmup():
    torch.manual_seed(0)
    config = tiny_config("opm")
    model = build_model("opm", DIMS, CFG)
    q, t, v = _rows()
    label, group = LABEL, GROUP
    warm = mitigations.step_loss(model, config, q, t, v, label, group, 2, config.mitigation.opm_warmup_epochs, {}, torch.Generator())[1]
    assert warm["opm_executed"] == 0.0
    runs = [mitigations.step_loss(model, config, q, t, v, label, group, 2, 99, {}, torch.Generator().manual_seed(s))[1]
            for s in range(40)]
    assert 0 < sum(r["opm_executed"] for r in runs) < 40  # p_exe = 0.7 per batch
    assert all(min(r["opm_q_text"], r["opm_q_visual"]) == 0.0 for r in runs)  # only the dominant one can drop


# ----- MLA ----------------------------------------------------------------------------------------------------

def test_mla_projector_hand_case():
    # P = I, r = (1, 0), alpha = 0.1: k = P r = (1, 0), r.k = 1, P - k k^T / 1.1 = diag(1 - 1/1.1, 1) = diag(0.0909091, 1)
    # Frobenius norm sqrt(0.0909091^2 + 1) = 1.0041237 -> P = diag(0.0905357, 0.9958932)
    p = losses.mla_projector_update(torch.eye(2, dtype=torch.float64), torch.tensor([1.0, 0.0], dtype=torch.float64), 0.1)
    assert torch.allclose(p, torch.tensor([[0.0905357, 0.0], [0.0, 0.9958932]], dtype=torch.float64), atol=1e-7)
    # grad W P^T: (1, 1) -> (0.0905357, 0.9958932): the direction the earlier input used is damped
    g = losses.mla_modified_gradient(torch.tensor([[1.0, 1.0]], dtype=torch.float64), p)
    assert torch.allclose(g, torch.tensor([[0.0905357, 0.9958932]], dtype=torch.float64), atol=1e-7)
    # alpha = 0.1^(1 + b/n): 0.1 at the first batch, 0.1^1.5 = 0.0316228 halfway
    assert losses.mla_alpha(0, 10) == pytest.approx(0.1) and losses.mla_alpha(5, 10) == pytest.approx(0.0316228, abs=1e-7)


def test_mla_fusion_weights_and_listwise_entropy_hand_cases():
    # entropies (1, 2): lambda = (e^1, e^0) / (e + 1) = (0.7310586, 0.2689414): the surer modality weighs more
    w = losses.mla_fusion_weights(torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(w, torch.tensor([0.7310586, 0.2689414], dtype=torch.float64), atol=1e-7)
    # query 0: scores (0, 0) -> ln 2 = 0.6931472; query 1: (0, ln 3) -> p = (1/4, 3/4), H = 0.3465736 + 0.2157616 = 0.5623351
    h = losses.listwise_entropy(torch.tensor([0.0, 0.0, 0.0, math.log(3)], dtype=torch.float64), torch.tensor([0, 0, 1, 1]), 2)
    assert torch.allclose(h, torch.tensor([0.6931472, 0.5623351], dtype=torch.float64), atol=1e-7)


def test_mla_alternates_modalities_projects_the_head_gradient_and_fuses_by_weights():
    torch.manual_seed(0)
    model = build_model("mla", DIMS, CFG)
    config = TrainConfig(variant="mla")
    q, t, v = _rows()
    state: dict = {"mla_batch": 0, "mla_n_batches": 4}
    turns, grads = [], []
    for _ in range(2):
        turns.append(state.get("mla_turn", 0))
        loss, _, after = mitigations.step_loss(model, config, q, t, v, LABEL, GROUP, 2, 0, state, torch.Generator())
        model.zero_grad()
        loss.backward()
        raw = model.head[0].weight.grad.clone()
        after()
        grads.append((raw, model.head[0].weight.grad.clone()))
    assert turns == [0, 1]  # text step, then visual step
    assert torch.equal(grads[0][0], grads[0][1])  # no projection on the very first step (released)
    assert torch.allclose(grads[1][1], grads[1][0] @ state["mla_projector"].T)  # then grad W <- grad W P^T
    # the visual step's loss reaches the visual K/V and not the text K/V
    loss, _, _ = mitigations.step_loss(model, config, q, t, v, LABEL, GROUP, 2, 0, {"mla_turn": 1}, torch.Generator())
    model.zero_grad()
    loss.backward()
    assert model.v_visual.weight.grad.abs().sum() > 0 and model.v_text.weight.grad is None or model.v_text.weight.grad.abs().sum() == 0
    # the exported score is lambda_t s_t + lambda_v s_v with the buffer's weights
    model.fusion_weights.copy_(torch.tensor([0.8, 0.2]))
    s_t, s_v, _ = model.unimodal_scores(q, t, v)
    assert torch.allclose(model(q, t, v)[0], 0.8 * s_t + 0.2 * s_v)


# ----- the registry --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_every_registered_name_builds_validates_and_scores(name):
    assert config_problems(TrainConfig(variant=name)) == []
    model = build_model(name, DIMS, CFG)
    assert model.variant == name  # an alias is recorded as given
    score, _ = model(*_rows()) if name != "v1" else model(*_rows()[:2])
    assert score.shape == (6,)


def test_aliases_resolve_and_the_cli_lists_every_name():
    assert canonical("progressive") == "bridged-two-stream" and canonical("combined") == "bridged-two-stream-mbl"
    assert set(ALIASES.values()) <= set(REGISTRY)
    result = CliRunner().invoke(cli, ["train", "--help"])
    for name in ("agm", "pmr", "mmpareto", "opm", "unimodal-heads", "separate-softmax", "progressive"):
        assert name in result.output


def test_sgd_optimizer_option_for_the_released_recipes(tmp_path, tiny_bench):
    from dataclasses import replace

    from fusionguard.training.trainer import make_optimizer, train

    assert any("optim.optimizer" in p for p in config_problems(replace(TrainConfig(), optim=replace(TrainConfig().optim, optimizer="adam"))))
    config = tiny_config("ogm-ge", max_epochs=1)
    config = replace(config, optim=replace(config.optim, optimizer="sgd"))
    opt = make_optimizer(build_model("ogm-ge", DIMS, CFG), config)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    assert train(config, tiny_bench, tmp_path, progress=False).epochs_run == 1
