"""The model config dataclasses check every field on construction: Python callers get the same clear errors as
config files, and every numeric field has explicit bounds."""
import dataclasses
import typing

import pytest

import csap_zoo
from csap_zoo.models.heads.csap import CSAPHeadConfig
from csap_zoo.models.heads.ham import HamHeadConfig
from csap_zoo.models.segmentor import DataConfig, SegmentorConfig
from csap_zoo.validation import ConfigError


@pytest.mark.parametrize("make, field", [
    (lambda: CSAPHeadConfig(num_heads=0), "num_heads"),
    (lambda: CSAPHeadConfig(num_heads=True), "num_heads"),
    (lambda: CSAPHeadConfig(pool_ratios=(8, 4, 2) * 5), "pool_ratios"),
    (lambda: CSAPHeadConfig(attention=("propagate", "psychic")), "attention"),
    (lambda: CSAPHeadConfig(mlp_ratio=float("inf")), "mlp_ratio"),
    (lambda: HamHeadConfig(num_groups=7), "num_groups"),
    (lambda: HamHeadConfig(num_bases=10 ** 6), "num_bases"),
    (lambda: DataConfig(test_size=(10 ** 6, 10 ** 6)), "test_size"),
    (lambda: DataConfig(class_names=["a", "b"], palette=[(0, 0, 0)]), "palette"),
    (lambda: SegmentorConfig("csap_tiny", "mscan_tiny", CSAPHeadConfig(), num_classes=10 ** 9), "num_classes"),
    (lambda: SegmentorConfig("csap_tiny", "mscan_tiny", {"type": "csap"}, num_classes=3), "head"),
    (lambda: SegmentorConfig("csap_tiny", "mscan_tiny", CSAPHeadConfig(), 3, backbone_args={"in_chans": 4}),
     "backbone_args.in_chans"),
])
def test_bad_values_are_config_errors_naming_the_field(make, field):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.field == field and str(info.value).startswith(field), str(info.value)


def test_values_are_normalised():
    head = CSAPHeadConfig(pool_ratios=[8, 4, 2], attention=["propagate", "independent"], mlp_ratio=2)
    assert head.pool_ratios == (8, 4, 2) and head.attention == ("propagate", "independent")
    assert isinstance(head.mlp_ratio, float)
    data = DataConfig(mean=[1, 2, 3], palette=[[1, 2, 3]], class_names=["x"])
    assert data.mean == (1.0, 2.0, 3.0) and data.palette == [(1, 2, 3)]


def test_create_model_overrides_get_the_checks():
    with pytest.raises(ConfigError, match="num_heads must be an integer in"):
        csap_zoo.create_model("csap_tiny", num_heads=0)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['depth'\]"):
        csap_zoo.create_model("csap_tiny", depth=3)
    with pytest.raises(ConfigError, match="num_classes must be an integer in"):
        csap_zoo.create_model("csap_tiny", num_classes=10 ** 6)


def _numeric_leaves(annotation) -> bool:
    if annotation in (int, float):
        return True
    return any(_numeric_leaves(a) for a in typing.get_args(annotation))


@pytest.mark.parametrize("cls", [CSAPHeadConfig, HamHeadConfig, DataConfig, SegmentorConfig])
def test_every_numeric_field_has_explicit_bounds(cls):
    hints = typing.get_type_hints(cls)
    unbounded = [f.name for f in dataclasses.fields(cls)
                 if _numeric_leaves(hints[f.name]) and "limits" not in f.metadata]
    assert unbounded == []
