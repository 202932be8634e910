"""Segmentation data kept as a Hugging Face dataset: images and masks as two ``Image`` columns of a table.

Sources (``source``, what ``--data`` names):

- a folder written by ``save_to_disk`` (of a ``DatasetDict``, whose splits are its keys, or of one ``Dataset``);
- a folder of parquet files in the Hub's layout: ``data/<split>-00000-of-00001.parquet``, ``<split>/*.parquet``,
  ``data/<split>/*.parquet`` or ``<split>.parquet``;
- otherwise a Hub dataset id (``scene_parse_150``, ``org/name``), loaded by ``datasets.load_dataset`` into its
  cache (``HF_DATASETS_CACHE``), which honours ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``; ``CSAP_ZOO_OFFLINE``
  switches it offline too.

Every item decodes as a folder dataset's does: the image to (H, W, 3) uint8 RGB, the mask (8/16-bit grayscale or
palette) to (H, W) int64, with the same pixel limit, label-range check and size check. The reader is a
:class:`~csap_zoo.data.SegmentationDataset` (``len()`` and index access), so evaluation's sharding by rank and
training's sampler apply unchanged; rows are read from the memory-mapped Arrow table on demand, so the data need
not fit in memory (it has to fit on disk: streaming has no index access, see docs/guides/hf-datasets.md).

``reduce_zero_label`` is off unless asked for, as for folder datasets: the stored values are the labels. A layout
that stores 0 as "other" and the classes as 1..K (ADE20K, ``scene_parse_150``) needs it on; without it the value
K is out of range and the error says so, rather than every label being silently shifted by one.

Class names come from the caller (``info``: a ``--classes`` file or the model's classes); a dataset's features do
not say which classes a mask's values are (``scene_parse_150``'s one ``ClassLabel`` is the scene category), so
they are not guessed from it. The ``datasets`` package is imported here only, on first use.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..constants import HF_IMAGE_COLUMN, HF_MASK_COLUMN
from ..errors import HubError, UsageError
from ..settings import is_offline
from .datasets import SegmentationDataset
from .io import decode_bytes, mask_array, read_image, read_mask, to_rgb_array
from .metadata import DatasetInfo

__all__ = ["HFDataset", "HFTable", "hf_split_names", "load_hf_table", "open_hf_dataset", "open_hf_train_val"]

PathLike = Union[str, os.PathLike]
INSTALL_ADVICE = 'pip install "csap-zoo[hf-datasets]"'


def _datasets_module() -> Any:
    try:
        import datasets
    except ImportError:
        raise UsageError(f"--dataset hf reads Hugging Face datasets with the `datasets` package, which is not "
                         f"installed: {INSTALL_ADVICE}") from None
    return datasets


class HFDataset(SegmentationDataset):
    """One split of a Hugging Face dataset as image/mask pairs; ``dataset[i]`` is ``(image (H, W, 3) uint8,
    mask (H, W) int64)`` like every :class:`SegmentationDataset`.

    Args:
        table: a ``datasets.Dataset`` with the two columns (kept memory-mapped; rows are decoded on demand).
        info: class names and palette (sets the class count the masks are checked against).
        name: where the rows come from, for messages (``scene_parse_150[validation]``).
        image_column / mask_column: the ``Image`` columns holding the images and the masks.
        reduce_zero_label: map stored 0 -> 255 and v -> v - 1 (ADE20K's convention).
    """

    def __init__(self, table: Any, info: DatasetInfo, name: str, image_column: str = HF_IMAGE_COLUMN,
                 mask_column: str = HF_MASK_COLUMN, reduce_zero_label: bool = False) -> None:
        if len(table) == 0:
            raise UsageError(f"{name} has no rows; a dataset needs at least one image/mask pair")
        datasets = _datasets_module()
        self.name = name
        self.image_column, self.mask_column = image_column, mask_column
        # undecoded cells ({"bytes", "path"}): decoding is ours, with the pixel limit and the mask-mode check
        self.table = table.select_columns([image_column, mask_column]) \
            .cast_column(image_column, datasets.Image(decode=False)) \
            .cast_column(mask_column, datasets.Image(decode=False))
        self.samples = []  # no files: rows are addressed by index (image_path / mask_path name them)
        self.info = info
        self.reduce_zero_label = reduce_zero_label

    def __len__(self) -> int:
        return len(self.table)

    def image_path(self, index: int) -> str:  # type: ignore[override]
        """The row and column an image is read from, as text (there is no file)."""
        return f"{self.name} row {index} column {self.image_column!r}"

    def mask_path(self, index: int) -> str:  # type: ignore[override]
        """The row and column a mask is read from, as text."""
        return f"{self.name} row {index} column {self.mask_column!r}"

    def _cell(self, index: int, column: str) -> Dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: row {index} out of range (0..{len(self) - 1})")
        cell = self.table[index][column]
        if cell is None or (cell.get("bytes") is None and not cell.get("path")):
            where = self.image_path(index) if column == self.image_column else self.mask_path(index)
            raise ValueError(f"{where}: the cell is empty (no image stored)")
        return cell

    def load_image(self, index: int) -> np.ndarray:
        """The image as (H, W, 3) uint8 RGB."""
        cell = self._cell(index, self.image_column)
        if cell.get("bytes") is None:
            return read_image(cell["path"])
        return to_rgb_array(decode_bytes(cell["bytes"], self.image_path(index)))

    def load_mask(self, index: int) -> np.ndarray:
        """The mask as (H, W) int64 in 0..K-1 or 255; other values raise a ValueError naming the row."""
        cell = self._cell(index, self.mask_column)
        where = self.mask_path(index)
        if cell.get("bytes") is None:
            mask = read_mask(cell["path"])
        else:
            mask = mask_array(decode_bytes(cell["bytes"], where), where)
        return self.check_labels(mask, where)

    def __repr__(self) -> str:
        return f"HFDataset({len(self)} rows of {self.name}, {self.info.name}, {self.num_classes} classes)"


# ---------------------------------------------------------------------- sources
_PARQUET_PATTERNS = ("data/<split>-00000-of-00001.parquet", "<split>/*.parquet", "data/<split>/*.parquet",
                     "<split>.parquet")
_HUB_SHARD = re.compile(r"(?P<split>.+?)-\d{5}-of-\d{5}\.parquet")


def _parquet_splits(folder: Path) -> Dict[str, List[str]]:
    """The parquet files of a folder in the Hub's layout, by split name: a shard's name says its split
    (``train-00000-of-00002.parquet``, in any subfolder), else its folder (``validation/0.parquet``, also under
    ``data/``), else its own name (``test.parquet``)."""
    splits: Dict[str, List[str]] = {}
    for path in sorted(folder.rglob("*.parquet")):
        parts = path.relative_to(folder).parts
        if parts[0] == "data" and len(parts) > 1:
            parts = parts[1:]
        shard = _HUB_SHARD.fullmatch(parts[-1])
        if shard:
            split = shard.group("split")
        elif len(parts) == 2:
            split = parts[0]
        elif len(parts) == 1:
            split = path.stem
        else:
            continue
        splits.setdefault(split, []).append(str(path))
    return splits


@contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars from ``datasets`` while it converts or loads a table (eval and train show their own)."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


@contextmanager
def _hub_access(datasets: Any) -> Iterator[Optional[str]]:
    """Run a Hub load offline (from the datasets cache) when asked to (CSAP_ZOO_OFFLINE, HF_HUB_OFFLINE,
    HF_DATASETS_OFFLINE) or when the Hub cannot be reached (one connection attempt instead of the retries of half a
    minute); yields why it is offline, None when online."""
    from ..hf_access import hub_unreachable

    config = datasets.config
    saved = bool(getattr(config, "HF_HUB_OFFLINE", False))
    reason: Optional[str] = "offline mode is on" if is_offline() or saved else None
    if reason is None:
        unreachable = hub_unreachable()
        reason = None if unreachable is None else f"the Hub is unreachable ({unreachable})"
    config.HF_HUB_OFFLINE = reason is not None
    try:
        yield reason
    finally:
        config.HF_HUB_OFFLINE = saved


def _load_hub(datasets: Any, dataset_id: str, split: str, cache_dir: Optional[PathLike]) -> Any:
    with _hub_access(datasets) as offline:
        try:
            return datasets.load_dataset(dataset_id, split=split, cache_dir=cache_dir)
        except ValueError as err:
            if "split" in str(err).lower():
                raise UsageError(f"--data {dataset_id}: {_first_line(err)}") from None
            raise
        except UsageError:
            raise
        except Exception as err:  # unknown id, offline without a cache: datasets raises many types
            where = f" ({offline}: it must be in the datasets cache, HF_DATASETS_CACHE)" if offline else ""
            raise HubError(f"cannot load the Hub dataset {dataset_id!r}{where}: {type(err).__name__}: "
                           f"{_first_line(err)}. Check the id, the network or HF_ENDPOINT, or give a save_to_disk "
                           f"folder or parquet files instead") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def hf_split_names(source: PathLike) -> Optional[List[str]]:
    """The split names of a local source (a save_to_disk folder of a DatasetDict, or parquet files), ``[]`` for a
    save_to_disk folder of one Dataset, None for a Hub id (asking the Hub costs a request)."""
    folder = Path(source)
    if (folder / "dataset_dict.json").is_file():
        import json

        return list(json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"])
    if (folder / "state.json").is_file():
        return []
    if folder.is_dir():
        return sorted(_parquet_splits(folder))
    return None


def _no_split(source: PathLike, split: str, splits: List[str]) -> UsageError:
    return UsageError(f"{source} has no split {split!r}; its splits: {', '.join(sorted(splits)) or 'none'} "
                      f"(choose one with --split)")


def _load_table(source: PathLike, split: Optional[str], cache_dir: Optional[PathLike]) -> Tuple[Any, str]:
    """The ``datasets.Dataset`` of one split of ``source``, and the name messages give it."""
    datasets = _datasets_module()
    folder = Path(source)
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            split = split or _default_split(list(loaded))
            if split not in loaded:
                raise _no_split(source, split, list(loaded))
            return loaded[split], f"{source}[{split}]"
        recorded = str(loaded.split) if loaded.split is not None else None
        if split is not None and recorded is not None and split != recorded:
            raise _no_split(source, split, [recorded])
        if split is not None and recorded is None:
            raise UsageError(f"{source} holds one Dataset without splits (saved from a Dataset, not a "
                             f"DatasetDict); leave --split out to read it")
        return loaded, str(source)
    if folder.is_dir():
        splits = _parquet_splits(folder)
        if not splits:
            raise UsageError(f"{source} is neither a save_to_disk folder (no dataset_dict.json or state.json) nor "
                             f"a folder of parquet files in the Hub layout ({', '.join(_PARQUET_PATTERNS)})")
        split = split or _default_split(list(splits))
        if split not in splits:
            raise _no_split(source, split, list(splits))
        # from_parquet builds the table locally (load_dataset's packaged builders report each load to the Hub)
        table = datasets.Dataset.from_parquet(splits[split], split=split,
                                              cache_dir=None if cache_dir is None else str(cache_dir))
        return table, f"{source}[{split}]"
    if folder.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") > 1:
        raise UsageError(f"--data {source}: not a folder, and not a Hub dataset id (NAME or ORG/NAME)")
    split = split or _default_split(None)
    return _load_hub(datasets, str(source), split, cache_dir), f"{source}[{split}]"


def _default_split(splits: Optional[List[str]]) -> str:
    """The evaluation split: ``validation`` (or ``val``), else the only split there is."""
    from ..constants import DEFAULT_SPLITS

    preferred = DEFAULT_SPLITS["hf"][1]
    if splits is None or preferred in splits:
        return preferred
    if "val" in splits:
        return "val"
    if len(splits) == 1:
        return splits[0]
    raise UsageError(f"there is no {preferred!r} split; its splits: {', '.join(sorted(splits))} (choose one with "
                     f"--split)")


def _check_columns(table: Any, name: str, image_column: str, mask_column: str) -> None:
    """One error per bad column name or a column that does not hold images, naming the columns there are."""
    datasets = _datasets_module()
    features = table.features
    described = ", ".join(f"{column} ({_feature_kind(feature)})" for column, feature in features.items())
    for option, column in (("--image-column", image_column), ("--mask-column", mask_column)):
        if column not in features:
            raise UsageError(f"{name} has no column {column!r} ({option}); its columns: {described}")
        if not isinstance(features[column], datasets.Image):
            images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
            raise UsageError(f"{name}: column {column!r} ({option}) holds {_feature_kind(features[column])}, not "
                             f"images; its image columns: {', '.join(images) or 'none'}")
    if image_column == mask_column:
        raise UsageError(f"--image-column and --mask-column are both {image_column!r}")


def _feature_kind(feature: Any) -> str:
    kind = type(feature).__name__
    dtype = getattr(feature, "dtype", None)
    return f"{kind} {dtype}" if kind == "Value" and dtype else kind


@dataclass(frozen=True)
class HFTable:
    """One split of a Hugging Face dataset, loaded and its two columns checked, before its classes are known
    (eval reads the model's classes after loading the model, and checks the data first)."""

    table: Any
    name: str
    image_column: str
    mask_column: str

    def reader(self, info: DatasetInfo, reduce_zero_label: bool = False) -> HFDataset:
        """The split as a dataset of image/mask pairs with these classes."""
        return HFDataset(self.table, info, self.name, self.image_column, self.mask_column,
                         reduce_zero_label=reduce_zero_label)


def load_hf_table(source: PathLike, split: Optional[str] = None, *, image_column: str = HF_IMAGE_COLUMN,
                  mask_column: str = HF_MASK_COLUMN, cache_dir: Optional[PathLike] = None) -> HFTable:
    """One split of ``source`` with its image and mask columns checked (see :func:`open_hf_dataset`)."""
    with _quiet(_datasets_module()):
        table, name = _load_table(source, split, cache_dir)
    _check_columns(table, name, image_column, mask_column)
    return HFTable(table, name, image_column, mask_column)


def open_hf_dataset(source: PathLike, split: Optional[str] = None, *, info: DatasetInfo,
                    image_column: str = HF_IMAGE_COLUMN, mask_column: str = HF_MASK_COLUMN,
                    reduce_zero_label: bool = False, cache_dir: Optional[PathLike] = None) -> HFDataset:
    """One split of a Hugging Face dataset (see the module docstring for the sources). ``split`` defaults to
    ``validation`` (or ``val``, or the only split); ``info`` gives the classes (a classes file's, or the model's).
    ``cache_dir``: where ``datasets`` keeps what it converts or downloads (default: its own cache)."""
    return load_hf_table(source, split, image_column=image_column, mask_column=mask_column,
                         cache_dir=cache_dir).reader(info, reduce_zero_label)


def _hub_split_names(dataset_id: str) -> List[str]:
    datasets = _datasets_module()
    with _hub_access(datasets) as offline:
        try:
            return list(datasets.get_dataset_split_names(dataset_id))
        except Exception as err:  # unknown id, offline without a cache: datasets raises many types
            where = f" ({offline})" if offline else ""
            raise HubError(f"cannot list the splits of the Hub dataset {dataset_id!r}{where}: "
                           f"{type(err).__name__}: {_first_line(err)}. Check the id and the network, or name the "
                           f"splits (train_split, val_split)") from None


def open_hf_train_val(source: PathLike, train_split: Optional[str] = None, val_split: Optional[str] = None, *,
                      info: DatasetInfo, image_column: str = HF_IMAGE_COLUMN, mask_column: str = HF_MASK_COLUMN,
                      reduce_zero_label: bool = False, cache_dir: Optional[PathLike] = None
                      ) -> Tuple[HFDataset, Optional[HFDataset]]:
    """The training and validation readers of a training run. ``train_split`` defaults to ``train``;
    ``val_split`` to ``validation`` (or ``val``), and without either split there is no validation reader (a named
    ``val_split`` that is missing is an error)."""
    from ..constants import DEFAULT_SPLITS

    splits = hf_split_names(source)
    if splits is None and (train_split is None or val_split is None):
        splits = _hub_split_names(str(source))
    if splits == []:
        raise UsageError(f"{source} holds one Dataset without splits; training needs a DatasetDict with a "
                         f"{DEFAULT_SPLITS['hf'][0]!r} split (save_to_disk a DatasetDict, or name train_split)")
    options = dict(info=info, image_column=image_column, mask_column=mask_column,
                   reduce_zero_label=reduce_zero_label, cache_dir=cache_dir)
    train = open_hf_dataset(source, train_split or DEFAULT_SPLITS["hf"][0], **options)  # type: ignore[arg-type]
    if val_split is None:
        val_split = next((name for name in (DEFAULT_SPLITS["hf"][1], "val") if name in (splits or ())), None)
        if val_split is None:
            return train, None
    return train, open_hf_dataset(source, val_split, **options)  # type: ignore[arg-type]
