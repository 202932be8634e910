"""Checkpoint retention and resume trust only what is readable; the log is one history; files respect the umask."""
from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch

from csap_zoo.training import Trainer, load_training_checkpoint, train

from .conftest import Crash, crash_at, tiny_config


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def full_losses(tiny_shapes, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train(tiny_config(tiny_shapes, tmp_path_factory.mktemp("full")))
    finally:
        torch.set_num_threads(threads)
    return [h["loss"] for h in result.history]


def test_an_unreadable_later_checkpoint_never_costs_the_good_one(tiny_shapes, tmp_path, full_losses, capsys):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "iter_00000099.pt").write_bytes(b"not a checkpoint")  # a damaged file from some earlier run
    with pytest.raises(Crash):
        train(tiny_config(tiny_shapes, tmp_path / "run", resume="auto"), hooks=[crash_at(3)])
    assert "iter_00000002.pt" in _names(ckpts)  # the checkpoint just written survives retention

    resumed = train(tiny_config(tiny_shapes, tmp_path / "run", resume="auto"))
    assert [h["iter"] for h in resumed.history] == [3, 4]
    assert [h["loss"] for h in resumed.history] == full_losses[2:]
    err = capsys.readouterr().err
    assert "iter_00000099.pt" in err and "unreadable" in err
    # the damaged file is kept under a name resume and retention no longer consider, and said so
    assert _names(ckpts) == ["iter_00000004.pt", "iter_00000099.pt.unreadable"]
    assert (ckpts / "iter_00000099.pt.unreadable").read_bytes() == b"not a checkpoint"


def test_checkpoints_of_another_longer_run_do_not_hijack_resume(tiny_shapes, tmp_path, full_losses, capsys):
    longer = train(tiny_config(tiny_shapes, tmp_path / "old", max_iters=6))
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    shutil.copy(tmp_path / "old" / "checkpoints" / "iter_00000006.pt", ckpts)
    assert longer.iterations == 6
    with pytest.raises(Crash):  # a fresh run in the same folder, killed after its checkpoint at 2
        train(tiny_config(tiny_shapes, tmp_path / "run"), hooks=[crash_at(3)])
    resumed = train(tiny_config(tiny_shapes, tmp_path / "run", resume="auto"))
    assert [h["iter"] for h in resumed.history] == [3, 4]
    assert [h["loss"] for h in resumed.history] == full_losses[2:]
    assert "iter_00000006.pt" in capsys.readouterr().err
    assert _names(ckpts) == ["iter_00000004.pt", "iter_00000006.pt.superseded"]


def test_keep_checkpoints_counts_only_readable_ones(tiny_shapes, tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "iter_00000001.pt").write_bytes(b"junk")
    train(tiny_config(tiny_shapes, tmp_path / "run", max_iters=6, keep_checkpoints=2))
    assert _names(ckpts) == ["iter_00000001.pt.unreadable", "iter_00000004.pt", "iter_00000006.pt"]
    assert load_training_checkpoint(ckpts / "iter_00000004.pt")["iteration"] == 4


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_the_log_is_one_history_after_a_resume(tiny_shapes, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(tiny_config(tiny_shapes, out, eval_interval=1), hooks=[crash_at(3)])
    with open(out / "log.jsonl", "a") as handle:  # a record cut short by the kill
        handle.write('{"event": "train", "it')
    train(tiny_config(tiny_shapes, out, eval_interval=1, resume="auto"))
    records = _log(out)
    events = [(r["event"], r["iter"]) for r in records]
    assert events == [("start", 0), ("train", 1), ("eval", 1), ("train", 2), ("eval", 2), ("resume", 2),
                      ("train", 3), ("eval", 3), ("train", 4), ("eval", 4), ("end", 4)]
    resume = records[5]
    assert resume["checkpoint"] == "iter_00000002.pt" and resume["dropped"] == 2  # train 3 and the cut record


def test_a_restart_before_the_first_checkpoint_starts_a_new_log(tiny_shapes, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(tiny_config(tiny_shapes, out), hooks=[crash_at(1)])
    train(tiny_config(tiny_shapes, out, resume="auto"))
    events = [(r["event"], r["iter"]) for r in _log(out)]
    assert events == [("start", 0), ("train", 1), ("train", 2), ("train", 3), ("train", 4), ("eval", 4), ("end", 4)]


def test_resume_from_a_folder(tiny_shapes, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Crash):
        train(tiny_config(tiny_shapes, out), hooks=[crash_at(3)])
    for folder in (out, out / "checkpoints"):  # the output folder or its checkpoints folder
        trainer = Trainer(tiny_config(tiny_shapes, tmp_path / "elsewhere", resume=str(folder)))
        assert trainer.iteration == 2
        trainer.close()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is a folder without") as info:
        Trainer(tiny_config(tiny_shapes, tmp_path / "x", resume=str(tmp_path / "empty")))
    assert "'auto'" in str(info.value) and "does not exist" not in str(info.value)


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_checkpoints_and_exports_follow_the_umask(tiny_shapes, tmp_path, umask_002):
    out = tmp_path / "run"
    train(tiny_config(tiny_shapes, out, max_iters=2, eval_interval=2, export=True))
    assert _mode(out / "checkpoints" / "iter_00000002.pt") == 0o664
    for folder in ("best", "final"):
        assert _mode(out / folder) == 0o775
        for name in ("config.json", "model.safetensors", "README.md"):
            assert _mode(out / folder / name) == 0o664
    assert _mode(out / "log.jsonl") == 0o664


def test_a_checkpoint_without_stored_metrics_is_evaluated_again(tiny_shapes, tmp_path):
    """Checkpoints of earlier versions lack the last evaluation: resuming at the end measures it again."""
    out = tmp_path / "run"
    done = train(tiny_config(tiny_shapes, out, export=True))
    expected = (out / "final" / "config.json").read_text()
    path = out / "checkpoints" / "iter_00000004.pt"
    state = torch.load(path, weights_only=True)
    state.pop("last_metrics", None)
    torch.save(state, path)
    shutil.rmtree(out / "final")
    again = train(tiny_config(tiny_shapes, out, export=True, resume="auto"))
    assert again.history == [] and again.metrics == done.metrics
    assert (out / "final" / "config.json").read_text() == expected
    assert [e["iter"] for e in again.evaluations] == [4]  # measured, not recorded twice
