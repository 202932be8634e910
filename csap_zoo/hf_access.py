"""Reaching the Hugging Face Hub: one file download with csap-zoo's errors, and a quick reachability probe.

Both the hub's manifest checkpoints (``csap_zoo.hub.download``) and the model folders of
``from_pretrained("org/name")`` (``csap_zoo.models.hub_transfer``) download through :func:`hf_download`, so a file
that is not cached, a repository that is missing and a failed transfer raise the same errors, whichever asked:

- not in the cache and not downloadable (offline, or the Hub unreachable): ``CheckpointUnavailableError``;
- the repository, revision or file does not exist on the Hub: ``CheckpointUnavailableError``;
- any other failure (network errors, truncated transfers): ``CheckpointError``, with huggingface_hub's error as cause.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlsplit

from .errors import CheckpointError, CheckpointUnavailableError
from .settings import proxy_configured

__all__ = ["hf_download", "hub_unreachable"]

PathLike = Union[str, os.PathLike]
_OFFLINE_ADVICE = "Download it once while online, or point HF_HUB_CACHE at a cache that holds it."


def hf_download(repo_id: str, filename: str, *, revision: Optional[str], cache_dir: Optional[PathLike],
                offline: bool, subject: str, where: str, force: bool = False,
                offline_reason: str = "offline mode is on", offline_advice: str = _OFFLINE_ADVICE,
                missing_advice: str = "", hint: str = "") -> Path:
    """``huggingface_hub.hf_hub_download`` of one file (its cached snapshot path), its failures as csap-zoo errors.

    ``subject`` names what is downloaded (``checkpoint 'x'``, ``hf-hub:org/name``) and ``where`` the file; the
    messages end with ``offline_advice`` (how to get the file: "not cached", offline), ``missing_advice``
    (what a missing repository means: "missing on the Hub") or ``hint`` (a copy downloaded by hand: every
    message but "missing").
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                    local_files_only=offline, force_download=force))
    except LocalEntryNotFoundError:
        if offline:
            raise CheckpointUnavailableError(
                f"{subject} is not in the local cache and {offline_reason} ({where}). {offline_advice}{hint}"
            ) from None
        raise CheckpointUnavailableError(
            f"could not download {subject} from {where}: it is not in the local cache and the Hub is unreachable. "
            f"Check the network or HF_ENDPOINT, or work offline from a populated cache (HF_HUB_OFFLINE=1).{hint}"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        raise CheckpointUnavailableError(
            f"{subject} is missing on the Hub ({where}): {type(err).__name__}. {missing_advice}".rstrip()
        ) from None
    except Exception as err:  # network errors, truncated transfers (huggingface_hub removes its own temp file)
        raise CheckpointError(
            f"downloading {subject} from {where} failed ({type(err).__name__}: {err}). Nothing was cached; "
            f"retry.{hint}"
        ) from err


def hub_unreachable(timeout: float = 3.0) -> Optional[str]:
    """Why the Hub endpoint cannot be reached (one TCP connection attempt), or None when it answers.

    huggingface_hub retries a refused connection for about half a minute; this single attempt lets an
    unreachable Hub fail (or fall back to the cache) at once. Behind a proxy the endpoint is not probed.
    """
    from huggingface_hub import constants

    if proxy_configured():
        return None
    parts = urlsplit(constants.ENDPOINT)
    if not parts.hostname:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as err:
        return f"{parts.hostname}:{port}: {err.strerror or err}"
    return None
