"""The OpenVINO graph cache cannot lie: an entry is run only when its ``entry.json`` vouches for both files (key,
sizes, sha256 of exactly the bytes that are run); a damaged ``model.bin``, another graph's files or a missing
record are converted again with a warning, and the key changes with the model's source code, not only with the
package version."""
from __future__ import annotations

import json
import shutil
import sys
import textwrap

import pytest
import torch

import csap_zoo

openvino = pytest.importorskip("openvino")

from csap_zoo.inference.backends import OpenVINONetwork  # noqa: E402  (after the skip)

SHAPE = (1, 3, 64, 64)


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return csap_zoo.create_model("csap_tiny", num_classes=3, backbone_args={"depths": (1, 1, 1, 1)}).eval()


@pytest.fixture(scope="module")
def converted(micro, tmp_path_factory):
    """A cache with one converted entry, and that entry's folder (read-only for the tests: they copy it)."""
    root = tmp_path_factory.mktemp("ov_cache")
    network = OpenVINONetwork(micro, cache_dir=root)
    network(torch.zeros(SHAPE))
    assert network.conversions == 1
    return root, root / "openvino" / network.cache_key()


def _copy_cache(converted, tmp_path):
    root, folder = converted
    shutil.copytree(root, tmp_path / "cache")
    return tmp_path / "cache", tmp_path / "cache" / "openvino" / folder.name


def test_an_entry_records_its_files_and_a_clean_one_is_read_without_converting(micro, converted, tmp_path):
    root, folder = _copy_cache(converted, tmp_path)
    entry = json.loads((folder / "entry.json").read_text())
    assert entry["key"] == folder.name and set(entry["files"]) == {"model.xml", "model.bin"}
    assert entry["files"]["model.bin"]["size"] == (folder / "model.bin").stat().st_size
    network = OpenVINONetwork(micro, cache_dir=root)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = micro(x, upsample=False, crop=False)
    torch.testing.assert_close(network(x), expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
    assert network.conversions == 0


def test_a_damaged_bin_of_the_same_size_is_converted_again_with_a_warning(micro, converted, tmp_path):
    root, folder = _copy_cache(converted, tmp_path)
    weights = folder / "model.bin"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(255 - b for b in data[middle:middle + 64])
    weights.write_bytes(bytes(data))
    network = OpenVINONetwork(micro, cache_dir=root)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="not the files entry.json records .*converting the model again"):
        got = network(x)
    with torch.no_grad():
        expected = micro(x, upsample=False, crop=False)
    torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
    assert network.conversions == 1
    assert json.loads((folder / "entry.json").read_text())["files"]["model.bin"]["sha256"] != ""
    assert OpenVINONetwork(micro, cache_dir=root)._cache.load(folder.name) is not None  # replaced: good again


@pytest.mark.parametrize("swap", ["another key's entry", "no entry.json", "another graph's bin"])
def test_files_that_do_not_belong_to_the_entry_are_never_run(micro, converted, tmp_path, swap):
    root, folder = _copy_cache(converted, tmp_path)
    other = folder.with_name("f" * 32)
    shutil.copytree(folder, other)  # the same graph filed under another key
    network = OpenVINONetwork(micro, cache_dir=root)
    if swap == "no entry.json":
        (other / "entry.json").unlink()
        match = "no entry.json"
    elif swap == "another graph's bin":
        (other / "entry.json").write_text(json.dumps({**json.loads((folder / "entry.json").read_text()),
                                                      "key": other.name}))
        (other / "model.bin").write_bytes((other / "model.bin").read_bytes()[::-1])
        match = "not the files entry.json records"
    else:
        match = "belongs to another key"
    with pytest.warns(UserWarning, match=match):
        assert network._cache.load(other.name) is None


def test_the_key_follows_the_model_code(tmp_path, monkeypatch):
    """An edited checkout at the same version: the class's source file changes, so the key does."""
    source = tmp_path / "my_layers.py"
    source.write_text(textwrap.dedent("""
        import torch.nn as nn
        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 2, 1)
            def forward(self, x, upsample=True, crop=True):
                return self.conv(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_layers

    network = OpenVINONetwork(my_layers.Head().eval(), cache_dir=tmp_path / "cache")
    before = network.cache_key()
    source.write_text(source.read_text().replace("nn.Conv2d(3, 2, 1)", "nn.Conv2d(3, 2, 1, bias=False)  # edited"))
    network._keys = None  # what a new process computes
    assert network.cache_key() != before
    sys.modules.pop("my_layers", None)
