"""Weights hub: the manifest, downloads (Hugging Face Hub / URL / local), conversion, saving and publishing."""
from .catalog import PretrainedInfo, list_models, list_pretrained
from .convert import CHECKPOINT_FORMATS, ConversionError, convert_state_dict, read_state_dict
from .download import (
    CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError, VerifiedFile, fetch_checkpoint,
    fetch_verified, sha256_of, url_cache_path,
)
from .manifest import Checkpoint, HfSource, Manifest, ManifestError, UrlSource, default_manifest, load_manifest
from .pretrained import create_model, from_pretrained, load_checkpoint_into
from .serialization import push_to_hub, save_pretrained

__all__ = [
    "CHECKPOINT_FORMATS", "Checkpoint", "CheckpointError", "CheckpointIntegrityError", "CheckpointUnavailableError",
    "ConversionError", "HfSource", "Manifest", "ManifestError", "UrlSource", "convert_state_dict", "create_model",
    "VerifiedFile", "default_manifest", "fetch_checkpoint", "fetch_verified", "from_pretrained", "load_checkpoint_into", "load_manifest",
    "PretrainedInfo", "list_models", "list_pretrained", "push_to_hub", "read_state_dict", "save_pretrained",
    "sha256_of", "url_cache_path",
]
