"""torchrun with 2 gloo processes on the CPU trains like one process with the same global batch."""
from __future__ import annotations

import json
import pytest

import csap_zoo
from csap_zoo.data import FolderDataset, get_dataset_info
from csap_zoo.training import load_training_checkpoint, train

from _helpers import finish_torchrun, start_torchrun

from .conftest import TINY_BACKBONE, tiny_config


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(tiny_shapes, tmp_path):
    # global batch 4: 2 processes x 2 images, or 1 process x 2 accumulated micro-batches of 2 (same BN groups)
    common = dict(max_iters=3, checkpoint_interval=3, eval_interval=3)
    config = tiny_config(tiny_shapes, tmp_path / "ddp", **common)
    config.save(tmp_path / "ddp.yaml")
    proc = start_torchrun(["-m", "csap_zoo.cli", "train", "--config", str(tmp_path / "ddp.yaml")], tmp_path)
    try:  # the one-process run, while the two processes start and train
        single = train(tiny_config(tiny_shapes, tmp_path / "single", accum_steps=2, **common))
    finally:
        _, stderr = finish_torchrun(proc)
    assert proc.returncode == 0, stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert log[0]["world_size"] == 2
    ddp_losses = [r["loss"] for r in log if r["event"] == "train"]
    ddp_eval = [r for r in log if r["event"] == "eval"]

    single_losses = [h["loss"] for h in single.history]
    assert len(ddp_losses) == 3
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4, abs=1e-5)
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["iter_00000003.pt"]

    # distributed evaluation (each process scores half of the validation set; confusion matrices summed) equals a
    # single-process evaluation of the same weights. (The weights' BN running statistics differ from the
    # accumulation run's: without SyncBN each process tracks its own micro-batches, as on GPUs.)
    state = load_training_checkpoint(tmp_path / "ddp" / "checkpoints" / "iter_00000003.pt")
    model = csap_zoo.create_model("csap_tiny", num_classes=6, dropout=0.0, drop_path=0.0, backbone_args=TINY_BACKBONE)
    model.load_state_dict(state["model"])
    val = FolderDataset(tiny_shapes / "val" / "images", tiny_shapes / "val" / "masks", get_dataset_info("shapes"))
    reference = csap_zoo.evaluate(csap_zoo.Segmenter(model, resize=config.test_size), val, progress=False)
    assert ddp_eval[-1]["mIoU"] == pytest.approx(reference.mIoU, abs=1e-9)
    assert ddp_eval[-1]["aAcc"] == pytest.approx(reference.aAcc, abs=1e-9)
