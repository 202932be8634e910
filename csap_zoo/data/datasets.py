"""Dataset readers: image/mask pairs on disk, validated when the reader is built.

Layouts (``root`` is the folder you downloaded/prepared):

- ADE20K: ``ADEChallengeData2016/{images,annotations}/{training,validation}/`` (``root`` may be the
  ``ADEChallengeData2016`` folder or its parent). Masks hold 0 = "other" and 1..150; ``reduce_zero_label`` maps
  0 -> 255 (ignored) and the rest to 0..149.
- Cityscapes: ``{leftImg8bit,gtFine}/{train,val}/<city>/``, images ``*_leftImg8bit.png``, masks
  ``*_gtFine_labelTrainIds.png`` (19 train ids, 255 ignored; make them with cityscapesscripts'
  ``createTrainIdLabelImgs``).
- COCO-Stuff-164K: ``{images,annotations}/{train2017,val2017}/``, masks ``*_labelTrainIds.png`` (171 classes).
- Folder (the layout training documents): ``root/<split>/{images,masks}/`` (splits ``train`` and ``val``) and the
  classes in ``root/classes.txt`` (or a classes file given; see :func:`csap_zoo.data.read_classes_file`). Without
  a split, ``root/{images,masks}/`` when ``root`` has an ``images`` folder, else ``root/val``. Images and masks are
  matched by path relative to each folder minus the extension.

:func:`open_dataset` opens any of them by name (one split); :func:`open_train_val` opens the training and
validation splits a training run reads. ``DEFAULT_SPLITS`` holds each layout's default split names. The ``hf``
layout (a Hugging Face dataset) has its own reader, :mod:`csap_zoo.data.hf_datasets`.

Building a reader checks that the folders exist and that every image has exactly one mask and vice versa, and
raises with the offending files listed. Reading a sample checks the mask's values (0..K-1 or 255) and that mask and
image have the same size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..constants import DATASET_LAYOUTS, DEFAULT_SPLITS, IGNORE_INDEX
from ..errors import DatasetError, listing
from .io import IMAGE_EXTENSIONS, read_image, read_mask
from .metadata import CLASSES_FILE_GRAMMAR, DatasetInfo, classes_file_info, get_dataset_info

__all__ = [
    "ADE20KDataset", "CityscapesDataset", "COCOStuffDataset", "DatasetError",
    "FolderDataset", "Sample", "SegmentationDataset", "check_dataset", "folder_dataset_info", "open_dataset",
    "open_train_val", "validate_dataset",
]

PathLike = Union[str, os.PathLike]
_MAX_LISTED = 20



@dataclass(frozen=True)
class Sample:
    """One image and its mask."""

    image: Path
    mask: Path


def _require_dir(path: Path, what: str) -> Path:
    if path.is_dir():
        return path
    parent = path.parent
    present = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    hint = f" ({parent} contains: {', '.join(present) or 'no folders'})" if parent.is_dir() else \
        f" ({parent} does not exist either)"
    raise FileNotFoundError(f"{what} folder not found: {path}{hint}")


def _collect(folder: Path, suffix: str, recursive: bool) -> Dict[str, Path]:
    """Files under ``folder`` ending in ``suffix`` (an extension list when suffix is ''), keyed by their path
    relative to ``folder`` with the suffix (or extension) removed."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    found: Dict[str, Path] = {}
    clashes: List[str] = []
    for path in sorted(files):
        if not path.is_file() or path.name.startswith("."):
            continue
        rel = path.relative_to(folder).as_posix()
        if suffix:
            if not rel.endswith(suffix):
                continue
            key = rel[:-len(suffix)]
        else:
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            key = rel[:-len(path.suffix)]
        if key in found:
            clashes.append(f"{found[key]} and {path}")
        found[key] = path
    if clashes:
        raise ValueError(f"several files in {folder} share a name (ignoring the extension), so pairing is "
                         f"ambiguous:\n{listing(clashes)}")
    return found


