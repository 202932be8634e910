"""Tests for SegNeXt's LightHam decode head and its NMF "Hamburger" (``csap_zoo.models.heads.ham``)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F

from csap_zoo.models.heads.ham import HamHeadConfig, Hamburger, LightHamHead, NMF2D

MSCAN_T = (64, 160, 256)
MSCAN_SBL = (128, 320, 512)


def make_features(channels: Sequence[int], size: Tuple[int, int], batch: int = 2) -> List[torch.Tensor]:
    """Random features at strides 8, 16, 32 for an input whose stride-8 grid is ``size`` (ceil for deeper ones)."""
    h, w = size
    feats = []
    for i, c in enumerate(channels):
        f = 2 ** i
        feats.append(torch.randn(batch, c, -(-h // f), -(-w // f)))
    return feats


def low_rank(batch: int, dim: int, n: int, rank: int) -> torch.Tensor:
    """Non-negative (batch, dim, n) matrices of rank <= ``rank``."""
    return torch.bmm(torch.rand(batch, dim, rank), torch.rand(batch, rank, n))


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def small_head(**kwargs) -> LightHamHead:
    cfg = dict(ham_channels=32, channels=32, num_bases=4, num_groups=8)
    cfg.update(kwargs)
    return LightHamHead(MSCAN_T, 5, **cfg)


# --- output shapes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(16, 16), (12, 20), (9, 5)])
def test_logits_at_resolution_of_shallowest_feature(size):
    torch.manual_seed(0)
    head = small_head().eval()
    with torch.no_grad():
        out = head(make_features(MSCAN_T, size))
    assert out.shape == (2, 5, *size)
    assert torch.isfinite(out).all()


def test_default_widths_on_mscan_tiny_grids():
    torch.manual_seed(0)
    head = LightHamHead(MSCAN_T, 150).eval()
    assert head.num_classes == 150
    assert head.hamburger.ham.num_bases == 16
    with torch.no_grad():
        out = head(make_features(MSCAN_T, (16, 8), batch=1))  # a 128x64 image
    assert out.shape == (1, 150, 16, 8)


def test_single_input_feature():
    head = LightHamHead((48,), 3, ham_channels=32, channels=16, num_bases=4, num_groups=8).eval()
    with torch.no_grad():
        assert head([torch.randn(1, 48, 7, 6)]).shape == (1, 3, 7, 6)


def test_deeper_features_are_resized_bilinearly_without_align_corners():
    """The squeeze layer computes squeeze(cat(f0, bilinear(f1), bilinear(f2))): literally by default, and with
    project_before_resize without building the concatenation."""
    torch.manual_seed(0)
    head = small_head().eval()
    feats = make_features(MSCAN_T, (8, 12), batch=1)
    seen = {}

    def grab(module, inputs, output):
        seen["x"] = inputs[0]

    head.hamburger.register_forward_hook(grab)
    with torch.no_grad():
        head(feats)
        reference = seen.pop("x")
        head.project_before_resize = True
        head(feats)
        expected = head.squeeze(torch.cat([feats[0]] + [
            F.interpolate(f, size=(8, 12), mode="bilinear", align_corners=False) for f in feats[1:]
        ], dim=1))
        wrong = head.squeeze(torch.cat([feats[0]] + [
            F.interpolate(f, size=(8, 12), mode="bilinear", align_corners=True) for f in feats[1:]
        ], dim=1))
    torch.testing.assert_close(reference, expected)
    torch.testing.assert_close(seen["x"], expected, rtol=1e-5, atol=1e-5)  # projected before the resize
    assert not torch.allclose(seen["x"], wrong, atol=1e-4)


# --- NMF: iteration counts ------------------------------------------------------------------------------------


def _count_updates(nmf: NMF2D, x: torch.Tensor, monkeypatch) -> Tuple[int, List[bool]]:
    steps, grad_modes = [], []
    real_step, real_coef = nmf.step, nmf.update_coef

    def step(*args):
        steps.append(1)
        return real_step(*args)

    def update_coef(*args):
        grad_modes.append(torch.is_grad_enabled())
        return real_coef(*args)

    monkeypatch.setattr(nmf, "step", step)
    monkeypatch.setattr(nmf, "update_coef", update_coef)
    nmf(x)
    monkeypatch.undo()
    return len(steps), grad_modes


@pytest.mark.parametrize("grad", ["full", "one-step"])
@pytest.mark.parametrize("train_steps,eval_steps", [(6, 7), (2, 5), (0, 3)])
def test_nmf_runs_train_steps_in_training_and_eval_steps_in_eval(train_steps, eval_steps, grad, monkeypatch):
    nmf = NMF2D(8, num_bases=3, train_steps=train_steps, eval_steps=eval_steps, grad=grad)
    x = torch.rand(2, 8, 4, 4, requires_grad=True)
    # "full": every update is recorded for backward; "one-step": the iterated ones run without gradient and
    # only the final coefficient update is differentiable
    iterated = grad == "full"

    nmf.train()
    n, grad_modes = _count_updates(nmf, x, monkeypatch)
    assert n == train_steps == nmf.steps
    assert grad_modes == [iterated] * train_steps + [True]

    nmf.eval()
    n, grad_modes = _count_updates(nmf, x, monkeypatch)
    assert n == eval_steps == nmf.steps
    assert grad_modes == [iterated] * eval_steps + [True]


def test_head_mode_switch_reaches_the_nmf(monkeypatch):
    head = small_head(train_steps=2, eval_steps=4)
    nmf = head.hamburger.ham
    feats = make_features(MSCAN_T, (4, 4), batch=1)
    calls = []
    real = nmf.step
    monkeypatch.setattr(nmf, "step", lambda *a: calls.append(1) or real(*a))
    head.train()(feats)
    assert len(calls) == 2
    calls.clear()
    with torch.no_grad():
        head.eval()(feats)
    assert len(calls) == 4


# --- NMF: numerics --------------------------------------------------------------------------------------------


def test_nmf_reconstructs_low_rank_non_negative_input_and_improves_with_steps():
    torch.manual_seed(0)
    dim, h, w, rank = 32, 8, 8, 4
    x = low_rank(2, dim, h * w, rank).reshape(2, dim, h, w)
    errors = []
    for steps in (0, 1, 7, 50, 300):
        nmf = NMF2D(dim, num_bases=8, train_steps=steps, eval_steps=steps).eval()
        torch.manual_seed(1)  # same random bases for every step count
        errors.append(rel_error(nmf(x), x))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[2] < 0.2  # the default eval step count already gets close
    assert errors[-1] < 0.01


def test_nmf_matches_an_independent_reference():
    """Per-matrix float64 multiplicative updates from the same random bases give the same reconstruction."""
    torch.manual_seed(0)
    b, c, h, w, splits, r, steps = 2, 12, 3, 5, 2, 3, 4
    x = torch.rand(b, c, h, w)
    nmf = NMF2D(c, num_bases=r, num_splits=splits, train_steps=steps, eval_steps=steps, inv_t=0.5).eval()
    torch.manual_seed(7)
    out = nmf(x)

    torch.manual_seed(7)
    bases0 = torch.rand(b * splits, c // splits, r)
    mats = x.reshape(b * splits, c // splits, h * w).double()
    recon = []
    for X, U in zip(mats, bases0.double()):
        U = U / U.norm(dim=0, keepdim=True)
        V = torch.softmax(0.5 * X.T @ U, dim=1)
        for _ in range(steps):
            V = V * (X.T @ U) / (V @ U.T @ U + 1e-6)
            U = U * (X @ V) / (U @ V.T @ V + 1e-6)
        V = V * (X.T @ U) / (V @ U.T @ U + 1e-6)
        recon.append(U @ V.T)
    expected = torch.stack(recon).reshape(b, c, h, w).float()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_nmf_factors_stay_non_negative():
    torch.manual_seed(0)
    nmf = NMF2D(16, num_bases=6, train_steps=20)
    x = low_rank(3, 16, 30, 4)
    x[:, :, :5] = 0.0  # some all-zero columns as well
    bases, coef = nmf.decompose(x)
    assert bases.shape == (3, 16, 6) and coef.shape == (3, 30, 6)
    assert (bases >= 0).all() and (coef >= 0).all()
    assert torch.isfinite(bases).all() and torch.isfinite(coef).all()
    assert (nmf(x.reshape(3, 16, 5, 6)) >= 0).all()


def test_nmf_draws_fresh_bases_every_call():
    x = torch.rand(1, 8, 4, 4)
    nmf = NMF2D(8, num_bases=3, eval_steps=2).eval()
    torch.manual_seed(3)
    a = nmf(x)
    b = nmf(x)
    torch.manual_seed(3)
    c = nmf(x)
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, c)


def test_nmf_splits_channels_into_independent_groups():
    torch.manual_seed(0)
    x = torch.rand(1, 8, 3, 3)
    nmf = NMF2D(8, num_bases=2, num_splits=2, eval_steps=3).eval()
    torch.manual_seed(5)
    both = nmf(x)
    # the second group only: perturbing it must leave the first group's reconstruction unchanged
    y = x.clone()
    y[:, 4:] = torch.rand(1, 4, 3, 3)
    torch.manual_seed(5)
    other = nmf(y)
    torch.testing.assert_close(both[:, :4], other[:, :4])
    assert not torch.allclose(both[:, 4:], other[:, 4:])


def test_nmf_keeps_dtype_under_autocast():
    nmf = NMF2D(8, num_bases=3).eval()
    x = torch.rand(1, 8, 4, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nmf(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_hamburger_is_a_non_negative_residual_block():
    torch.manual_seed(0)
    ham = Hamburger(16, num_bases=4, num_groups=4).eval()
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        out = ham(x)
        torch.manual_seed(1)
        inner = ham.ham_out(ham.ham(F.relu(ham.ham_in(x))))
        torch.manual_seed(1)
        again = ham(x)
    assert out.shape == x.shape and (out >= 0).all()
    torch.testing.assert_close(again, F.relu(x + inner))
    assert ham.ham_in.bias is not None and ham.ham_out[0].bias is None


# --- gradients ------------------------------------------------------------------------------------------------


def test_gradients_reach_every_head_parameter():
    torch.manual_seed(0)
    head = small_head().train()
    out = head(make_features(MSCAN_T, (8, 8)))
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    zero = [n for n, p in head.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert missing == [] and zero == []
    assert len(list(head.parameters())) == 13  # squeeze(2+conv) + ham_in(2) + ham_out(1+2) + align(1+2) + cls(2)


def test_gradient_flows_through_the_nmf():
    torch.manual_seed(0)
    x = torch.rand(2, 8, 4, 4, requires_grad=True)
    out = NMF2D(8, num_bases=3).train()(x)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- validation -----------------------------------------------------------------------------------------------


def test_wrong_feature_count_is_a_clear_error():
    head = small_head()
    feats = make_features(MSCAN_T, (4, 4), batch=1)
    with pytest.raises(ValueError, match="expects 3 feature maps, got 2"):
        head(feats[:2])


def test_wrong_channel_count_is_a_clear_error():
    head = small_head()
    feats = make_features((64, 128, 256), (4, 4), batch=1)
    with pytest.raises(ValueError, match=r"expects feature channels \(64, 160, 256\), got \(64, 128, 256\)"):
        head(feats)


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_channels=()), "at least one input"),
    (dict(ham_channels=30), "ham_channels=30"),
    (dict(channels=20), "channels=20"),
    (dict(num_classes=0), "num_classes"),
    (dict(num_bases=0), "num_bases"),
    (dict(train_steps=-1), "train_steps"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    cfg = dict(in_channels=MSCAN_T, num_classes=4, ham_channels=32, channels=32, num_bases=4, num_groups=8)
    cfg.update(kwargs)
    with pytest.raises(ValueError, match=match):
        LightHamHead(**cfg)


def test_nmf_rejects_channels_not_divisible_by_splits():
    with pytest.raises(ValueError, match="divisible by num_splits"):
        NMF2D(10, num_splits=3)
    with pytest.raises(ValueError, match="expects 8 channels, got 6"):
        NMF2D(8)(torch.rand(1, 6, 2, 2))


# --- classifier and presets -----------------------------------------------------------------------------------


def test_reset_classifier_changes_output_channels_only():
    torch.manual_seed(0)
    head = small_head().eval()
    before = {k: v.clone() for k, v in head.state_dict().items() if not k.startswith("classifier")}
    head.reset_classifier(11)
    assert head.num_classes == 11 and head.classifier.out_channels == 11
    with torch.no_grad():
        assert head(make_features(MSCAN_T, (6, 10), batch=1)).shape == (1, 11, 6, 10)
    after = head.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="num_classes"):
        head.reset_classifier(0)


@pytest.mark.parametrize("name,in_channels,width,bases", [
    ("T", MSCAN_T, 256, 16),
    ("S", MSCAN_SBL, 256, 16),
    ("B", MSCAN_SBL, 512, 64),
    ("L", MSCAN_SBL, 1024, 64),
])
def test_segnext_presets_build_from_config(name, in_channels, width, bases):
    cfg = HamHeadConfig(ham_channels=width, channels=width, num_bases=bases)
    head = cfg.build(in_channels, 150).eval()
    assert isinstance(head, LightHamHead) and head.in_channels == tuple(in_channels)
    assert head.hamburger.ham.num_bases == bases
    assert head.hamburger.ham.train_steps == 6 and head.hamburger.ham.eval_steps == 7
    assert head.classifier.in_channels == width
    with torch.no_grad():
        assert head(make_features(in_channels, (4, 4), batch=1)).shape == (1, 150, 4, 4)


def test_default_config_matches_segnext_tiny_size():
    head = HamHeadConfig().build(MSCAN_T, 150)
    params = sum(p.numel() for p in head.parameters())
    # SegNeXt-T: 4.3M in total, of which the MSCAN-T backbone is 3.90M (REFERENCE sections 2 and 3)
    assert round(3.90 + params / 1e6, 1) == 4.3
    assert isinstance(head.dropout, torch.nn.Dropout2d) and head.dropout.p == 0.1


# --- backward through the Hamburger: full (default) and one-step gradients -----------------------------------
#
# The reference below is written from the maths, on a state dict in MMSegmentation's LightHamHead key layout (the
# layout of official SegNeXt checkpoints), in float64 and one matrix at a time:
#   x   = ReLU(GN(W_sq * cat(f0, up(f1), up(f2))))
#   X   = ReLU(W_in * x + b_in)                        (C x N, non-negative)
#   V0  = softmax(X^T U0) rows;  t = 1..T:  V <- V * (X^T U) / (V U^T U + eps),  U <- U * (X V) / (U V^T V + eps)
#   V  <- V * (X^T U) / (V U^T U + eps)   (a last coefficient update);  ham = U V^T
#   y   = ReLU(x + GN(W_out * ham));  logits = W_cls * ReLU(GN(W_al * y)) + b_cls
# "full" differentiates every update; "one-step" treats the T iterated factors as constants.

OFFICIAL_SHAPES = {  # small widths: in (64, 160, 256) -> ham 32 -> align 32 -> 5 classes
    "squeeze.conv.weight": (32, sum(MSCAN_T), 1, 1), "squeeze.gn.weight": (32,), "squeeze.gn.bias": (32,),
    "hamburger.ham_in.conv.weight": (32, 32, 1, 1), "hamburger.ham_in.conv.bias": (32,),
    "hamburger.ham_out.conv.weight": (32, 32, 1, 1),
    "hamburger.ham_out.gn.weight": (32,), "hamburger.ham_out.gn.bias": (32,),
    "align.conv.weight": (32, 32, 1, 1), "align.gn.weight": (32,), "align.gn.bias": (32,),
    "conv_seg.weight": (5, 32, 1, 1), "conv_seg.bias": (5,),
}
GROUPS, EPS = 8, 1e-6


def official_layout_state_dict(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in OFFICIAL_SHAPES.items():
        if key.endswith("gn.weight"):
            sd[key] = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        else:
            sd[key] = torch.randn(shape, generator=gen) * (0.2 if key.endswith("bias") else 1.0 / shape[1] ** 0.5)
    return sd


def head_from_official(sd: dict, **kwargs) -> LightHamHead:
    from csap_zoo.models.heads.ham import mmseg_checkpoint_filter_fn

    head = small_head(dropout=0.0, **kwargs)
    head.load_state_dict(mmseg_checkpoint_filter_fn(sd), strict=True)
    return head


def reference_logits(sd: dict, feats: List[torch.Tensor], bases0: torch.Tensor, steps: int, full: bool):
    def conv(x, w, b=None):
        return F.conv2d(x, w, b)

    def gn(x, prefix):
        return F.group_norm(x, GROUPS, sd[prefix + ".gn.weight"], sd[prefix + ".gn.bias"], eps=1e-5)

    size = feats[0].shape[-2:]
    cat = torch.cat([feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                  for f in feats[1:]], dim=1)
    x = F.relu(gn(conv(cat, sd["squeeze.conv.weight"]), "squeeze"))
    y = F.relu(conv(x, sd["hamburger.ham_in.conv.weight"], sd["hamburger.ham_in.conv.bias"]))
    b, c, h, w = y.shape
    recon = []
    for X, U in zip(y.reshape(b, c, h * w), bases0):
        V = torch.softmax(X.T @ U, dim=1)
        with torch.set_grad_enabled(full and torch.is_grad_enabled()):
            for _ in range(steps):
                V = V * (X.T @ U) / (V @ (U.T @ U) + EPS)
                U = U * (X @ V) / (U @ (V.T @ V) + EPS)
        if not full:
            U, V = U.detach(), V.detach()
        V = V * (X.T @ U) / (V @ (U.T @ U) + EPS)
        recon.append(U @ V.T)
    ham = torch.stack(recon).reshape(b, c, h, w)
    y = F.relu(x + gn(conv(ham, sd["hamburger.ham_out.conv.weight"]), "hamburger.ham_out"))
    y = F.relu(gn(conv(y, sd["align.conv.weight"]), "align"))
    return conv(y, sd["conv_seg.weight"], sd["conv_seg.bias"])


def random_bases(n: int, dim: int, rank: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.rand(n, dim, rank, generator=torch.Generator().manual_seed(seed)), dim=1)


def head_and_reference_grads(grad: str, size=(6, 10), steps: int = 6, batch: int = 2):
    """Parameter gradients (our names) of the head and of the float64 reference, from the same bases."""
    from csap_zoo.models.heads.ham import mmseg_checkpoint_filter_fn

    torch.manual_seed(0)
    sd = official_layout_state_dict()
    head = head_from_official(sd, nmf_grad=grad, train_steps=steps).train()
    feats = make_features(MSCAN_T, size, batch=batch)
    bases0 = random_bases(batch, 32, 4, seed=1)
    head.hamburger.ham.init_bases = lambda n, d, device, dtype: bases0.to(device, dtype)
    logits = head(feats)
    weight = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    (logits * weight).sum().backward()
    got = {name: p.grad for name, p in head.named_parameters()}

    sd64 = {k: v.double().requires_grad_() for k, v in sd.items()}
    ref = reference_logits(sd64, [f.double() for f in feats], bases0.double(), steps, full=grad == "full")
    (ref * weight.double()).sum().backward()
    expected = mmseg_checkpoint_filter_fn({k: v.grad.float() for k, v in sd64.items()})
    torch.testing.assert_close(logits.detach(), ref.detach().float(), rtol=1e-4, atol=1e-4)
    return got, expected


def test_full_gradient_is_the_default():
    assert HamHeadConfig().nmf_grad == "full"
    assert small_head().hamburger.ham.grad == "full" and NMF2D(8).grad == "full"
    assert HamHeadConfig().build(MSCAN_T, 3).hamburger.ham.grad == "full"


@pytest.mark.parametrize("size", [(6, 10), (5, 7)])  # a 48x80 image and a 33x53 (not a multiple of 32) one
def test_full_gradient_equals_the_unrolled_reference(size):
    got, expected = head_and_reference_grads("full", size)
    assert set(got) == set(expected) and len(got) == 13
    for name in got:
        assert rel_error(got[name], expected[name]) < 1e-4, name


def test_one_step_gradient_equals_its_reference_and_differs_from_full():
    one, one_ref = head_and_reference_grads("one-step")
    full, _ = head_and_reference_grads("full")
    for name in one:
        assert rel_error(one[name], one_ref[name]) < 1e-4, name
    # layers before the ham see a different gradient (the layers after it do not: the forward is the same)
    for name in ("squeeze.0.weight", "hamburger.ham_in.weight", "hamburger.ham_in.bias"):
        assert rel_error(one[name], full[name]) > 1e-2, name
    for name in ("classifier.weight", "align.0.weight", "hamburger.ham_out.0.weight"):
        assert rel_error(one[name], full[name]) < 1e-5, name


def test_gradient_modes_share_the_forward():
    feats = make_features(MSCAN_T, (5, 9))
    outs = []
    for grad in ("full", "one-step"):
        torch.manual_seed(0)
        head = small_head(nmf_grad=grad).train()
        torch.manual_seed(1)
        outs.append(head(feats))
    assert torch.equal(outs[0], outs[1])


def test_one_step_keeps_the_nmf_iterations_out_of_the_graph():
    """One-step backward does not revisit the iterations: the graph holds one coefficient update, not T."""
    def graph_size(grad: str) -> int:
        x = torch.rand(1, 8, 4, 4, requires_grad=True)
        out = NMF2D(8, num_bases=3, train_steps=6, grad=grad).train()(x)
        seen, stack = set(), [out.grad_fn]
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
        return len(seen)

    assert graph_size("full") > 3 * graph_size("one-step")


# --- NMF determinism: the seeded option ----------------------------------------------------------------------


def test_unseeded_nmf_is_random_by_default():
    assert HamHeadConfig().nmf_seed is None and NMF2D(8).seed is None
    head = small_head().eval()
    feats = make_features(MSCAN_T, (6, 6))
    with torch.no_grad():
        assert not torch.equal(head(feats), head(feats))


def test_seeded_calls_are_identical_and_ignore_the_global_rng():
    head = small_head(nmf_seed=123).eval()
    feats = make_features(MSCAN_T, (6, 6))
    with torch.no_grad():
        torch.manual_seed(0)
        state = torch.get_rng_state()
        a = head(feats)
        assert torch.equal(torch.get_rng_state(), state)  # the global generator is not consumed
        torch.manual_seed(99)
        b = head(feats)
        other = small_head(nmf_seed=124).eval()
        other.load_state_dict(head.state_dict())
        c = other(feats)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-4)  # the seed picks the bases


def test_seeded_bases_are_the_documented_draw():
    """Seed s: bases = column-normalised torch.rand((S, C / S, R)) from a CPU generator seeded with s, the same for
    every image of a batch (so an image's result does not depend on its batch)."""
    torch.manual_seed(0)
    b, c, h, w, splits, r, steps, seed = 3, 12, 3, 5, 2, 3, 4, 42
    x = torch.rand(b, c, h, w)
    out = NMF2D(c, num_bases=r, num_splits=splits, eval_steps=steps, seed=seed).eval()(x)

    bases0 = torch.rand(splits, c // splits, r, generator=torch.Generator().manual_seed(seed))
    bases0 = bases0 / bases0.norm(dim=1, keepdim=True)
    expected = torch.empty_like(x)
    for i in range(b):
        for s in range(splits):
            X, U = x[i, s * c // splits:(s + 1) * c // splits].reshape(c // splits, h * w).double(), bases0[s].double()
            V = torch.softmax(X.T @ U, dim=1)
            for _ in range(steps):
                V = V * (X.T @ U) / (V @ U.T @ U + EPS)
                U = U * (X @ V) / (U @ V.T @ V + EPS)
            V = V * (X.T @ U) / (V @ U.T @ U + EPS)
            expected[i, s * c // splits:(s + 1) * c // splits] = (U @ V.T).reshape(c // splits, h, w).float()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    single = NMF2D(c, num_bases=r, num_splits=splits, eval_steps=steps, seed=seed).eval()(x[1:2])
    torch.testing.assert_close(single, out[1:2])


def test_seed_survives_dtype_and_device_moves_and_stays_out_of_the_state_dict():
    import copy

    head = small_head(nmf_seed=5).eval()
    feats = make_features(MSCAN_T, (4, 6))
    with torch.no_grad():
        ref = head(feats)
        assert set(head.state_dict()) == set(small_head().state_dict())  # checkpoints are unchanged
        bases = head.hamburger.ham.fixed_bases.clone()
        assert bases.dtype == torch.float32 and bases.shape == (1, 32, 4)
        half = copy.deepcopy(head).to(torch.bfloat16).hamburger.ham.fixed_bases
        assert half.dtype == torch.float32 and torch.equal(half, bases)  # not rounded to bfloat16
        head.double().float()
        torch.testing.assert_close(head(feats), ref, rtol=0, atol=0)
        with torch.device("meta"):  # shape-only builds (model cards, load probes) work too
            meta = small_head(nmf_seed=5)
        assert meta.to("meta").hamburger.ham.fixed_bases.is_meta
        blank = meta.to_empty(device="cpu").hamburger.ham.fixed_bases  # uninitialised memory: redrawn
        assert torch.equal(blank, bases)
        if torch.cuda.is_available():
            head.cuda()
            torch.testing.assert_close(head([f.cuda() for f in feats]).cpu(), ref, rtol=1e-4, atol=1e-4)


def test_seed_can_be_set_and_cleared_on_a_built_head():
    head = small_head().eval()
    feats = make_features(MSCAN_T, (4, 4))
    head.set_nmf_seed(7)
    with torch.no_grad():
        a, b = head(feats), head(feats)
        assert torch.equal(a, b)
        fresh = small_head(nmf_seed=7).eval()
        fresh.load_state_dict(head.state_dict())
        assert torch.equal(fresh(feats), a)
        head.set_nmf_seed(None)
        assert not torch.equal(head(feats), head(feats))


def test_seeded_head_traces_and_exports_with_parity():
    """Seeded bases are a fixed tensor, so traced and exported heads reproduce eager outputs, also at other sizes."""
    import warnings

    head = small_head(nmf_seed=3).eval()
    feats = make_features(MSCAN_T, (6, 8), batch=1)
    other = make_features(MSCAN_T, (5, 11), batch=1)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(head, (feats,), check_trace=False)
        for f in (feats, other, feats):
            torch.testing.assert_close(traced(f), head(f), rtol=1e-5, atol=1e-5)
        program = torch.export.export(head, (feats,))
        torch.testing.assert_close(program.module()(feats), head(feats), rtol=0, atol=0)
        torch.testing.assert_close(program.module()(feats), head(feats), rtol=0, atol=0)


# --- configuration ------------------------------------------------------------------------------------------


def test_nmf_options_travel_through_the_config():
    cfg = HamHeadConfig(ham_channels=32, channels=32, num_bases=4, num_groups=8, nmf_grad="one-step", nmf_seed=11)
    nmf = cfg.build(MSCAN_T, 3).hamburger.ham
    assert nmf.grad == "one-step" and nmf.seed == 11


@pytest.mark.parametrize("kwargs,match", [
    (dict(nmf_grad="none"), r"nmf_grad.*'full'.*'one-step'"),
    (dict(nmf_seed="1"), "nmf_seed"),
    (dict(nmf_seed=-1), "nmf_seed"),
    (dict(nmf_seed=True), "nmf_seed"),
])
def test_bad_nmf_options_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_head(**kwargs)
    with pytest.raises(ValueError, match=match.split(".")[0]):  # from a config (e.g. config.json) as well
        HamHeadConfig(ham_channels=32, channels=32, num_bases=4, num_groups=8, **kwargs).build(MSCAN_T, 3)


def test_config_json_records_the_nmf_options_and_an_old_one_still_loads(tmp_path):
    """config.json written before the options existed has neither key: it loads with the defaults (full gradient,
    random bases), which infer exactly as that code did."""
    import json

    import csap_zoo
    from csap_zoo.hub import from_pretrained, save_pretrained

    model = csap_zoo.create_model("segnext_tiny", num_classes=3).eval()
    model.decode_head.set_nmf_seed(0)  # so that the two folders can be compared
    model.config.head.nmf_seed = 0
    save_pretrained(model, tmp_path / "new")
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["model"]["head"]["nmf_grad"] == "full" and config["model"]["head"]["nmf_seed"] == 0
    reloaded = from_pretrained(str(tmp_path / "new")).eval()
    assert reloaded.decode_head.hamburger.ham.seed == 0

    save_pretrained(model, tmp_path / "old")
    old = json.loads((tmp_path / "old" / "config.json").read_text())
    del old["model"]["head"]["nmf_grad"], old["model"]["head"]["nmf_seed"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(old))
    legacy = from_pretrained(str(tmp_path / "old")).eval()
    assert legacy.config.head.nmf_grad == "full" and legacy.config.head.nmf_seed is None
    legacy.decode_head.set_nmf_seed(0)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(legacy(x), reloaded(x), rtol=0, atol=0)


def test_reparameterize_switches_to_projecting_before_resize_in_place():
    """What optimize_for_inference asks of the head: the projected squeeze, weights untouched (GroupNorm cannot
    be folded), the same logits for the same NMF bases."""
    torch.manual_seed(0)
    head = small_head().eval()
    feats = make_features(MSCAN_T, (8, 12), batch=1)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    with torch.no_grad():
        torch.manual_seed(1)
        reference = head(feats)
        assert head.reparameterize() is head and head.project_before_resize
        torch.manual_seed(1)
        projected = head(feats)
    torch.testing.assert_close(projected, reference, rtol=1e-4, atol=1e-4)
    after = head.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
