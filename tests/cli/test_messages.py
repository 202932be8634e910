"""What the ``csap-zoo`` command prints when something is off: one-line warnings and one-line errors, no
tracebacks; and ``--model`` taking whatever ``from_pretrained`` takes.

Where the test is about a fresh process (the environment huggingface_hub reads at import, warnings raised while
the command starts, how long the command takes to fail) it runs the real command in a child process; the rest
call ``csap_zoo.cli.main`` in this process and read its exit status and captured output (what the console
script, ``sys.exit(main())``, would print and exit with)."""
import os
import subprocess
import sys
import time
import warnings
from typing import List, NamedTuple

import numpy as np
import pytest
import torch
from filelock import FileLock
from PIL import Image

import csap_zoo

from _servers import free_loopback_port


def _run(args, tmp_path, **env):
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf_home"),
                       HF_ENDPOINT=f"http://127.0.0.1:{free_loopback_port()}", **env)
    for key in ("HF_HUB_OFFLINE", "CSAP_ZOO_OFFLINE", "HF_TOKEN"):  # only what a test sets
        if key not in env:
            environment.pop(key, None)
    return subprocess.run([sys.executable, "-m", "csap_zoo.cli", *args], capture_output=True, text=True,
                          env=environment, cwd=tmp_path, timeout=120)


class _Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str
    warnings: List[str]  # the messages of the warnings raised (pytest records them instead of printing them)


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys, one_torch_thread):
    """``cli([...])``: ``csap_zoo.cli.main`` run in this process, in ``tmp_path`` (relative paths resolve there)."""
    from csap_zoo.cli import main

    monkeypatch.chdir(tmp_path)

    def run(args):
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = main(args)
        out, err = capsys.readouterr()
        return _Result(code, out, err, [str(w.message) for w in caught])

    return run


def _seconds_to_fail_without_the_hub(tmp_path) -> float:
    """How long a predict that fails before any Hub work takes on this machine (interpreter, torch and
    csap_zoo start-up): "fails fast" is judged against it, so a loaded machine does not fail the tests."""
    _image(tmp_path / "a.png")
    start = time.perf_counter()
    result = _run(["predict", "a.png", "--model", "no_such_architecture", "--out", "out", "--no-progress"], tmp_path)
    assert result.returncode == 1
    return time.perf_counter() - start


class _StartUp:
    """The start-up time of ``_seconds_to_fail_without_the_hub``, measured once per run (a child process; the xdist
    workers share the measurement through a file); a time that looks too long against it is judged again against
    one measured right then, since the machine may be busier now than it was then."""

    def __init__(self, folder, record) -> None:
        self.folder = folder
        self.record = record  # the file that holds the measurement, shared by the workers
        self.seconds = None

    def _measured(self) -> float:
        if self.seconds is None:
            with FileLock(str(self.record) + ".lock"):
                if not self.record.is_file():
                    self.record.write_text(repr(_seconds_to_fail_without_the_hub(self.folder)))
                self.seconds = float(self.record.read_text())
        return self.seconds

    def assert_within(self, elapsed: float, margin: float) -> None:
        if elapsed < self._measured() + margin:
            return
        now = _seconds_to_fail_without_the_hub(self.folder)
        assert elapsed < now + margin, (elapsed, self.seconds, now)


@pytest.fixture(scope="module")
def start_up(tmp_path_factory) -> _StartUp:
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return _StartUp(tmp_path_factory.mktemp("start_up"), root / "start_up_seconds.txt")