def _pair(images: Dict[str, Path], masks: Dict[str, Path], image_dir: Path, mask_dir: Path) -> List[Sample]:
    if not images and not masks:
        raise FileNotFoundError(f"no images found in {image_dir} and no masks in {mask_dir}")
    lonely_images = sorted(str(images[k]) for k in set(images) - set(masks))
    lonely_masks = sorted(str(masks[k]) for k in set(masks) - set(images))
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(f"{len(lonely_images)} image(s) without a mask in {mask_dir}:\n{listing(lonely_images)}")
        if lonely_masks:
            parts.append(f"{len(lonely_masks)} mask(s) without an image in {image_dir}:\n{listing(lonely_masks)}")
        raise ValueError("unpaired files; every image needs exactly one mask (matched by name):\n"
                         + "\n".join(parts))
    return [Sample(images[k], masks[k]) for k in sorted(images)]


class SegmentationDataset:
    """Image/mask pairs. ``dataset[i]`` is ``(image (H, W, 3) uint8, mask (H, W) int64)``.

    Args:
        samples: the pairs.
        info: class names and palette (sets the class count used to check masks).
        reduce_zero_label: map mask 0 -> 255 and v -> v - 1 (ADE20K's convention).
    """

    def __init__(self, samples: Sequence[Sample], info: DatasetInfo, reduce_zero_label: bool = False) -> None:
        if not samples:
            raise ValueError("a dataset needs at least one image/mask pair")
        self.samples = list(samples)
        self.info = info
        self.reduce_zero_label = reduce_zero_label

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def image_path(self, index: int) -> Path:
        return self.samples[index].image

    def mask_path(self, index: int) -> Path:
        return self.samples[index].mask

    def load_image(self, index: int) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        return read_image(self.samples[index].image)

    def load_mask(self, index: int) -> np.ndarray:
        """The mask as (H, W) int64 in 0..K-1 or 255; other values raise a ValueError naming the file."""
        path = self.samples[index].mask
        return self.check_labels(read_mask(path), path)

    def check_labels(self, mask: np.ndarray, source: object) -> np.ndarray:
        """``mask`` with reduce_zero_label applied; a label outside 0..K-1 that is not the ignore index raises a
        ValueError naming ``source``."""
        ignore = self.info.ignore_index
        if self.reduce_zero_label:
            reduced = mask - 1
            reduced[(mask == 0) | (mask == ignore)] = ignore
            mask = reduced
        bad = (mask != ignore) & ((mask < 0) | (mask >= self.num_classes))
        if bad.any():
            values = np.unique(mask[bad]).tolist()
            shown = values if len(values) <= _MAX_LISTED else values[:_MAX_LISTED] + ["..."]
            stored = " (after reduce_zero_label: stored value - 1)" if self.reduce_zero_label else ""
            hint = (" (or, if stored 0 means 'other', as in ADE20K and scene_parse_150: use reduce_zero_label)"
                    if not self.reduce_zero_label and values == [self.num_classes] else "")
            raise ValueError(f"{source}: mask labels {shown}{stored} are outside the class range "
                             f"0..{self.num_classes - 1} and not the ignore index {ignore}; is this the right "
                             f"dataset / class count?{hint}")
        return mask

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        image, mask = self.load_image(index), self.load_mask(index)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"{self.mask_path(index)}: mask size {mask.shape} differs from image size "
                             f"{image.shape[:2]} of {self.image_path(index)}")
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples, {self.info.name}, {self.num_classes} classes)"


def _split_name(split: str, names: Dict[str, str], dataset: str) -> str:
    key = split.lower()
    if key not in names:
        raise ValueError(f"unknown {dataset} split {split!r}; use one of {sorted(set(names.values()))}")
    return names[key]


