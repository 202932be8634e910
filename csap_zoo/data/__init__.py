"""Data: dataset metadata (class names, palettes), image/mask reading, PNG writing and dataset readers."""
from ..constants import DATASET_LAYOUTS, DEFAULT_SPLITS
from .datasets import (
    ADE20KDataset, CityscapesDataset, COCOStuffDataset, DatasetError, FolderDataset,
    Sample, SegmentationDataset, check_dataset, folder_dataset_info, open_dataset, open_train_val, validate_dataset,
)
from .io import read_image, read_mask, to_rgb_array
from .metadata import (
    DatasetInfo, classes_file_info, custom_dataset_info, generate_palette, get_dataset_info, list_datasets,
    read_classes_file,
)
from .png import save_png

__all__ = [
    "ADE20KDataset", "COCOStuffDataset", "CityscapesDataset", "DATASET_LAYOUTS", "DEFAULT_SPLITS", "DatasetError",
    "DatasetInfo", "FolderDataset", "Sample", "check_dataset", "validate_dataset",
    "SegmentationDataset", "classes_file_info", "custom_dataset_info", "folder_dataset_info", "generate_palette",
    "get_dataset_info", "list_datasets", "open_dataset", "open_train_val", "read_classes_file", "read_image",
    "read_mask", "save_png", "to_rgb_array",
]
