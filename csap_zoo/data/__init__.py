"""Data: dataset metadata (class names, palettes), image/mask I/O and dataset readers."""
from .datasets import (
    ADE20KDataset, CityscapesDataset, COCOStuffDataset, FolderDataset, Sample, SegmentationDataset, open_dataset,
)
from .io import read_image, read_mask, save_png, to_rgb_array
from .metadata import DatasetInfo, custom_dataset_info, generate_palette, get_dataset_info, list_datasets

__all__ = [
    "ADE20KDataset", "COCOStuffDataset", "CityscapesDataset", "DatasetInfo", "FolderDataset", "Sample",
    "SegmentationDataset", "custom_dataset_info", "generate_palette", "get_dataset_info", "list_datasets",
    "open_dataset", "read_image", "read_mask", "save_png", "to_rgb_array",
]