class ADE20KDataset(SegmentationDataset):
    """ADE20K (SceneParsing, 150 classes); ``split`` is ``training``/``train`` or ``validation``/``val``."""

    def __init__(self, root: PathLike, split: str = DEFAULT_SPLITS["ade20k"][1]) -> None:
        root = Path(root)
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        split = _split_name(split, {"training": "training", "train": "training", "validation": "validation",
                                    "val": "validation"}, "ADE20K")
        image_dir = _require_dir(root / "images" / split, "ADE20K images")
        mask_dir = _require_dir(root / "annotations" / split, "ADE20K annotations")
        samples = _pair(_collect(image_dir, "", False), _collect(mask_dir, ".png", False), image_dir, mask_dir)
        super().__init__(samples, get_dataset_info("ade20k"), reduce_zero_label=True)


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations, 19 train ids; ``split`` is ``train`` or ``val``."""

    def __init__(self, root: PathLike, split: str = DEFAULT_SPLITS["cityscapes"][1]) -> None:
        root = Path(root)
        split = _split_name(split, {"train": "train", "val": "val", "validation": "val"}, "Cityscapes")
        image_dir = _require_dir(root / "leftImg8bit" / split, "Cityscapes leftImg8bit")
        mask_dir = _require_dir(root / "gtFine" / split, "Cityscapes gtFine")
        masks = _collect(mask_dir, "_gtFine_labelTrainIds.png", True)
        if not masks and any(mask_dir.rglob("*_gtFine_labelIds.png")):
            raise FileNotFoundError(f"{mask_dir} has *_gtFine_labelIds.png but no *_gtFine_labelTrainIds.png; "
                                    f"create them with cityscapesscripts' createTrainIdLabelImgs")
        images = _collect(image_dir, "_leftImg8bit.png", True)
        super().__init__(_pair(images, masks, image_dir, mask_dir), get_dataset_info("cityscapes"))


class COCOStuffDataset(SegmentationDataset):
    """COCO-Stuff-164K, 171 classes; ``split`` is ``train2017``/``train`` or ``val2017``/``val``."""

    def __init__(self, root: PathLike, split: str = DEFAULT_SPLITS["cocostuff"][1]) -> None:
        root = Path(root)
        split = _split_name(split, {"train2017": "train2017", "train": "train2017", "val2017": "val2017",
                                    "val": "val2017"}, "COCO-Stuff")
        image_dir = _require_dir(root / "images" / split, "COCO-Stuff images")
        mask_dir = _require_dir(root / "annotations" / split, "COCO-Stuff annotations")
        masks = _collect(mask_dir, "_labelTrainIds.png", False)
        if not masks and any(mask_dir.glob("*.png")):
            raise FileNotFoundError(f"{mask_dir} has no *_labelTrainIds.png masks; convert the stuffthingmaps to "
                                    f"train ids (0..170, 255 ignored) first")
        super().__init__(_pair(_collect(image_dir, "", False), masks, image_dir, mask_dir),
                         get_dataset_info("cocostuff"))


class FolderDataset(SegmentationDataset):
    """Any image folder and mask folder, matched by relative path without extension (searched recursively).

    Args:
        images: folder of images.
        masks: folder of single-channel masks (class indices; 255 ignored).
        info: class names/palette (``csap_zoo.data.custom_dataset_info``) or a built-in dataset name.
        reduce_zero_label: treat mask value 0 as ignore and shift the others down by one.
    """

    def __init__(self, images: PathLike, masks: PathLike, info: Union[DatasetInfo, str],
                 reduce_zero_label: bool = False) -> None:
        image_dir = _require_dir(Path(images), "images")
        mask_dir = _require_dir(Path(masks), "masks")
        if isinstance(info, str):
            info = get_dataset_info(info)
        samples = _pair(_collect(image_dir, "", True), _collect(mask_dir, "", True), image_dir, mask_dir)
        super().__init__(samples, info, reduce_zero_label=reduce_zero_label)


_READERS: Dict[str, Callable[..., SegmentationDataset]] = {
    "ade20k": ADE20KDataset, "cityscapes": CityscapesDataset, "cocostuff": COCOStuffDataset,
}


def folder_dataset_info(root: Optional[PathLike] = None, classes_file: Optional[PathLike] = None,
                        name: str = "custom", ignore_index: int = IGNORE_INDEX) -> DatasetInfo:
    """The classes of a folder dataset: from ``classes_file``, else from ``root/classes.txt``."""
    if classes_file is None:
        if root is None:
            raise ValueError("a folder dataset needs a classes file (classes_file, or data_root/classes.txt)")
        classes_file = Path(root) / "classes.txt"
        if not classes_file.is_file():
            raise FileNotFoundError(f"classes file not found: {classes_file} (a folder dataset reads its classes "
                                    f"from root/classes.txt or a given classes file: {CLASSES_FILE_GRAMMAR})")
    return classes_file_info(classes_file, name=name, ignore_index=ignore_index)


def _folder_dirs(root: Optional[PathLike], split: Optional[str], images: Optional[PathLike],
                 masks: Optional[PathLike]) -> Tuple[Optional[Path], Optional[Path]]:
    """Image and mask folders of a folder dataset: explicit ones win, else ``root/split/{images,masks}``; without a
    split ``root/{images,masks}`` when ``root/images`` exists, else the evaluation split's. None where unknown."""
    base: Optional[Path] = None
    if root is not None:
        base = Path(root)
        if split is not None:
            base = base / split
        elif not (base / "images").is_dir() and (base / DEFAULT_SPLITS["folder"][1] / "images").is_dir():
            base = base / DEFAULT_SPLITS["folder"][1]
    image_dir = Path(images) if images is not None else (base / "images" if base is not None else None)
    mask_dir = Path(masks) if masks is not None else (base / "masks" if base is not None else None)
    return image_dir, mask_dir


