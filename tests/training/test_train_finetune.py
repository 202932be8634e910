"""End to end: CSAP-T learns the generated shapes on the CPU in seconds and exports a loadable model."""
from __future__ import annotations

import json

import numpy as np
import pytest

import csap_zoo
from csap_zoo.data import FolderDataset, get_dataset_info
from csap_zoo.data.synthetic import generate_shapes_dataset

# Chance level: predicting the majority class (background, ~75% of the pixels) everywhere scores mIoU ~0.13 on
# 6 classes; a uniform random guess ~0.08. CSAP-T (the full model, from scratch) reaches ~0.58 on the held-out images
# after 60 iterations of 16 random 32x32 crops (no photometric or scale augmentation, so that every step is spent on
# the shapes); deterministic on the CPU. (300 iterations of 8 64x64 crops reach ~0.67, in five times the time.)
MIN_MIOU = 0.5


@pytest.mark.slow
def test_csap_tiny_learns_the_shapes_dataset_on_cpu(tmp_path):
    paths = generate_shapes_dataset(tmp_path / "data", num_train=128, num_val=16, size=(64, 64), seed=1)
    result = csap_zoo.train(
        "shapes-demo", data_root=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), max_iters=60,
        batch_size=16, crop_size=(32, 32), scale=(64, 64), ratio_range=(1.0, 1.0), photometric=False,
        test_size=None, lr=4e-3, warmup_iters=5, eval_interval=30, checkpoint_interval=0, num_workers=1,
        progress=False, tensorboard=False,
    )
    val = FolderDataset(paths["val_images"], paths["val_masks"], get_dataset_info("shapes"))
    background = np.mean([(val[i][1] == 0).mean() for i in range(len(val))])
    chance = background / 6  # all-background prediction: IoU(background) = its share, 0 for the rest
    print(f"held-out mIoU {result.metrics['mIoU']:.4f} (chance {chance:.4f})")
    assert result.metrics["mIoU"] >= MIN_MIOU > 3 * chance
    assert result.best_metric >= result.evaluations[0]["mIoU"]

    # the export reloads exactly and carries its metrics, class names and palette
    model = csap_zoo.from_pretrained(result.final_dir)
    assert model.num_classes == 6 and model.data_config.class_names[1] == "disc"
    assert model.metrics["mIoU"] == pytest.approx(100 * result.metrics["mIoU"], abs=0.01)
    assert "| mIoU |" in (result.final_dir / "README.md").read_text()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if r["event"] == "eval"] == [30, 60]
    seg = csap_zoo.Segmenter(model)
    assert seg.dataset_info.class_names[3] == "triangle"
