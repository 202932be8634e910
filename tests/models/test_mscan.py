"""Tests for the MSCAN backbone family (``mscan_tiny`` ... ``mscan_large``) registered with timm.

The first half applies, per variant, the checks timm's own ``tests/test_models.py`` runs on every registered family
(forward, backward, default cfgs, features_only, forward_intermediates, torchscript, fx, grad checkpointing), on small
inputs. The second half checks parameter counts against REFERENCE section 2 and the checkpoint converter against an
independent inverse mapping onto the documented original SegNeXt / MMSegmentation key layout.
"""
from __future__ import annotations

import math
import re
import socket
from typing import Callable, Dict, List, Sequence

import pytest
import timm
import torch
import torch.nn as nn

from csap_zoo.models.mscan import MSCAN, checkpoint_filter_fn

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:FutureWarning",
    "ignore:The TorchScript type system:UserWarning",
    "ignore:NOTE. The nodes obtained by tracing:UserWarning",
)

# Architecture as documented in REFERENCE section 2: dims, depths, mlp ratios, backbone params (M, no classifier).
SPECS = {
    "mscan_tiny": dict(dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), ratios=(8, 8, 4, 4), params_m=3.90),
    "mscan_small": dict(dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), ratios=(8, 8, 4, 4), params_m=13.45),
    "mscan_base": dict(dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), ratios=(8, 8, 4, 4), params_m=26.28),
    "mscan_large": dict(dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), ratios=(8, 8, 4, 4), params_m=44.64),
}
CHECKPOINT_FILES = {
    "mscan_tiny": "mscan_t_20230227-119e8c9f.pth",
    "mscan_small": "mscan_s_20230227-f33ccdf2.pth",
    "mscan_base": "mscan_b_20230227-3ab7d230.pth",
    "mscan_large": "mscan_l_20230227-cef260d4.pth",
}
REDUCTIONS = (4, 8, 16, 32)
ALL = list(SPECS)
# Cheap checks run on every variant; the heavier ones (scripting, tracing, backward) keep large behind `slow`.
ALL_LARGE_SLOW = [pytest.param(n, marks=pytest.mark.slow) if n == "mscan_large" else n for n in ALL]
# Scripting, FX tracing and gradient checkpointing run the same block code in every variant (the variants differ only
# in widths and depths): the two smallest widths/depth sets guard them; base and large would only trace longer.
TRACED = ["mscan_tiny", "mscan_small"]
SMALL_INPUT = (3, 64, 64)


def _create(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, **kwargs)


def _input(batch: int = 1, size: Sequence[int] = SMALL_INPUT, seed: int = 1) -> torch.Tensor:
    return torch.randn((batch, *size), generator=torch.Generator().manual_seed(seed))


def _expected_hw(size: Sequence[int], reduction: int) -> tuple:
    return tuple(math.ceil(s / reduction) for s in size[-2:])


# --------------------------------------------------------------------------------------------------------------------
# timm family checks
# --------------------------------------------------------------------------------------------------------------------
def test_registered_with_timm():
    assert set(timm.list_models("mscan_*")) >= set(ALL)
    assert {f"{n}.in1k" for n in ALL} <= set(timm.list_pretrained("mscan_*"))


