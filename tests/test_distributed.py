"""csap_zoo.distributed and what runs on it: the split by rank, the rounds, the collective timeout, ``eval --json``,
predict's resume, and ``csap-zoo eval`` / ``predict`` under torchrun with 2 gloo processes (equal to one process,
a killed rank, a rerun that finishes the job)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from csap_zoo.cli import main
from csap_zoo.data.synthetic import generate_shapes_dataset, render_shapes_sample
from csap_zoo.distributed import (DistEnv, end_distributed, gather_objects, init_distributed, run_in_rounds,
                                  shard_indices)
from csap_zoo.errors import DistributedError
from csap_zoo.evaluation import Evaluator, write_report
from csap_zoo.fileio import temp_name
from csap_zoo.predict import outputs_exist, predict_paths

from _helpers import finish_torchrun, save_folder_dataset_as_hf, start_torchrun
from _servers import free_loopback_port

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "csap_zoo" / "assets" / "demo"  # the bundled csap_tiny.shapes folder: the same weights in every process
# native size, the network in PyTorch: what every run of this module predicts with
RUN = ["--model", str(DEMO), "--backend", "torch", "--resize", "0", "--no-progress"]


def _images(folder: Path, count: int, size: int = 48) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(render_shapes_sample(i, size=(size, size))[0]).save(folder / f"img{i:02d}.png")
    return folder


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------- in-process
def test_the_shards_are_disjoint_cover_everything_and_differ_by_at_most_one():
    for count in (0, 1, 5, 8):
        for world in (1, 2, 3):
            shards = [list(shard_indices(count, r, world)) for r in range(world)]
            assert sorted(sum(shards, [])) == list(range(count))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert list(shard_indices(5, 1, 2)) == [1, 3]  # by index, the same in every run
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        shard_indices(4, 2, 2)


def test_rounds_in_one_process_report_every_result_and_raise_errors_unchanged():
    rounds = []
    run_in_rounds(DistEnv(), 3, lambda i: i * 10, after_round=rounds.append)
    assert rounds == [[(0, 0)], [(1, 10)], [(2, 20)]]

    def fail(i):
        raise ValueError(f"bad {i}")

    with pytest.raises(ValueError, match="bad 0"):
        run_in_rounds(DistEnv(), 2, fail)


def test_a_process_that_stops_answering_ends_the_collective_after_the_timeout(tmp_path, monkeypatch):
    """This process is rank 0 of a gloo group of 2; rank 1 (a child) joins and then never reaches the collective."""
    port = free_loopback_port()
    group = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", GLOO_SOCKET_IFNAME="lo")
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; from csap_zoo.distributed import init_distributed; "
                               "init_distributed('cpu', timeout_s=30); time.sleep(60)"],
        env=dict(os.environ, **group, RANK="1", LOCAL_RANK="1", PYTHONPATH=str(REPO)))
    for name, value in dict(group, RANK="0", LOCAL_RANK="0").items():
        monkeypatch.setenv(name, value)
    env = None
    try:
        env = init_distributed("cpu", timeout_s=1.0)
        assert (env.rank, env.world_size, env.owns_group) == (0, 2, True)
        start = time.monotonic()
        with pytest.raises(DistributedError) as info:
            run_in_rounds(env, 4, lambda i: i)
        assert time.monotonic() - start < 20
        message = str(info.value)
        assert "rank 0 of 2: lost contact" in message and "did not answer within 1 s" in message, message
        with pytest.raises(DistributedError, match="lost contact"):
            gather_objects(env, 0)
    finally:
        child.kill()
        child.wait()
        if env is not None:
            end_distributed(env)
    assert not env.owns_group


def test_the_timeout_must_be_a_positive_number_of_seconds(capsys):
    for value in ("0", "-5"):
        with pytest.raises(SystemExit) as exit_:
            main(["predict", "in", "--out", "out", "--dist-timeout", value, *RUN])
        assert exit_.value.code == 2
        assert "--dist-timeout: expected a positive number of seconds" in capsys.readouterr().err


def test_the_json_report_holds_the_metrics_classes_protocol_and_matrix(tmp_path):
    evaluator = Evaluator(3, class_names=["sky", "road", "sky"])  # a repeated name keeps its own entry
    evaluator.update(np.array([[0, 1], [2, 2]]), np.array([[0, 1], [1, 255]]))
    path = tmp_path / "out" / "metrics.json"
    write_report(path, evaluator.compute(), 1, {"mode": "whole", "dataset": "folder"})
    report = json.loads(path.read_text())
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # atomic: no temporary left
    assert report["unit"] == "percent" and report["images"] == 1
    assert report["mIoU"] == pytest.approx(50.0) and report["aAcc"] == pytest.approx(200 / 3)
    assert report["classes"] == [{"index": 0, "name": "sky", "IoU": 100.0, "Acc": 100.0},
                                 {"index": 1, "name": "road", "IoU": 50.0, "Acc": 50.0},
                                 {"index": 2, "name": "sky", "IoU": 0.0, "Acc": None}]  # NaN: null
    assert report["protocol"] == {"mode": "whole", "dataset": "folder"}
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_a_rerun_predicts_only_what_is_missing(tmp_path, capsys, demo_segmenter, one_torch_thread):
    src = _images(tmp_path / "in", 3, size=32)
    out = tmp_path / "out"
    predict_paths(demo_segmenter, src, out, progress=False)
    first = _tree(out)
    (out / "overlays" / "img01.png").unlink()  # a job killed between the two renames: the label alone
    (out / "labels" / "img02.png").unlink()
    (out / "overlays" / "img02.png").unlink()
    orphan = out / "labels" / temp_name("img02.png").replace(f"-{os.getpid()}-", "-999999999-")  # a dead writer's
    orphan.write_bytes(b"half")
    assert [outputs_exist(out, f"img0{i}") for i in range(3)] == [True, False, False]
    assert main(["predict", str(src), "--out", str(out), *RUN]) == 0  # skips what is there by default
    printed = capsys.readouterr().out
    assert "wrote 2 label map(s)" in printed and "kept 1 already there" in printed, printed
    assert _tree(out) == first  # the two missing images again, byte for byte; the orphaned temporary is gone
    assert main(["predict", str(src), "--out", str(out), "--overwrite", *RUN]) == 0
    assert "wrote 3 label map(s)" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- torchrun
_BOTH = """
import json, sys
from csap_zoo.cli import main
from csap_zoo.distributed import end_distributed, init_distributed

