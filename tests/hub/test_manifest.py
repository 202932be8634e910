"""The packaged weights manifest, its schema, and manifest editing."""
import json
from pathlib import Path

import jsonschema
import pytest

import csap_zoo

from csap_zoo.manifest import (
    MANIFEST_PATH, SCHEMA_PATH, Checkpoint, Manifest, ManifestError, UrlSource, default_manifest, load_manifest,
)
from csap_zoo.models.registry import DATASET_NUM_CLASSES, DEMO_DATASET_NUM_CLASSES, list_architectures

REPO = Path(__file__).resolve().parents[2]


def test_packaged_manifest_validates_against_the_schema():
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.loads((REPO / "weights_manifest.json").read_text()), schema)
    # the package reads the same file as the repository's top level
    assert MANIFEST_PATH.resolve() == (REPO / "weights_manifest.json").resolve()


def test_manifest_lists_the_expected_checkpoints():
    manifest = default_manifest()
    names = set(manifest.names())
    sizes = ("tiny", "small", "base", "large")
    assert {f"mscan_{s}.in1k" for s in sizes} <= names
    assert {f"segnext_{s}.{d}" for s in sizes for d in ("ade20k", "cityscapes")} <= names
    assert {f"csap_{s}.{d}" for s in sizes for d in DATASET_NUM_CLASSES} <= names
    for entry in manifest.checkpoints:
        assert entry.architecture in list_architectures() or entry.architecture.startswith("mscan_")
        if entry.kind == "segmentor":
            assert entry.num_classes == {**DATASET_NUM_CLASSES, **DEMO_DATASET_NUM_CLASSES}[entry.dataset_tag]
        if entry.published:
            assert entry.source is not None and (entry.sha256 or entry.sha256_prefix)
        if isinstance(entry.source, UrlSource) and entry.sha256_prefix:
            assert f"-{entry.sha256_prefix}." in entry.source.filename  # torch.hub's hash-in-name convention
    # the paper's CSAP checkpoints are not trained yet; only the bundled demo (generated data) is published
    assert all(not c.published for c in manifest.checkpoints
               if c.architecture.startswith("csap_") and c.dataset_tag in DATASET_NUM_CLASSES)
    assert manifest.get("csap_tiny.ade20k").metrics["paper"]["mIoU"] == 42.9
    assert manifest.backbone_for("mscan_small").name == "mscan_small.in1k"


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ManifestError, match="no checkpoint named 'csap_tiny.ade20' .*Did you mean csap_tiny.ade20k"):
        default_manifest().get("csap_tiny.ade20")


@pytest.mark.parametrize("mutate, where", [
    (lambda e: e.update(sha256="xyz"), "checkpoints/0/sha256"),
    (lambda e: e.update(status="maybe"), "checkpoints/0/status"),
    (lambda e: e.pop("num_classes"), "checkpoints/0"),
    (lambda e: e.update(source={"hf": {"repo_id": "a/b", "revision": "main", "filename": "x"}}),
     "checkpoints/0/source"),
    (lambda e: e.update(status="published", source=None, sha256_prefix=None), "checkpoints/0"),
])
def test_invalid_manifest_is_a_clear_error(tmp_path, mutate, where):
    data = json.loads(MANIFEST_PATH.read_text())
    entry = next(e for e in data["checkpoints"] if e["name"] == "csap_tiny.ade20k")
    data["checkpoints"] = [entry]
    mutate(entry)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=f"invalid weights manifest in {path} at {where}"):
        load_manifest(path)


def test_duplicate_names_are_rejected(tmp_path):
    data = json.loads(MANIFEST_PATH.read_text())
    data["checkpoints"].append(data["checkpoints"][0])
    with pytest.raises(ManifestError, match="more than once"):
        Manifest.from_dict(data)


def test_not_json_is_a_clear_error(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(path)


def test_save_round_trips_and_is_atomic(tmp_path):
    manifest = load_manifest(MANIFEST_PATH)
    target = tmp_path / "copy.json"
    manifest.save(target)
    assert load_manifest(target).checkpoints == manifest.checkpoints
    assert [p.name for p in tmp_path.iterdir()] == ["copy.json"]  # no temp file left behind

    entry = manifest.get("csap_tiny.ade20k")
    broken = Checkpoint(**{**entry.__dict__, "sha256": "not-a-hash"})
    manifest.upsert(broken)
    with pytest.raises(ManifestError):
        manifest.save(target)
    assert load_manifest(target).get("csap_tiny.ade20k") == entry  # the file on disk is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["copy.json"]


def test_manifest_override_by_environment(tmp_path, monkeypatch):
    data = json.loads(MANIFEST_PATH.read_text())
    data["checkpoints"] = data["checkpoints"][:1]
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("CSAP_ZOO_MANIFEST", str(path))
    assert default_manifest().names() == [data["checkpoints"][0]["name"]]


def test_the_bundled_demo_entry_is_what_its_folder_says(tmp_path):
    """The demo's manifest entry is derived from its folder (scripts/build_demo.py calls publish_entry): deriving it
    again from the shipped folder gives the shipped entry, so the two cannot disagree."""
    from csap_zoo.hub.publish import publish_entry

    copy = tmp_path / "manifest.json"
    copy.write_text(MANIFEST_PATH.read_text())
    shipped = load_manifest(MANIFEST_PATH).get("csap_tiny.shapes")
    folder = Path(csap_zoo.__file__).parent / "assets" / "demo"
    derived = publish_entry(folder, "csap_tiny.shapes", package=shipped.source.path, manifest_path=copy,
                            license_id=shipped.license, notes=shipped.notes)
    assert derived == shipped