@pytest.mark.parametrize("name", ALL)
def test_forward(name):
    model = _create(name).eval()
    with torch.no_grad():
        out = model(_input())
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_LARGE_SLOW)
def test_backward(name):
    model = _create(name, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    out = model(_input(batch=2))
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"
    assert sum(p.grad.numel() for p in model.parameters()) == num_params
    assert out.shape == (2, 42)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_default_cfgs(name):
    spec = SPECS[name]
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["pool_size"] == (7, 7) == _expected_hw(cfg["input_size"], model.feature_info[-1]["reduction"])
    assert cfg["num_classes"] == 1000
    assert cfg["url"].endswith("/" + CHECKPOINT_FILES[name])
    assert cfg["mean"] and cfg["std"] and cfg["interpolation"] and 0 < cfg["crop_pct"] <= 1
    assert model.num_classes == 1000
    assert model.num_features == model.head_hidden_size == spec["dims"][-1]

    state_dict = model.state_dict()
    assert cfg["classifier"] + ".weight" in state_dict
    first_conv = cfg["first_conv"]
    assert first_conv + ".weight" in state_dict
    conv = model.get_submodule(first_conv)
    assert isinstance(conv, nn.Conv2d) and conv.in_channels == cfg["input_size"][0]
    assert state_dict[first_conv + ".weight"].ndim == 4

    x = _input(size=cfg["input_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre_logits = model.forward_head(feats, pre_logits=True)
        assert feats.shape == (1, model.num_features, *cfg["pool_size"])
        assert pre_logits.shape == (1, model.head_hidden_size)

        model.reset_classifier(0)
        assert model.num_classes == 0
        pooled = model(x)
        assert pooled.shape == (1, model.head_hidden_size)
        assert torch.equal(pooled, pre_logits)

        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.shape == (1, model.num_features, *cfg["pool_size"])

        model = _create(name, num_classes=0, global_pool="").eval()
        assert model(x).shape == (1, model.num_features, *cfg["pool_size"])


def test_reset_classifier_and_in_chans():
    model = _create("mscan_tiny").eval()
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(_input()).shape == (1, 7)
    model = _create("mscan_tiny", in_chans=1, num_classes=3).eval()
    with torch.no_grad():
        assert model(_input(size=(1, 64, 64))).shape == (1, 3)
    with pytest.raises(ValueError):
        model.reset_classifier(3, "max")


@pytest.mark.parametrize("name", ALL)
def test_feature_info(name):
    model = _create(name)
    assert [f["num_chs"] for f in model.feature_info] == list(SPECS[name]["dims"])
    assert [f["reduction"] for f in model.feature_info] == list(REDUCTIONS)
    for f in model.feature_info:
        model.get_submodule(f["module"])  # each named module exists


@pytest.mark.parametrize("name", ALL)
def test_features_only(name):
    dims = SPECS[name]["dims"]
    model = _create(name, features_only=True).eval()
    assert model.feature_info.channels() == list(dims)
    assert model.feature_info.reduction() == list(REDUCTIONS)
    with torch.no_grad():
        outs = model(_input())
    assert len(outs) == 4
    for c, r, o in zip(dims, REDUCTIONS, outs):
        assert o.shape == (1, c, *_expected_hw(SMALL_INPUT, r))
        assert torch.isfinite(o).all()


@pytest.mark.parametrize("feature_cls", [None, "getter", "fx"])
@pytest.mark.parametrize("size", [SMALL_INPUT, (3, 70, 90)], ids=["64x64", "70x90"])
def test_features_only_out_indices_match_forward_intermediates(feature_cls, size):
    kwargs = dict(features_only=True, out_indices=(1, 3))
    if feature_cls:
        kwargs["feature_cls"] = feature_cls
    feat_model = _create("mscan_tiny", seed=3, **kwargs).eval()
    model = _create("mscan_tiny", seed=3).eval()  # same seed -> same weights
    assert feat_model.feature_info.channels() == [64, 256]
    assert feat_model.feature_info.reduction() == [8, 32]
    x = _input(size=size)
    with torch.no_grad():
        outs = feat_model(x)
        ref = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert len(outs) == len(ref) == 2
    for c, r, o, e in zip((64, 256), (8, 32), outs, ref):
        assert o.shape == (1, c, *_expected_hw(size, r))
        assert torch.equal(o, e)


@pytest.mark.parametrize("name", ALL)
def test_forward_intermediates(name):
    model = _create(name).eval()
    x = _input()
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert len(inter) == 4
        for f, o in zip(model.feature_info, inter):
            assert o.shape == (1, f["num_chs"], *_expected_hw(SMALL_INPUT, f["reduction"]))

        # int -> last n stages, list -> those stages (negative from the end)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last2) == 2 and all(torch.equal(a, b) for a, b in zip(last2, inter[2:]))
        picked = model.forward_intermediates(x, indices=[0, -2], intermediates_only=True)
        assert len(picked) == 2 and torch.equal(picked[0], inter[0]) and torch.equal(picked[1], inter[2])
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(normed, inter))

        # stop_early must not run the stages after the last requested one
        calls: List[int] = []
        hook = model.stages[2].register_forward_pre_hook(lambda *_: calls.append(1))
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        assert calls == []
        last, early2 = model.forward_intermediates(x, indices=[0, 1], stop_early=True)
        hook.remove()
        assert isinstance(early, list) and len(early) == 2
        assert all(torch.equal(a, b) for a, b in zip(early, inter[:2]))
        assert all(torch.equal(a, b) for a, b in zip(early2, inter[:2]))
        assert torch.equal(last, inter[1])

    with pytest.raises(ValueError):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_prune_intermediate_layers():
    x = _input()
    ref = _create("mscan_tiny").eval()
    with torch.no_grad():
        ref_logits = ref(x)
        ref_inter = ref.forward_intermediates(x, intermediates_only=True)

        model = _create("mscan_tiny").eval()
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        assert len(model.stages) == 2
        assert model.num_classes == 0 and isinstance(model.head, nn.Identity)
        assert model.num_features == model.head_hidden_size == 64
        inter = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(inter, ref_inter[:2]))
        assert torch.equal(model(x), ref_inter[1])  # no pooling, no head: last kept stage

        model = _create("mscan_tiny").eval()
        assert model.prune_intermediate_layers(4, prune_head=False) == [0, 1, 2, 3]
        assert len(model.stages) == 4 and model.num_classes == 1000
        assert torch.equal(model(x), ref_logits)

        model = _create("mscan_tiny").eval()
        assert model.prune_intermediate_layers([3]) == [3]
        assert len(model.stages) == 4 and isinstance(model.head, nn.Identity)
        assert torch.equal(model.forward_features(x), ref_inter[3])


@pytest.mark.parametrize("name", TRACED)
def test_torchscript(name):
    with timm.set_scriptable(True):
        model = _create(name).eval()
    scripted = torch.jit.script(model)
    x = _input()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def _fx_model(model: nn.Module, train: bool = False) -> nn.Module:
    fe = pytest.importorskip("torchvision.models.feature_extraction")
    from timm.models import get_notrace_functions, get_notrace_modules

    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True,
    )
    train_nodes, eval_nodes = fe.get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return fe.create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs,
    ).train(train)


