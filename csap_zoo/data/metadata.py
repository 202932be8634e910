"""Dataset metadata: class names and display palettes.

Ships the standard public class lists and palettes of ADE20K (150 classes), Cityscapes (19 train ids) and
COCO-Stuff-164K (171 classes), and builds metadata for custom class sets. ``get_dataset_info("ade20k")`` is the
lookup; names are case-insensitive and accept a few common spellings (``ade``, ``coco-stuff``, ...).

Custom classes come from a classes file (:func:`read_classes_file`, the one parser of that format: training,
``open_dataset("folder", ...)`` and ``csap-zoo eval --classes`` all read it).
"""
from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..constants import IGNORE_INDEX
from ..fileio import atomic_write

__all__ = [
    "CLASSES_FILE_GRAMMAR", "DatasetInfo", "IGNORE_INDEX", "classes_file_info", "custom_dataset_info",
    "generate_palette", "get_dataset_info", "list_datasets", "read_classes_file", "write_classes_file",
]

RGB = Tuple[int, int, int]
PathLike = Union[str, os.PathLike]
CLASSES_FILE_GRAMMAR = "one class per line, `name` or `name R G B`; `#` starts a comment"


@dataclass(frozen=True)
class DatasetInfo:
    """Names and colours of a dataset's classes.

    Attributes:
        name: short dataset name (``ade20k``, ``cityscapes``, ``cocostuff`` or a custom one).
        class_names: one name per class index.
        palette: one (R, G, B) colour per class index.
        ignore_index: the label value that marks pixels to ignore in evaluation (drawn black).
        evaluation: the dataset's standard test-time setting as ``InferenceConfig`` fields (MMSegmentation's
            protocol), e.g. ``{"mode": "whole", "resize": (2048, 512)}``; empty for custom datasets.
    """

    name: str
    class_names: Tuple[str, ...]
    palette: Tuple[RGB, ...]
    ignore_index: int = IGNORE_INDEX
    aliases: Tuple[str, ...] = field(default=(), compare=False)
    evaluation: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ValueError(f"dataset {self.name!r} needs at least one class name")
        if len(self.palette) != len(self.class_names):
            raise ValueError(f"dataset {self.name!r} has {len(self.class_names)} class names but "
                             f"{len(self.palette)} palette colours; give one (R, G, B) colour per class")
        for i, colour in enumerate(self.palette):
            if len(colour) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour):
                raise ValueError(f"palette colour {i} of {self.name!r} is {colour!r}; expected three ints in 0..255")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def generate_palette(num_classes: int) -> List[RGB]:
    """``num_classes`` distinct, deterministic colours (golden-ratio hue steps over a few saturation/value rings)."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    palette: List[RGB] = []
    seen = set()
    golden = 0.618033988749895
    i = 0
    while len(palette) < num_classes:
        hue = (i * golden) % 1.0
        sat = (0.95, 0.6, 0.8)[(i // 3) % 3]
        val = (0.95, 0.75, 0.55)[i % 3]
        colour = tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, sat, val))
        if colour not in seen and colour != (0, 0, 0):  # black is the ignore colour
            seen.add(colour)
            palette.append(colour)  # type: ignore[arg-type]
        i += 1
    return palette


def custom_dataset_info(class_names: Sequence[str], palette: Optional[Sequence[Sequence[int]]] = None,
                        name: str = "custom", ignore_index: int = IGNORE_INDEX) -> DatasetInfo:
    """Metadata for your own classes; a distinct palette is generated when none is given."""
    names = tuple(str(n) for n in class_names)
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class names must be unique; repeated: {dupes}")
    colours = generate_palette(len(names)) if palette is None else [tuple(int(c) for c in p) for p in palette]
    return DatasetInfo(name=name, class_names=names, palette=tuple(colours), ignore_index=ignore_index)


def write_classes_file(path: PathLike, names: Sequence[str], palette: Sequence[Sequence[int]] = ()) -> Path:
    """Write a classes file that :func:`read_classes_file` reads back: one ``name`` or ``name R G B`` line per
    class (atomically)."""
    lines = [f"{n} {' '.join(str(int(c)) for c in palette[i])}" if palette else str(n) for i, n in enumerate(names)]
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_classes_file(path: PathLike) -> Tuple[List[str], Optional[List[RGB]]]:
    """Class names (and palette, if every line has one) from a classes file.

    Lines are ``name`` or ``name R G B`` (names may contain spaces); blank lines and ``#`` comments are skipped.
    A missing file is a FileNotFoundError; a malformed one a ValueError naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classes file not found: {path} ({CLASSES_FILE_GRAMMAR})")
    names: List[str] = []
    colours: List[Optional[RGB]] = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        colour = None
        if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
            colour = tuple(int(p) for p in parts[-3:])
            if max(colour) > 255:
                raise ValueError(f"{path}:{number}: colour {colour} is outside 0..255")
            parts = parts[:-3]
        names.append(" ".join(parts))
        colours.append(colour)  # type: ignore[arg-type]
    if not names:
        raise ValueError(f"classes file {path} lists no classes")
    if all(c is not None for c in colours):
        return names, colours  # type: ignore[return-value]
    if any(c is not None for c in colours):
        raise ValueError(f"{path}: give a colour on every line or on none")
    return names, None