env = init_distributed("cpu", timeout_s=60)  # the commands below join this group
run = {run!r}
codes = dict(
    eval=main(["eval", "--data", "data", "--dataset", "folder", "--json", "two.json", *run]),
    predict=main(["predict", "in", "--out", "two", *run]),
    bad_eval=main(["eval", "--data", "bad", "--dataset", "folder", *run]),
    hf_eval=main(["eval", "--data", "hf", "--dataset", "hf", "--classes", "data/classes.txt", "--json", "hf.json",
                  *run]),
)
json.dump(codes, open(f"codes{{env.rank}}.json", "w"))
end_distributed(env)
"""


@pytest.mark.slow
def test_eval_and_predict_on_two_processes_equal_one_process(tmp_path, capsys, one_torch_thread):
    generate_shapes_dataset(tmp_path / "data", num_train=0, num_val=5, size=(40, 40), seed=3)
    generate_shapes_dataset(tmp_path / "bad", num_train=0, num_val=3, size=(40, 40), seed=4)
    bad_image = sorted((tmp_path / "bad" / "val" / "images").iterdir())[1]  # index 1: rank 1's share
    bad_image.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    src = _images(tmp_path / "in", 5, size=40)
    (src / "img03.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # index 3: rank 1's too
    save_folder_dataset_as_hf(tmp_path / "data", tmp_path / "hf", splits=(("val", "validation"),))
    (tmp_path / "both.py").write_text(textwrap.dedent(_BOTH.format(run=RUN)))
    proc = start_torchrun([str(tmp_path / "both.py")], tmp_path)
    try:  # the one-process runs, while the two processes start
        os.chdir(tmp_path)
        assert main(["eval", "--data", "data", "--dataset", "folder", "--json", "one.json", *RUN]) == 0
        with pytest.warns(UserWarning, match="failed on 1 unreadable image"):
            assert main(["predict", "in", "--out", "one", *RUN]) == 1
    finally:
        os.chdir(REPO)
        stdout, stderr = finish_torchrun(proc)
    assert proc.returncode == 0, stderr[-3000:]
    for rank in (0, 1):  # every process knows of the failure of the other
        assert json.loads((tmp_path / f"codes{rank}.json").read_text()) == dict(eval=0, predict=1, bad_eval=1,
                                                                                 hf_eval=0)
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    report = json.loads((tmp_path / "one.json").read_text())
    # the same images as a Hugging Face dataset, sharded over the two processes: the same metrics and matrix
    hf_report = json.loads((tmp_path / "hf.json").read_text())
    assert hf_report.pop("protocol")["dataset"] == "hf" and hf_report == {k: v for k, v in report.items()
                                                                          if k != "protocol"}
    assert report["images"] == 5 and report["protocol"]["mode"] == "whole" and len(report["classes"]) == 6
    assert sum(map(sum, report["confusion_matrix"])) == 5 * 40 * 40
    one, two = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert len(one) == 8 and two == one  # byte for byte
    # the job's summary, printed once by rank 0: 4 writes in all (each output once), the failure of rank 1's image
    assert stdout.count("wrote 4 label map(s)") == 1, stdout
    assert stderr.count("failed on 1 unreadable image file(s)") == 1 and "img03.png: unreadable image" in stderr
    assert stderr.count("error: 1 of 5 image(s) could not be read") == 1
    # eval stops at the bad image with one error, from rank 0, naming the rank and the image
    assert stderr.count(f"error: rank 1 failed on {Path('bad') / 'val' / 'images' / bad_image.name}") == 1, stderr


@pytest.fixture(scope="module")
def demo_segmenter():
    from csap_zoo import Segmenter, from_pretrained

    return Segmenter(from_pretrained(str(DEMO)), resize=None, backend="torch")


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_a_rerun_finishes_it(tmp_path, demo_segmenter, one_torch_thread):
    src = _images(tmp_path / "in", 6)
    out = tmp_path / "out"
    proc = start_torchrun(["-m", "csap_zoo.cli", "predict", str(src), "--out", str(out), "--dist-timeout", "60", *RUN],
                     tmp_path)
    try:
        rank1, frozen = None, False
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if rank1 is None:
                rank1 = _child_with_rank(proc.pid, 1)
            elif not frozen and (out / "labels").is_dir():  # the first round's writes have begun
                os.kill(rank1, signal.SIGSTOP)  # rank 0 finishes its image, then waits for rank 1 in the round
                frozen = True
            elif frozen and outputs_exist(out, "img00"):
                os.kill(rank1, signal.SIGKILL)  # mid-job
                break
            time.sleep(0.002)
        predict_paths(demo_segmenter, src, tmp_path / "reference", progress=False)  # while the job ends
    finally:
        _, stderr = finish_torchrun(proc, timeout=120)
    assert rank1 is not None and proc.returncode != 0, stderr[-3000:]
    # torchrun names the killed rank; the survivor, stopped by the broken round or by torchrun, does not hang
    assert "rank      : 1 (local_rank: 1)" in stderr and "Signal 9 (SIGKILL)" in stderr, stderr[-3000:]
    done = [p.name for p in sorted((out / "labels").glob("*.png")) if (out / "overlays" / p.name).is_file()]
    assert "img00.png" in done and len(done) <= 2  # the first round, rank 1's image perhaps
    for png in out.rglob("*.png"):  # what has a final name is complete
        Image.open(png).load()

    summary = predict_paths(demo_segmenter, src, out, progress=False, skip_existing=True)
    assert sorted(p.name for p, _, _ in summary.existing) == done
    assert len(summary.written) == 6 - len(done)
    assert _tree(out) == _tree(tmp_path / "reference")  # and no temporary of the killed processes is left


def _child_with_rank(pid: int, rank: int):
    """The pid of torchrun's worker ``rank`` (its children, found by their RANK variable), or None yet."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            variables = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in variables:
            return int(child)
    return None
