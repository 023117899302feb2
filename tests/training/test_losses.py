"""Every loss against a plain per-query reference; GRL and OGM-GE formulas (more in test_mitigations)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fusionguard.training import losses


def _random_batch(seed: int, sizes=(5, 3, 7)):
    g = torch.Generator().manual_seed(seed)
    group = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    scores = torch.randn(int(sum(sizes)), generator=g, dtype=torch.float64)
    labels = torch.randint(0, 5, (int(sum(sizes)),), generator=g)
    return scores, labels, group, len(sizes)


def _reference_listwise(scores, labels, group, n):
    total, count = 0.0, 0
    for q in range(n):
        s = scores[group == q].numpy()
        gain = 2.0 ** labels[group == q].numpy() - 1
        if gain.sum() == 0:
            continue
        p = gain / gain.sum()
        log_softmax = s - np.log(np.exp(s - s.max()).sum()) - s.max()
        total += -(p * log_softmax).sum()
        count += 1
    return total / max(count, 1)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_listwise_matches_reference(seed):
    scores, labels, group, n = _random_batch(seed)
    fast = losses.listwise_softmax_ce(scores, labels, group, n)
    assert float(fast) == pytest.approx(_reference_listwise(scores, labels, group, n), rel=1e-9, abs=1e-12)


def test_listwise_skips_queries_without_relevant_items():
    scores = torch.tensor([1.0, 2.0, 0.5, -1.0], dtype=torch.float64)
    labels = torch.tensor([0, 0, 2, 0])
    group = torch.tensor([0, 0, 1, 1])
    # query 0 has no relevant item: only query 1 counts
    expected = -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(-1.0)))
    assert float(losses.listwise_softmax_ce(scores, labels, group, 2)) == pytest.approx(expected)


def test_listwise_invariant_to_per_query_shift():
    scores, labels, group, n = _random_batch(1)
    shifted = scores + torch.tensor([3.0, -7.0, 100.0], dtype=torch.float64)[group]
    assert float(losses.listwise_softmax_ce(shifted, labels, group, n)) == pytest.approx(
        float(losses.listwise_softmax_ce(scores, labels, group, n)), rel=1e-9
    )


def test_modality_attention_penalty_reference():
    g = torch.Generator().manual_seed(0)
    att = torch.softmax(torch.randn(6, 4, 5, generator=g), dim=-1)
    mass = att[:, :, 3:5].sum(-1).numpy()
    expected = float(np.mean(-np.log(mass + 1e-6)))
    assert float(losses.modality_attention_penalty(att, (3, 5))) == pytest.approx(expected, rel=1e-5)


def test_gradient_reversal_flips_sign():
    x = torch.randn(7, requires_grad=True)
    (torch.sin(x) * 2).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    (torch.sin(losses.grad_reverse(x, 0.5)) * 2).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * plain)
    assert torch.equal(losses.grad_reverse(x, 0.5), x)


def test_standardize_per_query_reference():
    scores, _, group, n = _random_batch(2)
    out = losses.standardize_per_query(scores, group, n, eps=0.0)
    for q in range(n):
        s = scores[group == q].numpy()
        np.testing.assert_allclose(out[group == q].numpy(), (s - s.mean()) / s.std(), rtol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.01, 10), st.floats(0.01, 10), st.floats(0.0, 3.0))
def test_ogm_coefficient_matches_released_rule(perf_t, perf_v, alpha):
    c = losses.ogm_coefficients(perf_t, perf_v, alpha)
    rho_v = perf_v / perf_t
    assert c["rho_visual"] == pytest.approx(rho_v)
    if rho_v > 1:  # visual leads: only visual is dampened
        assert c["coef_visual"] == pytest.approx(1 - math.tanh(alpha * rho_v)) and c["coef_text"] == 1.0
    else:  # text leads or a tie: only text is dampened (the released code's else-branch)
        assert c["coef_text"] == pytest.approx(1 - math.tanh(alpha / rho_v)) and c["coef_visual"] == 1.0


def test_listwise_confidence_reference():
    scores, labels, group, n = _random_batch(4)
    expected = []
    for q in range(n):
        s = scores[group == q].numpy()
        gain = 2.0 ** labels[group == q].numpy() - 1
        if gain.sum() > 0:
            expected.append(((gain / gain.sum()) * np.exp(s) / np.exp(s).sum()).sum())
    assert losses.listwise_confidence(scores, labels, group, n) == pytest.approx(float(np.mean(expected)))


def test_modulate_gradients_scales_without_noise():
    p = torch.nn.Parameter(torch.zeros(100))
    p.grad = torch.linspace(-1, 1, 100)
    losses.modulate_gradients([p], 0.25, noise=0.0)
    torch.testing.assert_close(p.grad, 0.25 * torch.linspace(-1, 1, 100))


def test_modality_dropout_never_drops_both():
    plan = losses.modality_dropout_plan(1000, 0.3, torch.Generator().manual_seed(0), "cpu")
    assert not torch.any(plan.text & plan.visual)
    assert 0.25 < float(plan.text.float().mean()) < 0.35
    assert 0.25 < float(plan.visual.float().mean()) < 0.35
    group = torch.arange(1000)
    t, v = losses.apply_dropout(torch.ones(1000, 2, 3), torch.ones(1000, 4, 3), plan, group)
    assert torch.all(t[plan.text] == 0) and torch.all(t[~plan.text] == 1)
    assert torch.all(v[plan.visual] == 0) and torch.all(v[~plan.visual] == 1)


def test_mbl_gradient_at_the_collapsed_mass_is_tiny():
    # one row, one head, keys [text, visual] with mass 0.53 / 0.47 and λ_v = λ_t = 0.1:
    # dL/da_v = -0.1/0.47 = -0.212766, dL/da_t = -0.1/0.53 = -0.188679; moving mass from text to
    # visual changes L at rate -0.212766 + 0.188679 = -0.024087 (the docstring's "≈ -0.024")
    att = torch.tensor([[[0.53, 0.47]]], dtype=torch.float64, requires_grad=True)
    loss = 0.1 * losses.modality_attention_penalty(att, (1, 2), eps=0.0) + 0.1 * losses.modality_attention_penalty(att, (0, 1), eps=0.0)
    loss.backward()
    g_t, g_v = att.grad[0, 0].tolist()
    assert g_v == pytest.approx(-0.212766, abs=1e-6) and g_t == pytest.approx(-0.188679, abs=1e-6)
    assert g_v - g_t == pytest.approx(-0.024087, abs=1e-6)
