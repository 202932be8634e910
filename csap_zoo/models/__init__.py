"""Models: the MSCAN backbone family (registered in timm), decode heads, the segmentor and the registry."""
from .fused import optimize_for_inference
from .heads import CSAPHead, CSAPHeadConfig, HamHeadConfig, LightHamHead
from .mscan import MSCAN
from .registry import (
    DATASET_NUM_CLASSES, Architecture, build_model, get_architecture, list_architectures, register_architecture,
)
from .segmentor import DataConfig, Segmentor, SegmentorConfig

__all__ = [
    "Architecture", "CSAPHead", "CSAPHeadConfig", "DATASET_NUM_CLASSES", "HamHeadConfig", "LightHamHead", "MSCAN",
    "DataConfig", "Segmentor", "SegmentorConfig", "build_model", "get_architecture", "list_architectures",
    "optimize_for_inference", "register_architecture",
]