def _image(path, h=24, w=28, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _assert_one_line_error(result, *words, code=1):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert all(w in errors[0] for w in words), errors[0]
    return errors[0]


def test_warnings_are_one_clean_line(tmp_path):
    """A child process: warnings raised while the command starts up print through the same hook."""
    _image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    result = _run(["predict", "in", "--model", "csap_tiny.shapes", "--pretrained", "--out", "out",
                   "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    skipped = [line for line in lines if "skipped 1 file(s)" in line]
    assert len(skipped) == 1 and skipped[0].startswith("warning: "), result.stderr
    assert any("notes.txt: not an image file" in line for line in lines), result.stderr  # the warning's list
    assert "UserWarning" not in result.stderr and ".py:" not in result.stderr, result.stderr
    assert "warnings.warn" not in result.stderr  # no echoed source line
    assert (tmp_path / "out" / "labels" / "a.png").is_file()


def test_warning_hook_is_restored_after_main():
    from csap_zoo.cli import main

    before = (warnings.showwarning, warnings.formatwarning)
    assert main(["models", "csap_tiny"]) == 0
    assert (warnings.showwarning, warnings.formatwarning) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, cli):
    _image(tmp_path / "a.png")
    result = cli(["predict", "a.png", "--model", "csap_tiny.shapes", "--pretrained", "--out", "out",
                  "--device", "cuda", "--no-progress"])
    line = _assert_one_line_error(result, "--device cuda", "--device cpu", code=2)
    assert "no CUDA" in line
    assert not (tmp_path / "out").exists()


def test_unknown_device_is_one_line(cli):
    result = cli(["predict", "a.png", "--model", "csap_tiny", "--out", "out", "--device", "gpu0"])
    _assert_one_line_error(result, "--device gpu0", code=2)


def test_bench_without_psutil_fails_at_once_and_says_what_to_install(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` raises ImportError, as when not installed
    start = time.perf_counter()
    result = cli(["bench", "csap_tiny", "--size", "64", "64", "--repeats", "1", "--warmup", "0"])
    elapsed = time.perf_counter() - start
    _assert_one_line_error(result, "psutil", "csap-zoo[bench]", "--no-memory")
    assert result.stdout == ""  # failed before timing anything
    assert elapsed < 20, elapsed  # (no interpreter start-up to pay here)


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "CSAP_ZOO_OFFLINE"])
def test_hf_hub_name_offline_fails_fast_naming_hf_hub_offline(tmp_path, variable, start_up):
    _image(tmp_path / "a.png")
    start = time.perf_counter()
    result = _run(["predict", "a.png", "--model", "hf-hub:someone/some-model", "--out", "out", "--no-progress"],
                  tmp_path, **{variable: "1"})
    elapsed = time.perf_counter() - start
    _assert_one_line_error(result, "hf-hub:someone/some-model", "not in the local cache", variable)
    start_up.assert_within(elapsed, 10)  # huggingface_hub's retries took 24-36 s more


def test_hf_hub_name_with_an_unreachable_hub_fails_fast(tmp_path, start_up):
    """No offline variable set, the endpoint refuses connections: one attempt, not a minute of retries."""
    _image(tmp_path / "a.png")
    start = time.perf_counter()
    result = _run(["predict", "a.png", "--model", "hf-hub:someone/some-model", "--out", "out", "--no-progress"],
                  tmp_path)
    elapsed = time.perf_counter() - start
    _assert_one_line_error(result, "hf-hub:someone/some-model", "unreachable", "HF_HUB_OFFLINE=1")
    start_up.assert_within(elapsed, 10)  # before: 27 s of huggingface_hub's retries


# ---------------------------------------------------------------------- --model takes a saved folder
@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "shapes_model"
    csap_zoo.create_model("csap_tiny.shapes", pretrained=True).save_pretrained(folder)
    return folder


def _labels(path):
    return np.asarray(Image.open(path))


def test_predict_model_can_be_a_saved_folder(tmp_path, shapes_folder, cli):
    _image(tmp_path / "a.png", 40, 44)
    result = cli(["predict", "a.png", "--model", str(shapes_folder), "--out", "out", "--no-progress"])
    assert result.returncode == 0, result.stderr
    for text in [result.stderr, *result.warnings]:
        assert "random weights" not in text and "unknown" not in text, text
    reference = cli(["predict", "a.png", "--model", "csap_tiny.shapes", "--pretrained", "--out", "ref",
                     "--no-progress"])
    assert reference.returncode == 0, reference.stderr
    got, want = _labels(tmp_path / "out" / "labels" / "a.png"), _labels(tmp_path / "ref" / "labels" / "a.png")
    assert got.shape == (40, 44) and np.array_equal(got, want)


def test_eval_model_can_be_a_saved_folder(tmp_path, shapes_folder, cli):
    rng = np.random.default_rng(0)
    for i in range(2):
        _image(tmp_path / "data" / "images" / f"s{i}.png", 32, 32, seed=i)
        (tmp_path / "data" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 6, (32, 32)).astype(np.uint8)).save(tmp_path / "data" / "masks" / f"s{i}.png")
    result = cli(["eval", "--model", str(shapes_folder), "--dataset", "folder", "--data", "data", "--no-progress"])
    assert result.returncode == 0, result.stderr
    assert "mIoU" in result.stdout and "random weights" not in result.stderr


def test_a_saved_folder_with_pretrained_or_checkpoint_is_refused(shapes_folder, cli):
    result = cli(["predict", "a.png", "--model", str(shapes_folder), "--pretrained", "--out", "out"])
    _assert_one_line_error(result, "carries its own weights", "--pretrained", code=2)


def test_export_model_can_be_a_saved_folder(tmp_path, shapes_folder, cli):
    result = cli(["export", str(shapes_folder), "m.pt", "--format", "torchscript", "--size", "64", "64",
                  "--no-check"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.pt").is_file()


def test_a_weights_file_as_model_says_to_use_checkpoint(shapes_folder, cli):
    weights = shapes_folder / "model.safetensors"
    result = cli(["predict", "a.png", "--model", str(weights), "--out", "out"])
    _assert_one_line_error(result, "is a file", f"--checkpoint {weights}", code=2)


# ---------------------------------------------------------------------- push
def test_push_without_a_token_says_to_log_in(shapes_folder, hf_env, cli):
    """In this process, huggingface_hub pointed at an empty HF_HOME (``hf_env``): no stored token, no HF_TOKEN."""
    result = cli(["push", str(shapes_folder), "someone/shapes"])
    _assert_one_line_error(result, "token", "hf auth login", "huggingface-cli login", "HF_TOKEN")
    assert hf_env.server.requests == []  # nothing was sent


def test_push_with_an_unreachable_hub_is_one_line_at_once(tmp_path, shapes_folder, start_up):
    """A child process: huggingface_hub reads HF_ENDPOINT at import, and "at once" is a whole command's time."""
    start = time.perf_counter()
    result = _run(["push", str(shapes_folder), "someone/shapes"], tmp_path, HF_TOKEN="hf_not_a_real_token")
    elapsed = time.perf_counter() - start
    _assert_one_line_error(result, "unreachable", "HF_ENDPOINT")
    start_up.assert_within(elapsed, 10)


def test_push_offline_is_one_line(shapes_folder, hf_env, cli, monkeypatch):
    """In this process: huggingface_hub pointed at the fake Hub (``hf_env``), with a token, in offline mode."""
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    hf_env.set_offline()
    result = cli(["push", str(shapes_folder), "someone/shapes"])
    _assert_one_line_error(result, "offline mode", "HF_HUB_OFFLINE")
    assert hf_env.server.requests == []


def test_hf_hub_name_with_an_unreachable_hub_uses_the_cached_copy(tmp_path, shapes_folder, start_up, cli):
    """The Hub refuses connections but the repo is in the Hugging Face cache: predict uses it, without retries
    (a child process: huggingface_hub reads HF_HOME and HF_ENDPOINT at import). Its labels are those of the same
    predict from the saved folder."""
    import shutil

    repo = tmp_path / "hf_home" / "hub" / "models--someone--shapes"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(shapes_folder / name, snapshot / name)
    _image(tmp_path / "a.png", 30, 34)
    start = time.perf_counter()
    result = _run(["predict", "a.png", "--model", "hf-hub:someone/shapes", "--out", "out", "--no-progress"],
                  tmp_path)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    # against a predict that fails at once: +2 s for loading the model and segmenting the small image
    start_up.assert_within(elapsed, 12)
    reference = cli(["predict", "a.png", "--model", str(shapes_folder), "--out", "ref", "--no-progress"])
    assert reference.returncode == 0, reference.stderr
    got, want = _labels(tmp_path / "out" / "labels" / "a.png"), _labels(tmp_path / "ref" / "labels" / "a.png")
    assert np.array_equal(got, want)


# ---------------------------------------------------------------------- --backend openvino
@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """A saved CSAP-T with one block per stage (seeded random weights): a quick conversion."""
    folder = tmp_path_factory.mktemp("saved") / "small_model"
    torch.manual_seed(0)
    csap_zoo.create_model("csap_tiny", num_classes=6, backbone_args={"depths": (1, 1, 1, 1)}).save_pretrained(folder)
    return folder


def test_backend_openvino_predicts_and_without_openvino_is_one_line(tmp_path, small_folder, cli, monkeypatch):
    """``--backend openvino`` runs the network in OpenVINO (converted model cached under $CSAP_ZOO_CACHE); with
    the package missing, one line says what to install."""
    pytest.importorskip("openvino")
    _image(tmp_path / "a.png", h=40, w=48)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CSAP_ZOO_CACHE", str(cache))  # read when the backend is built
    result = cli(["predict", "a.png", "--model", str(small_folder), "--out", "out", "--backend", "openvino",
                  "--no-progress"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "labels" / "a.png").is_file()
    assert list((cache / "openvino").glob("*/model.xml"))
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError, as when not installed
    result = cli(["predict", "a.png", "--model", str(small_folder), "--out", "out2", "--backend", "openvino",
                  "--no-progress"])
    _assert_one_line_error(result, "needs the openvino package", "pip install openvino", code=2)
    assert not (tmp_path / "out2").exists()


def test_precision_options_predict_int8_on_the_inputs_and_misuse_is_one_line(tmp_path, small_folder, cli,
                                                                               monkeypatch):
    """``--precision int8`` calibrates on predict's own inputs unless --calibration names others; the options that
    cannot work here are one line each (exit status 2)."""
    pytest.importorskip("nncf")
    _image(tmp_path / "a.png", h=40, w=48)
    monkeypatch.setenv("CSAP_ZOO_CACHE", str(tmp_path / "cache"))
    result = cli(["predict", "a.png", "--model", str(small_folder), "--out", "out", "--precision", "int8",
                  "--backend", "openvino", "--no-progress"])
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "labels" / "a.png").is_file()
    assert len(list((tmp_path / "cache" / "openvino").glob("*/model.xml"))) == 2  # the float network and its int8
    result = cli(["predict", "a.png", "--model", str(small_folder), "--out", "out2", "--calibration", "a.png",
                  "--no-progress"])
    _assert_one_line_error(result, "--calibration is used by --precision int8 only", code=2)
    result = cli(["predict", "a.png", "--model", str(small_folder), "--out", "out3", "--precision", "fp16",
                  "--no-progress"])
    _assert_one_line_error(result, "precision='fp16' runs on CUDA only", code=2)
