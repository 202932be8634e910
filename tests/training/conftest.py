"""Shared fixtures for the training tests: small generated datasets."""
from __future__ import annotations

import pytest
import torch

from csap_zoo.data.synthetic import generate_shapes_dataset


@pytest.fixture(autouse=True)
def _engine_tests_use_one_thread(one_torch_thread):
    """Training tests always run on one intra-op thread (see tests/conftest.py)."""
    yield


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """16 train / 4 val generated images of 48x48 (folder layout with classes.txt)."""
    root = tmp_path_factory.mktemp("tiny_shapes")
    generate_shapes_dataset(root, num_train=16, num_val=4, size=(48, 48), seed=3)
    return root


# CSAP-T with one MSCAN block per stage instead of 3/3/5/2: every stage, the CSAP head and the whole training
# machinery (steps, evaluation, checkpoints, exports and their model cards) at a third of the depth
TINY_BACKBONE = {"depths": (1, 1, 1, 1)}


def tiny_config(data_root, out_dir, **changes):
    """A fast CPU config: CSAP-T (one block per stage, :data:`TINY_BACKBONE`) from scratch on 32x32 crops, no
    dropout / drop path (deterministic losses)."""
    from csap_zoo.training import get_preset

    values = dict(data_root=str(data_root), out_dir=str(out_dir), crop_size=(32, 32), scale=(48, 48),
                  ratio_range=(0.75, 1.25), batch_size=4, max_iters=4, eval_interval=0, checkpoint_interval=2,
                  log_interval=1, num_workers=0, progress=False, tensorboard=False, export=False, lr=1e-3,
                  warmup_iters=2, device="cpu", model_kwargs={"dropout": 0.0, "drop_path": 0.0},
                  backbone_args={"drop_path_rate": 0.0, **TINY_BACKBONE})
    values.update(changes)
    return get_preset("shapes-demo").replace(**values)


class Crash(RuntimeError):
    """Raised by a ``crash_at`` hook: stands for a run killed between optimiser steps (in-process)."""


def crash_at(n):
    """A trainer hook that raises Crash after iteration ``n``."""
    def hook(trainer, iteration, loss):
        if iteration == n:
            raise Crash(f"killed at iteration {iteration}")
    return hook
