"""save_pretrained / from_pretrained / push_to_hub, converters and the publish command."""
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

import csap_zoo
from csap_zoo.cli import main as cli_main
from csap_zoo.hub import ConversionError, from_pretrained, push_to_hub, save_pretrained
from csap_zoo.hub.cache import sha256_of
from csap_zoo.manifest import MANIFEST_PATH, load_manifest

X = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(5)
    return csap_zoo.create_model("csap_tiny.cityscapes", propagation="nearest").eval()


def test_save_and_reload_exactly(model, tmp_path):
    folder = model.save_pretrained(str(tmp_path / "m"), metrics={"mIoU": 12.5})
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = from_pretrained(folder).eval()
    assert loaded.config == model.config and loaded.decode_head.propagation == "nearest"
    assert loaded.data_config == model.data_config
    assert loaded.metrics == {"mIoU": 12.5}
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["head"]["type"] == "csap" and config["model"]["num_classes"] == 19
    card = (folder / "README.md").read_text()
    for fact in ("csap_tiny", "cityscapes", "| classes | 19 |", "parameters", "GMACs", "mIoU | 12.5",
                 "from_pretrained"):
        assert fact in card
    assert re.search(r"GMACs \(512x512.*\| \d+\.\d\d \|", card)


def _forbid_fetching(monkeypatch) -> int:
    """Replace the checkpoint fetchers under every name a loaded csap_zoo module holds them by (a module that did
    ``from .download import fetch_verified`` holds its own reference); returns how many names were replaced."""
    import sys

    from csap_zoo.hub import download

    fetchers = {id(download.fetch_checkpoint), id(download.fetch_verified), id(download.place_from_file)}
    replaced = 0
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("csap_zoo"):
            continue
        for attribute, value in list(vars(module).items()):
            if id(value) in fetchers:
                monkeypatch.setattr(module, attribute,
                                    lambda *a, **k: pytest.fail("from_pretrained must not fetch anything"))
                replaced += 1
    return replaced


def test_reloading_never_downloads_backbone_weights(model, tmp_path, monkeypatch):
    folder = model.save_pretrained(str(tmp_path / "m"))
    import csap_zoo.hub.factory  # noqa: F401  (the module that fetches the backbone of a pretrained build)

    assert _forbid_fetching(monkeypatch) >= 4  # download's own three and the factory's fetch_verified at least
    from_pretrained(folder)
    with pytest.raises(pytest.fail.Exception, match="must not fetch"):  # the guard itself bites on a fetch
        csap_zoo.create_model("csap_tiny", pretrained=True, num_classes=3)


def test_custom_class_names_travel_with_the_weights(tmp_path):
    model = csap_zoo.create_model("csap_tiny", num_classes=3)
    model.data_config.class_names = ["sky", "road", "tree"]
    model.data_config.palette = [(0, 0, 255), (128, 64, 128), (0, 128, 0)]
    loaded = from_pretrained(model.save_pretrained(str(tmp_path / "m")))
    assert loaded.data_config.class_names == ["sky", "road", "tree"]
    assert loaded.data_config.palette[1] == (128, 64, 128)
    assert "0: sky, 1: road, 2: tree" in (tmp_path / "m" / "README.md").read_text()


