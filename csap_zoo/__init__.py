"""csap-zoo: efficient semantic segmentation with Cross-Stage Attention Propagation, on timm.

    import csap_zoo
    model = csap_zoo.create_model("csap_tiny.ade20k")      # MSCAN-T + CSAP head, 150 classes
    logits = model(images)                                  # (B, 150, H, W) for any H, W

The face holds what a user needs first: model creation and discovery (``create_model``, ``from_pretrained``,
``list_models``, ``list_pretrained``), inference (``Segmenter``, ``InferenceConfig``), evaluation (``evaluate``,
``EvalResult``), training (``train``, ``TrainConfig``) and the errors. Everything else lives in its submodule:
``csap_zoo.models`` (Segmentor, heads, configs, ``build_model``, ``optimize_for_inference``), ``csap_zoo.data``
(datasets, class names), ``csap_zoo.inference`` (label-map bands, the OpenVINO network), ``csap_zoo.visualize``,
``csap_zoo.training``, ``csap_zoo.hub``, ``csap_zoo.tools`` (export, analysis, profiling).

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
    **dict.fromkeys(("create_model", "from_pretrained", "list_models", "list_pretrained"), ".hub"),
    **dict.fromkeys(("InferenceConfig", "Segmenter"), ".inference"),
    **dict.fromkeys(("EvalResult", "evaluate"), ".evaluation"),
    **dict.fromkeys(("TrainConfig", "train"), ".training"),
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
    from .evaluation import EvalResult, evaluate
    from .hub import create_model, from_pretrained, list_models, list_pretrained
    from .inference import InferenceConfig, Segmenter
    from .training import TrainConfig, train

__all__ = [
    "CheckpointError", "CheckpointIntegrityError", "CheckpointUnavailableError", "ConfigError", "ConversionError",
    "CsapZooError", "DatasetError", "EvalResult", "ImageTooLargeError", "InferenceConfig", "ManifestError",
    "Segmenter", "TrainConfig", "__version__", "create_model", "evaluate", "from_pretrained", "list_models",
    "list_pretrained", "train",
]
