"""torch.hub entry points from a local checkout."""
import ast
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def load_hubconf():
    """Import hubconf.py the way torch.hub does for a local directory (torch.hub.list/help only take GitHub)."""
    spec = importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hub_has_architecture_and_dataset_entries_with_docstrings():
    hubconf = load_hubconf()
    assert "torch" in hubconf.dependencies and "timm" in hubconf.dependencies
    for name in ("csap_tiny", "segnext_large", "csap_tiny_ade20k", "segnext_tiny_cityscapes", "csap_base_cocostuff"):
        assert callable(getattr(hubconf, name))
    assert "Dataset: ade20k, 150 classes" in hubconf.csap_tiny_ade20k.__doc__
    assert "SegNeXt" in hubconf.segnext_small.__doc__


@pytest.mark.parametrize("entry, classes", [("csap_tiny_ade20k", 150), ("segnext_tiny_cityscapes", 19)])
def test_hub_load_builds_the_named_model(entry, classes):
    model = torch.hub.load(str(REPO), entry, source="local", pretrained=False)
    assert model.num_classes == classes
    assert model.config.architecture == entry.split("_")[0] + "_tiny"


def test_hub_load_passes_options_through():
    model = torch.hub.load(str(REPO), "csap_tiny", source="local", num_classes=3, propagation="nearest")
    assert model.num_classes == 3 and model.decode_head.propagation == "nearest"


def test_hub_dependencies_name_every_module_the_package_imports_when_loaded():
    """torch.hub checks ``dependencies`` before it imports hubconf; a module imported at load time but missing from
    the list would fail later with a bare ImportError instead of torch.hub's message."""
    package = REPO / "csap_zoo"
    imported = set()
    for path in package.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only: what loads with the package
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported
                   if name not in sys.stdlib_module_names and name not in ("csap_zoo", "__future__")}
    optional = {"yaml", "tqdm", "jsonschema"}  # imported inside the functions that need them
    assert third_party - optional <= set(load_hubconf().dependencies)
    assert not third_party & optional, "imported at module level: add it to hubconf.dependencies"