@pytest.mark.parametrize("name", TRACED)
def test_fx_forward(name):
    model = _create(name).eval()
    x = _input()
    with torch.no_grad():
        out = model(x)
        fx_out = list(_fx_model(model)(x).values())
    assert len(fx_out) == 1
    assert torch.equal(fx_out[0], out)


def test_fx_backward_and_torchscript():
    model = _create("mscan_tiny", num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    fx_model = _fx_model(model, train=True)
    out = torch.cat(list(fx_model(_input(batch=2)).values()))
    out.mean().backward()
    assert all(p.grad is not None for p in fx_model.parameters())
    assert sum(p.grad.numel() for p in fx_model.parameters()) == num_params
    assert out.shape == (2, 42)

    with timm.set_scriptable(True):
        model = _create("mscan_tiny").eval()
    x = _input()
    with torch.no_grad():
        scripted = torch.jit.script(_fx_model(model))
        torch.testing.assert_close(list(scripted(x).values())[0], model(x))


@pytest.mark.parametrize("name", TRACED)
def test_grad_checkpointing(name):
    x = _input(batch=2)

    def run(ckpt: bool):
        model = _create(name, seed=5).eval()
        model.set_grad_checkpointing(ckpt)
        assert all(stage.grad_checkpointing == ckpt for stage in model.stages)
        calls: List[int] = []
        model.stages[0].blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
        out = model(x)
        out.logsumexp(dim=1).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            final, _ = model.forward_intermediates(x)
        return out.detach(), grads, final, len(calls)

    out, grads, final, calls = run(False)
    out_ck, grads_ck, final_ck, calls_ck = run(True)
    assert calls == 2 and calls_ck == 3  # checkpointed blocks are recomputed during backward
    torch.testing.assert_close(out_ck, out)
    torch.testing.assert_close(final_ck, final)
    assert grads.keys() == grads_ck.keys()
    for n in grads:
        torch.testing.assert_close(grads_ck[n], grads[n], msg=lambda m, n=n: f"{n}: {m}")

    # training mode (drop path active) still trains with checkpointing
    model = _create(name).train()
    model.set_grad_checkpointing()
    model(x).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------------------------------------------------
# Parameter counts (REFERENCE section 2)
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_param_counts(name):
    with torch.device("meta"):
        model = timm.create_model(name)
        headless = timm.create_model(name, num_classes=0)
    assert next(model.parameters()).is_meta
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.get_classifier().parameters())
    assert head == 1000 * (SPECS[name]["dims"][-1] + 1)
    backbone = total - head
    assert sum(p.numel() for p in headless.parameters()) == backbone
    assert abs(backbone / 1e6 - SPECS[name]["params_m"]) <= 0.01, f"{name}: {backbone / 1e6:.3f}M"


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint conversion
# --------------------------------------------------------------------------------------------------------------------
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_WB = ("weight", "bias")
_MSCA_CONVS = ("conv0", "conv0_1", "conv0_2", "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3")


