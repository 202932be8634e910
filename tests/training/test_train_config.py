"""TrainConfig: presets of the paper's recipe, YAML/JSON round trips, validation, optimiser groups, schedule, CLI."""
from __future__ import annotations

import pytest
import torch

import csap_zoo
from csap_zoo.cli import main
from csap_zoo.training import TrainConfig, get_preset, list_presets, load_config
from csap_zoo.training.data import GlobalBatchSampler
from csap_zoo.training.optim import WarmupPoly


def test_presets_follow_the_recipe():
    assert set(list_presets()) == {"ade20k", "cityscapes", "cocostuff", "shapes-demo"}
    ade = get_preset("ade20k")
    assert (ade.lr, ade.weight_decay, ade.head_lr_mult, ade.warmup_iters, ade.max_iters, ade.batch_size) == (
        6e-5, 0.01, 10.0, 1500, 160_000, 16)
    assert ade.crop_size == (512, 512) and ade.scale == (2048, 512) and ade.ratio_range == (0.5, 2.0)
    assert ade.cat_max_ratio == 0.75 and ade.test_size == (2048, 512) and ade.init == "imagenet"
    city = get_preset("cityscapes")
    assert city.crop_size == (1024, 1024) and city.scale == (2048, 1024) and city.eval_mode == "slide"
    assert (city.eval_crop_size, city.eval_stride) == ((1024, 1024), (768, 768))
    assert get_preset("cocostuff").max_iters == 80_000


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip_and_preset_key(tmp_path, suffix):
    config = get_preset("cityscapes").replace(data_root="/data/cs", batch_size=4, clip_grad=1.0,
                                              model_kwargs={"attention": "independent"})
    path = config.save(tmp_path / f"c{suffix}")
    assert load_config(path) == config
    (tmp_path / "short.yaml").write_text("preset: ade20k\ndata_root: /d\nmax_iters: 10\ncrop_size: [256, 256]\n")
    short = load_config(tmp_path / "short.yaml")
    assert short.max_iters == 10 and short.crop_size == (256, 256) and short.lr == 6e-5 and short.dataset == "ade20k"


@pytest.mark.parametrize("changes, message", [
    (dict(batch_size=6, accum_steps=4), "divisible"),
    (dict(amp="fp8"), "amp"),
    (dict(bogus=1), "unknown training option"),
    (dict(dataset="kitti"), "dataset must be"),
    (dict(cat_max_ratio=0), "cat_max_ratio"),
    (dict(max_iters=0), "max_iters"),
])
def test_bad_settings_are_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({**TrainConfig().to_dict(), **changes})


def test_warmup_then_poly():
    f = WarmupPoly(max_iters=100, warmup_iters=10, warmup_ratio=1e-6, power=1.0, min_ratio=0.0)
    assert f(0) == pytest.approx(1e-6) and f(5) == pytest.approx(0.5, abs=1e-6) and f(10) == 1.0
    assert f(55) == pytest.approx(0.5) and f(100) == 0.0


def test_global_batches_split_the_same_way_for_processes_and_accumulation():
    one = list(GlobalBatchSampler(20, 8, accum_steps=2, world_size=1, rank=0, seed=3, start_iter=0, max_iters=5))
    ranks = [list(GlobalBatchSampler(20, 8, 1, 2, r, 3, 0, 5)) for r in (0, 1)]
    assert one[0::2] == ranks[0] and one[1::2] == ranks[1]
    resumed = list(GlobalBatchSampler(20, 8, 2, 1, 0, 3, start_iter=3, max_iters=5))
    assert resumed == one[6:]
    epoch0 = [i for batch in one[:4] for i, _ in batch]
    assert len(set(epoch0)) == 16  # no repeats within an epoch


def test_cli_train_print_config_and_errors(capsys, tmp_path):
    assert main(["train", "--preset", "ade20k", "--data-root", "/d", "--set", "crop_size=[256,256]",
                 "--max-iters", "7", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "max_iters: 7" in out and "- 256" in out and "data_root: /d" in out
    assert main(["train", "--preset", "ade20k", "--set", "nonsense=1"]) == 1
    assert "unknown training option" in capsys.readouterr().err
    assert main(["train", "--data-root", str(tmp_path / "none"), "--no-progress"]) == 1
    assert "not found" in capsys.readouterr().err


def test_init_from_a_zoo_checkpoint_of_another_architecture_is_refused(tmp_path):
    from csap_zoo.training import Trainer
    from csap_zoo.data.synthetic import generate_shapes_dataset

    generate_shapes_dataset(tmp_path / "d", num_train=4, num_val=0, size=(32, 32))
    with pytest.raises(ValueError, match="is a segnext_tiny checkpoint"):
        Trainer(get_preset("shapes-demo").replace(data_root=str(tmp_path / "d"), init="segnext_tiny.ade20k",
                                                  batch_size=2, out_dir=str(tmp_path / "r")))
