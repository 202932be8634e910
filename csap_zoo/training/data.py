"""The training data plumbing: the datasets a config names, their check before step 1, and the loader that feeds
every process its share of each global batch.

Determinism: the order of samples is a permutation drawn from ``(seed, epoch)``, and global batch ``i`` is always
the same images, split into ``world_size * accum_steps`` micro-batches in a fixed order (process ``r`` at
accumulation step ``a`` takes chunk ``a * world_size + r``); each sample's augmentation draws from its own generator
seeded by ``(seed, iteration, slot)``, so it depends on no data worker, process count or restart.
"""
from __future__ import annotations

import threading
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.datasets import DatasetError, SegmentationDataset, check_dataset, open_train_val
from ..data.metadata import DatasetInfo, classes_file_info, get_dataset_info, list_datasets
from ..validation import ConfigError
from ..data.transforms import TrainTransform
from ..distributed import DistEnv, gather_objects
from .config import TrainConfig

__all__ = ["AugmentedDataset", "GlobalBatchSampler", "build_datasets", "train_loader", "validate_datasets"]


def build_datasets(config: TrainConfig) -> Tuple[SegmentationDataset, Optional[SegmentationDataset]]:
    """Train and validation readers for a config (pairing checked; contents are checked by
    :func:`validate_datasets`); the layouts and their default splits are csap_zoo.data.open_train_val's, and
    csap_zoo.data.hf_datasets.open_hf_train_val's for ``dataset="hf"``."""
    if config.dataset == "hf":
        from ..data.hf_datasets import open_hf_train_val

        return open_hf_train_val(
            config.data_root, config.train_split or None, config.val_split or None, info=_hf_classes(config),
            image_column=config.image_column, mask_column=config.mask_column,
            reduce_zero_label=config.reduce_zero_label)
    return open_train_val(
        config.dataset, config.data_root or None, config.train_split or None, config.val_split or None,
        train_images=config.train_images or None, train_masks=config.train_masks or None,
        val_images=config.val_images or None, val_masks=config.val_masks or None,
        classes_file=config.classes_file or None, dataset_name=config.dataset_name,
        ignore_index=config.ignore_index, reduce_zero_label=config.reduce_zero_label)


def _hf_classes(config: TrainConfig) -> DatasetInfo:
    """The classes of an ``hf`` dataset: ``classes_file``'s, else those of the built-in dataset ``dataset_name``
    names (``ade20k`` for scene_parse_150)."""
    if config.classes_file:
        return classes_file_info(config.classes_file, name=config.dataset_name or "custom",
                                 ignore_index=config.ignore_index)
    if config.dataset_name and config.dataset_name.lower() in list_datasets():
        return get_dataset_info(config.dataset_name)
    raise ConfigError(f"dataset hf needs its class names: classes_file (one class per line), or dataset_name "
                      f"naming a built-in dataset ({', '.join(list_datasets())}) whose classes the masks use",
                      field="classes_file")


# ---------------------------------------------------------------------- the check before step 1
def _labelled(mask: np.ndarray, ignore_index: int) -> bool:
    return bool((mask != ignore_index).any())


class _LabelTally:
    """Passes ``check_dataset``'s reads through to a dataset and counts the masks with a labelled pixel."""

    def __init__(self, dataset: SegmentationDataset) -> None:
        self.dataset = dataset
        self.image_path, self.mask_path = dataset.image_path, dataset.mask_path
        self.labelled = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.dataset)

    def load_image(self, index: int) -> np.ndarray:
        return self.dataset.load_image(index)

    def load_mask(self, index: int) -> np.ndarray:
        mask = self.dataset.load_mask(index)
        labelled = _labelled(mask, self.dataset.info.ignore_index)
        with self._lock:
            self.labelled += labelled
        return mask


def _first_labelled_mask(dataset: SegmentationDataset) -> Tuple[Optional[int], int]:
    """Index of the first mask with a labelled pixel (reading no further), and how many masks could not be read."""
    unreadable = 0
    for i in range(len(dataset)):
        try:
            if _labelled(dataset.load_mask(i), dataset.info.ignore_index):
                return i, unreadable
        except (FileNotFoundError, ValueError, OSError):
            unreadable += 1
    return None, unreadable


def _nothing_labelled(what: str, dataset: SegmentationDataset, unreadable: int, ignore: int, is_train: bool) -> str:
    how = (f" (with reduce_zero_label, stored 0 and {ignore} are ignored)"
           if getattr(dataset, "reduce_zero_label", False) else "")
    consequence = "so there is nothing to learn" if is_train else "so every metric would be undefined"
    return (f"{what}: no labelled pixel in any of its {len(dataset)} masks: every "
            f"pixel{' of the readable ones' if unreadable else ''} is the ignore index "
            f"{ignore}{how}, {consequence}; check the masks folder, ignore_index and reduce_zero_label")


