"""The old home of ``create_model`` (now ``csap_zoo.hub.factory``) and of the folder loading and strict loading
(now ``csap_zoo.models.serialization``); these names keep working from here."""
from ..models.serialization import MAX_CONFIG_BYTES, hub_unreachable, load_checkpoint_into, read_model_folder
from .factory import create_model, from_pretrained

_hub_unreachable = hub_unreachable
_read_model_folder = read_model_folder

__all__ = ["MAX_CONFIG_BYTES", "create_model", "from_pretrained", "load_checkpoint_into"]
