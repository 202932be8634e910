"""Dataset metadata: the shipped class lists and palettes, custom class sets, the registry's class counts."""
import ast
from pathlib import Path

import pytest

import csap_zoo
from csap_zoo.data.metadata import custom_dataset_info, generate_palette, get_dataset_info, list_datasets
from csap_zoo.models.registry import DATASET_NUM_CLASSES


def test_registry_class_counts_agree_with_the_metadata():
    assert set(DATASET_NUM_CLASSES) == set(list_datasets())
    for tag, count in DATASET_NUM_CLASSES.items():
        info = get_dataset_info(tag)
        assert info.num_classes == count and len(info.palette) == count


def test_standard_lists():
    ade = get_dataset_info("ade20k")
    assert ade.class_names[:3] == ("wall", "building", "sky") and ade.class_names[-1] == "flag"
    assert ade.palette[0] == (120, 120, 120) and ade.palette[-1] == (92, 0, 255)
    city = get_dataset_info("cityscapes")
    assert city.class_names[0] == "road" and city.palette[0] == (128, 64, 128)
    assert city.class_names[-1] == "bicycle" and city.palette[-1] == (119, 11, 32)
    coco = get_dataset_info("cocostuff")
    assert coco.class_names[0] == "person" and coco.class_names[80] == "banner" and coco.class_names[-1] == "wood"
    for info in (ade, city, coco):
        assert len(set(info.class_names)) == info.num_classes
        assert info.ignore_index == 255


def test_lookup_is_case_insensitive_with_aliases_and_clear_errors():
    assert get_dataset_info("ADE20K") is get_dataset_info("ade")
    assert get_dataset_info("coco-stuff").name == "cocostuff"
    with pytest.raises(ValueError, match="known datasets: ade20k, cityscapes, cocostuff"):
        get_dataset_info("pascal")
    assert csap_zoo.data.get_dataset_info("cityscapes").num_classes == 19


def test_custom_class_sets():
    info = custom_dataset_info(["bg", "cat", "dog"])
    assert info.num_classes == 3 and len(set(info.palette)) == 3 and (0, 0, 0) not in info.palette
    given = custom_dataset_info(["a", "b"], palette=[(1, 2, 3), [4, 5, 6]])
    assert given.palette == ((1, 2, 3), (4, 5, 6))
    with pytest.raises(ValueError, match="2 class names but 1 palette colours"):
        custom_dataset_info(["a", "b"], palette=[(1, 2, 3)])
    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        custom_dataset_info(["a", "a"])
    with pytest.raises(ValueError, match="three ints in 0..255"):
        custom_dataset_info(["a"], palette=[(1, 2, 300)])


def test_generated_palettes_are_distinct_and_deterministic():
    palette = generate_palette(500)
    assert len(set(palette)) == 500 and palette == generate_palette(500)
    assert generate_palette(3) == palette[:3]


def _imported_modules(source: str, package: str):
    """Absolute names of the modules some source imports (relative imports resolved against its package)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)


def test_models_package_does_not_import_data():
    """Direction of knowledge: csap_zoo.models knows nothing of csap_zoo.data."""
    assert "csap_zoo.data" in set(_imported_modules("from ...data import metadata", "csap_zoo.models.heads"))
    root = Path(csap_zoo.__file__).parent
    offenders = []
    for path in (root / "models").rglob("*.py"):
        package = ".".join(("csap_zoo",) + path.relative_to(root).parent.parts)
        for name in _imported_modules(path.read_text(), package):
            if name == "csap_zoo.data" or name.startswith("csap_zoo.data."):
                offenders.append(f"{path.relative_to(root)} imports {name}")
    assert not offenders


def test_the_shipped_evaluation_protocols_cannot_be_changed_by_a_caller():
    """ADE20K and COCO-Stuff share one protocol object: editing one dataset's must not silently edit both."""
    ade = get_dataset_info("ade20k")
    with pytest.raises(TypeError):
        ade.evaluation["resize"] = (1024, 256)
    assert dict(get_dataset_info("cocostuff").evaluation) == {"mode": "whole", "resize": (2048, 512)}
