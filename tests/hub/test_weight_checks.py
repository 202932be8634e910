"""The strict loader refuses weights that cannot be what the model holds: non-floating tensors for floating
parameters (and the reverse), and model folders whose config.json and weights disagree on the class count."""
import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import csap_zoo
from csap_zoo.hub import ConversionError, from_pretrained
from csap_zoo.hub.convert import convert_checkpoint

X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
FLOAT_KEYS = ("backbone.stages_0.downsample.proj.0.weight", "decode_head.classifier.weight")
COUNTER = "decode_head.fuse.1.num_batches_tracked"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(11)
    model = csap_zoo.create_model("csap_tiny", num_classes=3).eval()
    return model, model.save_pretrained(str(tmp_path_factory.mktemp("saved") / "m"))


def copy_folder(saved, tmp_path):
    return shutil.copytree(saved[1], tmp_path / "copy")


def rewrite_weights(folder, change):
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))
    return folder / "model.safetensors"


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_non_floating_weights_are_an_error_naming_the_keys(saved, tmp_path, dtype):
    folder = copy_folder(saved, tmp_path)
    weights = rewrite_weights(folder, lambda s: s.update({k: s[k].to(dtype) for k in FLOAT_KEYS}))
    loaders = {
        "from_pretrained": lambda: from_pretrained(folder),
        "create_model(pretrained=file)": lambda: csap_zoo.create_model("csap_tiny", pretrained=str(weights)),
        "create_model(pretrained=folder)": lambda: csap_zoo.create_model("csap_tiny", pretrained=str(folder)),
        "convert": lambda: convert_checkpoint(weights, tmp_path / "out", "csap_tiny", "csap-safetensors"),
    }
    for name, load in loaders.items():
        with pytest.raises(ConversionError) as info:
            load()
        message = str(info.value)
        assert all(key in message for key in FLOAT_KEYS), (name, message)
        assert str(dtype).replace("torch.", "") in message and "float" in message, (name, message)
    assert not (tmp_path / "out").exists()


def test_an_integer_counter_stays_integer_and_a_float_counter_is_refused(saved, tmp_path):
    model, folder = saved
    assert load_file(str(folder / "model.safetensors"))[COUNTER].dtype == torch.int64
    loaded = from_pretrained(folder).eval()  # int64 num_batches_tracked in the file: fine
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))

    copy = copy_folder(saved, tmp_path)
    rewrite_weights(copy, lambda s: s.update({COUNTER: s[COUNTER].float()}))
    with pytest.raises(ConversionError, match=f"{COUNTER}.*float32.*int64"):
        from_pretrained(copy)


def test_trainer_init_from_a_bad_weights_file_is_refused(saved, tmp_path):
    from csap_zoo.data.synthetic import generate_shapes_dataset
    from csap_zoo.training import Trainer, get_preset

    folder = copy_folder(saved, tmp_path)
    weights = rewrite_weights(folder, lambda s: s.update({k: s[k].long() for k in FLOAT_KEYS}))
    generate_shapes_dataset(tmp_path / "d", num_train=4, num_val=0, size=(32, 32))
    config = get_preset("shapes-demo").replace(data_root=str(tmp_path / "d"), init=str(weights), batch_size=2,
                                               out_dir=str(tmp_path / "run"), tensorboard=False, progress=False)
    with pytest.raises(ConversionError, match=FLOAT_KEYS[0]):
        Trainer(config)


# ------------------------------------------------------------------ class count of a saved folder
def set_num_classes(folder, n):
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data["model"]["num_classes"] = n
    data["data"]["class_names"] = data["data"]["palette"] = None
    path.write_text(json.dumps(data))


def test_folder_whose_config_and_weights_disagree_is_an_error(saved, tmp_path):
    folder = copy_folder(saved, tmp_path)
    set_num_classes(folder, 5)
    for num_classes in (None, 5, 7):  # an explicit num_classes does not excuse an inconsistent folder
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ConversionError) as info:
                from_pretrained(folder, num_classes=num_classes)
        message = str(info.value)
        for fact in ("num_classes=5", "3 classes", "config.json", "model.safetensors", str(folder)):
            assert fact in message, message


def test_explicit_num_classes_still_reinitialises_the_classifier(saved, tmp_path):
    model, folder = saved
    with pytest.warns(UserWarning, match="checkpoint has 3 classes, num_classes=4; the classifier is re-init"):
        loaded = from_pretrained(folder, num_classes=4)
    assert loaded.num_classes == 4 and loaded.config.num_classes == 4
    ours, theirs = loaded.state_dict(), model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if "classifier" not in k)