def test_failed_save_leaves_nothing_half_written(model, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("csap_zoo.models.serialization.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(str(tmp_path / "m"))
    assert list(tmp_path.iterdir()) == []


def test_not_a_model_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="not a csap-zoo model folder"):
        from_pretrained(tmp_path / "empty")
    with pytest.raises(ConversionError, match="neither a model folder nor a Hub repo id"):
        from_pretrained(tmp_path / "missing" / "deeper")


def test_loading_is_strict(model, tmp_path):
    folder = model.save_pretrained(str(tmp_path / "m"))
    other = csap_zoo.create_model("segnext_tiny.cityscapes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a head of another architecture is a mismatch, not a class-count change
        with pytest.raises(ConversionError, match="shape mismatches: .*decode_head.classifier.weight"):
            csap_zoo.create_model("segnext_tiny.cityscapes", pretrained=str(folder / "model.safetensors"))
    assert other.num_classes == 19


def test_push_to_hub_uploads_a_loadable_folder(model, tmp_path, monkeypatch):
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            uploaded["repo"] = repo_id

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            uploaded["model"] = from_pretrained(folder_path)

            class Info:
                oid = "a" * 40
            return Info()

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    assert model.push_to_hub("zoo-test/pushed") == "a" * 40
    assert uploaded["repo"] == "zoo-test/pushed"
    assert uploaded["files"] == ["README.md", "config.json", "model.safetensors"]
    with torch.no_grad():
        assert torch.equal(uploaded["model"].eval()(X), model(X))


def test_publish_writes_a_valid_manifest_entry(model, tmp_path, capsys):
    folder = model.save_pretrained(str(tmp_path / "m"), metrics={"mIoU": 33.3})
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(MANIFEST_PATH.read_text())
    code = cli_main(["publish", str(folder), "--name", "csap_tiny.cityscapes", "--hf-repo", "zoo/csap-tiny-city",
                     "--revision", "b" * 40, "--manifest", str(manifest_path)])
    assert code == 0
    entry = load_manifest(manifest_path).get("csap_tiny.cityscapes")
    assert entry.published and entry.sha256 == sha256_of(folder / "model.safetensors")
    assert entry.size_bytes == (folder / "model.safetensors").stat().st_size
    assert entry.source.repo_id == "zoo/csap-tiny-city" and entry.source.revision == "b" * 40
    assert entry.metrics["reproduced"] == {"mIoU": 33.3} and entry.metrics["paper"]["mIoU"] == 80.5
    assert entry.sha256 in capsys.readouterr().out


def test_publish_needs_a_pinned_revision(model, tmp_path, capsys):
    folder = model.save_pretrained(str(tmp_path / "m"))
    before = MANIFEST_PATH.read_text()
    assert cli_main(["publish", str(folder), "--name", "csap_tiny.cityscapes", "--hf-repo", "zoo/x",
                     "--manifest", str(MANIFEST_PATH)]) == 1
    assert "needs the pinned --revision" in capsys.readouterr().err
    assert MANIFEST_PATH.read_text() == before


# ------------------------------------------------------------------ converters
MSCAN_BLOCK_NAMES = {  # ours -> original SegNeXt layout (REFERENCE section 2)
    "ls1.gamma": "layer_scale_1", "ls2.gamma": "layer_scale_2",
    "attn.proj_in.": "attn.proj_1.", "attn.proj_out.": "attn.proj_2.",
    "attn.gating.local.": "attn.spatial_gating_unit.conv0.",
    "attn.gating.strips.0.row.": "attn.spatial_gating_unit.conv0_1.",
    "attn.gating.strips.0.col.": "attn.spatial_gating_unit.conv0_2.",
    "attn.gating.strips.1.row.": "attn.spatial_gating_unit.conv1_1.",
    "attn.gating.strips.1.col.": "attn.spatial_gating_unit.conv1_2.",
    "attn.gating.strips.2.row.": "attn.spatial_gating_unit.conv2_1.",
    "attn.gating.strips.2.col.": "attn.spatial_gating_unit.conv2_2.",
    "attn.gating.mix.": "attn.spatial_gating_unit.conv3.",
    "mlp.dwconv.": "mlp.dwconv.",  # MMSegmentation 1.x layout
}
HAM_NAMES = {  # ours -> MMSegmentation LightHamHead
    "squeeze.0.": "squeeze.conv.", "squeeze.1.": "squeeze.gn.",
    "hamburger.ham_in.": "hamburger.ham_in.conv.",
    "hamburger.ham_out.0.": "hamburger.ham_out.conv.", "hamburger.ham_out.1.": "hamburger.ham_out.gn.",
    "align.0.": "align.conv.", "align.1.": "align.gn.", "classifier.": "conv_seg.",
}


def to_mmseg_layout(state):
    out = {}
    for key, value in state.items():
        part, rest = key.split(".", 1)
        if part == "backbone":
            stage, rest = re.match(r"stages_(\d)\.(.*)", rest).groups()
            s = int(stage) + 1
            if rest.startswith("downsample."):
                new = f"patch_embed{s}." + rest[len("downsample."):]
            elif rest.startswith("norm."):
                new = f"norm{s}." + rest[len("norm."):]
            else:
                block, tail = re.match(r"blocks\.(\d+)\.(.*)", rest).groups()
                for ours, theirs in MSCAN_BLOCK_NAMES.items():
                    if tail.startswith(ours):
                        tail = theirs + tail[len(ours):]
                        break
                new = f"block{s}.{block}.{tail}"
            out[f"backbone.{new}"] = value
        else:
            for ours, theirs in HAM_NAMES.items():
                if rest.startswith(ours):
                    rest = theirs + rest[len(ours):]
                    break
            out[f"decode_head.{rest}"] = value
    return out


def test_mmseg_segnext_checkpoint_converts_exactly(tmp_path, capsys):
    torch.manual_seed(3)
    source = csap_zoo.create_model("segnext_tiny.ade20k").eval()
    path = tmp_path / "segnext_mscan-t_ade20k-12345678.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": to_mmseg_layout(source.state_dict())}, path)

    def run(model):
        torch.manual_seed(0)  # the NMF draws random bases on every call
        with torch.no_grad():
            return model(X)

    direct = csap_zoo.create_model("segnext_tiny.ade20k", pretrained=str(path)).eval()
    assert torch.equal(run(direct), run(source))

    assert cli_main(["convert", str(path), str(tmp_path / "out"), "--name", "segnext_tiny.ade20k",
                     "--format", "mmseg-segnext"]) == 0
    converted = from_pretrained(tmp_path / "out").eval()
    assert torch.equal(run(converted), run(source))


