"""Metrics have one unit per output: fractions in the Python values computed with (EvalResult fields, to_dict(),
TrainResult.metrics), percent in everything people read (summary, table, CLI, model cards, model.metrics), and the
percent views are the fractions times 100 through one conversion."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import csap_zoo
from csap_zoo.evaluation import Evaluator, percent_metrics, to_percent
from csap_zoo.training.trainer import TrainResult

DEMO = Path(csap_zoo.__file__).parent / "assets" / "demo"


def _result():
    ev = Evaluator(3, class_names=["road", "sky", "car"])
    ev.update(np.array([[0, 1, 1, 0]]), np.array([[0, 0, 1, 0]]))
    return ev.compute()


def test_to_percent_is_the_one_conversion():
    assert to_percent(0.25) == 25.0 and to_percent(0.912834, 2) == 91.28
    assert to_percent(None) is None and math.isnan(to_percent(float("nan")))


def test_eval_result_keeps_fractions_and_adds_percent_views():
    r = _result()
    assert r.mIoU == pytest.approx((2 / 3 + 1 / 2) / 2) and 0 <= r.aAcc <= 1  # fields stay fractions
    assert r.mIoU_percent == pytest.approx(100 * r.mIoU)
    assert r.aAcc_percent == pytest.approx(75.0) and r.mAcc_percent == pytest.approx(100 * r.mAcc)
    fractions, percent = r.to_dict(), r.to_dict(percent=True)
    assert fractions["mIoU"] == pytest.approx(r.mIoU) and percent["mIoU"] == pytest.approx(r.mIoU_percent)
    assert percent["per_class"]["sky"]["IoU"] == pytest.approx(50.0)
    assert percent["per_class"]["car"] == {"IoU": None, "Acc": None}
    assert r.card_metrics() == {"mIoU": round(r.mIoU_percent, 2), "aAcc": 75.0, "mAcc": round(r.mAcc_percent, 2)}
    # what is printed is the percent view
    assert f"mIoU: {r.mIoU_percent:.2f}" in r.summary()
    assert f"{r.to_dict(percent=True)['per_class']['road']['IoU']:.2f}" in r.table()


def test_train_result_offers_the_percent_view_the_model_card_records():
    metrics = {"aAcc": 0.9767, "mIoU": 0.91283, "mAcc": None, "IoU": {"disc": 0.5, "ring": None}}
    result = TrainResult(out_dir=Path("."), final_dir=None, best_dir=None, metrics=metrics, best_metric=0.91283,
                         history=[], evaluations=[], iterations=1, wall_time=0.0)
    assert result.metrics["mIoU"] == 0.91283  # unchanged: fractions
    pct = result.metrics_percent
    assert pct["mIoU"] == pytest.approx(91.283) and pct["aAcc"] == pytest.approx(97.67) and pct["mAcc"] is None
    assert pct["IoU"] == {"disc": 50.0, "ring": None}
    assert percent_metrics(metrics, 2)["mIoU"] == 91.28


def test_the_demo_records_percent():
    config = json.loads((DEMO / "config.json").read_text())
    assert config["metrics"]["mIoU"] == csap_zoo.from_pretrained(DEMO).metrics["mIoU"] == 91.28
    assert "| mIoU | 91.28 |" in (DEMO / "README.md").read_text()
