"""SIGKILL at named moments of a real training process, then ``resume="auto"``: the resumed run ends with the same
final/ and best/ folders (bytes and metrics), the same log history and no leftover temporaries, as a run that was
never interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from csap_zoo.engine import train

from .conftest import tiny_config

CHILD = Path(__file__).with_name("crash_child.py")
RUN = dict(max_iters=4, eval_interval=2, checkpoint_interval=2, export=True, resume="auto")


def _kill_at(config, moment: str, tmp_path: Path) -> None:
    """Run ``config`` in a child process, wait until it blocks at ``moment``, SIGKILL it."""
    config_file = tmp_path / f"config-{moment.replace(':', '-')}.json"
    config_file.write_text(json.dumps(config.to_dict()))
    signal_file = tmp_path / f"signal-{moment.replace(':', '-')}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(CHILD), str(config_file), moment, str(signal_file)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not signal_file.exists():
            if child.poll() is not None:
                pytest.fail(f"the child exited ({child.returncode}) before {moment}: "
                            f"{child.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the child never reached {moment}")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()


def _history(out: Path):
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in records if r["event"] != "resume"], records


def _temporaries(out: Path):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if ".tmp" in p.name)


@pytest.fixture(scope="module")
def reference(tiny_shapes, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("uninterrupted")
        result = train(tiny_config(tiny_shapes, out, **RUN))
    finally:
        torch.set_num_threads(threads)
    assert result.metrics and (out / "best").is_dir()
    return out, result


@pytest.mark.slow
@pytest.mark.parametrize("moment, leftover, resumed_from", [
    ("checkpoint:4", "checkpoints/.iter_00000004.pt.", 2),  # half a checkpoint in its temp file
    ("checkpoint:2", "checkpoints/.iter_00000002.pt.", None),  # before any checkpoint: starts again
    ("step:3", None, 2),
    ("best", ".best.", None),  # staging folder of the first best/ export (iteration 2, before its checkpoint)
    ("final", ".final.", 4),  # everything done but the final export
])
def test_sigkill_then_resume_matches_the_uninterrupted_run(reference, tiny_shapes, tmp_path, moment, leftover,
                                                           resumed_from):
    ref_out, ref = reference
    out = tmp_path / "run"
    config = tiny_config(tiny_shapes, out, **RUN)
    _kill_at(config, moment, tmp_path)
    if leftover is not None:  # the kill left a temporary behind
        assert any(name.startswith(leftover) for name in _temporaries(out)), _temporaries(out)

    result = train(config)

    assert result.iterations == 4
    assert [h["iter"] for h in result.history] == list(range((resumed_from or 0) + 1, 5))
    assert result.metrics == ref.metrics  # including per-class IoU: not "no validation set"
    for folder in ("final", "best"):
        for name in ("config.json", "model.safetensors", "README.md"):
            assert (out / folder / name).read_bytes() == (ref_out / folder / name).read_bytes(), (folder, name)
    assert json.loads((out / "final" / "config.json").read_text())["metrics"]["mIoU"] is not None
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["iter_00000004.pt"]
    assert _temporaries(out) == []

    history, records = _history(out)
    assert history == _history(ref_out)[0]  # each iteration once, one start, one end
    resumes = [r for r in records if r["event"] == "resume"]
    if resumed_from is None:
        assert resumes == []
    else:
        assert [(r["iter"], r["checkpoint"]) for r in resumes] == [(resumed_from, f"iter_{resumed_from:08d}.pt")]
