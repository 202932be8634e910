"""A model folder's config.json is untrusted input: every field is checked (type and bounds) before anything is
built, one clear error names the file and the field, and reading a local folder never touches the network."""
import json
import shutil
import time

import pytest
import timm
import torch

import csap_zoo
from csap_zoo.hub import from_pretrained

from _helpers import expect_config_error


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(4)
    root = tmp_path_factory.mktemp("saved")
    csap = csap_zoo.create_model("csap_tiny", num_classes=3)
    csap.data_config.class_names = ["a", "b", "c"]
    csap.data_config.palette = [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    return {"csap": csap.save_pretrained(str(root / "csap")),
            "ham": csap_zoo.create_model("segnext_tiny", num_classes=3).save_pretrained(str(root / "ham"))}


def edited(saved, tmp_path, change, kind="csap"):
    """A copy of a saved folder whose parsed config.json went through ``change`` (which may return a new value)."""
    folder = shutil.copytree(saved[kind], tmp_path / kind)
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data = change(data) or data
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return folder


def model(change):
    return lambda d: change(d["model"])


def head(change):
    return lambda d: change(d["model"]["head"])


def data(change):
    return lambda d: change(d["data"])


HOSTILE = {
    # unknown keys, at every level
    "unknown top-level key": (lambda d: d.update(weights_url="http://x"), "weights_url"),
    "unknown model key": (model(lambda m: m.update(bogus=1)), "model.bogus"),
    "unknown head key": (head(lambda h: h.update(nope=2)), "model.head.nope"),
    "unknown data key": (data(lambda x: x.update(colour="red")), "data.colour"),
    # JSON lists (or scalars) where objects belong
    "list instead of config": (lambda d: [d], "must be a JSON object"),
    "list instead of model": (lambda d: d.update(model=[1, 2]), "model"),
    "list instead of head": (model(lambda m: m.update(head=["csap"])), "model.head"),
    "string instead of data": (lambda d: d.update(data="imagenet"), "data"),
    "list instead of metrics": (lambda d: d.update(metrics=[91.2]), "metrics"),
    "number as version": (lambda d: d.update(csap_zoo_version=1), "csap_zoo_version"),
    # wrong types
    "string num_classes": (model(lambda m: m.update(num_classes="3")), "model.num_classes"),
    "float num_classes": (model(lambda m: m.update(num_classes=3.0)), "model.num_classes"),
    "bool in_chans": (model(lambda m: m.update(in_chans=True)), "model.in_chans"),
    "string num_heads": (head(lambda h: h.update(num_heads="8")), "model.head.num_heads"),
    "string mlp_ratio": (head(lambda h: h.update(mlp_ratio="2.0")), "model.head.mlp_ratio"),
    "number as head type": (head(lambda h: h.update(type=1)), "model.head.type"),
    "object in backbone_args": (model(lambda m: m.update(backbone_args={"drop_path_rate": {"a": 1}})),
                                "model.backbone_args.drop_path_rate"),
    "string mean": (data(lambda x: x.update(mean="imagenet")), "data.mean"),
    "class name not a string": (data(lambda x: x.update(class_names=["a", 2, "c"])), "data.class_names"),
    # out of bounds
    "num_heads 0": (head(lambda h: h.update(num_heads=0)), "model.head.num_heads"),
    "num_classes 10**9": (model(lambda m: m.update(num_classes=10 ** 9)), "model.num_classes"),
    "num_classes 0": (model(lambda m: m.update(num_classes=0)), "model.num_classes"),
    "in_chans 10**6": (model(lambda m: m.update(in_chans=10 ** 6)), "model.in_chans"),
    "channels 10**7": (head(lambda h: h.update(channels=10 ** 7)), "model.head.channels"),
    "pool ratio 0": (head(lambda h: h.update(pool_ratios=[8, 0, 2])), "model.head.pool_ratios"),
    "dropout 2": (head(lambda h: h.update(dropout=2.0)), "model.head.dropout"),
    "mlp_ratio NaN": (head(lambda h: h.update(mlp_ratio=float("nan"))), "model.head.mlp_ratio"),
    "feature stride 0": (model(lambda m: m.update(feature_strides=[0, 16, 32])), "model.feature_strides"),
    "no feature strides": (model(lambda m: m.update(feature_strides=[])), "model.feature_strides"),
    "huge test_size": (data(lambda x: x.update(test_size=[10 ** 7, 10 ** 7])), "data.test_size"),
    "test_size of three": (data(lambda x: x.update(test_size=[128, 128, 3])), "data.test_size"),
    "zero train_crop": (data(lambda x: x.update(train_crop=[0, 96])), "data.train_crop"),
    "zero std": (data(lambda x: x.update(std=[58.4, 0, 57.4])), "data.std"),
    "infinite mean": (data(lambda x: x.update(mean=[float("inf"), 1.0, 1.0])), "data.mean"),
    "palette value 300": (data(lambda x: x.update(palette=[[1, 2, 3], [4, 5, 300], [7, 8, 9]])), "data.palette"),
    "class names of another count": (data(lambda x: x.update(class_names=["a", "b"], palette=None)),
                                     "data.class_names"),
    # names that are not ours
    "unknown architecture": (model(lambda m: m.update(architecture="csap_gigantic")), "model.architecture"),
    "unknown head type": (head(lambda h: h.update(type="upernet")), "model.head.type"),
    "unknown attention mode": (head(lambda h: h.update(attention=["propagate", "telepathy"])),
                               "model.head.attention"),
    "unknown propagation": (head(lambda h: h.update(propagation="teleport")), "model.head.propagation"),
    "unknown backbone": (model(lambda m: m.update(backbone="resnet_that_does_not_exist")), "model.backbone"),
    # combinations the head cannot build: still named as the file's problem
    "heads that do not divide the widths": (head(lambda h: h.update(num_heads=7)), "model"),
    "pool ratios of another count": (head(lambda h: h.update(pool_ratios=[8, 4])), "model"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_config_values_are_one_clear_error(saved, tmp_path, case):
    change, field = HOSTILE[case]
    folder = edited(saved, tmp_path, change)
    expect_config_error(lambda: from_pretrained(folder), folder / "config.json", field)


@pytest.mark.parametrize("case, change, field", [
    ("num_groups 0", head(lambda h: h.update(num_groups=0)), "model.head.num_groups"),
    ("num_bases 10**6", head(lambda h: h.update(num_bases=10 ** 6)), "model.head.num_bases"),
    ("eval_steps 10**9", head(lambda h: h.update(eval_steps=10 ** 9)), "model.head.eval_steps"),
    ("groups that do not divide", head(lambda h: h.update(num_groups=7)), "model.head.num_groups"),
    ("CSAP option on a Ham head", head(lambda h: h.update(num_heads=8)), "model.head.num_heads"),
])
def test_hostile_ham_head_values(saved, tmp_path, case, change, field):
    folder = edited(saved, tmp_path, change, kind="ham")
    expect_config_error(lambda: from_pretrained(folder), folder / "config.json", field)


@pytest.mark.parametrize("case, text", [
    ("deeply nested", "[" * 200_000 + "]" * 200_000),
    ("integer of 100000 digits", '{"format_version": ' + "9" * 100_000 + "}"),
    ("not UTF-8", b"\xff\xfe{}"),
])
def test_unparseable_config_files_are_clear_errors(saved, tmp_path, case, text):
    folder = edited(saved, tmp_path, lambda d: text)
    with pytest.raises(ValueError, match=f"{folder / 'config.json'}"):
        from_pretrained(folder)


def test_oversized_config_file_is_refused_unread(saved, tmp_path, monkeypatch):
    monkeypatch.setattr("csap_zoo.models.serialization.MAX_CONFIG_BYTES", 1000)
    folder = edited(saved, tmp_path, lambda d: d["data"].update(class_names=["x" * 500] * 3))
    expect_config_error(lambda: from_pretrained(folder), folder / "config.json", "larger than")


def test_the_bundled_demo_and_an_untouched_folder_still_load(saved, tmp_path):
    from csap_zoo.models.serialization import read_model_folder  # noqa: F401  (the loader every path shares)

    demo = csap_zoo.from_pretrained(csap_zoo.__path__[0] + "/assets/demo")
    assert demo.num_classes == 6 and demo.data_config.class_names[1] == "disc"
    assert demo.metrics["mIoU"] == 91.28
    loaded = from_pretrained(saved["csap"])
    assert loaded.data_config.palette == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert loaded.config.head.pool_ratios == (8, 4, 2)


# ------------------------------------------------------------------ a local folder never touches the network
TIMM_BACKBONE_CONFIG = json.dumps({"architecture": "mscan_tiny", "num_classes": 0,
                                   "pretrained_cfg": {"hf_hub_id": "zoo-test/backbone"}}).encode()


def test_hub_backbone_named_in_a_local_folder_is_refused_without_a_request(saved, tmp_path, hf_env):
    hf_env.server.add_file("zoo-test/backbone", "config.json", TIMM_BACKBONE_CONFIG)
    hf_env.server.add_file("zoo-test/backbone", "model.safetensors", b"never fetched")
    folder = edited(saved, tmp_path, model(lambda m: m.update(backbone="hf-hub:zoo-test/backbone")))
    message = expect_config_error(lambda: from_pretrained(folder), folder / "config.json", "model.backbone")
    assert "hf-hub:" in message and "model.safetensors" in message
    assert hf_env.server.requests == []


def test_hub_backbone_without_a_fake_hub_never_reaches_the_network(saved, tmp_path, no_network):
    folder = edited(saved, tmp_path, model(lambda m: m.update(backbone="hf-hub:timm/resnet18.a1_in1k")))
    expect_config_error(lambda: from_pretrained(folder), folder / "config.json", "model.backbone")
    assert no_network.attempts == []


@pytest.mark.parametrize("args", [
    {"pretrained": True},
    {"pretrained_cfg": "a1_in1k"},
    {"pretrained_cfg_overlay": {"hf_hub_id": "zoo-test/backbone"}},
    {"checkpoint_path": "/etc/passwd"},
    {"cache_dir": "/tmp/elsewhere"},
    {"features_only": False},
    {"in_chans": 4},
])
def test_backbone_args_that_fetch_or_override_weights_are_refused(saved, tmp_path, hf_env, args):
    hf_env.server.add_file("zoo-test/backbone", "model.safetensors", b"never fetched")
    folder = edited(saved, tmp_path, model(lambda m: m.update(backbone_args=args)))
    key = next(iter(args))
    expect_config_error(lambda: from_pretrained(folder), folder / "config.json", f"model.backbone_args.{key}")
    assert hf_env.server.requests == []


def test_reading_a_folder_builds_the_backbone_without_pretrained_weights(saved, tmp_path, hf_env, monkeypatch):
    calls = []
    real = timm.create_model

    def recording(name, *args, **kwargs):
        calls.append((name, kwargs))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", recording)
    folder = edited(saved, tmp_path, model(lambda m: m.update(backbone="mscan_tiny.in1k",
                                                              backbone_args={"drop_path_rate": 0.0})))
    from_pretrained(folder)
    assert calls and all(kwargs.get("pretrained") is False and "pretrained_cfg_overlay" not in kwargs
                         for _, kwargs in calls), calls
    assert hf_env.server.requests == []


def test_a_config_describing_a_larger_model_than_its_weights_is_refused_before_allocating(saved, tmp_path):
    # every value is within its bounds, but the backbone described needs ~40 GB: it is compared with the weights
    # file on the meta device and refused without allocating it
    folder = edited(saved, tmp_path, model(lambda m: m.update(backbone_args={"embed_dims": [50000] * 4})))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="does not fit the model; shape mismatches"):
        from_pretrained(folder)  # not an allocation failure: nothing that size was allocated
    assert time.perf_counter() - start < 5.0  # a meta build and a comparison (an allocation attempt is an error)
