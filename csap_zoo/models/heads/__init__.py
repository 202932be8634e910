"""Decode heads: each takes a list of backbone features (shallow to deep) and returns stride-8 logits."""
from .csap import ATTENTION_MODES, PROPAGATION_MODES, CSAPHead, CSAPHeadConfig, propagate_map
from .ham import HamHeadConfig, LightHamHead

__all__ = [
    "ATTENTION_MODES", "PROPAGATION_MODES", "CSAPHead", "CSAPHeadConfig", "HamHeadConfig", "LightHamHead",
    "propagate_map",
]
