"""Names that become paths stay inside their folder: a manifest's HF file name, revision and repo id, a package
source, a URL's file name. Refused by the schema, again by the source classes, and again where they are joined
(``fileio.contained_path``, which also refuses a link inside the cache that leads out of it)."""
from __future__ import annotations

import hashlib
import json
import os
import re

import pytest

from csap_zoo.cli import main as cli_main
from csap_zoo.errors import ManifestError, UnsafePathError
from csap_zoo.fileio import check_relative_path, contained_path
from csap_zoo.manifest import (
    HF_FILENAME_PATTERN, HF_REPO_ID_PATTERN, HF_REVISION_PATTERN, MANIFEST_PATH, SCHEMA_PATH, HfSource, PackageSource,
    UrlSource, load_manifest,
)

REVISION = "0123456789abcdef0123456789abcdef01234567"
TRAVERSALS = ["../../../../victim.txt", "/etc/passwd", "a/../../b", "a//b", "./a", "a/.", "a\\..\\b", "a\x00b", ""]


def _manifest_with_hf_filename(tmp_path, filename: str, data: bytes):
    """A manifest file (written as JSON, as an attacker would) whose mscan_tiny.in1k comes from an HF repo file."""
    manifest = json.loads(MANIFEST_PATH.read_text())
    entry = next(e for e in manifest["checkpoints"] if e["name"] == "mscan_tiny.in1k")
    entry.update(status="published", source={"hf": {"repo_id": "org/repo", "revision": REVISION, "filename": filename}},
                 sha256=hashlib.sha256(data).hexdigest(), sha256_prefix=None, size_bytes=len(data))
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_download_from_file_cannot_replace_a_file_outside_the_cache(tmp_path, monkeypatch, capsys):
    data = b"weights downloaded by hand"
    (tmp_path / "copy.pth").write_bytes(data)
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file")
    monkeypatch.setenv("CSAP_ZOO_MANIFEST", str(_manifest_with_hf_filename(tmp_path, "../../../../victim.txt", data)))
    code = cli_main(["download", "mscan_tiny.in1k", "--from-file", str(tmp_path / "copy.pth"),
                     "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 1
    assert re.search(r"checkpoints/\d+/source/hf/filename: '\.\./\.\./\.\./\.\./victim\.txt' does not match", err), err
    assert not victim.is_symlink() and victim.read_text() == "the user's own file"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*victim*"))


@pytest.mark.parametrize("filename", TRAVERSALS)
def test_hf_source_refuses_a_filename_that_leaves_the_snapshot(filename):
    with pytest.raises(ManifestError, match="filename"):
        HfSource("org/repo", REVISION, filename)


@pytest.mark.parametrize("repo_id, revision", [("org/..", REVISION), ("../repo", REVISION), ("org/repo/x", REVISION),
                                               ("org/repo", "../../../x"), ("org/repo", "main"),
                                               ("org/repo", REVISION + "/..")])
def test_hf_source_refuses_repo_ids_and_revisions_that_are_not_plain(repo_id, revision):
    with pytest.raises(ManifestError):
        HfSource(repo_id, revision, "model.safetensors")


def test_hf_source_keeps_nested_filenames():
    assert HfSource("org/repo", REVISION, "weights/v1.0/model+ema.safetensors").filename.endswith("ema.safetensors")


@pytest.mark.parametrize("path", ["../secret", "/abs/model.safetensors", "assets//x", "assets/./x"])
def test_package_source_refuses_paths_out_of_the_package(path):
    with pytest.raises(ManifestError):
        PackageSource(path)


def test_url_source_names_stay_plain():
    for url in ("http://h/a/..", "http://h/a/%2e%2e", "http://h/a/%2F", "http://h/a/"):
        with pytest.raises(ManifestError):
            UrlSource(url)


def test_the_schema_refuses_the_same_names(tmp_path):
    schema = json.loads(SCHEMA_PATH.read_text())
    hf = schema["$defs"]["source"]["oneOf"][1]["properties"]["hf"]["properties"]
    assert (hf["repo_id"]["pattern"], hf["revision"]["pattern"], hf["filename"]["pattern"]) == (
        HF_REPO_ID_PATTERN, HF_REVISION_PATTERN, HF_FILENAME_PATTERN)
    for filename in ("../x.pth", "a/../b", ".hidden/x"):
        with pytest.raises(ManifestError, match="source/hf/filename"):
            load_manifest(_manifest_with_hf_filename(tmp_path, filename, b"x"))
    assert load_manifest(_manifest_with_hf_filename(tmp_path, "w/model.safetensors", b"x")).get("mscan_tiny.in1k")


@pytest.mark.parametrize("relative", TRAVERSALS)
def test_check_relative_path_refuses_what_could_leave_the_folder(relative):
    with pytest.raises(UnsafePathError):
        check_relative_path(relative)


def test_contained_path_refuses_a_link_that_leads_out(tmp_path):
    root, outside = tmp_path / "cache", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    assert contained_path(root, "a/b/model.pth") == root / "a" / "b" / "model.pth"
    os.symlink(outside, root / "link")
    with pytest.raises(UnsafePathError, match="leads out of"):
        contained_path(root, "link/model.pth")
    os.symlink(root / "a", root / "inner")  # a link that stays inside is fine
    assert contained_path(root, "inner/model.pth") == root / "inner" / "model.pth"


@pytest.mark.parametrize("kind", ["fifo", "folder", "device", "missing"])
def test_from_file_says_what_was_given_instead_of_a_file(tmp_path, monkeypatch, capsys, kind):
    data = b"weights"
    monkeypatch.setenv("CSAP_ZOO_MANIFEST", str(_manifest_with_hf_filename(tmp_path, "model.pth", data)))
    given = {"fifo": tmp_path / "pipe", "folder": tmp_path, "device": "/dev/zero", "missing": tmp_path / "nope"}[kind]
    if kind == "fifo":
        os.mkfifo(given)
    code = cli_main(["download", "mscan_tiny.in1k", "--from-file", str(given), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    expected = {"fifo": "is a FIFO (named pipe), not a regular file", "folder": "is a folder",
                "device": "is a character device, not a regular file", "missing": "does not exist"}[kind]
    assert code == 1 and f"--from-file {given} {expected}; give the checkpoint file" in err, err
    assert err.count("\n") == 1 and not (tmp_path / "c").exists()