def test_convert_rejects_a_file_of_another_layout(tmp_path, capsys):
    path = tmp_path / "x.pth"
    torch.save({"state_dict": {"backbone.foo": torch.zeros(1), "decode_head.bar": torch.zeros(1)}}, path)
    assert cli_main(["convert", str(path), str(tmp_path / "out"), "--name", "segnext_tiny.ade20k",
                     "--format", "mmseg-segnext"]) == 1
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_imagenet_backbone_file_converts_and_keeps_a_fresh_head(tmp_path):
    import timm
    torch.manual_seed(9)
    imagenet = timm.create_model("mscan_tiny").eval()
    path = tmp_path / "mscan_t.pth"
    torch.save({"state_dict": imagenet.state_dict()}, path)
    for model in (
        csap_zoo.create_model("csap_tiny", pretrained=str(path), num_classes=4),
        from_pretrained(Path(cli_convert(path, tmp_path / "out"))),
    ):
        with torch.no_grad():
            expected = imagenet.forward_intermediates(X, intermediates_only=True)
            assert all(torch.equal(a, b) for a, b in zip(expected, model.eval().backbone(X)))


def cli_convert(path, out):
    assert cli_main(["convert", str(path), str(out), "--name", "csap_tiny", "--format", "mscan-original"]) == 0
    return out


def test_folder_of_another_architecture_is_refused(model, tmp_path):
    folder = model.save_pretrained(str(tmp_path / "m"))
    with pytest.raises(ConversionError, match="holds a csap_tiny model, not segnext_tiny"):
        csap_zoo.create_model("segnext_tiny", pretrained=str(folder))


def _front_matter(folder):
    from huggingface_hub import ModelCard, metadata_load

    card = ModelCard.load(folder / "README.md")  # a local file: parsed offline
    return card, metadata_load(folder / "README.md")


