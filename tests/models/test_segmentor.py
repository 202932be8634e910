"""Segmentor: any input size, any in_chans, raw logits, input validation, generic timm backbones."""
import pytest
import torch
import torch.nn.functional as F

import csap_zoo
from csap_zoo.models.segmentor import select_feature_indices


@pytest.fixture(scope="module")
def csap_tiny():
    torch.manual_seed(0)
    return csap_zoo.create_model("csap_tiny", num_classes=4).eval()


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (100, 61), (32, 200)])
def test_any_input_size_gives_logits_at_input_resolution(csap_tiny, size):
    with torch.no_grad():
        out = csap_tiny(torch.randn(1, 3, *size))
    assert out.shape == (1, 4, *size)
    assert torch.isfinite(out).all()


def test_padding_is_internal_and_cropped_back(csap_tiny):
    """An unaligned image gives the same logits as its zero-padded version cropped by hand."""
    x = torch.randn(1, 3, 50, 70)
    padded = F.pad(x, (0, 96 - 70, 0, 64 - 50))
    with torch.no_grad():
        direct = csap_tiny(x)
        manual = csap_tiny(padded)[..., :50, :70]
    torch.testing.assert_close(direct, manual)


def test_aligned_input_is_not_padded(csap_tiny):
    x = torch.randn(1, 3, 64, 96)
    assert csap_tiny.pad_to_stride(x) is x
    with torch.no_grad():
        logits = csap_tiny.decode_head(csap_tiny.forward_features(x))
        expected = F.interpolate(logits, size=(64, 96), mode="bilinear", align_corners=False)
        torch.testing.assert_close(csap_tiny(x), expected)


def test_raw_stride8_logits_on_request(csap_tiny):
    with torch.no_grad():
        assert csap_tiny(torch.randn(2, 3, 64, 96), upsample=False).shape == (2, 4, 8, 12)
        # 50x70 is padded to 64x96; cells overlapping the image: ceil(50/8) x ceil(70/8)
        assert csap_tiny(torch.randn(1, 3, 50, 70), upsample=False).shape == (1, 4, 7, 9)


@pytest.mark.parametrize("in_chans", [1, 4])
def test_other_input_channel_counts(in_chans):
    model = csap_zoo.create_model("csap_tiny", num_classes=3, in_chans=in_chans).eval()
    with torch.no_grad():
        assert model(torch.randn(1, in_chans, 40, 40)).shape == (1, 3, 40, 40)
    with pytest.raises(ValueError, match=f"expected {in_chans} input channels, got 3"):
        model(torch.randn(1, 3, 40, 40))


@pytest.mark.parametrize("bad, message", [
    (torch.randn(1, 2, 64, 64), "expected 3 input channels, got 2"),
    (torch.randn(3, 64, 64), "4-D tensor.*add a batch dimension"),
    (torch.randn(64, 64), "4-D tensor"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "floating-point"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.int64), "floating-point"),
    (torch.randn(0, 3, 64, 64), "empty batch"),
    (torch.randn(1, 3, 16, 64), "smaller than the minimum size 32x32"),
    (torch.randn(1, 3, 64, 8), "smaller than the minimum size"),
])
def test_bad_input_is_a_clear_value_error(csap_tiny, bad, message):
    with pytest.raises(ValueError, match=message):
        csap_tiny(bad)


def test_non_tensor_input_is_a_clear_error(csap_tiny):
    import numpy as np
    with pytest.raises(ValueError, match="torch.Tensor"):
        csap_tiny(np.zeros((1, 3, 64, 64), dtype=np.float32))


def test_attention_maps_on_request(csap_tiny):
    with torch.no_grad():
        logits, maps = csap_tiny.forward_with_attention(torch.randn(1, 3, 100, 61))
    assert logits.shape == (1, 4, 100, 61)
    # padded to 128x64: stride-8/16/32 grids 16x8, 8x4, 4x2; every stage pools onto 2x1 cells
    assert [tuple(m.shape) for m in maps] == [(1, 8, 128, 2), (1, 8, 32, 2), (1, 8, 8, 2)]


def test_ham_head_has_no_attention_maps():
    model = csap_zoo.create_model("segnext_tiny", num_classes=2).eval()
    with pytest.raises(ValueError, match="no attention maps"):
        model.forward_with_attention(torch.randn(1, 3, 64, 64))


def test_backward_through_the_whole_segmentor():
    model = csap_zoo.create_model("csap_tiny", num_classes=3).train()
    out = model(torch.randn(2, 3, 64, 64))
    F.cross_entropy(out, torch.randint(0, 3, (2, 64, 64))).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_generic_timm_backbone_takes_channels_from_feature_info():
    model = csap_zoo.create_model("csap_tiny", backbone="convnext_atto", num_classes=6).eval()
    channels = model.backbone.feature_info.channels()  # convnext_atto: 40, 80, 160, 320 at strides 4..32
    assert model.decode_head.in_channels == tuple(channels[1:])
    with torch.no_grad():
        assert model(torch.randn(1, 3, 70, 90)).shape == (1, 6, 70, 90)


def test_resnet_backbone_with_stride2_stem_feature():
    model = csap_zoo.create_model("segnext_tiny", backbone="resnet18", num_classes=2).eval()
    assert model.feature_indices == [2, 3, 4]  # resnet18 features are at strides 2, 4, 8, 16, 32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_backbone_without_needed_strides_is_a_clear_error():
    with pytest.raises(ValueError, match="no feature map at stride 8"):
        select_feature_indices([16, 16, 16], (8, 16, 32), "vit_tiny_patch16_224")


def test_reset_classifier_keeps_other_weights():
    model = csap_zoo.create_model("csap_tiny", num_classes=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "classifier" not in k}
    model.reset_classifier(9)
    assert model.num_classes == 9 and model.config.num_classes == 9
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape[1] == 9
