"""A full disk is one clear error naming the path and the free space, and what was there before stays intact:
checkpoints (torch.save through the atomic writer), save_pretrained folders, predict's PNGs and the download cache.

One child process runs every case inside its own user + mount namespace (``unshare -rm``) on a real 3 MiB tmpfs, so
the failures are the kernel's ENOSPC, not a simulation."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent("""
    import dataclasses, hashlib, json, os, sys
    from pathlib import Path
    import numpy as np, torch
    from PIL import Image
    import csap_zoo
    from csap_zoo.errors import DiskFullError
    from csap_zoo.training.checkpoint import save_checkpoint_file
    root = Path(sys.argv[1])
    results = {}

    def case(name, fn):
        try:
            fn()
            results[name] = {"raised": None}
        except Exception as err:
            results[name] = {"raised": type(err).__name__, "message": str(err),
                             "is_oserror": isinstance(err, OSError)}

    small = root / "ckpt" / "iter_1.pt"
    small.parent.mkdir()
    save_checkpoint_file({"w": torch.zeros(1000)}, small)
    before = small.read_bytes()
    case("checkpoint", lambda: save_checkpoint_file({"w": torch.zeros(2_000_000)}, small))
    results["checkpoint"]["intact"] = small.read_bytes() == before
    results["checkpoint"]["leftovers"] = sorted(p.name for p in small.parent.iterdir())

    torch.manual_seed(0)
    model = csap_zoo.create_model("csap_tiny", num_classes=3).eval()
    case("save_pretrained", lambda: model.save_pretrained(str(root / "model")))
    results["save_pretrained"]["leftovers"] = sorted(p.name for p in root.iterdir())

    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from csap_zoo.hub import UrlSource, default_manifest
    from csap_zoo.hub.download import fetch_checkpoint
    payload = bytes(range(256)) * 16384  # 4 MiB: more than the disk has left

    class Serve(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    entry = dataclasses.replace(default_manifest().get("mscan_tiny.in1k"), status="published",
                                source=UrlSource(f"http://127.0.0.1:{server.server_address[1]}/w/mscan_t.pth"),
                                sha256=hashlib.sha256(payload).hexdigest(), sha256_prefix=None,
                                size_bytes=len(payload))
    case("download", lambda: fetch_checkpoint(entry, root / "cache", local_files_only=False))
    results["download"]["files"] = sorted(p.name for p in (root / "cache").rglob("*")
                                          if p.is_file() and not p.name.endswith(".lock"))
    server.shutdown()

    image = root / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(image)
    filler = root / "filler"
    free = __import__("shutil").disk_usage(root).free
    filler.write_bytes(b"x" * max(0, free - 60_000))  # leave less than one overlay needs
    from csap_zoo.inference import Segmenter
    from csap_zoo.predict import predict_paths
    micro = csap_zoo.create_model("csap_tiny", num_classes=3, backbone_args={"depths": (1, 1, 1, 1)}).eval()
    case("predict", lambda: predict_paths(Segmenter(micro), str(image), root / "out", progress=False))
    results["predict"]["outputs"] = sorted(str(p.relative_to(root)) for p in (root / "out").rglob("*.png")) \\
        if (root / "out").exists() else []
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to mount a small tmpfs")
    root = tmp_path_factory.mktemp("full")
    script = tmp_path_factory.mktemp("child") / "child.py"
    script.write_text(_CHILD)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"user and mount namespaces are not available here: {probe.stderr.decode()[:200]}")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=3m tmpfs "$1" && '
                           f'exec "$2" "$3" "$1"', "sh", str(root), sys.executable, str(script)],
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                             "OMP_NUM_THREADS": "1",
                                                                             "HOME": str(root)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _says_disk_full(result, path_part):
    assert result["raised"] == "DiskFullError" and result["is_oserror"], result
    message = result["message"]
    assert "no space left on the disk holding" in message and path_part in message, message
    assert " MiB free when the write failed" in message and "unchanged" in message, message


def test_a_checkpoint_write_on_a_full_disk_is_one_error_and_the_previous_checkpoint_stays(results):
    _says_disk_full(results["checkpoint"], "iter_1.pt")
    assert results["checkpoint"]["intact"] and results["checkpoint"]["leftovers"] == ["iter_1.pt"]


def test_save_pretrained_on_a_full_disk_is_one_error_and_leaves_no_folder(results):
    _says_disk_full(results["save_pretrained"], "model")
    assert results["save_pretrained"]["leftovers"] == ["ckpt"]


def test_predict_on_a_full_disk_is_one_error_and_writes_no_half_png(results):
    _says_disk_full(results["predict"], "in.png")
    assert results["predict"]["outputs"] == []


def test_a_download_into_a_full_cache_is_one_error_and_caches_nothing(results):
    _says_disk_full(results["download"], "mscan_t.pth")
    assert results["download"]["files"] == []
