"""Registry and factory: names, dataset tags, overrides, errors."""
import dataclasses

import pytest
import torch

import csap_zoo
from csap_zoo.models.registry import Architecture, parse_model_name, register_architecture
from csap_zoo.models.heads.csap import CSAPHead, CSAPHeadConfig
from csap_zoo.models.heads.ham import LightHamHead


def test_builtin_architectures_are_listed():
    assert csap_zoo.list_models() == sorted(
        [f"csap_{s}" for s in ("tiny", "small", "base", "large")]
        + [f"segnext_{s}" for s in ("tiny", "small", "base", "large")]
    )
    assert csap_zoo.list_models("csap_*") == ["csap_base", "csap_large", "csap_small", "csap_tiny"]
    assert "csap_tiny.cityscapes" in csap_zoo.list_models("csap_tiny*", with_datasets=True)
    assert csap_zoo.list_models("nothing*") == []


@pytest.mark.parametrize("name, classes", [
    ("csap_tiny.ade20k", 150), ("csap_tiny.cityscapes", 19), ("csap_tiny.cocostuff", 171), ("csap_tiny", 150),
])
def test_dataset_tag_sets_num_classes(name, classes):
    model = csap_zoo.create_model(name)
    assert model.num_classes == classes
    assert model.decode_head.classifier.out_channels == classes


def test_explicit_num_classes_wins_over_tag():
    assert csap_zoo.create_model("csap_tiny.ade20k", num_classes=5).num_classes == 5


def test_heads_and_backbones_of_builtins():
    csap = csap_zoo.create_model("csap_small")
    ham = csap_zoo.create_model("segnext_small")
    assert isinstance(csap.decode_head, CSAPHead) and isinstance(ham.decode_head, LightHamHead)
    assert csap.decode_head.in_channels == (128, 320, 512)
    assert csap.config.backbone == ham.config.backbone == "mscan_small"


def test_head_overrides_reach_the_head():
    model = csap_zoo.create_model("csap_tiny", attention="independent", propagation="nearest", pool_ratios=[8, 4, 2])
    assert model.decode_head.attention_modes == ("independent", "independent")
    assert model.decode_head.propagation == "nearest"
    assert model.config.head.pool_ratios == (8, 4, 2)
    # the registered default is untouched
    assert csap_zoo.create_model("csap_tiny").decode_head.attention_modes == ("propagate", "propagate")


def test_backbone_args_reach_timm():
    model = csap_zoo.create_model("csap_tiny", backbone_args={"drop_path_rate": 0.0})
    assert not any(type(m).__name__ == "DropPath" for m in model.backbone.modules())
    default = csap_zoo.create_model("csap_tiny")
    assert any(type(m).__name__ == "DropPath" for m in default.backbone.modules())


@pytest.mark.parametrize("name, message", [
    ("csap_tiy", "unknown architecture 'csap_tiy'; did you mean csap_tiny"),
    ("csap_tiny.ade21k", "unknown dataset tag 'ade21k'"),
    ("", "non-empty string"),
])
def test_bad_names_are_clear_errors(name, message):
    with pytest.raises(ValueError, match=message):
        csap_zoo.create_model(name)


def test_unknown_override_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['drop_path_rate'\].*backbone_args"):
        csap_zoo.create_model("csap_tiny", drop_path_rate=0.2)


def test_unknown_timm_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown timm backbone 'not_a_net'"):
        csap_zoo.create_model("csap_tiny", backbone="not_a_net")


@pytest.mark.parametrize("kwargs", [dict(num_classes=0), dict(num_classes=2.5), dict(in_chans=0)])
def test_bad_sizes_are_clear_errors(kwargs):
    with pytest.raises(ValueError):
        csap_zoo.create_model("csap_tiny", **kwargs)


def test_unpublished_checkpoint_is_a_clear_error():
    from csap_zoo.hub import CheckpointUnavailableError
    with pytest.raises(CheckpointUnavailableError, match="'csap_tiny.ade20k' is not published yet"):
        csap_zoo.create_model("csap_tiny.ade20k", pretrained=True)


def test_register_custom_architecture():
    arch = Architecture(name="csap_test_resnet", backbone="resnet18", head=CSAPHeadConfig(channels=32))
    register_architecture(arch)
    try:
        assert parse_model_name("csap_test_resnet.cityscapes") == ("csap_test_resnet", "cityscapes")
        model = csap_zoo.create_model("csap_test_resnet.cityscapes").eval()
        assert model.num_classes == 19
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)
        with pytest.raises(ValueError, match="already registered"):
            register_architecture(arch)
    finally:
        from csap_zoo.models import architectures
        architectures._ARCHITECTURES.pop("csap_test_resnet")


def test_architecture_names_cannot_contain_dots():
    with pytest.raises(ValueError, match="may not contain"):
        register_architecture(Architecture(name="a.b", backbone="resnet18", head=CSAPHeadConfig()))


def test_config_is_a_dataclass_that_rebuilds_the_model():
    model = csap_zoo.create_model("csap_tiny.cityscapes", propagation="nearest")
    clone = csap_zoo.models.Segmentor.from_config(dataclasses.replace(model.config))
    clone.load_state_dict(model.state_dict(), strict=True)
    assert clone.config == model.config
