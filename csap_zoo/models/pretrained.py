"""The folder format as methods of a model class (Hugging Face's convention): ``save_pretrained``,
``from_pretrained`` (a local folder or a Hub repository) and ``push_to_hub``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..errors import ConversionError
from .hub_transfer import download_model_folder, push_to_hub
from .serialization import model_from_folder, save_pretrained

__all__ = ["PretrainedMixin"]

PathLike = Union[str, os.PathLike]


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` as methods of a model class (Hugging Face's
    convention). The class provides ``from_config(config, pretrained_backbone=False, data_config=None)`` and its
    instances ``config``, ``data_config``, ``metrics`` and ``num_classes``."""

    def save_pretrained(self, save_directory: PathLike, metrics: Optional[Dict[str, Any]] = None,
                        **kwargs: Any) -> Path:
        """Write config.json + model.safetensors + README.md (see :func:`save_pretrained` for the keyword
        arguments: ``repo_id``, ``dtype``, ``license``)."""
        return save_pretrained(self, save_directory, metrics=metrics, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload to a Hugging Face Hub model repository (see :func:`push_to_hub`)."""
        return push_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_pretrained(
            cls,
            name_or_path: PathLike,
            num_classes: Optional[int] = None,
            revision: Optional[str] = None,
            cache_dir: Optional[PathLike] = None,
            local_files_only: Optional[bool] = None,
    ) -> Any:
        """Load a model saved with ``save_pretrained``: a local folder, or a Hub repo id (``org/name``).

        The saved config rebuilds the exact architecture (no backbone weights are downloaded); ``num_classes``
        different from the saved one re-initialises the classifier with a warning.
        """
        text = os.fspath(name_or_path)
        if text.startswith("hf-hub:"):
            text = text[len("hf-hub:"):]
        folder = Path(text)
        if folder.is_dir():
            return model_from_folder(cls, folder, str(folder), num_classes)
        if folder.exists() or text.count("/") != 1 or text.startswith((".", "/")):
            raise ConversionError(f"{text} is neither a model folder nor a Hub repo id of the form 'org/name'")
        local = download_model_folder(text, revision, cache_dir, local_files_only)
        return model_from_folder(cls, local, f"hf-hub:{text}", num_classes)
