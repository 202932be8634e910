"""Finding models: list_models(pretrained=True), list_pretrained() and Segmentor.from_pretrained."""
import json

import pytest
import torch

import csap_zoo
from csap_zoo.manifest import MANIFEST_PATH
from csap_zoo.models import registry


def _manifest_with(tmp_path, changes):
    """A copy of the shipped manifest with some entries' fields changed; returns its path."""
    data = json.loads(MANIFEST_PATH.read_text())
    for entry in data["checkpoints"]:
        entry.update(changes.get(entry["name"], {}))
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    return path


def test_list_models_without_pretrained_is_the_registry():
    assert csap_zoo.list_models() == registry.list_architectures()
    assert csap_zoo.list_models("csap_*") == registry.list_architectures("csap_*")
    assert csap_zoo.list_models("segnext_t*", with_datasets=True) == registry.list_architectures("segnext_t*",
                                                                                          with_datasets=True)
    assert "csap_tiny" in csap_zoo.list_models()


def test_list_models_pretrained_lists_published_segmentor_checkpoints():
    names = csap_zoo.list_models(pretrained=True)
    assert "csap_tiny.shapes" in names            # bundled with the package
    assert "segnext_tiny.ade20k" in names         # published at a URL
    assert "csap_tiny.ade20k" not in names        # unpublished: no weights yet
    assert "segnext_tiny.cityscapes" not in names
    assert not any(n.startswith("mscan_") for n in names)  # ImageNet backbones are not segmentors
    assert names == sorted(names)
    # a pattern matches the full name or the architecture alone, as timm's tagged names do
    assert csap_zoo.list_models("csap_tiny", pretrained=True) == ["csap_tiny.shapes"]
    assert csap_zoo.list_models("*.ade20k", pretrained=True) == [
        n for n in names if n.endswith(".ade20k")]
    assert "segnext_large.ade20k" in csap_zoo.list_models("*.ade20k", pretrained=True)


def test_list_models_pretrained_follows_the_manifest(tmp_path, monkeypatch):
    path = _manifest_with(tmp_path, {
        "csap_small.cityscapes": {"status": "published",
                                  "source": {"hf": {"repo_id": "org/csap-small-cs", "revision": "a" * 40,
                                                    "filename": "model.safetensors"}},
                                  "sha256": "b" * 64, "size_bytes": 1000},
        "segnext_tiny.ade20k": {"status": "unpublished"},
    })
    monkeypatch.setenv("CSAP_ZOO_MANIFEST", str(path))
    names = csap_zoo.list_models(pretrained=True)
    assert "csap_small.cityscapes" in names and "segnext_tiny.ade20k" not in names
    records = {r.name: r for r in csap_zoo.list_pretrained()}
    assert records["csap_small.cityscapes"].source_kind == "hf" and records["csap_small.cityscapes"].published
    assert records["segnext_tiny.ade20k"].status == "unpublished" and not records["segnext_tiny.ade20k"].published


def test_list_pretrained_reports_every_segmentor_checkpoint_with_status():
    records = csap_zoo.list_pretrained()
    by_name = {r.name: r for r in records}
    shapes = by_name["csap_tiny.shapes"]
    assert (shapes.architecture, shapes.dataset, shapes.status, shapes.source_kind) == (
        "csap_tiny", "shapes", "published", "package")
    assert by_name["segnext_tiny.ade20k"].source_kind == "url"
    unpublished = by_name["csap_tiny.ade20k"]
    assert unpublished.status == "unpublished" and not unpublished.published
    assert "mscan_tiny.in1k" not in by_name
    assert [r.name for r in records if r.published] == csap_zoo.list_models(pretrained=True)
    assert [r.name for r in csap_zoo.list_pretrained("segnext_*")] == [
        r.name for r in records if r.architecture.startswith("segnext_")]
    with pytest.raises(AttributeError):
        shapes.status = "unpublished"  # records are frozen


def test_segmentor_from_pretrained_is_the_module_function(tmp_path):
    torch.manual_seed(0)
    model = csap_zoo.create_model("csap_tiny", num_classes=3, propagation="nearest").eval()
    folder = model.save_pretrained(str(tmp_path / "m"))
    loaded = csap_zoo.models.Segmentor.from_pretrained(folder)
    reference = csap_zoo.from_pretrained(folder)
    assert isinstance(loaded, csap_zoo.models.Segmentor)
    assert loaded.config == reference.config == model.config
    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
    with pytest.raises(Exception, match="neither a model folder nor a Hub repo id"):
        csap_zoo.models.Segmentor.from_pretrained(tmp_path / "missing" / "deeper")