def documented_original_keys(depths: Sequence[int], head: bool = True, mmseg_dwconv: bool = False) -> set:
    """Every key of an original-layout MSCAN checkpoint, enumerated from the REFERENCE description alone."""
    dwconv = "mlp.dwconv" if mmseg_dwconv else "mlp.dwconv.dwconv"
    keys = set()
    for s, depth in enumerate(depths, start=1):
        if s == 1:
            keys |= {f"patch_embed1.proj.{i}.{p}" for i in (0, 3) for p in _WB}
            keys |= {f"patch_embed1.proj.{i}.{p}" for i in (1, 4) for p in _BN}
        else:
            keys |= {f"patch_embed{s}.proj.{p}" for p in _WB} | {f"patch_embed{s}.norm.{p}" for p in _BN}
        for j in range(depth):
            b = f"block{s}.{j}."
            keys |= {f"{b}norm{n}.{p}" for n in (1, 2) for p in _BN}
            keys |= {b + "layer_scale_1", b + "layer_scale_2"}
            convs = ["attn.proj_1", "attn.proj_2", "mlp.fc1", dwconv, "mlp.fc2"]
            convs += [f"attn.spatial_gating_unit.{c}" for c in _MSCA_CONVS]
            keys |= {f"{b}{c}.{p}" for c in convs for p in _WB}
        keys |= {f"norm{s}.{p}" for p in _WB}
    if head:
        keys |= {"head.weight", "head.bias"}
    return keys


