"""Weights hub: the manifest, downloads (Hugging Face Hub / URL / local), conversion, saving and publishing."""
from .convert import CHECKPOINT_FORMATS, ConversionError, convert_state_dict, read_state_dict
from .download import (
    CheckpointError, CheckpointIntegrityError, CheckpointUnavailableError, fetch_checkpoint, sha256_of,
)
from .manifest import Checkpoint, HfSource, Manifest, ManifestError, UrlSource, default_manifest, load_manifest
from .pretrained import create_model, from_pretrained, load_checkpoint_into
from .serialization import push_to_hub, save_pretrained

__all__ = [
    "CHECKPOINT_FORMATS", "Checkpoint", "CheckpointError", "CheckpointIntegrityError", "CheckpointUnavailableError",
    "ConversionError", "HfSource", "Manifest", "ManifestError", "UrlSource", "convert_state_dict", "create_model",
    "default_manifest", "fetch_checkpoint", "from_pretrained", "load_checkpoint_into", "load_manifest",
    "push_to_hub", "read_state_dict", "save_pretrained", "sha256_of",
]