def _reader(name: str) -> Tuple[str, Callable[..., SegmentationDataset]]:
    if name == "hf":
        raise ValueError("a Hugging Face dataset (the hf layout) is read by csap_zoo.data.hf_datasets: "
                         "open_hf_dataset / open_hf_train_val")
    canonical = get_dataset_info(name).name
    if canonical not in _READERS:
        raise ValueError(f"there is no reader for the {canonical!r} layout; use one of {list(DATASET_LAYOUTS)} "
                         f"(generated data is a folder dataset)")
    return canonical, _READERS[canonical]


def open_dataset(name: str, root: Optional[PathLike] = None, split: Optional[str] = None,
                 info: Optional[DatasetInfo] = None, *, classes_file: Optional[PathLike] = None,
                 images: Optional[PathLike] = None, masks: Optional[PathLike] = None,
                 reduce_zero_label: bool = False) -> SegmentationDataset:
    """One split of a dataset, by layout name: ``ade20k``, ``cityscapes``, ``cocostuff`` (``split`` defaults to the
    evaluation split of ``DEFAULT_SPLITS``) or ``folder``.

    A ``folder`` dataset reads ``root/split/{images,masks}`` (without a split: ``root/{images,masks}``, or
    ``root/val`` when ``root`` has no ``images`` folder); ``images``/``masks`` name the folders directly. Its
    classes are ``info``, else those of ``classes_file``, else those of ``root/classes.txt``;
    ``reduce_zero_label`` applies to it only (the benchmark readers know their own convention).
    """
    key = name.lower()
    if key == "folder":
        image_dir, mask_dir = _folder_dirs(root, split, images, masks)
        if image_dir is None or mask_dir is None:
            raise ValueError("a folder dataset needs a root (with <split>/images and <split>/masks) or its images "
                             "and masks folders")
        if info is None:
            info = folder_dataset_info(root, classes_file)
        return FolderDataset(image_dir, mask_dir, info, reduce_zero_label=reduce_zero_label)
    canonical, reader = _reader(key)
    if root is None:
        raise ValueError(f"dataset {name!r} needs its root folder")
    return reader(root, split=split or DEFAULT_SPLITS[canonical][1])


