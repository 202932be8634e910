"""Optimiser parameter groups: MMSegmentation's custom_keys rule, parameter by parameter, on official names."""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

from csap_zoo import create_model
from csap_zoo.training.optim import ParamRule, describe_param_groups, param_groups, resolve_param_rules

_spec = importlib.util.spec_from_file_location("_mscan_layout", Path(__file__).parents[1] / "models" / "test_mscan.py")
_mscan_layout = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mscan_layout)

# The official SegNeXt configs: paramwise_cfg=dict(custom_keys={'pos_block': dict(decay_mult=0.),
# 'norm': dict(decay_mult=0.), 'head': dict(lr_mult=10.)}).
OFFICIAL_CUSTOM_KEYS = {"pos_block": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0}, "head": {"lr_mult": 10.0}}

# Our LightHamHead names -> MMSegmentation's (ConvModule: .conv / .gn; the classifier is conv_seg).
_HEAD_TO_OFFICIAL = (("squeeze.0.", "squeeze.conv."), ("squeeze.1.", "squeeze.gn."),
                     ("hamburger.ham_in.", "hamburger.ham_in.conv."), ("hamburger.ham_out.0.", "hamburger.ham_out.conv."),
                     ("hamburger.ham_out.1.", "hamburger.ham_out.gn."), ("align.0.", "align.conv."),
                     ("align.1.", "align.gn."), ("classifier.", "conv_seg."))


def official_name(ours: str) -> str:
    """The name the same parameter has in an official SegNeXt EncoderDecoder."""
    if ours.startswith("backbone."):
        key = re.sub(r"^stages_(\d)\.", r"stages.\1.", ours[len("backbone."):])
        return "backbone." + next(iter(_mscan_layout.to_original_layout({key: torch.empty(0)})))
    rest = ours[len("decode_head."):]
    for mine, theirs in _HEAD_TO_OFFICIAL:
        if rest.startswith(mine):
            return "decode_head." + theirs + rest[len(mine):]
    raise AssertionError(f"unmapped head parameter {ours}")


def mmcv_custom_keys(name: str, lr: float, wd: float, custom_keys: Dict[str, Dict[str, float]]) -> Tuple[float, float]:
    """MMCV's DefaultOptimizerConstructor with only custom_keys: longest key first (ties alphabetical), first
    substring match sets lr/decay, everything else keeps the base values."""
    for key in sorted(sorted(custom_keys), key=len, reverse=True):
        if key in name:
            return lr * custom_keys[key].get("lr_mult", 1.0), wd * custom_keys[key].get("decay_mult", 1.0)
    return lr, wd


def _close(a: Tuple[float, float], b: Tuple[float, float]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-12, abs_tol=0.0) for x, y in zip(a, b))


def _per_param(groups) -> Dict[str, Tuple[float, float]]:
    return {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}


@pytest.mark.parametrize("arch", ["segnext_tiny", "segnext_base"])
def test_mmseg_rule_matches_official_parameter_by_parameter(arch):
    model = create_model(arch, num_classes=150)
    ours = _per_param(param_groups(model, 6e-5, 0.01, "mmseg", head_lr_mult=10.0))
    names = [n for n, p in model.named_parameters()]
    assert set(ours) == set(names)
    expected = {n: mmcv_custom_keys(official_name(n), 6e-5, 0.01, OFFICIAL_CUSTOM_KEYS) for n in names}
    assert {n: v for n, v in ours.items() if not _close(v, expected[n])} == {}
    # what the official rule implies, spelled out: stem BatchNorms, biases and layer scales decay; the head's
    # GroupNorms decay at 10x lr; block BatchNorms and stage LayerNorms do not decay
    assert ours["backbone.stages_0.downsample.proj.1.weight"] == pytest.approx((6e-5, 0.01))
    assert ours["backbone.stages_0.blocks.0.ls1.gamma"] == pytest.approx((6e-5, 0.01))
    assert ours["backbone.stages_0.blocks.0.norm1.weight"] == pytest.approx((6e-5, 0.0))
    assert ours["backbone.stages_3.norm.bias"] == pytest.approx((6e-5, 0.0))
    assert ours["decode_head.squeeze.1.weight"] == pytest.approx((6e-4, 0.01))


