"""csap-zoo: efficient semantic segmentation with Cross-Stage Attention Propagation, on timm.

    import csap_zoo
    model = csap_zoo.create_model("csap_tiny.ade20k")      # MSCAN-T + CSAP head, 150 classes
    logits = model(images)                                  # (B, 150, H, W) for any H, W

``import csap_zoo`` is cheap: it loads the version and the error classes, nothing of torch. Every other public name
is imported from its module on first use (``csap_zoo.create_model`` loads the models and the hub), so that the
command line starts at once and scripts pay only for what they use. ``import csap_zoo.models`` (or the first use of
any model API) registers the MSCAN backbones (``mscan_tiny`` ... ``mscan_large``) with timm.
"""
from importlib import import_module
from typing import TYPE_CHECKING, Any, Dict, List

from .errors import (
    CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError, ConfigError, ConversionError, CsapZooError,
    DatasetError, ImageTooLargeError, ManifestError,
)
from .version import __version__

# public name -> the module that defines it (imported on first access)
_LAZY: Dict[str, str] = {
    **dict.fromkeys(("MSCAN", "Architecture", "CSAPHead", "CSAPHeadConfig", "DataConfig", "HamHeadConfig",
                     "LightHamHead", "Segmentor", "SegmentorConfig", "build_model", "optimize_for_inference",
                     "register_architecture"), ".models"),
    "push_to_hub": ".models.hub_transfer", "save_pretrained": ".models.serialization",
    **dict.fromkeys(("PretrainedInfo", "create_model", "from_pretrained", "list_models", "list_pretrained"), ".hub"),
    **dict.fromkeys(("DatasetInfo", "custom_dataset_info", "get_dataset_info", "list_datasets"), ".data"),
    **dict.fromkeys(("EvalResult", "Evaluator", "evaluate"), ".evaluation"),
    **dict.fromkeys(("InferenceConfig", "OpenVINONetwork", "Segmenter", "label_map_bands"), ".inference"),
    **dict.fromkeys(("colorize", "overlay"), ".visualize"),
    **dict.fromkeys(("TrainConfig", "TrainResult", "train"), ".training"),
}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use and kept in the package namespace after that."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # what static checkers and IDEs see: the same names, imported eagerly
    from .data import DatasetInfo, custom_dataset_info, get_dataset_info, list_datasets
    from .evaluation import EvalResult, Evaluator, evaluate
    from .hub import PretrainedInfo, create_model, from_pretrained, list_models, list_pretrained
    from .inference import InferenceConfig, OpenVINONetwork, Segmenter, label_map_bands
    from .models import (
        MSCAN, Architecture, CSAPHead, CSAPHeadConfig, DataConfig, HamHeadConfig, LightHamHead, Segmentor,
        SegmentorConfig, build_model, optimize_for_inference, register_architecture,
    )
    from .models.hub_transfer import push_to_hub
    from .models.serialization import save_pretrained
    from .training import TrainConfig, TrainResult, train
    from .visualize import colorize, overlay

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