def open_train_val(name: str, root: Optional[PathLike] = None, train_split: Optional[str] = None,
                   val_split: Optional[str] = None, *, train_images: Optional[PathLike] = None,
                   train_masks: Optional[PathLike] = None, val_images: Optional[PathLike] = None,
                   val_masks: Optional[PathLike] = None, classes_file: Optional[PathLike] = None,
                   dataset_name: Optional[str] = None, ignore_index: int = IGNORE_INDEX,
                   reduce_zero_label: bool = False) -> Tuple[SegmentationDataset, Optional[SegmentationDataset]]:
    """The training and validation readers of a training run (pairing checked, contents not yet read).

    Splits default to ``DEFAULT_SPLITS``. A ``folder`` dataset (see :func:`open_dataset`) shares one set of classes
    (``classes_file`` or ``root/classes.txt``, named ``dataset_name``, with ``ignore_index``) between its splits
    and has no validation reader when neither ``val_images`` is given nor ``root/<val_split>/images`` exists.
    """
    key = name.lower()
    if key != "folder":
        canonical, _ = _reader(key)
        if root is None:
            raise ValueError(f"dataset {name!r} needs data_root")
        train_default, val_default = DEFAULT_SPLITS[canonical]
        return (open_dataset(canonical, root, train_split or train_default),
                open_dataset(canonical, root, val_split or val_default))
    train_default, val_default = DEFAULT_SPLITS["folder"]
    train_dirs = _folder_dirs(root, train_split or train_default, train_images, train_masks)
    if None in train_dirs:
        raise ValueError("a folder dataset needs data_root (with train/images, train/masks) or train_images and "
                         "train_masks")
    info = folder_dataset_info(root, classes_file, name=dataset_name or "custom", ignore_index=ignore_index)
    train = open_dataset("folder", info=info, images=train_dirs[0], masks=train_dirs[1],
                         reduce_zero_label=reduce_zero_label)
    val_dirs = _folder_dirs(root, val_split or val_default, val_images, val_masks)
    if None in val_dirs or not (val_images is not None or val_dirs[0].is_dir()):  # type: ignore[union-attr]
        return train, None
    return train, open_dataset("folder", info=info, images=val_dirs[0], masks=val_dirs[1],
                               reduce_zero_label=reduce_zero_label)


def _check_sample(dataset: SegmentationDataset, index: int) -> Optional[str]:
    image_source, mask_source = dataset.image_path(index), dataset.mask_path(index)
    try:
        image = dataset.load_image(index)
    except (FileNotFoundError, ValueError, OSError) as err:
        return f"{image_source}: {err}"
    try:
        mask = dataset.load_mask(index)
    except (FileNotFoundError, ValueError, OSError) as err:
        message = str(err)
        return message if message.startswith(str(mask_source)) else f"{mask_source}: {message}"
    if image.shape[:2] != mask.shape:
        return f"{mask_source}: mask size {mask.shape} differs from image size {image.shape[:2]} of {image_source}"
    return None


def check_dataset(dataset: SegmentationDataset, indices: Optional[Sequence[int]] = None,
                  workers: int = 4) -> List[str]:
    """Read every image and mask (or those at ``indices``) and return one line per unusable pair: missing or
    unreadable files, labels outside 0..K-1 that are not the ignore index, image/mask size mismatches."""
    from concurrent.futures import ThreadPoolExecutor

    indices = range(len(dataset)) if indices is None else indices
    if workers <= 1:
        results = [_check_sample(dataset, i) for i in indices]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda i: _check_sample(dataset, i), indices))
    return [r for r in results if r is not None]


def validate_dataset(dataset: SegmentationDataset, what: str = "dataset", workers: int = 4) -> None:
    """Raise :class:`DatasetError` listing every unusable pair (see :func:`check_dataset`)."""
    problems = check_dataset(dataset, workers=workers)
    if problems:
        raise DatasetError(problems, what)