def test_no_decay_1d_rule_is_the_timm_convention():
    model = create_model("segnext_tiny", num_classes=150)
    ours = _per_param(param_groups(model, 6e-5, 0.01, "no-decay-1d", head_lr_mult=10.0))
    for name, param in model.named_parameters():
        lr = 6e-4 if name.startswith("decode_head.") else 6e-5
        wd = 0.0 if param.ndim <= 1 else 0.01
        assert ours[name] == pytest.approx((lr, wd)), name
    mmseg = _per_param(param_groups(model, 6e-5, 0.01, "mmseg", head_lr_mult=10.0))
    differ = [n for n in ours if not _close(ours[n], mmseg[n])]
    assert len(differ) > 100  # biases, layer scales, stem and head norms


def test_custom_rules_longest_key_wins_and_validation():
    model = create_model("csap_tiny", num_classes=5)
    rules = [{"key": "decode_head", "lr_mult": 10.0}, {"key": "decode_head.classifier", "lr_mult": 2.0,
                                                         "decay_mult": 0.0}]
    ours = _per_param(param_groups(model, 1.0, 0.1, rules))
    assert ours["decode_head.classifier.weight"] == pytest.approx((2.0, 0.0))
    other = next(n for n in ours if n.startswith("decode_head.") and "classifier" not in n)
    assert ours[other] == pytest.approx((10.0, 0.1))
    assert ours["backbone.stages_0.blocks.0.norm1.weight"] == pytest.approx((1.0, 0.1))
    with pytest.raises(ValueError, match="unknown parameter rule set 'mmsegg'"):
        resolve_param_rules("mmsegg", 10.0)
    with pytest.raises(ValueError, match="lr_mult must be a number"):
        ParamRule("head", lr_mult=-1)
    with pytest.raises(ValueError, match=r"\{key, lr_mult, decay_mult\}"):
        resolve_param_rules([{"key": "head", "lr": 3}], 10.0)


def test_describe_param_groups_counts_every_tensor():
    model = create_model("segnext_tiny", num_classes=150)
    groups = param_groups(model, 6e-5, 0.01, "mmseg")
    text = describe_param_groups(groups)
    counts = [int(m) for m in re.findall(r": (\d+) tensors", text)]
    assert sum(counts) == sum(1 for _ in model.parameters())
    assert len(text.splitlines()) == len(groups) == 3


def test_recipe_presets_use_the_official_rule_and_the_demo_keeps_its_own():
    from csap_zoo.training import get_preset

    for name in ("ade20k", "cityscapes", "cocostuff"):
        assert get_preset(name).param_rules == "mmseg"
    assert get_preset("shapes-demo").param_rules == "no-decay-1d"
    with pytest.raises(ValueError, match="param_rules"):
        get_preset("ade20k").replace(param_rules="mmsegg")


def test_trainer_builds_its_optimiser_from_the_rule_and_prints_the_groups(tiny_shapes, tmp_path, capsys):
    from csap_zoo.training.trainer import Trainer

    from .conftest import tiny_config

    trainer = Trainer(tiny_config(tiny_shapes, tmp_path / "run", param_rules="mmseg", head_lr_mult=10.0,
                                  max_iters=1))
    try:
        names = {id(p): n for n, p in trainer.module.named_parameters()}
        got = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups
               for p in g["params"]}
        base_lr = trainer.config.lr * trainer.schedule(0)  # the scheduler has applied the warmup factor
        expected = {n: mmcv_custom_keys(n, base_lr, 0.01, OFFICIAL_CUSTOM_KEYS) for n in names.values()}
        assert {n: v for n, v in got.items() if not _close(v, expected[n])} == {}
    finally:
        trainer.close()
    err = capsys.readouterr().err
    assert "parameter groups (param_rules='mmseg')" in err
    assert sum(int(m) for m in re.findall(r": (\d+) tensors", err)) == len(names)


def test_resume_with_other_rules_is_a_clear_error(tiny_shapes, tmp_path):
    from csap_zoo.training import train

    out = tmp_path / "run"
    train(tiny_config_for(tiny_shapes, out, max_iters=2, checkpoint_interval=2))
    with pytest.raises(ValueError, match=r"param_rules='no-decay-1d'.*Resume with param_rules='no-decay-1d'"):
        train(tiny_config_for(tiny_shapes, out, max_iters=4, param_rules="mmseg", resume="auto"))


def tiny_config_for(*args, **kwargs):
    from .conftest import tiny_config

    return tiny_config(*args, **kwargs)
