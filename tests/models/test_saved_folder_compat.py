"""Folders written by an earlier csap-zoo (main at 8cb8d81, before the package layout changed) load strictly, and
saving them again gives the same bytes: checkpoint keys, config.json and the model card did not change."""
from pathlib import Path

import pytest
import torch

import csap_zoo

FIXTURES = Path(__file__).parent / "fixtures" / "saved_by_8cb8d81"
FILES = ("config.json", "model.safetensors", "README.md")


@pytest.mark.parametrize("name", ["csap_tiny.cityscapes", "segnext_tiny"])
def test_a_folder_saved_by_the_earlier_layout_loads_and_saves_to_the_same_bytes(name, tmp_path):
    folder = FIXTURES / name
    model = csap_zoo.from_pretrained(folder).eval()
    assert model.config.architecture == name.split(".")[0]
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, model.num_classes, 64, 64) and torch.isfinite(logits).all()
    again = model.save_pretrained(tmp_path / name)
    for file in FILES:
        assert (again / file).read_bytes() == (folder / file).read_bytes(), file
