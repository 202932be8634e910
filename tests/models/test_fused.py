"""Inference fusion: folded / fused MSCAN blocks, channels_last segmentors, oneDNN and fallback paths agree with
the original model; the original is untouched; fused copies cannot be saved as checkpoints."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import csap_zoo
from csap_zoo.models import fused as fused_module
from csap_zoo.models.fused import FusedConv2d, fold_batchnorm, is_fused, optimize_for_inference
from csap_zoo.models.layers import conv1x1_over_resized_concat
from csap_zoo.models.mscan import FusedMscanBlock, MscanBlock


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms and every layer scale non-default values, so
    folding mistakes cannot hide behind identity normalisations."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            if hasattr(m, "gamma"):
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=gen) * 0.09 + 0.01)
    return model


@pytest.fixture(scope="module")
def csap_tiny():
    torch.manual_seed(0)
    return randomize_norms(csap_zoo.models.build_model("csap_tiny", num_classes=5)).eval()


def assert_same_logits(a: torch.Tensor, b: torch.Tensor) -> None:
    scale = a.abs().max().item()
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4 * max(1.0, scale), (a - b).abs().max().item()


@pytest.mark.parametrize("size", [(64, 64), (33, 47), (100, 61)])
def test_optimized_segmentor_matches_original(csap_tiny, size, one_torch_thread):
    fast = optimize_for_inference(csap_tiny)
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        expected = csap_tiny(x)
        got = fast(x)
    assert_same_logits(expected, got)
    assert got.is_contiguous()
    assert fast.memory_format == torch.channels_last
    assert any(isinstance(m, FusedMscanBlock) for m in fast.modules())
    assert fast.decode_head.project_before_resize and not csap_tiny.decode_head.project_before_resize


def test_original_model_is_left_untouched(csap_tiny):
    before = {k: v.clone() for k, v in csap_tiny.state_dict().items()}
    optimize_for_inference(csap_tiny)
    assert not is_fused(csap_tiny) and csap_tiny.memory_format is None
    assert any(isinstance(m, MscanBlock) for m in csap_tiny.modules())
    after = csap_tiny.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.is_contiguous() for p in csap_tiny.parameters())


def test_segnext_and_a_generic_timm_backbone_also_match(one_torch_thread):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 96, 64)
    for model in (randomize_norms(csap_zoo.models.build_model("segnext_tiny", num_classes=5)).eval(),
                  randomize_norms(csap_zoo.models.build_model("csap_tiny", backbone="resnet18", num_classes=5)).eval()):
        fast = optimize_for_inference(model)
        with torch.inference_mode():
            if model.config.head.__class__.__name__ == "HamHeadConfig":  # NMF draws random bases per call
                torch.manual_seed(1)
                expected = model(x)
                torch.manual_seed(1)
                got = fast(x)
            else:
                expected, got = model(x), fast(x)
        assert_same_logits(expected, got)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("batch", [1, 2])
def test_banded_mlp_equals_the_whole_map(monkeypatch, one_torch_thread, layout, batch):
    """The cache-blocked MLP (horizontal bands with a one-row halo; written in place for a batch-1 channels_last
    map, concatenated otherwise) must not change a single output row, including the short last band and the
    image edges."""
    torch.manual_seed(0)
    block = randomize_norms(MscanBlock(32, mlp_ratio=8)).eval()
    fast = block.reparameterize()
    x = torch.randn(batch, 32, 17, 12)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    original = x.clone()
    with torch.inference_mode():
        expected = block(x)
        whole = fast(x)
        monkeypatch.setattr(FusedMscanBlock, "BAND_BYTES", 1024 * batch)  # forces 4-row bands: 4+4+4+4+1
        assert fast._band_rows(x) == 4
        banded = fast(x)
    torch.testing.assert_close(whole, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(banded, whole, rtol=1e-6, atol=1e-6)
    assert torch.equal(x, original)  # the in-place bands write into the block's own intermediate only


def test_add_into_adds_in_place_and_checks_its_target():
    torch.manual_seed(0)
    conv = FusedConv2d.from_conv(nn.Conv2d(8, 4, 1), binary="add")
    x = torch.randn(1, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    out = torch.randn(1, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    expected = out + F.conv2d(x, conv.weight, conv.bias)
    with torch.inference_mode():
        result = conv.add_into(x, out)
    assert result.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="binary='add'"):
        FusedConv2d.from_conv(nn.Conv2d(8, 4, 1)).add_into(x, out)
    with pytest.raises(ValueError, match="dense tensor"):
        conv.add_into(x, torch.randn(1, 4, 5, 12)[..., ::2])


def test_fallback_path_equals_onednn_path(csap_tiny, monkeypatch, one_torch_thread):
    fast = optimize_for_inference(csap_tiny)
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        onednn = fast(x)
        monkeypatch.setattr(fused_module, "onednn_fusion_usable", lambda *args: False)
        plain = fast(x)
    torch.testing.assert_close(plain, onednn, rtol=1e-5, atol=1e-4)


def test_fused_model_still_differentiates_through_the_fallback(csap_tiny):
    """With autograd recording, the kernels without a backward are bypassed: gradients reach the input."""
    fast = optimize_for_inference(csap_tiny)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert not fused_module.onednn_fusion_usable(x, torch.zeros(1))
    fast(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_keep_contiguous_layout_on_request(csap_tiny):
    fast = optimize_for_inference(csap_tiny, channels_last=False)
    assert fast.memory_format is None
    assert all(p.is_contiguous() for p in fast.parameters())


def test_fused_copy_cannot_be_saved_but_original_can(csap_tiny, tmp_path):
    fast = optimize_for_inference(csap_tiny)
    with pytest.raises(ValueError, match="save the original model"):
        fast.save_pretrained(tmp_path / "fused")
    assert not (tmp_path / "fused").exists()
    csap_tiny.save_pretrained(tmp_path / "plain")
    assert (tmp_path / "plain" / "model.safetensors").is_file()


def test_fold_batchnorm_equals_conv_then_bn():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    bn = randomize_norms(nn.BatchNorm2d(6)).eval()
    x = torch.randn(2, 4, 9, 7)
    weight, bias = fold_batchnorm(conv, bn)
    with torch.no_grad():
        torch.testing.assert_close(F.conv2d(x, weight, bias, 2, 1), bn(conv(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("unary,binary", [("gelu", None), ("relu", None), ("none", "add"), ("none", "mul")])
def test_fused_conv_matches_its_unfused_definition(unary, binary):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, (1, 7), padding=(0, 3), groups=8)
    fused = FusedConv2d.from_conv(conv, unary=unary, binary=binary)
    x = torch.randn(1, 8, 10, 12).contiguous(memory_format=torch.channels_last)
    other = torch.randn(1, 8, 10, 12) if binary else None
    with torch.inference_mode():
        y = conv(x)
        expected = {"gelu": F.gelu, "relu": F.relu}.get(unary, lambda t: t)(y)
        if binary:
            expected = expected + other if binary == "add" else expected * other
        torch.testing.assert_close(fused(x, other) if binary else fused(x), expected, rtol=1e-5, atol=1e-5)


def test_fused_conv_rejects_bad_use():
    conv = nn.Conv2d(4, 4, 1)
    with pytest.raises(ValueError, match="either an activation or a binary"):
        FusedConv2d.from_conv(conv, unary="gelu", binary="add")
    with pytest.raises(ValueError, match="unary must be one of"):
        FusedConv2d.from_conv(conv, unary="swish")
    with pytest.raises(ValueError, match="needs second operand"):
        FusedConv2d.from_conv(conv, binary="add")(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="dilated"):
        FusedConv2d.from_conv(nn.Conv2d(4, 4, 3, dilation=2))


@pytest.mark.parametrize("out_channels", [6, 40])  # narrower (project, then resize) and wider (resize, then project)
@pytest.mark.parametrize("align_corners", [False, True])
def test_conv1x1_over_resized_concat_equals_the_concatenation(out_channels, align_corners):
    torch.manual_seed(0)
    feats = [torch.randn(2, 8, 12, 10), torch.randn(2, 16, 6, 5), torch.randn(2, 24, 3, 3)]
    weight = torch.randn(out_channels, 48, 1, 1)
    bias = torch.randn(out_channels)
    cat = torch.cat([feats[0]] + [F.interpolate(f, size=(12, 10), mode="bilinear", align_corners=align_corners)
                                  for f in feats[1:]], dim=1)
    expected = F.conv2d(cat, weight, bias)
    got = conv1x1_over_resized_concat(feats, weight, (12, 10), bias, align_corners=align_corners)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="expects 47 input channels"):
        conv1x1_over_resized_concat(feats, weight[:, :47], (12, 10))


def test_segmenter_runs_an_optimized_copy_on_cpu_by_default(csap_tiny):
    from csap_zoo import Segmenter

    image = (torch.rand(3, 70, 90) * 255).to(torch.uint8)
    auto = Segmenter(csap_tiny)
    plain = Segmenter(csap_tiny, optimize=False)
    assert is_fused(auto.model) and auto.model is not csap_tiny
    assert plain.model is csap_tiny and not is_fused(csap_tiny)
    a, b = auto.predict(image, return_probs=True), plain.predict(image, return_probs=True)
    torch.testing.assert_close(torch.as_tensor(a[1]), torch.as_tensor(b[1]), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="optimize must be"):
        Segmenter(csap_tiny, optimize="yes")


def test_optimize_copies_by_default_and_can_work_in_place():
    model = csap_zoo.models.build_model("csap_tiny", num_classes=3).eval()
    same = optimize_for_inference(model, inplace=True)
    assert same is model and is_fused(model)
    assert copy.deepcopy(model) is not model


def test_packed_weights_survive_copies_and_follow_weight_edits(one_torch_thread):
    """oneDNN's reordered weight copy is a cache: a used model can still be deep-copied, and an in-place weight
    edit is picked up (re-packed) rather than served stale."""
    torch.manual_seed(0)
    block = randomize_norms(MscanBlock(16, mlp_ratio=4)).eval().reparameterize()
    x = torch.randn(1, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        first = block(x)
        clone = copy.deepcopy(block)
        torch.testing.assert_close(clone(x), first)
    with torch.no_grad():
        block.fc2.weight.mul_(2.0)
    with torch.inference_mode():
        edited = block(x)
    reference = copy.deepcopy(block)
    with torch.inference_mode():
        expected = reference(x)  # a fresh copy packs the edited weight from scratch
    assert not torch.allclose(edited, first)
    torch.testing.assert_close(edited, expected)


# --- the reparameterize() protocol -------------------------------------------------------------------------------

class _Doubling(nn.Module):
    """Prepared for inference by being replaced with an equivalent plain scaling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def reparameterize(self) -> nn.Module:
        return _Scale(2.0)


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class _InPlace(nn.Module):
    """Prepares itself in place and returns None (timm's convention)."""

    def __init__(self) -> None:
        super().__init__()
        self.prepared = False
        self.inner = _Doubling()  # owned by this module: the walk does not descend into it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def reparameterize(self) -> None:
        self.prepared = True


