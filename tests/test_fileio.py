"""Atomic writers: umask-based permissions, folder publishing, and removing only temporaries nobody owns."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from csap_zoo import fileio
from csap_zoo.fileio import atomic_folder, atomic_write, clean_stale_temp, temp_name



@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_follows_the_umask(tmp_path, umask):
    out = atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"), fsync=True)
    assert out.read_text() == "x" and _mode(out) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_write_keeps_the_mode_when_the_writer_replaces_the_file(tmp_path, umask):
    def write(tmp):  # writes through its own 0600 temp file and a rename
        side = Path(tmp + ".side")
        side.write_text("y")
        os.chmod(side, 0o600)
        os.replace(side, tmp)
    assert _mode(atomic_write(tmp_path / "b.bin", write)) == 0o666 & ~umask


def test_atomic_write_failure_leaves_nothing(tmp_path):
    (tmp_path / "a.txt").write_text("old")

    def fail(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a.txt", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and (tmp_path / "a.txt").read_text() == "old"


def test_atomic_folder_publishes_whole_or_file_by_file(tmp_path, umask):
    with atomic_folder(tmp_path / "m") as staging:
        (staging / "w.bin").write_bytes(b"1")
        (staging / "c.json").write_text("{}")
    assert _mode(tmp_path / "m") == 0o777 & ~umask and _mode(tmp_path / "m" / "w.bin") == 0o666 & ~umask
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with atomic_folder(tmp_path / "m", ["w.bin"]) as staging:
        (staging / "w.bin").write_bytes(b"2")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["c.json", "notes.txt", "w.bin"]
    assert (tmp_path / "m" / "w.bin").read_bytes() == b"2"
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "m") as staging:
            (staging / "w.bin").write_bytes(b"3")
            raise RuntimeError("boom")
    assert (tmp_path / "m" / "w.bin").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_save_pretrained_follows_the_umask(tmp_path, umask):
    import csap_zoo

    model = csap_zoo.create_model("csap_tiny", num_classes=3)
    folder = model.save_pretrained(str(tmp_path / "m"))
    assert _mode(folder) == 0o777 & ~umask
    for name in ("config.json", "model.safetensors", "README.md"):
        assert _mode(folder / name) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


# ---------------------------------------------------------------------- stale temporaries
def _python(code: str, *args: str) -> subprocess.Popen:
    """A child that imports csap_zoo.fileio (fast: the package face loads no torch) and runs ``code``."""
    prelude = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from csap_zoo import fileio
    """)
    return subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code), *args])


def _wait_for(path: Path, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        assert child.poll() is None and time.monotonic() < deadline, "the child did not get there"
        time.sleep(0.02)


def test_temporaries_of_a_killed_writer_are_removed_those_of_a_live_one_kept(tmp_path):
    ready = tmp_path / "ready"
    code = """
        folder = Path(sys.argv[1])
        def write(tmp):
            Path(tmp).write_bytes(b"partial")
            Path(sys.argv[2]).write_text("")
            time.sleep(600)
        with fileio.atomic_folder(folder / "best") as staging:
            (staging / "w.bin").write_bytes(b"partial")
            fileio.atomic_write(folder / "iter_00000002.pt", write)
    """
    child = _python(code, str(tmp_path), str(ready))
    try:
        _wait_for(ready, child)
        temps = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        assert len(temps) == 2 and all(".tmp" in n and f"-{child.pid}-" in n for n in temps)
        assert clean_stale_temp(tmp_path) == []  # a live writer (same host): kept
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert sorted(p.name for p in clean_stale_temp(tmp_path)) == temps  # its pid is gone: removed
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_foreign_temporaries_go_by_age_and_nothing_but_our_own_names_ever(tmp_path):
    foreign = tmp_path / temp_name("final").replace(fileio._owner(), "0badf00d")  # another host's writer
    foreign.mkdir()
    (foreign / fileio.STAGING_MARKER).write_text("")
    foreign_file = tmp_path / temp_name("iter_00000004.pt").replace(fileio._owner(), "0badf00d")
    foreign_file.write_bytes(b"x")
    mine = tmp_path / temp_name("log.jsonl")  # this process: alive
    mine.write_text("")
    unmarked = tmp_path / temp_name("best").replace(fileio._owner(), "0badf00d")  # our name, but no marker
    unmarked.mkdir()
    users = [tmp_path / ".best.mycopy_1.tmp", tmp_path / ".final.backup01.tmp", tmp_path / ".log.jsonl.20240101.tmp",
             tmp_path / ".iter_00000004.pt.ab_3xk9q.tmp"]  # what mkstemp named, or a user's own copies
    users[0].mkdir()
    (users[0] / "model.safetensors").write_text("keep")
    others = [tmp_path / n for n in (".model.safetensors.partial", "notes.tmp", ".hidden.tmp", "final",
                                     ".x.0badf00d-1-zz.tmp")] + users[1:]
    for path in others:
        path.write_text("keep")
    assert clean_stale_temp(tmp_path) == []
    old = time.time() - fileio.STALE_AGE_S - 10
    for path in [foreign, foreign / fileio.STAGING_MARKER, foreign_file, mine, unmarked] + users + others:
        os.utime(path, (old, old))
    for path in users[0].iterdir():
        os.utime(path, (old, old))
    assert clean_stale_temp(tmp_path, names=r"iter_\d+\.pt") == [foreign_file]  # the name filter
    assert clean_stale_temp(tmp_path) == [foreign]  # this process is alive: its temporary stays, however old
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [mine.name, unmarked.name, users[0].name] + [p.name for p in others])
    assert (users[0] / "model.safetensors").read_text() == "keep"


