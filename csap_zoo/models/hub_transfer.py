"""A model folder to and from the Hugging Face Hub: ``push_to_hub`` uploads a ``save_pretrained`` folder,
``download_model_folder`` fetches one (``from_pretrained("org/name")``), ``check_hub_upload`` fails fast before an
upload that cannot work. Downloads go through ``csap_zoo.hf_access.hf_download``, like the hub's checkpoints."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..errors import HUB_LOGIN_ADVICE, HubError
from ..hf_access import hf_download, hub_unreachable
from ..settings import is_offline
from .serialization import CONFIG_NAME, WEIGHTS_NAME, save_pretrained

__all__ = ["check_hub_upload", "download_model_folder", "push_to_hub"]

PathLike = Union[str, os.PathLike]


def check_hub_upload(token: Optional[str] = None) -> None:
    """Fail at once, with one :class:`~csap_zoo.errors.HubError` that says what to do, when an upload cannot
    work: offline mode, no token ("log in"), or an unreachable Hub (one connection attempt instead of
    huggingface_hub's half a minute of retries). ``csap-zoo push`` calls it before anything is sent."""
    from huggingface_hub import get_token

    if is_offline():
        raise HubError("pushing to the Hub needs the network, and offline mode is on (unset HF_HUB_OFFLINE / "
                       "CSAP_ZOO_OFFLINE)")
    if not (token or get_token()):
        raise HubError(f"pushing to the Hub needs a Hugging Face token: {HUB_LOGIN_ADVICE}")
    unreachable = hub_unreachable()
    if unreachable:
        raise HubError(f"the Hub is unreachable ({unreachable}); check the network (or HF_ENDPOINT) and retry")


def push_to_hub(
        model: Any,
        repo_id: str,
        metrics: Optional[Dict[str, Any]] = None,
        private: bool = False,
        commit_message: str = "Upload csap-zoo model",
        token: Optional[str] = None,
        license: Optional[str] = None,
) -> str:
    """Save the model into a temporary folder and upload it to a Hugging Face Hub model repository.

    ``license`` is the model card's license identifier (see ``render_model_card``). A failed upload is one
    :class:`~csap_zoo.errors.HubError` saying what to do (log in, check the network, leave offline mode), with
    huggingface_hub's own error as its cause; :func:`check_hub_upload` fails faster, before saving.

    Returns the commit sha of the upload, which is what a manifest entry pins as ``revision``.
    """
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    metrics = model.metrics if metrics is None else metrics
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_pretrained(model, Path(tmp) / "model", metrics=metrics, repo_id=repo_id, license=license)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                     repo_type="model")
        except Exception as err:  # huggingface_hub's HTTP, connection and token errors
            status = getattr(getattr(err, "response", None), "status_code", None)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if is_offline():
                advice = "offline mode is on (unset HF_HUB_OFFLINE / CSAP_ZOO_OFFLINE)"
            elif not (token or get_token()):
                advice = f"no Hugging Face token is set: {HUB_LOGIN_ADVICE}"
            elif status in (401, 403):
                advice = f"{HUB_LOGIN_ADVICE} with a token that can write to {repo_id}"
            elif isinstance(err, HfHubHTTPError):
                advice = "the Hub refused it"
            else:
                advice = "check the network (or HF_ENDPOINT) and retry"
            raise HubError(f"uploading to {repo_id} failed ({type(err).__name__}: {first}); {advice}") from err
    return getattr(info, "oid", None) or str(info)



def download_model_folder(repo_id: str, revision: Optional[str], cache_dir: Optional[PathLike],
                          local_files_only: Optional[bool]) -> Path:
    """The local snapshot folder of Hub repository ``repo_id`` holding its config.json and weights, downloaded if
    needed and allowed; an unreachable Hub (one quick probe) falls back to the cached copy, like huggingface_hub
    without a network."""
    offline = is_offline() if local_files_only is None else local_files_only
    if offline:
        reason = "offline mode is on" if local_files_only is None else "local_files_only=True"
        advice = ("Download it once while online (unset HF_HUB_OFFLINE / CSAP_ZOO_OFFLINE), or point HF_HUB_CACHE "
                  "at a cache that holds it.")
    else:
        unreachable = hub_unreachable()
        offline = unreachable is not None
        reason = f"the Hub is unreachable ({unreachable})"
        advice = ("Check the network (or HF_ENDPOINT) and retry, or point HF_HUB_CACHE at a cache that holds it; "
                  "set HF_HUB_OFFLINE=1 to use cached models without trying the network.")
    where = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    paths = [hf_download(repo_id, name, revision=revision, cache_dir=cache_dir, offline=offline,
                         subject=f"hf-hub:{repo_id}", where=where, offline_reason=reason, offline_advice=advice,
                         missing_advice=f"It is not a csap-zoo model repository: it needs {CONFIG_NAME} and "
                                        f"{WEIGHTS_NAME}.")
             for name in (CONFIG_NAME, WEIGHTS_NAME)]
    return paths[0].parent
