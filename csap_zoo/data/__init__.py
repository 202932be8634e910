"""Data: dataset metadata (class names, palettes), image/mask I/O and dataset readers."""
from .datasets import (
    ADE20KDataset, CityscapesDataset, COCOStuffDataset, DatasetError, FolderDataset, Sample, SegmentationDataset,
    check_dataset, open_dataset, validate_dataset,
)
from .io import read_image, read_mask, save_png, to_rgb_array
from .metadata import DatasetInfo, custom_dataset_info, generate_palette, get_dataset_info, list_datasets

__all__ = [
    "ADE20KDataset", "COCOStuffDataset", "CityscapesDataset", "DatasetError", "DatasetInfo", "FolderDataset",
    "Sample", "check_dataset", "validate_dataset",
    "SegmentationDataset", "custom_dataset_info", "generate_palette", "get_dataset_info", "list_datasets",
    "open_dataset", "read_image", "read_mask", "save_png", "to_rgb_array",
]