def test_a_published_folder_holds_no_staging_marker(tmp_path):
    with atomic_folder(tmp_path / "best") as staging:
        assert (staging / fileio.STAGING_MARKER).is_file()
        (staging / "a.txt").write_text("a")
    with atomic_folder(tmp_path / "best") as staging:  # into an existing folder: file by file
        (staging / "b.txt").write_text("b")
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["a.txt", "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_staging_folder_being_filled_counts_as_touched(tmp_path):
    staging = tmp_path / temp_name("best").replace(fileio._owner(), "0badf00d")
    staging.mkdir()
    old = time.time() - fileio.STALE_AGE_S - 10
    os.utime(staging, (old, old))
    (staging / "model.safetensors").write_bytes(b"being written")
    assert clean_stale_temp(tmp_path) == []


@pytest.mark.slow
def test_a_save_does_not_break_a_concurrent_save_to_the_same_folder(tmp_path):
    go, ready = tmp_path / "go", tmp_path / "ready"
    code = """
        import torch
        torch.set_num_threads(1)
        import csap_zoo
        from csap_zoo.models import serialization
        real = serialization.save_file
        def save_file(*args, **kwargs):
            real(*args, **kwargs)
            Path(sys.argv[2]).write_text("")
            while not Path(sys.argv[3]).exists():
                time.sleep(0.02)
        serialization.save_file = save_file
        torch.manual_seed(0)
        csap_zoo.create_model("csap_tiny", num_classes=3).save_pretrained(sys.argv[1], metrics={"who": "child"})
    """
    prelude = "import sys, time\nfrom pathlib import Path\n"
    child = subprocess.Popen([sys.executable, "-c", prelude + textwrap.dedent(code), str(tmp_path / "best"),
                              str(ready), str(go)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_for(ready, child)
        import csap_zoo

        csap_zoo.create_model("csap_tiny", num_classes=3).save_pretrained(str(tmp_path / "best"),
                                                                          metrics={"who": "parent"})
        go.write_text("")
        assert child.wait(120) == 0  # its staging folder survived the parent's save
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert csap_zoo.from_pretrained(tmp_path / "best").metrics == {"who": "child"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "go", "ready"]


@pytest.mark.slow
def test_save_pretrained_gives_the_same_bytes_in_every_process(tmp_path):
    """Same weights, same file: what a resumed run's final/ is compared with, and what a manifest's sha256 pins."""
    import torch

    import csap_zoo

    code = ("import sys, torch, csap_zoo; torch.manual_seed(0); "
            "csap_zoo.create_model('csap_tiny', num_classes=3).save_pretrained(sys.argv[1])")
    children = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / str(i))],
                                 env={**os.environ, "OMP_NUM_THREADS": "1"}) for i in (1, 2)]
    torch.manual_seed(0)  # this process is the third (its own hash seed, its own import order)
    csap_zoo.create_model("csap_tiny", num_classes=3).save_pretrained(str(tmp_path / "0"))
    assert [child.wait(300) for child in children] == [0, 0]
    weights = {(tmp_path / str(i) / "model.safetensors").read_bytes() for i in range(3)}
    assert len(weights) == 1


def test_a_locked_partial_is_published_whole_or_removed(tmp_path, umask):
    target = tmp_path / "weights.bin"
    with fileio.locked_partial(target) as out:
        out.write(b"all of it")
        assert target.exists() is False and len(list(tmp_path.glob(".weights.bin.*.partial"))) == 1
    assert target.read_bytes() == b"all of it" and list(tmp_path.glob(".*")) == []
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask
    with pytest.raises(RuntimeError, match="bad hash"):
        with fileio.locked_partial(target) as out:
            out.write(b"something else")
            raise RuntimeError("bad hash")
    assert target.read_bytes() == b"all of it" and list(tmp_path.glob(".*")) == []


def test_the_partial_of_a_killed_streaming_writer_is_removed_that_of_a_live_one_kept(tmp_path):
    ready = tmp_path / "ready"
    code = """
        with fileio.locked_partial(Path(sys.argv[1]) / "weights.bin") as out:
            out.write(b"half")
            out.flush()
            Path(sys.argv[2]).write_text("")
            time.sleep(600)
    """
    child = _python(code, str(tmp_path), str(ready))
    try:
        _wait_for(ready, child)
        partials = list(tmp_path.glob(".weights.bin.*.partial"))
        assert len(partials) == 1
        assert fileio.clean_stale_partials(tmp_path / "weights.bin") == []  # held locked by a live writer
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert fileio.clean_stale_partials(tmp_path / "weights.bin") == partials  # nobody holds it: a leftover
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ready"]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