class _LooksLikeAHead(nn.Module):
    """Has the attribute optimize_for_inference once probed for, but not the protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.project_before_resize = False
        self.nested = nn.Sequential(nn.Identity(), _Doubling())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nested(x)


def test_optimize_replaces_modules_through_their_reparameterize_method():
    model = nn.Sequential(_LooksLikeAHead(), _InPlace(), nn.Sequential(_Doubling()))
    fast = optimize_for_inference(model, channels_last=False)
    assert isinstance(fast[0].nested[1], _Scale) and isinstance(fast[2][0], _Scale)  # nested replacements
    assert fast[1].prepared and isinstance(fast[1].inner, _Doubling)  # prepared in place, subtree its own
    assert fast[0].project_before_resize is False  # an attribute name alone is no protocol
    assert isinstance(model[2][0], _Doubling) and not model[1].prepared  # the original is untouched
    x = torch.randn(3)
    torch.testing.assert_close(fast(x), model(x))


def test_root_module_with_the_protocol_is_replaced():
    block = randomize_norms(MscanBlock(16, mlp_ratio=4)).eval()
    fast = optimize_for_inference(block, channels_last=False)
    assert isinstance(fast, FusedMscanBlock) and is_fused(fast)
    x = torch.randn(1, 16, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), block(x), rtol=1e-5, atol=1e-5)


def _count_batchnorm_folds(monkeypatch) -> list:
    """Count every BatchNorm fold from here on (fused.batchnorm_affine is what each fold reads the norm through;
    the heads' own imports of the folding helpers are patched too, where they have them)."""
    from csap_zoo.models.heads import csap as csap_module

    calls = []

    def counting(fn):
        def wrapper(*args, **kwargs):
            calls.append(fn.__name__)
            return fn(*args, **kwargs)
        return wrapper

    for module in (fused_module, csap_module):
        for name in ("batchnorm_affine", "fold_batchnorm"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counting(getattr(module, name)))
    return calls


def test_optimized_csap_head_folds_its_batchnorm_once_not_per_call(csap_tiny, monkeypatch, one_torch_thread):
    fast = optimize_for_inference(csap_tiny)
    calls = _count_batchnorm_folds(monkeypatch)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        first, second = fast(x), fast(x)
        expected = csap_tiny(x)
    assert calls == []
    torch.testing.assert_close(first, second)
    assert_same_logits(expected, first)

    head = copy.deepcopy(csap_tiny.decode_head)
    assert head.reparameterize() is head
    assert len([c for c in calls if c == "batchnorm_affine"]) == 1  # folded at preparation, once
    assert head.project_before_resize and isinstance(head.fuse[0], FusedConv2d)
    assert head.reparameterize() is head and len([c for c in calls if c == "batchnorm_affine"]) == 1


def test_optimized_csap_head_counts_as_fused_on_any_backbone(tmp_path, one_torch_thread):
    """The head's folded projection alone makes the copy unsavable (no MSCAN blocks to detect here)."""
    torch.manual_seed(0)
    model = randomize_norms(csap_zoo.models.build_model("csap_tiny", backbone="resnet18", num_classes=3)).eval()
    fast = optimize_for_inference(model)
    assert is_fused(fast) and not is_fused(model)
    with pytest.raises(ValueError, match="save the original model"):
        fast.save_pretrained(tmp_path / "fused")
