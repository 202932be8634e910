"""Training augmentations that move an image and its mask together (MMSegmentation's pipeline, section 5).

``TrainTransform`` = random resize of a reference scale by a ratio -> random crop with ``cat_max_ratio`` ->
horizontal flip -> photometric distortion -> normalise -> pad to the crop size (image 0, mask ``ignore_index``).

All randomness is drawn from a ``torch.Generator`` passed in per sample, so a sample's augmentation depends only on
its seed: the same run gives the same batches with any number of data workers, processes, or after a resume.
Geometry, flips and colour ops use ``torchvision.transforms.v2.functional``; the ratio-range resize rule, the
``cat_max_ratio`` crop and MMSegmentation's additive brightness / multiplicative contrast are our own code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..constants import IMAGENET_MEAN_255, IMAGENET_STD_255

__all__ = ["TrainTransform", "keep_ratio_size", "to_tensors"]


def keep_ratio_size(height: int, width: int, scale: Sequence[float]) -> Tuple[int, int]:
    """(h, w) after a keep-ratio rescale into ``scale`` = (long, short) edges (mmcv's rule)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def to_tensors(image: np.ndarray, mask: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
    """(H, W, 3) uint8 + (H, W) ints -> tv_tensors Image (3, H, W) uint8 and Mask (H, W) int64."""
    image = np.array(image, dtype=np.uint8, copy=True)  # decoded arrays may be read-only
    img = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous())
    return img, tv_tensors.Mask(torch.from_numpy(np.array(mask, dtype=np.int64, copy=True)))


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _chance(gen: torch.Generator, p: float) -> bool:
    return p > 0 and float(torch.rand((), generator=gen)) < p


@dataclass
class TrainTransform:
    """The paper's training pipeline for one (image, mask) pair.

    Args:
        crop_size: (h, w) of the training crop.
        scale: (long, short) reference scale of the random resize, e.g. (2048, 512); None keeps the image size.
        ratio_range: the resize scale is ``scale * r`` with r uniform in this range.
        cat_max_ratio: retry the crop (up to 10 times) while one class covers more than this share of the crop's
            labelled pixels; 1.0 disables it.
        flip_prob: horizontal flip probability.
        photometric: brightness (+-32), contrast (0.5-1.5), saturation (0.5-1.5) and hue (+-18 of 180) changes,
            each with probability 0.5 (contrast before or after the others at random).
        mean, std: normalisation on the 0-255 scale.
        ignore_index: label of padded pixels.
    """

    crop_size: Tuple[int, int] = (512, 512)
    scale: Optional[Tuple[int, int]] = (2048, 512)
    ratio_range: Tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    mean: Sequence[float] = IMAGENET_MEAN_255
    std: Sequence[float] = IMAGENET_STD_255
    ignore_index: int = 255

    def __call__(self, image: np.ndarray, mask: np.ndarray, generator: torch.Generator
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns a normalised float image (3, h, w) and an int64 mask (h, w) at the crop size."""
        img, msk = to_tensors(image, mask)
        img, msk = self.random_resize(img, msk, generator)
        img, msk = self.random_crop(img, msk, generator)
        if _chance(generator, self.flip_prob):
            img, msk = TF.horizontal_flip(img), TF.horizontal_flip(msk)
        x = img.float() / 255.0
        if self.photometric:
            x = self.photometric_distortion(x, generator)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1) / 255.0
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1) / 255.0
        x = (x - mean) / std
        return self.pad(x, msk.as_subclass(torch.Tensor))

    def random_resize(self, img: torch.Tensor, msk: torch.Tensor, gen: torch.Generator):
        if self.scale is None:
            return img, msk
        ratio = _uniform(gen, *self.ratio_range)
        target = keep_ratio_size(img.shape[-2], img.shape[-1], (self.scale[0] * ratio, self.scale[1] * ratio))
        if tuple(target) == tuple(img.shape[-2:]):
            return img, msk
        img = TF.resize(img, list(target), interpolation=InterpolationMode.BILINEAR, antialias=False)
        msk = TF.resize(msk, list(target), interpolation=InterpolationMode.NEAREST)
        return img, msk

    def _crop_box(self, height: int, width: int, gen: torch.Generator) -> Tuple[int, int, int, int]:
        ch, cw = min(self.crop_size[0], height), min(self.crop_size[1], width)
        top = int(torch.randint(0, height - ch + 1, (), generator=gen))
        left = int(torch.randint(0, width - cw + 1, (), generator=gen))
        return top, left, ch, cw

    def random_crop(self, img: torch.Tensor, msk: torch.Tensor, gen: torch.Generator):
        height, width = img.shape[-2:]
        box = self._crop_box(height, width, gen)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                top, left, ch, cw = box
                labels = msk[top:top + ch, left:left + cw]
                counts = torch.bincount(labels[labels != self.ignore_index].flatten())
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                    break
                box = self._crop_box(height, width, gen)
        top, left, ch, cw = box
        return TF.crop(img, top, left, ch, cw), TF.crop(msk, top, left, ch, cw)

    @staticmethod
    def photometric_distortion(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """MMSegmentation's PhotoMetricDistortion on a float image in [0, 1]."""
        if _chance(gen, 0.5):  # additive brightness
            x = (x + _uniform(gen, -32, 32) / 255.0).clamp(0, 1)
        contrast_first = _chance(gen, 0.5)
        alpha = _uniform(gen, 0.5, 1.5) if _chance(gen, 0.5) else None  # multiplicative contrast
        if contrast_first and alpha is not None:
            x = (x * alpha).clamp(0, 1)
        if _chance(gen, 0.5):
            x = TF.adjust_saturation(x, _uniform(gen, 0.5, 1.5)).clamp(0, 1)
        if _chance(gen, 0.5):
            x = TF.adjust_hue(x, int(torch.randint(-18, 19, (), generator=gen)) / 180.0)
        if not contrast_first and alpha is not None:
            x = (x * alpha).clamp(0, 1)
        return x

    def pad(self, x: torch.Tensor, msk: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pad_h = max(self.crop_size[0] - x.shape[-2], 0)
        pad_w = max(self.crop_size[1] - x.shape[-1], 0)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
            msk = F.pad(msk, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return x.contiguous(), msk.long().contiguous()