def classes_file_info(path: PathLike, name: str = "custom", ignore_index: int = IGNORE_INDEX) -> DatasetInfo:
    """Metadata of the classes a classes file lists (its palette if it gives one, else a generated one)."""
    names, palette = read_classes_file(path)
    return custom_dataset_info(names, palette, name=name, ignore_index=ignore_index)


_ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

_ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255),
    (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245),
    (0, 61, 255), (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0),
    (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82),
    (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0),
    (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0),
    (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

_CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

_CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)

_COCOSTUFF_CLASSES = (
    # 80 "thing" classes
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
    # 91 "stuff" classes
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)

# The palette used by MMSegmentation's COCO-Stuff config; note it repeats a few colours (e.g. person/bicycle).
_COCOSTUFF_PALETTE = (
    (0, 192, 64), (0, 192, 64), (0, 64, 96), (128, 192, 192), (0, 64, 64), (0, 192, 224), (0, 192, 192),
    (128, 192, 64), (0, 192, 96), (128, 192, 64), (128, 32, 192), (0, 0, 224), (0, 0, 64), (0, 160, 192),
    (128, 0, 96), (128, 0, 192), (0, 32, 192), (128, 128, 224), (0, 0, 192), (128, 160, 192), (128, 128, 0),
    (128, 0, 32), (128, 32, 0), (128, 0, 128), (64, 128, 32), (0, 160, 0), (0, 0, 0), (192, 128, 160),
    (0, 32, 0), (0, 128, 128), (64, 128, 160), (128, 160, 0), (0, 128, 0), (192, 128, 32), (128, 96, 128),
    (0, 0, 128), (64, 0, 32), (0, 224, 128), (128, 0, 0), (192, 0, 160), (0, 96, 128), (128, 128, 128),
    (64, 0, 160), (128, 224, 128), (128, 128, 64), (192, 0, 32), (128, 96, 0), (128, 0, 192), (0, 128, 32),
    (64, 224, 0), (0, 0, 64), (128, 128, 160), (64, 96, 0), (0, 128, 192), (0, 128, 160), (192, 224, 0),
    (0, 128, 64), (128, 128, 32), (192, 32, 128), (0, 64, 192), (0, 0, 32), (64, 160, 128), (128, 64, 64),
    (128, 0, 160), (64, 32, 128), (128, 192, 192), (0, 0, 160), (192, 160, 128), (128, 192, 0), (128, 0, 96),
    (192, 32, 0), (128, 64, 128), (64, 128, 96), (64, 160, 0), (0, 64, 0), (192, 128, 224), (64, 32, 0),
    (0, 192, 128), (64, 128, 224), (192, 160, 0), (0, 192, 0), (192, 128, 96), (192, 96, 128), (0, 64, 128),
    (64, 0, 96), (64, 224, 128), (128, 64, 0), (192, 0, 224), (64, 96, 128), (128, 192, 128), (64, 0, 224),
    (192, 224, 128), (128, 192, 64), (192, 0, 96), (192, 96, 0), (128, 64, 192), (0, 128, 96), (0, 224, 0),
    (64, 64, 64), (128, 128, 224), (0, 96, 0), (64, 192, 192), (0, 128, 224), (128, 224, 0), (64, 192, 64),
    (128, 128, 96), (128, 32, 128), (64, 0, 192), (0, 64, 96), (0, 160, 128), (192, 0, 64), (128, 64, 224),
    (0, 32, 128), (192, 128, 192), (0, 64, 224), (128, 160, 128), (192, 128, 0), (128, 64, 32), (128, 32, 64),
    (192, 0, 128), (64, 192, 32), (0, 160, 64), (64, 0, 0), (192, 192, 160), (0, 32, 64), (64, 128, 128),
    (64, 192, 160), (128, 160, 64), (64, 128, 0), (192, 192, 32), (128, 96, 192), (64, 0, 128), (64, 64, 32),
    (0, 224, 192), (192, 0, 0), (192, 64, 160), (0, 96, 192), (192, 128, 128), (64, 64, 160), (128, 224, 192),
    (192, 128, 64), (192, 64, 32), (128, 96, 64), (192, 0, 192), (0, 192, 32), (64, 224, 64), (64, 0, 64),
    (128, 192, 160), (64, 96, 64), (64, 128, 192), (0, 192, 160), (192, 224, 64), (64, 128, 64), (128, 192, 32),
    (192, 32, 192), (64, 64, 192), (0, 64, 32), (64, 160, 192), (192, 64, 64), (128, 64, 160), (64, 32, 192),
    (192, 192, 192), (0, 64, 160), (192, 160, 192), (192, 192, 0), (128, 64, 96), (192, 32, 64), (192, 64, 128),
    (64, 192, 96), (64, 160, 64), (64, 64, 0),
)

