"""csap-zoo: efficient semantic segmentation with Cross-Stage Attention Propagation, on timm.

    import csap_zoo
    model = csap_zoo.create_model("csap_tiny.ade20k")      # MSCAN-T + CSAP head, 150 classes
    logits = model(images)                                  # (B, 150, H, W) for any H, W

Importing the package registers the MSCAN backbones (``mscan_tiny`` ... ``mscan_large``) with timm. The training
API (``train``, ``TrainConfig``, ``TrainResult``) loads on first use, so that importing the package and starting the
command line stay cheap.
"""
from typing import Any

from .version import __version__
from .errors import (
    CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError, ConfigError, ConversionError, CsapZooError,
    DatasetError, ImageTooLargeError, ManifestError,
)
from .models import (
    MSCAN, Architecture, CSAPHead, CSAPHeadConfig, DataConfig, HamHeadConfig, LightHamHead, Segmentor,
    SegmentorConfig, build_model, optimize_for_inference, register_architecture,
)
from .models.serialization import push_to_hub, save_pretrained
from .hub import PretrainedInfo, create_model, from_pretrained, list_models, list_pretrained
from .data import DatasetInfo, custom_dataset_info, get_dataset_info, list_datasets
from .evaluation import EvalResult, Evaluator, evaluate
from .backends import OpenVINONetwork
from .inference import InferenceConfig, Segmenter
from .labelmap import label_map_bands
from .visualize import colorize, overlay

_TRAINING_API = ("TrainConfig", "TrainResult", "train")


def __getattr__(name: str) -> Any:
    """The training API, imported on first use (it pulls in torch.distributed and the data loaders)."""
    if name in _TRAINING_API:
        from . import training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Architecture", "CSAPHead", "CSAPHeadConfig", "CheckpointError", "CheckpointIntegrityError",
    "CheckpointUnavailableError", "ConfigError", "ConversionError", "CsapZooError", "DataConfig", "DatasetError",
    "DatasetInfo", "EvalResult", "Evaluator", "HamHeadConfig", "ImageTooLargeError", "InferenceConfig", "LightHamHead",
    "MSCAN", "ManifestError", "OpenVINONetwork", "PretrainedInfo", "Segmenter", "Segmentor", "SegmentorConfig",
    "TrainConfig", "TrainResult", "__version__", "build_model", "colorize", "create_model", "custom_dataset_info",
    "evaluate", "from_pretrained", "get_dataset_info", "label_map_bands", "list_datasets", "list_models",
    "list_pretrained", "optimize_for_inference", "overlay", "push_to_hub", "register_architecture", "save_pretrained",
    "train",
]