def check_documented_shapes(sd: Dict[str, torch.Tensor], dims: Sequence[int], ratios: Sequence[float],
                            mmseg_dwconv: bool = False) -> None:
    """Shapes an original-layout checkpoint must have, per REFERENCE section 2 (catches e.g. 1xk/kx1 mix-ups)."""
    dwconv = "mlp.dwconv" if mmseg_dwconv else "mlp.dwconv.dwconv"
    c0 = dims[0]
    assert sd["patch_embed1.proj.0.weight"].shape == (c0 // 2, 3, 3, 3)
    assert sd["patch_embed1.proj.1.weight"].shape == (c0 // 2,)
    assert sd["patch_embed1.proj.3.weight"].shape == (c0, c0 // 2, 3, 3)
    assert sd["patch_embed1.proj.4.running_var"].shape == (c0,)
    for s, c in enumerate(dims, start=1):
        if s > 1:
            assert sd[f"patch_embed{s}.proj.weight"].shape == (c, dims[s - 2], 3, 3)
            assert sd[f"patch_embed{s}.norm.weight"].shape == (c,)
        assert sd[f"norm{s}.weight"].shape == (c,)
        hidden = int(c * ratios[s - 1])
        b = f"block{s}.0."
        assert sd[b + "layer_scale_1"].shape == sd[b + "layer_scale_2"].shape == (c,)
        assert sd[b + "norm1.running_mean"].shape == (c,)
        assert sd[b + "attn.proj_1.weight"].shape == sd[b + "attn.proj_2.weight"].shape == (c, c, 1, 1)
        sgu = b + "attn.spatial_gating_unit."
        assert sd[sgu + "conv0.weight"].shape == (c, 1, 5, 5)
        for i, k in enumerate((7, 11, 21)):
            assert sd[f"{sgu}conv{i}_1.weight"].shape == (c, 1, 1, k)
            assert sd[f"{sgu}conv{i}_2.weight"].shape == (c, 1, k, 1)
        assert sd[sgu + "conv3.weight"].shape == (c, c, 1, 1)
        assert sd[b + "mlp.fc1.weight"].shape == (hidden, c, 1, 1)
        assert sd[f"{b}{dwconv}.weight"].shape == (hidden, 1, 3, 3)
        assert sd[b + "mlp.fc2.weight"].shape == (c, hidden, 1, 1)


# Inside a block: our sub-module -> the documented original name.
_OUR_BLOCK_TO_ORIGINAL = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj_in": "attn.proj_1",
    "attn.proj_out": "attn.proj_2",
    "attn.gating.local": "attn.spatial_gating_unit.conv0",  # the 5x5 depthwise conv
    "attn.gating.mix": "attn.spatial_gating_unit.conv3",  # the 1x1 mix of the four branches
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def to_original_layout(sd: Dict[str, torch.Tensor], mmseg_dwconv: bool = False) -> Dict[str, torch.Tensor]:
    """Rename a state_dict of ours into the original SegNeXt layout (or MMSegmentation 1.x's ``mlp.dwconv``)."""

    def rename(key: str) -> str:
        m = re.fullmatch(r"stages\.(\d)\.downsample\.(proj\.\d\.\w+|proj\.\w+|norm\.\w+)", key)
        if m:  # the stem keeps its Sequential indices (0 conv, 1 BN, 3 conv, 4 BN); later stages proj / norm
            return f"patch_embed{int(m[1]) + 1}.{m[2]}"
        m = re.fullmatch(r"stages\.(\d)\.norm\.(\w+)", key)
        if m:
            return f"norm{int(m[1]) + 1}.{m[2]}"
        m = re.fullmatch(r"head\.(weight|bias)", key)
        if m:
            return key
        m = re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(.+)\.(\w+)", key)
        assert m, f"unexpected key {key}"
        block, sub, leaf = f"block{int(m[1]) + 1}.{m[2]}.", m[3], m[4]
        if sub in ("ls1", "ls2") and leaf == "gamma":
            return block + f"layer_scale_{sub[-1]}"
        if sub == "mlp.dwconv":
            return block + ("mlp.dwconv." if mmseg_dwconv else "mlp.dwconv.dwconv.") + leaf
        strip = re.fullmatch(r"attn\.gating\.strips\.(\d)\.(row|col)", sub)
        if strip:  # k-th strip pair: 1xk ("_1") then kx1 ("_2")
            return block + f"attn.spatial_gating_unit.conv{strip[1]}_{1 if strip[2] == 'row' else 2}.{leaf}"
        assert sub in _OUR_BLOCK_TO_ORIGINAL, f"unexpected key {key}"
        return block + f"{_OUR_BLOCK_TO_ORIGINAL[sub]}.{leaf}"

    out = {rename(k): v.clone() for k, v in sd.items()}
    assert len(out) == len(sd), "inverse mapping is not one-to-one"
    return out


def _randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every tensor distinct values (BN stats and layer scales included) so any mix-up changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.05)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif p.ndim == 1:  # norm weights
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.mul_(torch.rand(p.shape, generator=g) + 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))
    return model


@pytest.fixture(scope="module")
def source():
    """A randomised MSCAN-T in eval mode, its original-layout checkpoint, an input and its outputs."""
    model = _randomize_(_create("mscan_tiny", seed=11)).eval()
    x = _input(batch=2, seed=12)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
        inter = model.forward_intermediates(x, intermediates_only=True)
    return dict(model=model, x=x, logits=logits, feats=feats, inter=inter,
                original=to_original_layout(model.state_dict()),
                mmseg=to_original_layout(model.state_dict(), mmseg_dwconv=True))


def test_inverse_mapping_gives_documented_layout(source):
    spec = SPECS["mscan_tiny"]
    for sd, mmseg in ((source["original"], False), (source["mmseg"], True)):
        assert set(sd) == documented_original_keys(spec["depths"], mmseg_dwconv=mmseg)
        check_documented_shapes(sd, spec["dims"], spec["ratios"], mmseg_dwconv=mmseg)


@pytest.mark.parametrize("name", ["mscan_small", "mscan_base", pytest.param("mscan_large", marks=pytest.mark.slow)])
def test_inverse_mapping_gives_documented_layout_other_variants(name):
    spec = SPECS[name]
    with torch.device("meta"):
        sd = timm.create_model(name).state_dict()
    orig = to_original_layout(sd)
    assert set(orig) == documented_original_keys(spec["depths"])
    check_documented_shapes(orig, spec["dims"], spec["ratios"])
    with torch.device("meta"):
        fresh = timm.create_model(name)
    converted = checkpoint_filter_fn(orig, fresh)
    assert set(converted) == set(sd)
    assert all(converted[k].shape == sd[k].shape for k in sd)


def _no_head(sd):
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def _decode_head_junk():
    return {
        "decode_head.conv_seg.weight": torch.randn(150, 256, 1, 1),
        "decode_head.conv_seg.bias": torch.randn(150),
        "decode_head.squeeze.conv.weight": torch.randn(256, 416, 1, 1),
        "decode_head.hamburger.ham_in.conv.weight": torch.randn(256, 256, 1, 1),
        "decode_head.align.bn.running_mean": torch.randn(256),
    }


def _segmentor(sd):
    return {**{"backbone." + k: v for k, v in _no_head(sd).items()}, **_decode_head_junk()}


LAYOUTS: Dict[str, Callable[[dict, dict], dict]] = {
    "original": lambda o, m: o,
    "mmseg_1x": lambda o, m: m,
    "wrapped_state_dict": lambda o, m: {"state_dict": o, "meta": {"epoch": 300}},
    "wrapped_model": lambda o, m: {"model": o},
    "no_head": lambda o, m: _no_head(o),
    "backbone_prefix": lambda o, m: _segmentor(o),
    "mmseg_segmentor": lambda o, m: {"meta": {"CLASSES": ("wall", "sky")}, "state_dict": _segmentor(m)},
}
HAS_HEAD = {"original", "mmseg_1x", "wrapped_state_dict", "wrapped_model"}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_converter_loads_strict_and_reproduces_outputs(source, layout):
    ckpt = LAYOUTS[layout](source["original"], source["mmseg"])
    fresh = _create("mscan_tiny", seed=99).eval()
    fresh_head = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith("head.")}
    converted = checkpoint_filter_fn(ckpt, fresh)
    result = fresh.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys

    # every tensor, BN running stats and num_batches_tracked included, arrives unchanged
    src = source["model"].state_dict()
    for k, v in fresh.state_dict().items():
        if k.startswith("head.") and layout not in HAS_HEAD:
            assert torch.equal(v, fresh_head[k]), "a checkpoint without a classifier keeps the model's own"
        else:
            assert torch.equal(v, src[k]), k

    x = source["x"]
    with torch.no_grad():
        assert torch.equal(fresh.forward_features(x), source["feats"])
        inter = fresh.forward_intermediates(x, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(inter, source["inter"]))
        if layout in HAS_HEAD:
            assert torch.equal(fresh(x), source["logits"])