def validate_datasets(config: TrainConfig, env: DistEnv, train_set: SegmentationDataset,
                      val_set: Optional[SegmentationDataset]) -> None:
    """Check the data before step 1, so that a bad sample fails the run at once rather than hours in.

    With ``validate="full"`` every process reads its share of every sample and all report the same full list; in
    any mode each set must have a labelled pixel somewhere. Raises ``DatasetError`` listing every problem (or
    ValueError when the training set is smaller than one global batch)."""
    problems: List[str] = []
    labelled: Dict[str, int] = {}  # masks with a labelled pixel per set, when the full check counted them
    sets = [("training set", train_set), ("validation set", val_set)]
    if config.validate == "full":
        for what, ds in sets:
            if ds is None:
                continue
            tally = _LabelTally(ds)
            mine = check_dataset(tally, range(env.rank, len(ds), env.world_size),  # type: ignore[arg-type]
                                 workers=max(config.num_workers, 1))
            parts = gather_objects(env, (mine, tally.labelled))
            problems += [f"{what}: {p}" for part, _ in parts for p in part]
            labelled[what] = sum(count for _, count in parts)
    for what, ds in sets:
        if ds is None or labelled.get(what):
            continue
        # not counted (validate="pairs"), or none seen: look until the first labelled mask
        first, unreadable = _first_labelled_mask(ds)
        if first is None:
            problems.append(_nothing_labelled(what, ds, unreadable, train_set.info.ignore_index, ds is train_set))
    if val_set is not None and val_set.num_classes != train_set.num_classes:
        problems.append("training and validation sets have different class counts")
    if problems:
        raise DatasetError(problems, "the data")
    if len(train_set) < config.batch_size:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than batch_size {config.batch_size}")


# ---------------------------------------------------------------------- the loader
class AugmentedDataset(Dataset):
    """Items are ``(index, seed)`` keys: the sample at ``index`` augmented with a generator seeded by ``seed``."""

    def __init__(self, base: SegmentationDataset, transform: TrainTransform) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        index, seed = key
        image, mask = self.base[index]
        return self.transform(image, mask, torch.Generator().manual_seed(seed))


class GlobalBatchSampler(Sampler):
    """Yields this process's micro-batches of ``(index, seed)`` keys for iterations ``start..max_iters-1``.

    Global batch ``it`` (``batch_size`` samples) is a slice of the permutation of epoch ``it // batches_per_epoch``;
    it is cut into ``world * accum`` chunks; process ``rank`` takes chunk ``a * world + rank`` at step ``a``.
    """

    def __init__(self, num_samples: int, batch_size: int, accum_steps: int, world_size: int, rank: int, seed: int,
                 start_iter: int, max_iters: int) -> None:
        if num_samples < batch_size:
            raise ValueError(f"the training set has {num_samples} images, fewer than the global batch size "
                             f"{batch_size}")
        chunks = world_size * accum_steps
        if batch_size % chunks:
            raise ValueError(f"batch_size {batch_size} must be divisible by world_size x accum_steps = {chunks}")
        self.n, self.batch, self.accum, self.world, self.rank = num_samples, batch_size, accum_steps, world_size, rank
        self.micro = batch_size // chunks
        self.seed, self.start, self.stop = seed, start_iter, max_iters
        self.per_epoch = num_samples // batch_size

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.accum

    def global_batch(self, iteration: int) -> List[int]:
        epoch, k = divmod(iteration, self.per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return perm[k * self.batch:(k + 1) * self.batch].tolist()

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for it in range(self.start, self.stop):
            batch = self.global_batch(it)
            for a in range(self.accum):
                chunk = a * self.world + self.rank
                slots = range(chunk * self.micro, (chunk + 1) * self.micro)
                yield [(batch[s], (self.seed * 1_000_003 + it) * 4099 + s) for s in slots]


def train_loader(config: TrainConfig, env: DistEnv, train_set: SegmentationDataset, start_iter: int) -> DataLoader:
    """This process's augmented micro-batches for iterations ``start_iter..max_iters-1``, in step order."""
    transform = TrainTransform(crop_size=tuple(config.crop_size), scale=tuple(config.scale) if config.scale else None,
                               ratio_range=tuple(config.ratio_range), cat_max_ratio=config.cat_max_ratio,
                               flip_prob=config.flip_prob, photometric=config.photometric, mean=config.mean,
                               std=config.std, ignore_index=train_set.info.ignore_index)
    sampler = GlobalBatchSampler(len(train_set), config.batch_size, config.accum_steps, env.world_size,
                                 env.rank, config.seed, start_iter, config.max_iters)
    pin = env.device.type == "cuda" if config.pin_memory is None else config.pin_memory
    return DataLoader(AugmentedDataset(train_set, transform), batch_sampler=sampler,
                      num_workers=config.num_workers, pin_memory=pin,
                      persistent_workers=False, generator=torch.Generator().manual_seed(config.seed),
                      prefetch_factor=4 if config.num_workers else None)
