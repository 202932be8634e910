"""csap-zoo: efficient semantic segmentation with Cross-Stage Attention Propagation, on timm.

    import csap_zoo
    model = csap_zoo.create_model("csap_tiny.ade20k")      # MSCAN-T + CSAP head, 150 classes
    logits = model(images)                                  # (B, 150, H, W) for any H, W

Importing the package registers the MSCAN backbones (``mscan_tiny`` ... ``mscan_large``) with timm.
"""
from .models import (
    MSCAN, Architecture, CSAPHead, CSAPHeadConfig, HamHeadConfig, LightHamHead, Segmentor, SegmentorConfig,
    create_model, list_models, register_architecture,
)

__version__ = "0.1.0"

__all__ = [
    "MSCAN", "Architecture", "CSAPHead", "CSAPHeadConfig", "HamHeadConfig", "LightHamHead", "Segmentor",
    "SegmentorConfig", "__version__", "create_model", "list_models", "register_architecture",
]
