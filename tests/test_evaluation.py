"""Evaluator: hand-computed aAcc / mIoU / mAcc with MMSegmentation's conventions."""
import math

import numpy as np
import pytest
import torch

from csap_zoo.evaluation import Evaluator, evaluate

NAN = float("nan")


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=0, atol=1e-12)


def test_hand_computed_case_with_ignore_and_a_class_absent_from_both():
    # gt/pred pixel pairs (ignore excluded): (0,0) (0,1) (1,1) (1,1) (2,0); class 3 appears in neither
    gt = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [1, 3, 0]])  # the 3 sits on an ignored pixel: it must not count
    ev = Evaluator(num_classes=4)
    ev.update(pred, gt)
    r = ev.compute()
    # intersections 1, 2, 0, 0; gt areas 2, 2, 1, 0; pred areas 2, 3, 0, 0; unions 3, 3, 1, 0
    _close(r.iou, [1 / 3, 2 / 3, 0.0, NAN])
    _close(r.acc, [1 / 2, 1.0, 0.0, NAN])
    assert r.mIoU == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert r.mAcc == pytest.approx((0.5 + 1 + 0) / 3)
    assert r.aAcc == pytest.approx(3 / 5)
    assert r.confusion_matrix.sum() == 5


def test_class_only_predicted_has_zero_iou_and_undefined_accuracy():
    gt = np.zeros((2, 2), dtype=np.int64)
    pred = np.array([[0, 0], [0, 1]])
    ev = Evaluator(3)
    ev.update(pred, gt)
    r = ev.compute()
    _close(r.iou, [3 / 4, 0.0, NAN])
    _close(r.acc, [3 / 4, NAN, NAN])
    assert r.mIoU == pytest.approx(3 / 8)  # nanmean over classes 0 and 1
    assert r.mAcc == pytest.approx(3 / 4)


def test_areas_accumulate_over_the_dataset_not_per_image():
    ev = Evaluator(2)
    ev.update(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 1]]))  # image 1: IoU0 3/4, IoU1 0
    ev.update(np.array([[1]]), np.array([[1]]))  # image 2: IoU1 1 (class 0 absent)
    r = ev.compute()
    # dataset-wide: class 0 -> I 3, U 4; class 1 -> I 1, U 2
    _close(r.iou, [3 / 4, 1 / 2])
    assert r.mIoU == pytest.approx(5 / 8)
    per_image_mean = ((3 / 4 + 0) / 2 + 1.0) / 2
    assert r.mIoU != pytest.approx(per_image_mean)
    assert r.aAcc == pytest.approx(4 / 5)


def test_batches_and_torch_tensors_equal_one_by_one_numpy():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (3, 8, 9))
    gt[:, 0] = 255
    pred = rng.integers(0, 5, (3, 8, 9))
    a, b = Evaluator(5), Evaluator(5)
    a.update(torch.from_numpy(pred), torch.from_numpy(gt))
    for p, g in zip(pred, gt):
        b.update(p, g)
    np.testing.assert_array_equal(a.confusion_matrix, b.confusion_matrix)
    # against a direct count
    valid = gt != 255
    assert a.compute().aAcc == pytest.approx((pred[valid] == gt[valid]).mean())


def test_reset_and_all_ignored():
    ev = Evaluator(2)
    ev.update(np.array([[1]]), np.array([[255]]))
    r = ev.compute()
    assert math.isnan(r.aAcc) and math.isnan(r.mIoU) and math.isnan(r.mAcc)
    ev.update(np.array([[1]]), np.array([[1]]))
    ev.reset()
    assert ev.confusion_matrix.sum() == 0


def test_bad_labels_are_clear_errors():
    ev = Evaluator(3)
    with pytest.raises(ValueError, match=r"gt_0007\.png: ground truth has labels \[3, 7\] outside 0\.\.2"):
        ev.update(np.zeros((2, 2), int), np.array([[3, 7], [0, 255]]), name="gt_0007.png")
    with pytest.raises(ValueError, match=r"prediction has labels \[5\]"):
        ev.update(np.array([[5]]), np.array([[0]]))
    with pytest.raises(ValueError, match="differs from ground-truth shape"):
        ev.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="integer class indices"):
        ev.update(np.full((1, 1), 0.5), np.zeros((1, 1), int))
    assert ev.confusion_matrix.sum() == 0  # nothing half-counted


def test_table_and_summary():
    ev = Evaluator(3, class_names=["road", "sky", "car"])
    ev.update(np.array([[0, 1]]), np.array([[0, 0]]))
    r = ev.compute()
    table = r.table()
    assert "road" in table and "sky" in table and "nan" in table
    assert r.summary() == "aAcc: 50.00  mIoU: 25.00  mAcc: 50.00"
    d = r.to_dict()
    assert d["per_class"]["car"] == {"IoU": None, "Acc": None} and d["mIoU"] == pytest.approx(0.25)


def test_evaluate_runs_a_segmenter_over_a_dataset():
    from csap_zoo.data.metadata import custom_dataset_info

    class Data:
        info = custom_dataset_info(["a", "b"])

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.zeros((4, 4, 3), np.uint8), np.full((4, 4), i)

        def mask_path(self, i):
            return f"m{i}.png"

    class AlwaysZero:
        num_classes = 2

        def predict(self, image):
            return np.zeros(image.shape[:2], np.int64)

    r = evaluate(AlwaysZero(), Data(), progress=False)
    _close(r.iou, [0.5, 0.0])
    assert r.aAcc == pytest.approx(0.5)

    class Wrong(AlwaysZero):
        num_classes = 3

    with pytest.raises(ValueError, match="predicts 3 classes but the dataset has 2"):
        evaluate(Wrong(), Data(), progress=False)
