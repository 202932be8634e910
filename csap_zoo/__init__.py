"""csap-zoo: efficient semantic segmentation with Cross-Stage Attention Propagation, on timm.

    import csap_zoo
    model = csap_zoo.create_model("csap_tiny.ade20k")      # MSCAN-T + CSAP head, 150 classes
    logits = model(images)                                  # (B, 150, H, W) for any H, W

Importing the package registers the MSCAN backbones (``mscan_tiny`` ... ``mscan_large``) with timm.
"""
from .version import __version__

from .hub import create_model, from_pretrained, push_to_hub, save_pretrained  # noqa: E402
from .hub.catalog import PretrainedInfo, list_models, list_pretrained  # noqa: E402  (pretrained-aware list_models)
from .models import (  # noqa: E402
    MSCAN, Architecture, CSAPHead, CSAPHeadConfig, DataConfig, HamHeadConfig, LightHamHead, Segmentor,
    SegmentorConfig, build_model, optimize_for_inference, register_architecture,
)
from .data import DatasetInfo, custom_dataset_info, get_dataset_info, list_datasets  # noqa: E402
from .evaluation import EvalResult, Evaluator, evaluate  # noqa: E402
from .inference import InferenceConfig, Segmenter  # noqa: E402
from .visualize import colorize, overlay  # noqa: E402
from .training import TrainConfig, TrainResult, train  # noqa: E402
from .validation import ConfigError  # noqa: E402

__all__ = [
    "ConfigError", "MSCAN", "Architecture", "CSAPHead", "CSAPHeadConfig", "DataConfig", "HamHeadConfig", "LightHamHead",
    "Segmentor", "SegmentorConfig", "__version__", "build_model", "create_model", "from_pretrained",
    "list_models", "optimize_for_inference", "push_to_hub", "register_architecture", "save_pretrained",
    "list_pretrained", "PretrainedInfo",
    "DatasetInfo", "EvalResult", "Evaluator", "InferenceConfig", "Segmenter", "colorize", "custom_dataset_info",
    "evaluate", "get_dataset_info", "list_datasets", "overlay", "TrainConfig", "TrainResult", "train",
]
