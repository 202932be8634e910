"""Package-local manifest sources: bundled files are used in place, hash-checked, never downloaded."""
from __future__ import annotations

import dataclasses
import json

import pytest

from csap_zoo.hub import default_manifest
from csap_zoo.errors import CheckpointIntegrityError, CheckpointUnavailableError
from csap_zoo.hub.download import fetch_checkpoint
from csap_zoo.manifest import MANIFEST_PATH, Manifest, ManifestError, PackageSource


def test_the_demo_entry_is_a_package_source_with_a_full_hash():
    entry = default_manifest().get("csap_tiny.shapes")
    assert isinstance(entry.source, PackageSource) and entry.published and entry.sha256
    assert entry.source.resolve().is_file()
    assert entry.to_dict()["source"] == {"package": entry.source.path}
    assert fetch_checkpoint(entry, local_files_only=True) == entry.source.resolve()  # offline, in place


def test_a_damaged_or_missing_bundled_file_is_a_clear_error():
    entry = default_manifest().get("csap_tiny.shapes")
    with pytest.raises(CheckpointIntegrityError, match="bundled checkpoint 'csap_tiny.shapes'.*Reinstall"):
        fetch_checkpoint(dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(CheckpointUnavailableError, match="should ship with the package"):
        fetch_checkpoint(dataclasses.replace(entry, source=PackageSource("assets/demo/missing.safetensors")))


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.bin", "assets/../../x"])
def test_package_paths_must_stay_inside_the_package(path):
    data = json.loads(MANIFEST_PATH.read_text())
    entry = next(e for e in data["checkpoints"] if e["name"] == "csap_tiny.shapes")
    data["checkpoints"] = [dict(entry, source={"package": path})]
    with pytest.raises(ManifestError, match="source"):
        Manifest.from_dict(data)