@pytest.mark.parametrize("layout", ["original", "backbone_prefix"])
def test_converter_into_headless_model(source, layout):
    ckpt = LAYOUTS[layout](source["original"], source["mmseg"])
    fresh = _create("mscan_tiny", num_classes=0, global_pool="").eval()
    fresh.load_state_dict(checkpoint_filter_fn(ckpt, fresh), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(source["x"]), source["feats"])


def test_converter_passes_own_layout_through(source):
    sd = source["model"].state_dict()
    fresh = _create("mscan_tiny").eval()
    converted = checkpoint_filter_fn({"state_dict": sd}, fresh)
    assert converted.keys() == sd.keys() and all(torch.equal(converted[k], sd[k]) for k in sd)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("layout", ["original", "mmseg_segmentor"])
def test_timm_pretrained_from_local_file(source, tmp_path, no_network, layout):
    path = tmp_path / "mscan_t.pth"
    torch.save(LAYOUTS[layout](source["original"], source["mmseg"]), path)
    torch.manual_seed(123)
    model = timm.create_model("mscan_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = source["x"]
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), source["feats"])
        if layout in HAS_HEAD:
            assert torch.equal(model(x), source["logits"])


def test_timm_pretrained_features_only_and_adapted(source, tmp_path, no_network):
    path = tmp_path / "mscan_t.pth"
    torch.save(source["original"], path)
    overlay = dict(file=str(path))
    x = source["x"]

    feat = timm.create_model("mscan_tiny", pretrained=True, pretrained_cfg_overlay=overlay,
                             features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = feat(x)
    assert torch.equal(outs[0], source["inter"][1]) and torch.equal(outs[1], source["inter"][3])

    # in_chans=1 sums the stem's RGB filters, num_classes=5 drops the classifier; the rest loads unchanged
    model = timm.create_model("mscan_tiny", pretrained=True, pretrained_cfg_overlay=overlay,
                              in_chans=1, num_classes=5).eval()
    src = source["model"].state_dict()
    stem = "stages.0.downsample.proj.0.weight"
    torch.testing.assert_close(model.state_dict()[stem], src[stem].sum(dim=1, keepdim=True))
    for k, v in model.state_dict().items():
        if k != stem and not k.startswith("head."):
            assert torch.equal(v, src[k]), k
    assert model.head.weight.shape == (5, 256)
    with torch.no_grad():
        assert model(x[:, :1]).shape == (2, 5)


def _drop_block(sd, prefix):
    dropped = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    assert len(dropped) < len(sd)
    return dropped


def test_wrong_layout_fails_loudly(source):
    orig = source["original"]
    model = _create("mscan_tiny")

    def load(ckpt):
        model.load_state_dict(checkpoint_filter_fn(ckpt, model), strict=True)

    with pytest.raises(RuntimeError, match=r"stages\.2\.blocks\.4\."):
        load(_drop_block(orig, "block3.4."))  # a missing block
    extra = {k.replace("block3.4.", "block3.5."): v for k, v in orig.items() if k.startswith("block3.4.")}
    with pytest.raises(RuntimeError, match=r"stages\.2\.blocks\.5\."):
        load({**orig, **extra})  # one block too many (another variant's depth)
    with pytest.raises(RuntimeError):
        load({k.replace("block", "layers."): v for k, v in orig.items()})  # an unknown layout
    small = to_original_layout(_create("mscan_small").state_dict())
    with pytest.raises(RuntimeError):
        load(small)  # another variant's widths and depths


@pytest.mark.parametrize("kwargs", [{}, dict(num_classes=5), dict(features_only=True)],
                         ids=["default", "num_classes", "features_only"])
def test_timm_pretrained_wrong_layout_fails_loudly(source, tmp_path, no_network, kwargs):
    # timm loads non-strictly when num_classes changes (features_only included): a broken checkpoint must still fail
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": _drop_block(source["original"], "block3.4.")}, path)
    with pytest.raises(RuntimeError, match=r"stages\.2\.blocks\.4\."):
        timm.create_model("mscan_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def test_model_class():
    assert isinstance(_create("mscan_tiny"), MSCAN)
