"""Weights hub: the manifest's checkpoints fetched (Hugging Face Hub / URL / package), verified, converted and
loaded by ``create_model``; discovery (``list_models(pretrained=True)``, ``list_pretrained``) and publishing.

The folder format (``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``) is the model's own:
``csap_zoo.models.serialization``; the manifest is ``csap_zoo.manifest``. Both are re-exported here.
"""
from ..errors import (
    CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError, ConversionError, ManifestError,
)
from ..manifest import Checkpoint, HfSource, Manifest, UrlSource, default_manifest, load_manifest
from ..models.hub_transfer import push_to_hub
from ..models.serialization import load_checkpoint_into, read_state_dict, save_pretrained
from .catalog import PretrainedInfo, list_models, list_pretrained
from .convert import CHECKPOINT_FORMATS, convert_state_dict, detect_format
from .cache import VerifiedFile, sha256_of, url_cache_path
from .download import fetch_checkpoint, fetch_verified
from .factory import create_model, from_pretrained

__all__ = [
    "CHECKPOINT_FORMATS", "Checkpoint", "CheckpointError", "CheckpointIntegrityError", "CheckpointUnavailableError",
    "ConversionError", "HfSource", "Manifest", "ManifestError", "PretrainedInfo", "UrlSource", "VerifiedFile",
    "convert_state_dict", "create_model", "default_manifest", "detect_format", "fetch_checkpoint", "fetch_verified",
    "from_pretrained", "list_models", "list_pretrained", "load_checkpoint_into", "load_manifest", "push_to_hub",
    "read_state_dict", "save_pretrained", "sha256_of", "url_cache_path",
]
