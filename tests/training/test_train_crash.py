"""SIGKILL at named moments of a real training process, then ``resume="auto"``: the resumed run ends with the same
final/ and best/ folders (bytes and metrics), the same log history and no leftover temporaries, as a run that was
never interrupted.

Each case's training process is forked from one zygote (crash_child.py) per module, which has already imported torch
and the trainer: a real, separate process killed by a real SIGKILL, without a fresh interpreter's imports per case."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest
import torch

from csap_zoo.training import train

from .conftest import tiny_config

CHILD = Path(__file__).with_name("crash_child.py")
RUN = dict(max_iters=4, eval_interval=2, checkpoint_interval=2, export=True, resume="auto")


class Zygote:
    """``crash_child.py`` serving this module's cases: each case is a child process forked from it (a real process,
    killed with a real SIGKILL), without paying a fresh interpreter's imports per case."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.log = log
        self._stderr = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, str(CHILD)], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, bufsize=0)

    def send(self, *words: str) -> None:
        self.proc.stdin.write((json.dumps(list(words)) + "\n").encode())

    def reply(self, timeout: float) -> Optional[List[str]]:
        """The zygote's next line (split), or None if none came within ``timeout`` seconds."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline().decode()
        if not line:
            self.proc.wait(30)
            pytest.fail(f"the zygote exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
        return line.split()

    def close(self) -> None:
        """Stop the zygote (it holds no state worth a clean exit: its children have all ended)."""
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self._stderr):
            stream.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    server = Zygote(tmp_path_factory.mktemp("zygote") / "stderr.txt")
    yield server
    server.close()


def _kill_at(zygote: Zygote, config, moment: str, tmp_path: Path) -> None:
    """Run ``config`` in a child process, wait until it blocks at ``moment``, SIGKILL it."""
    config_file = tmp_path / f"config-{moment.replace(':', '-')}.json"
    config_file.write_text(json.dumps(config.to_dict()))
    signal_file = tmp_path / f"signal-{moment.replace(':', '-')}"
    log_file = tmp_path / f"child-{moment.replace(':', '-')}.txt"
    zygote.send(str(config_file), moment, str(signal_file), str(log_file))
    started = zygote.reply(120)
    assert started is not None and started[0] == "started", started
    pid, ended = int(started[1]), None
    try:
        deadline = time.monotonic() + 120
        while not (signal_file.exists() and signal_file.read_text()):
            ended = zygote.reply(0.05)
            if ended is not None:
                pytest.fail(f"the child exited ({ended}) before {moment}: {log_file.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the child never reached {moment}")
        assert int(signal_file.read_text()) == pid  # the child itself blocks at the moment
        os.kill(pid, signal.SIGKILL)
        ended = zygote.reply(30)
        assert ended == ["ended", str(pid), str(-signal.SIGKILL)], ended
    finally:
        if ended is None:  # a failure above: do not leave the child blocked
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            zygote.reply(30)


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
def test_sigkill_then_resume_matches_the_uninterrupted_run(zygote, reference, tiny_shapes, tmp_path, moment,
                                                           leftover, resumed_from):
    ref_out, ref = reference
    out = tmp_path / "run"
    config = tiny_config(tiny_shapes, out, **RUN)
    _kill_at(zygote, config, moment, tmp_path)
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