def test_model_card_front_matter_is_hugging_face_metadata(model, tmp_path):
    metrics = {"mIoU": 12.5, "aAcc": 80.25, "mAcc": 20.75, "dataset": "cityscapes", "val_images": 4,
               "loss": float("nan")}
    folder = model.save_pretrained(str(tmp_path / "m"), metrics=metrics)
    card, meta = _front_matter(folder)
    assert card.data.library_name == "csap-zoo"
    assert card.data.pipeline_tag == "image-segmentation"
    assert card.data.datasets == ["cityscapes"]
    assert "timm" not in card.data.tags and "csap-zoo" in card.data.tags
    results = {r.metric_name: r for r in card.data.eval_results}
    assert set(results) == {"mIoU", "aAcc", "mAcc"}  # not results: bookkeeping (dataset, val_images), NaN
    assert results["mIoU"].metric_type == "mean_iou" and results["mIoU"].metric_value == 12.5
    assert results["aAcc"].metric_value == 80.25 and results["mAcc"].metric_value == 20.75
    assert {r.task_type for r in results.values()} == {"image-segmentation"}
    assert {r.dataset_name for r in results.values()} == {"cityscapes"}
    index = meta["model-index"]
    assert index[0]["name"] == "csap_tiny.cityscapes"
    assert index[0]["results"][0]["metrics"][0] == {"type": "mean_iou", "value": 12.5, "name": "mIoU"}
    body = card.text
    for row in ("| architecture | `csap_tiny` |", "| classes | 19 |", "parameters", "GMACs", "input padding",
                "| mIoU | 12.5 |"):
        assert row in body


def test_model_card_license_comes_from_the_argument_or_the_manifest(model, tmp_path, monkeypatch):
    data = json.loads(MANIFEST_PATH.read_text())
    for entry in data["checkpoints"]:
        if entry["name"] == "csap_tiny.cityscapes":
            entry["license"] = "cc-by-4.0"
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(data))
    monkeypatch.setenv("CSAP_ZOO_MANIFEST", str(manifest_path))
    card, _ = _front_matter(model.save_pretrained(str(tmp_path / "named")))
    assert card.data.license == "cc-by-4.0"  # the manifest entry the model is named after
    card, _ = _front_matter(save_pretrained(model, tmp_path / "argument", license="mit"))
    assert card.data.license == "mit"
    custom = csap_zoo.create_model("csap_tiny", num_classes=3)
    card, meta = _front_matter(custom.save_pretrained(str(tmp_path / "custom")))
    assert "license" not in meta and card.data.license is None  # unknown: left for the author to choose
    assert "datasets" not in meta and "model-index" not in meta  # no dataset, no metrics
    assert card.data.library_name == "csap-zoo"


def test_model_card_refuses_a_malformed_license(model, tmp_path):
    with pytest.raises(ValueError, match="license"):
        save_pretrained(model, tmp_path / "m", license="MIT License\nsee file")
    assert not (tmp_path / "m").exists()


def test_segmentor_save_pretrained_passes_the_license_and_dtype(tmp_path):
    from huggingface_hub import metadata_load

    model = csap_zoo.create_model("csap_tiny", num_classes=3)
    folder = model.save_pretrained(str(tmp_path / "m"), license="mit", dtype=torch.float16)
    assert metadata_load(folder / "README.md")["license"] == "mit"
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor("decode_head.classifier.weight").dtype == torch.float16


def test_push_to_hub_from_python_says_to_log_in_without_a_token(model, tmp_path, monkeypatch):
    """The Python API gives one clear error that says what to do (not huggingface_hub's traceback)."""
    from csap_zoo.errors import HubError

    class RefusingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            raise OSError("401 Client Error: Unauthorized")

    monkeypatch.setattr("huggingface_hub.HfApi", RefusingApi)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CSAP_ZOO_OFFLINE", raising=False)
    with pytest.raises(HubError, match="no Hugging Face token is set: log in with `hf auth login`") as info:
        model.push_to_hub("someone/shapes")
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline mode is on"):
        push_to_hub(model, "someone/shapes", token="hf_x")  # the function form: the same checks
