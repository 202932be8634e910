"""Facts every floor of the package may read (kept here so that models, data and inference need not import each
other for them)."""
from typing import Dict, Tuple

# ImageNet mean / std per RGB channel on the 0-255 scale: the normalisation of the MSCAN backbones' pretraining.
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)

# Mask value of pixels that carry no label (MMSegmentation's convention).
IGNORE_INDEX = 255

# The benchmark datasets a model name may carry as a tag (``csap_tiny.ade20k``), and their class counts;
# ``csap_zoo.data.metadata`` holds their class names and palettes (a test checks that the two agree).
DATASET_NUM_CLASSES: Dict[str, int] = {"ade20k": 150, "cityscapes": 19, "cocostuff": 171}
# Tags of the bundled demo checkpoints (generated data, ``csap_zoo.data.synthetic``); not benchmark datasets.
DEMO_DATASET_NUM_CLASSES: Dict[str, int] = {"shapes": 6}

# (training split, evaluation split) of each dataset layout ``open_dataset`` reads, used when no split is named; the
# layouts themselves are what training configs and the command line offer.
DEFAULT_SPLITS: Dict[str, Tuple[str, str]] = {
    "ade20k": ("training", "validation"),
    "cityscapes": ("train", "val"),
    "cocostuff": ("train2017", "val2017"),
    "folder": ("train", "val"),
    "hf": ("train", "validation"),  # Hugging Face datasets (csap_zoo.data.hf_datasets): the Hub's split names
}
DATASET_LAYOUTS: Tuple[str, ...] = tuple(DEFAULT_SPLITS)
# The Image columns an "hf" dataset's images and masks are read from unless named (scene_parse_150's names).
HF_IMAGE_COLUMN = "image"
HF_MASK_COLUMN = "annotation"

# What a Segmenter's network computes in (``csap_zoo.inference.precision``).
PRECISIONS: Tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")

# Where a Segmenter's network can run (``csap_zoo.inference.backends``); "auto" picks one of the others.
BACKENDS: Tuple[str, ...] = ("auto", "torch", "openvino")
