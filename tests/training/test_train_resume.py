"""Checkpoints: weights-only loadable, atomic, and resuming continues the same run (same losses on CPU)."""
from __future__ import annotations

import pytest
import torch

from csap_zoo.training import Trainer, load_training_checkpoint, train

from .conftest import TINY_BACKBONE, Crash, crash_at, tiny_config


def test_kill_and_resume_gives_the_same_losses(tiny_shapes, tmp_path):
    # dropout and drop path on: the RNG state must travel with the checkpoint too
    common = dict(max_iters=6, checkpoint_interval=2, eval_interval=3, model_kwargs={}, backbone_args=TINY_BACKBONE)
    full = train(tiny_config(tiny_shapes, tmp_path / "full", **common))
    losses = [h["loss"] for h in full.history]
    assert len(losses) == 6

    # the interrupted run dies after step 5: the work after its last checkpoint (iteration 4) is lost
    with pytest.raises(Crash):
        train(tiny_config(tiny_shapes, tmp_path / "cut", **common), hooks=[crash_at(5)])
    saved = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert saved == ["iter_00000004.pt"]  # keep_checkpoints=1; no temp files left behind
    state = torch.load(tmp_path / "cut" / "checkpoints" / saved[0], weights_only=True)
    assert state["iteration"] == 4 and {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(state)

    resumed = train(tiny_config(tiny_shapes, tmp_path / "cut", resume="auto", **common))
    assert [h["iter"] for h in resumed.history] == [5, 6]
    assert [h["loss"] for h in resumed.history] == losses[4:]  # bit-identical on the CPU
    assert [e["mIoU"] for e in resumed.evaluations] == [e["mIoU"] for e in full.evaluations]
    final_full = load_training_checkpoint(tmp_path / "full" / "checkpoints" / "iter_00000006.pt")["model"]
    final_cut = load_training_checkpoint(tmp_path / "cut" / "checkpoints" / "iter_00000006.pt")["model"]
    assert all(torch.equal(final_full[k], final_cut[k]) for k in final_full)


def test_resume_auto_without_checkpoints_starts_fresh_and_bad_paths_are_errors(tiny_shapes, tmp_path):
    trainer = Trainer(tiny_config(tiny_shapes, tmp_path / "run", resume="auto"))
    assert trainer.iteration == 0
    trainer.close()
    with pytest.raises(ValueError, match="does not exist"):
        Trainer(tiny_config(tiny_shapes, tmp_path / "run", resume=str(tmp_path / "nope.pt")))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        Trainer(tiny_config(tiny_shapes, tmp_path / "run", resume=str(tmp_path / "junk.pt")))


def test_gradient_accumulation_matches_the_full_batch_without_batchnorm_effects(tiny_shapes, tmp_path):
    """Same global batch: 1 micro-batch of 4 vs 2 accumulated micro-batches of 2 see the same images; with BN in
    eval mode (no batch statistics) the updates agree."""
    runs = {}
    for accum in (1, 2):
        trainer = Trainer(tiny_config(tiny_shapes, tmp_path / f"a{accum}", accum_steps=accum, max_iters=2,
                                      checkpoint_interval=0))
        trainer.module.train = lambda mode=True, m=trainer.module: torch.nn.Module.train(m, False)  # BN frozen
        runs[accum] = [h["loss"] for h in trainer.run().history]
        trainer.close()
    assert runs[1] == pytest.approx(runs[2], rel=1e-4, abs=1e-5)