# The benchmarks' test-time settings: ADE20K / COCO-Stuff resize (keeping the ratio) to fit 2048x512 and run
# whole; Cityscapes runs 1024x1024 windows with stride 768 at native size.
_WHOLE_2048x512: Mapping[str, Any] = MappingProxyType(dict(mode="whole", resize=(2048, 512)))  # read-only: shared
_DATASETS: Dict[str, DatasetInfo] = {
    info.name: info for info in (
        DatasetInfo("ade20k", _ADE20K_CLASSES, _ADE20K_PALETTE, aliases=("ade", "ade20k-150", "adechallengedata2016"),
                    evaluation=_WHOLE_2048x512),
        DatasetInfo("cityscapes", _CITYSCAPES_CLASSES, _CITYSCAPES_PALETTE, aliases=("city",),
                    evaluation=MappingProxyType(dict(mode="slide", crop_size=(1024, 1024), stride=(768, 768),
                                                    resize=None))),
        DatasetInfo("cocostuff", _COCOSTUFF_CLASSES, _COCOSTUFF_PALETTE,
                    aliases=("coco-stuff", "coco_stuff", "cocostuff164k", "coco-stuff-164k", "coco_stuff164k"),
                    evaluation=_WHOLE_2048x512),
    )
}
# The generated demo dataset (csap_zoo.data.synthetic); resolvable by name, not listed among the benchmarks.
SHAPES_CLASSES: Tuple[str, ...] = ("background", "disc", "square", "triangle", "ring", "cross")
SHAPES_PALETTE: Tuple[RGB, ...] = (
    (70, 70, 70), (230, 60, 60), (60, 170, 230), (240, 200, 40), (80, 200, 90), (190, 80, 220),
)
_DEMO_DATASETS: Dict[str, DatasetInfo] = {"shapes": DatasetInfo("shapes", SHAPES_CLASSES, SHAPES_PALETTE)}
_ALIASES: Dict[str, str] = {alias: info.name for info in _DATASETS.values() for alias in (info.name, *info.aliases)}


def list_datasets() -> List[str]:
    """Names of the datasets whose metadata ships with the package."""
    return sorted(_DATASETS)


def get_dataset_info(name: str) -> DatasetInfo:
    """Metadata of a built-in dataset by name (case-insensitive; e.g. ``ade20k``, ``cityscapes``, ``cocostuff``)."""
    key = str(name).strip().lower()
    if key in _DEMO_DATASETS:
        return _DEMO_DATASETS[key]
    if key not in _ALIASES:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}. For your own "
                         f"classes use csap_zoo.data.custom_dataset_info(class_names, palette=None)")
    return _DATASETS[_ALIASES[key]]
