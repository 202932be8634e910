"""`csap-zoo convert` / convert_checkpoint detect the file's layout and never write a folder with parameters the
file did not initialise: a full SegNeXt file converted as a backbone, a backbone-only file under a checkpoint
name, or a classifier of another class count are one clear error and nothing written; --backbone-only (a random
head, said in a warning) is the explicit way out."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch

import csap_zoo
from csap_zoo.cli import main as cli_main
from csap_zoo.hub import ConversionError, from_pretrained
from csap_zoo.hub.convert import convert_checkpoint, describe_checkpoint, detect_format

_spec = importlib.util.spec_from_file_location("_serialization_tests", Path(__file__).with_name("test_serialization.py"))
_serialization_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_serialization_tests)
to_mmseg_layout = _serialization_tests.to_mmseg_layout  # ours -> MMSegmentation SegNeXt keys

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def segnext(tmp_path_factory):
    """A SegNeXt-T ADE20K model and its state dict saved as an MMSegmentation checkpoint (150 classes)."""
    torch.manual_seed(3)
    model = csap_zoo.create_model("segnext_tiny.ade20k").eval()
    path = tmp_path_factory.mktemp("mmseg") / "segnext_mscan-t_ade20k.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": to_mmseg_layout(model.state_dict())}, path)
    return model, path


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """An MSCAN-T ImageNet backbone checkpoint (no decode head)."""
    torch.manual_seed(9)
    model = timm.create_model("mscan_tiny").eval()
    path = tmp_path_factory.mktemp("in1k") / "mscan_t.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return model, path


def run_head(model):
    torch.manual_seed(0)  # the NMF draws random bases on every call
    with torch.no_grad():
        return model.eval()(X)


def same_backbone(a, b) -> bool:
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_layout_is_detected_and_described(segnext, imagenet):
    state = torch.load(segnext[1], weights_only=True)["state_dict"]
    assert detect_format(state) == "mmseg-segnext"
    assert "MMSegmentation SegNeXt" in describe_checkpoint(state) and "150 classes" in describe_checkpoint(state)
    backbone_only = {k: v for k, v in state.items() if k.startswith("backbone.")}
    assert detect_format(backbone_only) == "mscan-original"  # an MMSegmentation backbone without its head
    assert "no decode head" in describe_checkpoint(backbone_only)
    assert detect_format(imagenet[0].state_dict()) == "mscan-original"
    ours = segnext[0].state_dict()
    assert detect_format(ours) == "csap-safetensors"
    assert detect_format({k: v for k, v in ours.items() if k.startswith("backbone.")}) == "csap-safetensors"


def test_format_is_optional_and_detected(segnext, tmp_path):
    model, path = segnext
    assert cli_main(["convert", str(path), str(tmp_path / "out"), "--name", "segnext_tiny.ade20k"]) == 0
    assert torch.equal(run_head(from_pretrained(tmp_path / "out")), run_head(model))


def test_a_full_segnext_file_given_as_mscan_original_is_refused(segnext, tmp_path, capsys):
    _, path = segnext
    out = tmp_path / "out"
    assert cli_main(["convert", str(path), str(out), "--name", "segnext_tiny.ade20k",
                     "--format", "mscan-original"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "MMSegmentation SegNeXt segmentation checkpoint" in err and "decode head" in err
    assert "mmseg-segnext" in err and "--backbone-only" in err
    assert not out.exists()
    with pytest.raises(ConversionError, match="MMSegmentation SegNeXt"):  # the Python API says the same
        convert_checkpoint(path, out, "segnext_tiny.ade20k", "mscan-original")
    assert not out.exists()


def test_a_backbone_only_file_under_a_checkpoint_name_is_refused(imagenet, tmp_path, capsys):
    _, path = imagenet
    out = tmp_path / "out"
    for fmt in ([], ["--format", "mscan-original"]):
        assert cli_main(["convert", str(path), str(out), "--name", "segnext_tiny.ade20k", *fmt]) == 1
        err = capsys.readouterr().err
        assert "MSCAN ImageNet backbone checkpoint" in err and "no decode head" in err, err
        assert "--backbone-only" in err and "ade20k" in err
        assert not out.exists()
    with pytest.raises(ConversionError, match="decode head random"):
        convert_checkpoint(path, out, "segnext_tiny.ade20k")


def test_backbone_only_is_the_explicit_way_and_warns(imagenet, segnext, tmp_path, capsys):
    source, path = imagenet
    with pytest.warns(UserWarning, match="decode head is randomly initialised"):  # `warning: ...` on the CLI
        assert cli_main(["convert", str(path), str(tmp_path / "a"), "--name", "segnext_tiny.ade20k",
                         "--backbone-only"]) == 0
    converted = from_pretrained(tmp_path / "a")
    with torch.no_grad():
        expected = source.forward_intermediates(X, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(expected, converted.eval().backbone(X)))

    # the backbone of a full MMSegmentation file, into another head family
    model, full = segnext
    with pytest.warns(UserWarning, match="decode head is randomly initialised"):
        convert_checkpoint(full, tmp_path / "b", "csap_tiny.ade20k", backbone_only=True)
    assert same_backbone(from_pretrained(tmp_path / "b"), model)


def test_a_segnext_file_into_another_head_says_what_the_file_is(segnext, tmp_path, capsys):
    _, path = segnext
    assert cli_main(["convert", str(path), str(tmp_path / "out"), "--name", "csap_tiny.ade20k"]) == 1
    err = capsys.readouterr().err
    assert "MMSegmentation SegNeXt segmentation checkpoint" in err and "does not fit csap_tiny.ade20k" in err
    assert not (tmp_path / "out").exists()


def test_a_classifier_of_another_class_count_is_refused_not_reset(segnext, tmp_path, capsys):
    model, path = segnext
    assert cli_main(["convert", str(path), str(tmp_path / "c"), "--name", "segnext_tiny.cityscapes"]) == 1
    err = capsys.readouterr().err
    assert "150 classes" in err and "19 classes" in err, err
    assert not (tmp_path / "c").exists()
    # a bare architecture takes the file's classes
    assert cli_main(["convert", str(path), str(tmp_path / "bare"), "--name", "segnext_tiny"]) == 0
    converted = from_pretrained(tmp_path / "bare")
    assert converted.num_classes == 150 and torch.equal(run_head(converted), run_head(model))
