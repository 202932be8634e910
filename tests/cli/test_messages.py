"""What the ``csap-zoo`` command prints when something is off: one-line warnings and one-line errors, no
tracebacks; and ``--model`` taking whatever ``from_pretrained`` takes. Each test runs the real command in a child
process and reads its output."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
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


def _seconds_to_fail_without_the_hub(tmp_path) -> float:
    """How long a predict that fails before any Hub work takes on this machine right now (interpreter, torch and
    csap_zoo start-up): "fails fast" is judged against it, so a loaded machine does not fail the tests."""
    _image(tmp_path / "a.png")
    start = time.perf_counter()
    result = _run(["predict", "a.png", "--model", "no_such_architecture", "--out", "out", "--no-progress"], tmp_path)
    assert result.returncode == 1
    return time.perf_counter() - start


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
    _image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    result = _run(["predict", "in", "--model", "csap_tiny.shapes", "--pretrained", "--out", "out",
                   "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    skipped = [line for line in lines if "skipped 1 unreadable" in line]
    assert len(skipped) == 1 and skipped[0].startswith("warning: "), result.stderr
    assert "UserWarning" not in result.stderr and ".py:" not in result.stderr, result.stderr
    assert "warnings.warn" not in result.stderr  # no echoed source line
    assert (tmp_path / "out" / "labels" / "a.png").is_file()


def test_warning_hook_is_restored_after_main():
    import warnings

    from csap_zoo.cli import main

    before = (warnings.showwarning, warnings.formatwarning)
    assert main(["models", "csap_tiny"]) == 0
    assert (warnings.showwarning, warnings.formatwarning) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_device_cuda_without_a_gpu_is_one_line(tmp_path):
    _image(tmp_path / "a.png")
    result = _run(["predict", "a.png", "--model", "csap_tiny.shapes", "--pretrained", "--out", "out",
                   "--device", "cuda", "--no-progress"], tmp_path)
    line = _assert_one_line_error(result, "--device cuda", "--device cpu", code=2)
    assert "no CUDA" in line
    assert not (tmp_path / "out").exists()


def test_unknown_device_is_one_line(tmp_path):
    result = _run(["predict", "a.png", "--model", "csap_tiny", "--out", "out", "--device", "gpu0"], tmp_path)
    _assert_one_line_error(result, "--device gpu0", code=2)


def test_bench_without_psutil_fails_at_once_and_says_what_to_install(tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "psutil.py").write_text("raise ImportError('No module named psutil')\n")
    start = time.perf_counter()
    result = _run(["bench", "csap_tiny", "--size", "64", "64", "--repeats", "1", "--warmup", "0"], tmp_path,
                  PYTHONPATH=os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]))
    elapsed = time.perf_counter() - start
    _assert_one_line_error(result, "psutil", "csap-zoo[bench]", "--no-memory")
    assert result.stdout == ""  # failed before timing anything
    assert elapsed < _seconds_to_fail_without_the_hub(tmp_path) + 20, elapsed


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "CSAP_ZOO_OFFLINE"])
def test_hf_hub_name_offline_fails_fast_naming_hf_hub_offline(tmp_path, variable):
    _image(tmp_path / "a.png")
    start = time.perf_counter()
    result = _run(["predict", "a.png", "--model", "hf-hub:someone/some-model", "--out", "out", "--no-progress"],
                  tmp_path, **{variable: "1"})
    elapsed = time.perf_counter() - start
    _assert_one_line_error(result, "hf-hub:someone/some-model", "not in the local cache", variable)
    baseline = _seconds_to_fail_without_the_hub(tmp_path)
    assert elapsed < baseline + 10, (elapsed, baseline)  # huggingface_hub's retries took 24-36 s more


def test_hf_hub_name_with_an_unreachable_hub_fails_fast(tmp_path):
    """No offline variable set, the endpoint refuses connections: one attempt, not a minute of retries."""
    _image(tmp_path / "a.png")
    start = time.perf_counter()
    result = _run(["predict", "a.png", "--model", "hf-hub:someone/some-model", "--out", "out", "--no-progress"],
                  tmp_path)
    elapsed = time.perf_counter() - start
    _assert_one_line_error(result, "hf-hub:someone/some-model", "unreachable", "HF_HUB_OFFLINE=1")
    baseline = _seconds_to_fail_without_the_hub(tmp_path)
    assert elapsed < baseline + 10, (elapsed, baseline)  # before: 27 s of huggingface_hub's retries


# ---------------------------------------------------------------------- --model takes a saved folder
@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "shapes_model"
    csap_zoo.create_model("csap_tiny.shapes", pretrained=True).save_pretrained(folder)
    return folder


def test_predict_model_can_be_a_saved_folder(tmp_path, shapes_folder):
    _image(tmp_path / "a.png", 40, 44)
    result = _run(["predict", "a.png", "--model", str(shapes_folder), "--out", "out", "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "random weights" not in result.stderr and "unknown" not in result.stderr, result.stderr
    reference = _run(["predict", "a.png", "--model", "csap_tiny.shapes", "--pretrained", "--out", "ref",
                      "--no-progress"], tmp_path)
    assert reference.returncode == 0, reference.stderr
    got = np.asarray(Image.open(tmp_path / "out" / "labels" / "a.png"))
    want = np.asarray(Image.open(tmp_path / "ref" / "labels" / "a.png"))
    assert got.shape == (40, 44) and np.array_equal(got, want)


def test_eval_model_can_be_a_saved_folder(tmp_path, shapes_folder):
    rng = np.random.default_rng(0)
    for i in range(2):
        _image(tmp_path / "data" / "images" / f"s{i}.png", 32, 32, seed=i)
        (tmp_path / "data" / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 6, (32, 32)).astype(np.uint8)).save(tmp_path / "data" / "masks" / f"s{i}.png")
    result = _run(["eval", "--model", str(shapes_folder), "--dataset", "folder", "--data", "data",
                   "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "mIoU" in result.stdout and "random weights" not in result.stderr


def test_a_saved_folder_with_pretrained_or_checkpoint_is_refused(tmp_path, shapes_folder):
    result = _run(["predict", "a.png", "--model", str(shapes_folder), "--pretrained", "--out", "out"], tmp_path)
    _assert_one_line_error(result, "carries its own weights", "--pretrained", code=2)


def test_export_model_can_be_a_saved_folder(tmp_path, shapes_folder):
    result = _run(["export", str(shapes_folder), "m.pt", "--format", "torchscript", "--size", "64", "64",
                   "--no-check"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.pt").is_file()


# ---------------------------------------------------------------------- push
def test_push_without_a_token_says_to_log_in(tmp_path, shapes_folder):
    result = _run(["push", str(shapes_folder), "someone/shapes"], tmp_path)  # HF_HOME is empty: no stored token
    _assert_one_line_error(result, "token", "hf auth login", "huggingface-cli login", "HF_TOKEN")


def test_push_with_an_unreachable_hub_is_one_line_at_once(tmp_path, shapes_folder):
    start = time.perf_counter()
    result = _run(["push", str(shapes_folder), "someone/shapes"], tmp_path, HF_TOKEN="hf_not_a_real_token")
    elapsed = time.perf_counter() - start
    _assert_one_line_error(result, "unreachable", "HF_ENDPOINT")
    assert elapsed < _seconds_to_fail_without_the_hub(tmp_path) + 10, elapsed


def test_push_offline_is_one_line(tmp_path, shapes_folder):
    result = _run(["push", str(shapes_folder), "someone/shapes"], tmp_path, HF_TOKEN="hf_x", HF_HUB_OFFLINE="1")
    _assert_one_line_error(result, "offline mode", "HF_HUB_OFFLINE")


def test_a_weights_file_as_model_says_to_use_checkpoint(tmp_path, shapes_folder):
    weights = shapes_folder / "model.safetensors"
    result = _run(["predict", "a.png", "--model", str(weights), "--out", "out"], tmp_path)
    _assert_one_line_error(result, "is a file", f"--checkpoint {weights}", code=2)


def test_hf_hub_name_with_an_unreachable_hub_uses_the_cached_copy(tmp_path, shapes_folder):
    """The Hub refuses connections but the repo is in the Hugging Face cache: predict uses it, without retries."""
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
    reference_start = time.perf_counter()
    reference = _run(["predict", "a.png", "--model", str(shapes_folder), "--out", "ref", "--no-progress"], tmp_path)
    assert reference.returncode == 0, reference.stderr
    assert elapsed < (time.perf_counter() - reference_start) + 10, elapsed  # the same predict from a local folder
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "labels" / "a.png")),
                          np.asarray(Image.open(tmp_path / "ref" / "labels" / "a.png")))


def test_backend_openvino_predicts_and_without_openvino_is_one_line(tmp_path):
    """``--backend openvino`` runs the network in OpenVINO (converted model cached under $CSAP_ZOO_CACHE); with
    the package missing, one line says what to install."""
    pytest.importorskip("openvino")
    _image(tmp_path / "a.png", h=40, w=48)
    cache = tmp_path / "cache"
    result = _run(["predict", "a.png", "--model", "csap_tiny.shapes", "--pretrained", "--out", "out",
                   "--backend", "openvino", "--no-progress"], tmp_path, CSAP_ZOO_CACHE=str(cache))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "labels" / "a.png").is_file()
    assert list((cache / "openvino").glob("*/model.xml"))
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "openvino.py").write_text("raise ImportError('blocked for the test')\n")
    result = _run(["predict", "a.png", "--model", "csap_tiny.shapes", "--pretrained", "--out", "out2",
                   "--backend", "openvino", "--no-progress"], tmp_path, PYTHONPATH=str(shim),
                  CSAP_ZOO_CACHE=str(cache))
    _assert_one_line_error(result, "needs the openvino package", "pip install openvino", code=2)
    assert not (tmp_path / "out2").exists()
