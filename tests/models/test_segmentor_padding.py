"""The padding policy: SegNeXt runs inputs unpadded (as the original code), CSAP pads to the stride; the policy is
saved with the model and followed by every path (eager, fused, export, Segmenter whole/slide)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import csap_zoo
from csap_zoo.models.logits import SegmentorLogits
from csap_zoo.models.segmentor import SegmentorConfig

ODD_SIZES = [(97, 131), (64, 100)]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _segnext(pad_mode=None):
    torch.manual_seed(0)
    model = csap_zoo.create_model("segnext_tiny", num_classes=7, nmf_seed=0).eval()
    if pad_mode is not None:
        model.pad_mode = pad_mode
    return model


def _unpadded_reference(model, x):
    """Backbone and head on the image as it is, logits resized straight to its size (the original SegNeXt)."""
    logits = model.decode_head(model.forward_features(x))
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _padded_reference(model, x):
    h, w = x.shape[-2:]
    s = model.stride
    ph, pw = -(-h // s) * s, -(-w // s) * s
    logits = model.decode_head(model.forward_features(F.pad(x, (0, pw - w, 0, ph - h))))
    return F.interpolate(logits, size=(ph, pw), mode="bilinear", align_corners=False)[..., :h, :w]


def test_architectures_carry_their_policy():
    with torch.device("meta"):  # the policy is part of the built model, not of its weights: skip initialising them
        for size in ("tiny", "small", "base", "large"):
            assert csap_zoo.create_model(f"segnext_{size}").pad_mode == "none"
            assert csap_zoo.create_model(f"csap_{size}").pad_mode == "zero-to-stride"
    assert csap_zoo.create_model("segnext_tiny").config.pad_mode == "none"


@pytest.mark.parametrize("size", ODD_SIZES)
def test_segnext_runs_unpadded_and_csap_padded(size):
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    segnext = _segnext()
    seen = []
    handle = segnext.backbone.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        out = segnext(x)
        handle.remove()
        assert seen == [size]
        assert torch.allclose(out, _unpadded_reference(segnext, x), atol=1e-6)
        padded = _padded_reference(segnext, x)
    # GroupNorm and NMF statistics are global: padding changes the whole map, not only the border
    assert (out - padded).abs().max() > 1e-2
    torch.manual_seed(0)
    csap = csap_zoo.create_model("csap_tiny", num_classes=7).eval()
    with torch.no_grad():
        assert torch.allclose(csap(x), _padded_reference(csap, x), atol=1e-6)


@pytest.mark.parametrize("pad_mode", ["none", "zero-to-stride"])
def test_raw_logits_and_geometry_reproduce_the_forward(pad_mode):
    model = _segnext(pad_mode)
    x = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        raw = model(x, upsample=False, crop=False)
        resized, covered = model.logit_geometry(97, 131)
        again = F.interpolate(raw, size=resized, mode="bilinear", align_corners=False)[..., :covered[0], :covered[1]]
        assert torch.allclose(again, model(x), atol=1e-6)
        cells = model(x, upsample=False)
    assert cells.shape[-2:] == (13, 17)  # every stride-8 cell that overlaps the 97x131 image


@pytest.mark.parametrize("pad_mode", ["none", "zero-to-stride"])
def test_export_wrapper_and_fused_copy_follow_the_policy(pad_mode):
    model = _segnext(pad_mode)
    fused = csap_zoo.models.optimize_for_inference(model)
    for size in ODD_SIZES:
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            ref = model(x)
            assert torch.equal(SegmentorLogits(model, branch_free=True)(x), ref)
            assert torch.allclose(fused(x), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_onnx_export_keeps_the_unpadded_policy_at_other_sizes(tmp_path):
    pytest.importorskip("onnxruntime")
    from csap_zoo.tools.export import export_onnx

    # one MSCAN block per stage: the padding policy lives in the segmentor, not in the blocks, and the export costs
    # ~40% less than at full depth
    torch.manual_seed(0)
    model = csap_zoo.create_model("segnext_tiny", num_classes=7, nmf_seed=0, backbone_args={"depths": (1, 1, 1, 1)})
    model = model.eval()
    assert model.pad_mode == "none"
    for size in ODD_SIZES:  # padding would show in the parity: it changes the whole map (global GroupNorm/NMF)
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            assert (model(x) - _padded_reference(model, x)).abs().max() > 1e-2
    result = export_onnx(model, str(tmp_path / "m.onnx"), 64, 96, check_sizes=ODD_SIZES)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert result.checked_sizes == ODD_SIZES


def test_segmenter_follows_the_policy_in_whole_and_slide_mode():
    from csap_zoo.inference import InferenceConfig, Segmenter

    model = _segnext()
    image = torch.rand(3, 97, 131, generator=torch.Generator().manual_seed(4)) * 255
    whole = Segmenter(model, InferenceConfig(mode="whole", resize=None), optimize=False)
    x = whole.inputs.normalize(image.unsqueeze(0).float())
    with torch.no_grad():
        expected = _unpadded_reference(model, x).argmax(1)[0]
    assert (torch.as_tensor(whole.predict(image)).long() == expected).float().mean() > 0.999
    slide = Segmenter(model, InferenceConfig(mode="slide", resize=None, crop_size=(64, 64), stride=(48, 48)),
                      optimize=False)
    seen = []
    handle = model.backbone.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    slide.predict(image)
    handle.remove()
    assert seen and all(s == (64, 64) for s in seen)


def test_policy_is_saved_and_old_configs_keep_zero_padding(tmp_path):
    model = _segnext()
    folder = model.save_pretrained(str(tmp_path / "m"))
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model"]["pad_mode"] == "none"
    assert "input padding | none" in (folder / "README.md").read_text()
    assert csap_zoo.from_pretrained(folder).pad_mode == "none"
    del saved["model"]["pad_mode"]  # a folder written before the policy existed ran with zero padding
    (folder / "config.json").write_text(json.dumps(saved))
    assert csap_zoo.from_pretrained(folder).pad_mode == "zero-to-stride"
    with pytest.raises(ValueError, match="pad_mode"):
        SegmentorConfig.from_dict({**model.config.to_dict(), "pad_mode": "reflect"})


def test_a_checkpoint_in_the_official_layout_runs_as_the_original(tmp_path):
    """An MMSegmentation-layout SegNeXt checkpoint, loaded as a local file, gives the unpadded forward."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_mscan_layout", Path(__file__).parent / "test_mscan.py")
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    source = _segnext()
    state = source.state_dict()
    backbone = {k[len("backbone."):].replace("stages_", "stages.", 1): v for k, v in state.items()
                if k.startswith("backbone.")}
    head_names = (("squeeze.0.", "squeeze.conv."), ("squeeze.1.", "squeeze.gn."),
                  ("hamburger.ham_in.", "hamburger.ham_in.conv."), ("hamburger.ham_out.0.", "hamburger.ham_out.conv."),
                  ("hamburger.ham_out.1.", "hamburger.ham_out.gn."), ("align.0.", "align.conv."),
                  ("align.1.", "align.gn."), ("classifier.", "conv_seg."))
    official = {f"backbone.{k}": v for k, v in layout.to_original_layout(backbone).items()}
    for key, value in state.items():
        if key.startswith("decode_head."):
            rest = key[len("decode_head."):]
            mine, theirs = next((a, b) for a, b in head_names if rest.startswith(a))
            official["decode_head." + theirs + rest[len(mine):]] = value
    path = tmp_path / "segnext_official.pth"
    torch.save({"state_dict": official}, path)
    loaded = csap_zoo.create_model("segnext_tiny", pretrained=str(path), nmf_seed=0).eval()
    assert loaded.pad_mode == "none"
    x = torch.randn(1, 3, 97, 131, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(loaded(x), _unpadded_reference(source, x), atol=1e-5)
