"""Training configs (YAML / JSON files, --set, dicts) are checked field by field: types, bounds and choices, with one
clear error naming the file and the field, before anything is built."""
from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from csap_zoo.cli import main
from csap_zoo.training import TrainConfig, load_config

from _helpers import expect_config_error


def write(tmp_path, text, suffix=".yaml"):
    path = tmp_path / f"train{suffix}"
    path.write_text(text)
    return path


def test_yaml_exponent_floats_are_numbers(tmp_path):
    # PyYAML reads 6e-5 (no dot) as a string; a float field takes it as the number it is
    path = write(tmp_path, "preset: ade20k\nlr: 6e-5\nwarmup_ratio: 1e-6\nmin_lr: 0\nclip_grad: 3e1\n"
                           "betas: [0.9, 999e-3]\nmodel_kwargs: {dropout: 5e-2}\n")
    config = load_config(path)
    assert config.lr == 6e-5 and isinstance(config.lr, float)
    assert config.warmup_ratio == 1e-6 and config.clip_grad == 30.0 and config.betas == (0.9, 0.999)
    assert config.min_lr == 0.0 and isinstance(config.min_lr, float)
    assert config.model_kwargs == {"dropout": 0.05}


HOSTILE = {
    # strings where numbers belong (an int field never takes a string; a float field only a numeric one)
    "non-numeric lr": ("lr: fast\n", "lr"),
    "nan lr": ("lr: .nan\n", "lr"),
    "string lr nan": ("lr: 'nan'\n", "lr"),
    "string batch size": ("batch_size: '16'\n", "batch_size"),
    "exponent int": ("max_iters: 1e9\n", "max_iters"),
    "float batch size": ("batch_size: 16.0\n", "batch_size"),
    "bool batch size": ("batch_size: true\n", "batch_size"),
    "int for a bool": ("photometric: 1\n", "photometric"),
    "string for a bool": ("export: 'no'\n", "export"),
    "list for a string": ("model: [csap_tiny]\n", "model"),
    # bounds
    "zero crop": ("crop_size: [0, 512]\n", "crop_size"),
    "huge crop": ("crop_size: 100000\n", "crop_size"),
    "huge test_size": ("test_size: [100000000, 100000000]\n", "test_size"),
    "crop of three": ("crop_size: [1, 2, 3]\n", "crop_size"),
    "huge scale": ("scale: [1000000, 512]\n", "scale"),
    "zero eval stride": ("eval_stride: 0\n", "eval_stride"),
    "negative lr": ("lr: -1.0\n", "lr"),
    "beta of 2": ("betas: [0.9, 2]\n", "betas"),
    "flip probability 1.5": ("flip_prob: 1.5\n", "flip_prob"),
    "ratio range reversed": ("ratio_range: [2.0, 0.5]\n", "ratio_range"),
    "mean of two": ("mean: [1.0, 2.0]\n", "mean"),
    "zero std": ("std: [1.0, 0.0, 1.0]\n", "std"),
    "negative seed": ("seed: -1\n", "seed"),
    "huge batch": ("batch_size: 100000000\n", "batch_size"),
    "huge workers": ("num_workers: 100000\n", "num_workers"),
    "negative interval": ("eval_interval: -5\n", "eval_interval"),
    "ignore index 70000": ("ignore_index: 70000\n", "ignore_index"),
    # choices and names
    "unknown device": ("device: tpu\n", "device"),
    "unknown architecture": ("model: csap_gigantic\n", "model"),
    "unknown dataset": ("dataset: kitti\n", "dataset"),
    "unknown key": ("learning_rate: 0.1\n", "learning_rate"),
    "unknown preset": ("preset: imagenet\n", "preset"),
    "numeric preset": ("preset: 5\n", "preset"),
    # head options travel through the same checks as a model folder's
    "num_heads 0": ("model_kwargs: {num_heads: 0}\n", "model_kwargs.num_heads"),
    "unknown head option": ("model_kwargs: {depth: 3}\n", "model_kwargs.depth"),
    "string head option": ("model_kwargs: {channels: wide}\n", "model_kwargs.channels"),
    "list for model_kwargs": ("model_kwargs: [1, 2]\n", "model_kwargs"),
    # backbone options: plain values only, nothing that fetches or replaces weights
    "pretrained backbone": ("backbone_args: {pretrained: true}\n", "backbone_args.pretrained"),
    "overlay": ("backbone_args: {pretrained_cfg_overlay: {file: /x.pth}}\n", "backbone_args.pretrained_cfg_overlay"),
    "checkpoint path": ("backbone_args: {checkpoint_path: /x.pth}\n", "backbone_args.checkpoint_path"),
    "nested mapping": ("backbone_args: {drop_path_rate: {a: 1}}\n", "backbone_args.drop_path_rate"),
    # the document itself
    "list document": ("- lr: 0.1\n", "mapping"),
    "scalar document": ("42\n", "mapping"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_values_are_one_clear_error(tmp_path, case):
    text, field = HOSTILE[case]
    path = write(tmp_path, "preset: shapes-demo\n" + text if not text.startswith(("-", "42", "preset")) else text)
    expect_config_error(lambda: load_config(path), str(path), field)


@pytest.mark.parametrize("text, field", [
    ('[{"lr": 0.1}]', "mapping"),
    ('{"lr": "6e-5x"}', "lr"),
    ('{"test_size": [1e12, 1e12]}', "test_size"),
    ('{"batch_size": 1e400}', "batch_size"),
    ('{"max_iters": ' + "9" * 10_000 + "}", "cannot parse"),  # more digits than Python converts
    ('{"crop_size": ' + "[" * 100_000 + "]" * 100_000 + "}", "cannot parse"),
])
def test_hostile_json_values_are_one_clear_error(tmp_path, text, field):
    path = write(tmp_path, text, suffix=".json")
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert str(path) in str(info.value) and field in str(info.value), str(info.value)


def test_python_dicts_get_the_same_checks():
    expect_config_error(lambda: TrainConfig.from_dict({"num_workers": -1}), "num_workers")
    expect_config_error(lambda: TrainConfig(crop_size=(10 ** 9, 10 ** 9)), "crop_size")
    expect_config_error(lambda: TrainConfig().replace(lr="slow"), "lr")


def test_cli_set_takes_exponent_floats_and_rejects_words(capsys):
    assert main(["train", "--preset", "ade20k", "--data-root", "/d", "--set", "lr=6e-5", "--print-config"]) == 0
    assert "lr: 6.0e-05" in capsys.readouterr().out
    assert main(["train", "--preset", "ade20k", "--set", "lr=fast", "--print-config"]) == 1
    err = capsys.readouterr().err
    assert "lr" in err and "fast" in err and "Traceback" not in err


def _numeric_leaves(annotation) -> bool:
    if annotation in (int, float):
        return True
    return any(_numeric_leaves(a) for a in typing.get_args(annotation))


def test_every_numeric_training_field_has_explicit_bounds():
    hints = typing.get_type_hints(TrainConfig)
    unbounded = [f.name for f in dataclasses.fields(TrainConfig)
                 if _numeric_leaves(hints[f.name]) and "limits" not in f.metadata]
    assert unbounded == []


def test_saved_configs_round_trip_unchanged(tmp_path):
    config = TrainConfig(lr=6e-5, crop_size=256, clip_grad=1.0, model_kwargs={"dropout": 0.0})
    for suffix in (".yaml", ".json"):
        assert load_config(config.save(tmp_path / f"c{suffix}")) == config
    assert json.loads((tmp_path / "c.json").read_text())["crop_size"] == [256, 256]
