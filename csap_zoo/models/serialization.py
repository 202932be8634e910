"""The segmentor's folder format, written and read: ``config.json`` + ``model.safetensors`` + a README model card.

``save_pretrained`` writes the folder atomically; ``from_pretrained`` reads one back from a local path or a Hugging
Face Hub repository; ``push_to_hub`` uploads one. :class:`PretrainedMixin` gives a model class these as methods
(the model class supplies ``from_config``, ``config``, ``data_config`` and ``metrics``), so the format has one home
and the model class does not reach up into the hub for it.

Loading is strict: a missing or unexpected key, a shape mismatch or a tensor of the wrong kind (integer or bool
where the model holds floats, or the reverse) is an error. The one exception is the classifier when ``num_classes``
differs from the checkpoint's: it is re-initialised, with a warning. A saved folder must be consistent: its
config.json is validated field by field (``csap_zoo.errors.ConfigError``), its class count must match its
weights, and the model it describes is checked against the weights file on the meta device before any memory is
allocated. Reading a local folder never touches the network. Checkpoint files are read with safetensors, or with
``torch.load(weights_only=True)``, which refuses pickled code.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Union

import torch
import torch.nn as nn
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import load_file, save_file

from ..errors import HUB_LOGIN_ADVICE, CheckpointUnavailableError, ConfigError, ConversionError, HubError, ManifestError
from ..fileio import atomic_folder, atomic_write, clean_stale_temp
from ..manifest import default_manifest
from ..settings import is_offline
from ..validation import check_value, require_mapping
from ..version import __version__
from .architectures import get_architecture
from .config import DataConfig, SegmentorConfig
from .flops import estimate_gmacs
from .fused import is_fused

__all__ = [
    "CONFIG_NAME", "FORMAT_VERSION", "MODEL_CARD_NAME", "ModelFolder", "PretrainedMixin", "WEIGHTS_NAME",
    "check_hub_upload", "hub_unreachable", "load_checkpoint_into", "model_config_dict", "push_to_hub", "read_model_folder",
    "read_state_dict", "render_model_card", "save_pretrained",
]

PathLike = Union[str, os.PathLike]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 16 * 2 ** 20  # a config.json larger than this is refused unread
_CONFIG_KEYS = ("format_version", "csap_zoo_version", "model", "data", "metrics")
_CLASSIFIER_PREFIX = "decode_head.classifier."
_CLASSIFIER_WEIGHT = _CLASSIFIER_PREFIX + "weight"


# ---------------------------------------------------------------------- reading weights, strictly
def read_state_dict(path: Union[str, Path, bytes], name: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (safetensors, or a torch file loaded with weights_only=True), unwrapped from
    ``state_dict`` / ``model`` containers.

    ``path`` may also be the file's contents (bytes already read and hash-checked, see ``fetch_verified``); ``name``
    is then the file's name, whose suffix picks the format and which messages show.
    """
    contents = bytes(path) if isinstance(path, (bytes, bytearray, memoryview)) else None
    path = Path(name or "checkpoint") if contents is not None else Path(path)
    if contents is None and not path.is_file():
        raise ConversionError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path)) if contents is None else load_safetensors_bytes(contents)
        except Exception as err:
            raise ConversionError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        data: Any = torch.load(path if contents is None else io.BytesIO(contents), map_location="cpu",
                               weights_only=True)
    except Exception as err:
        raise ConversionError(
            f"{path} could not be read as a weights-only torch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Pickled objects other than tensors are refused "
            f"for safety; re-save the file's state_dict, or convert it to safetensors."
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors")
    return data


def _listed(items: List[str]) -> str:
    return f"{items[:5]}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _fit_state(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], source: str, num_classes: int,
               backbone_only: bool, classifier_may_differ: bool) -> Dict[str, torch.Tensor]:
    """``state`` reduced to what loads into a model whose state dict is ``own`` (real or meta tensors), or a
    ConversionError saying what does not fit; nothing is copied."""
    state = dict(state)
    if backbone_only:
        state.update({k: v for k, v in own.items() if k.startswith("decode_head.")})
    # A tensor of another kind (int/bool for a float parameter, or a float for an integer counter) would be cast
    # silently by load_state_dict: integer weights give a model that predicts class 0 everywhere.
    wrong_kind = [f"{k}: file {_dtype_name(v.dtype)}, model {_dtype_name(own[k].dtype)}" for k, v in state.items()
                  if k in own and v.is_floating_point() != own[k].is_floating_point()]
    if wrong_kind:
        raise ConversionError(f"{source} holds tensors of the wrong kind (weights must be floating point, counters "
                              f"integer): {_listed(wrong_kind)}. Is it a weights file at all?")
    # only a different class count (first dimension) excuses a classifier mismatch
    skipped = [k for k in state if classifier_may_differ and k.startswith(_CLASSIFIER_PREFIX) and k in own
               and state[k].dim() >= 1 and state[k].dim() == own[k].dim()
               and state[k].shape[0] != own[k].shape[0] and state[k].shape[1:] == own[k].shape[1:]]
    if skipped:
        warnings.warn(
            f"{source}: the checkpoint's classifier has {state[skipped[0]].shape[0]} classes, the model "
            f"{num_classes}; the classifier is re-initialised and needs fine-tuning.", stacklevel=4,
        )
        for key in skipped:
            del state[key]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ConversionError(f"{source} does not fit the model; shape mismatches: {mismatched[:5]}"
                              + (" ..." if len(mismatched) > 5 else ""))
    missing = [k for k in own if k not in state and k not in skipped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ConversionError(
            f"{source} does not match the model: {len(missing)} missing key(s) {missing[:5]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}. Is it a checkpoint of this architecture?"
        )
    return state


def load_checkpoint_into(model: nn.Module, state: Dict[str, torch.Tensor], source: str,
                         backbone_only: bool = False, classifier_may_differ: bool = True) -> None:
    """Strictly load ``state`` into ``model``: every key, shape and kind (floating or integer) must match.

    ``backbone_only``: the checkpoint holds backbone weights only; the head keeps its own (fresh) weights.
    ``classifier_may_differ``: a classifier of another class count is skipped with a warning (the model keeps
    its fresh one); False makes it a shape mismatch like any other.
    """
    state = _fit_state(model.state_dict(), state, source, model.num_classes, backbone_only, classifier_may_differ)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected  # _fit_state has refused them



# ---------------------------------------------------------------------- writing a folder
def model_config_dict(model: Any, metrics: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Everything config.json records: the architecture config, the data config and metrics."""
    if model.config is None:
        raise ValueError("this segmentor was not built from a SegmentorConfig (csap_zoo.create_model does that), "
                         "so it cannot be saved in a reloadable form")
    return {
        "format_version": FORMAT_VERSION,
        "csap_zoo_version": __version__,
        "model": model.config.to_dict(),
        "data": model.data_config.to_dict(),
        "metrics": metrics or {},
    }


def _count_gmacs(model: nn.Module, size: int) -> Optional[float]:
    try:
        return estimate_gmacs(model, size, size)
    except Exception:  # a model the counter cannot follow must not block saving it
        return None


# Card metric names -> Hugging Face metric types (model-index); other float-valued entries keep their own name.
_METRIC_TYPES = {"mIoU": "mean_iou", "mAcc": "mean_accuracy", "aAcc": "accuracy"}
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+_-]{0,63}")


def _card_license(license: Optional[str], architecture: str, dataset_tag: Optional[str]) -> Optional[str]:
    """The card's license: the argument, else the manifest entry the model is named after, else None."""
    if license is not None:
        if not isinstance(license, str) or not _LICENSE_ID.fullmatch(license):
            raise ValueError(f"license must be a Hugging Face license identifier such as 'apache-2.0', 'mit' or "
                             f"'other' (lowercase, no spaces), got {license!r}")
        return license
    if not dataset_tag:
        return None
    try:
        manifest = default_manifest()
    except ManifestError:  # a broken CSAP_ZOO_MANIFEST must not block saving a model
        return None
    name = f"{architecture}.{dataset_tag}"
    if name not in manifest:
        return None
    entry = manifest.get(name)
    return entry.license if entry.kind == "segmentor" and entry.architecture == architecture else None


def _eval_results(metrics: Dict[str, Any], model_dataset: str) -> List[Any]:
    from huggingface_hub import EvalResult

    measured_on = metrics.get("dataset") if isinstance(metrics.get("dataset"), str) else model_dataset
    results = []
    for key, value in metrics.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not numeric or (key not in _METRIC_TYPES and not isinstance(value, float)):
            continue  # counts such as val_images or iterations are not results
        results.append(EvalResult(
            task_type="image-segmentation", task_name="Semantic Segmentation", dataset_type=measured_on,
            dataset_name=measured_on, metric_type=_METRIC_TYPES.get(key, key), metric_name=key, metric_value=value,
        ))
    return results


def render_model_card(model: Any, metrics: Optional[Dict[str, Any]] = None, repo_id: Optional[str] = None,
                      gmacs_size: int = 512, license: Optional[str] = None) -> str:
    """A Hugging Face model card: metadata front matter (huggingface_hub's ModelCardData), then what the model is
    and how to load it.

    The metadata has ``library_name: csap-zoo``, ``pipeline_tag: image-segmentation``, the dataset and the numeric
    metrics as ``model-index`` results (values as recorded, e.g. percent). ``license`` is a Hugging Face license
    identifier; without one the card takes the license of the manifest checkpoint the model is named after
    (``architecture.dataset``), and otherwise has no license field, for the author to choose one.
    """
    from huggingface_hub import ModelCard, ModelCardData

    config, data = model.config, model.data_config
    assert config is not None
    params = sum(p.numel() for p in model.parameters()) / 1e6
    gmacs = _count_gmacs(model, gmacs_size)
    dataset = data.dataset or config.dataset or "custom"
    classes = data.class_names
    title = config.architecture + (f".{dataset}" if dataset != "custom" else "")
    eval_results = _eval_results(metrics or {}, dataset)
    metadata = ModelCardData(
        library_name="csap-zoo",
        pipeline_tag="image-segmentation",
        license=_card_license(license, config.architecture, config.dataset or data.dataset),
        tags=["csap-zoo", "semantic-segmentation"],
        datasets=[dataset] if dataset != "custom" else None,
        model_name=(repo_id or title) if eval_results else None,
        eval_results=eval_results or None,
    )
    lines = [
        f"# {title}",
        "",
        f"Semantic segmentation model from csap-zoo: backbone `{config.backbone}` with a "
        f"`{type(model.decode_head).__name__}` decode head.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{config.architecture}` |",
        f"| dataset | {dataset} |",
        f"| classes | {config.num_classes} |",
        f"| input channels | {config.in_chans} |",
        "| input padding | " + ("none: inputs run at their own size, logits resized to it |" if config.pad_mode == "none"
                               else f"zero padding to a multiple of {model.stride}, logits cropped |"),
        f"| parameters | {params:.2f} M |",
        f"| GMACs ({gmacs_size}x{gmacs_size}, convolutions and matmuls) | "
        + (f"{gmacs:.2f} |" if gmacs is not None else "not counted |"),
    ]
    if data.train_crop:
        lines.append(f"| training crop | {data.train_crop[0]}x{data.train_crop[1]} |")
    if data.test_size:
        lines.append(f"| evaluation resize | {data.test_size[0]}x{data.test_size[1]} (keep ratio) |")
    lines.append(f"| mean / std (0-255) | {list(data.mean)} / {list(data.std)} |")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("No metrics recorded.")
    if classes:
        lines += ["", "## Classes", "", ", ".join(f"{i}: {name}" for i, name in enumerate(classes))]
    alternative = (f'csap_zoo.create_model("hf-hub:{repo_id}")' if repo_id
                   else f'csap_zoo.create_model("{config.architecture}", pretrained="path/to/this/folder")')
    lines += [
        "", "## How to load", "", "```python", "import csap_zoo", "",
        f'model = csap_zoo.from_pretrained("{repo_id or "path/to/this/folder"}").eval()',
        f"# or: {alternative}", "```", "",
    ]
    return str(ModelCard("---\n" + metadata.to_yaml() + "\n---\n\n" + "\n".join(lines)))


def save_pretrained(
        model: Any,
        save_directory: Union[str, Path],
        metrics: Optional[Dict[str, Any]] = None,
        repo_id: Optional[str] = None,
        dtype: Optional[torch.dtype] = None,
        license: Optional[str] = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``save_directory``.

    ``license`` is the model card's Hugging Face license identifier (see ``render_model_card`` for the default).

    ``dtype`` (e.g. ``torch.float16``) stores floating-point tensors in that type, halving the file; loading
    copies them back into the model's own (fp32) parameters.

    The folder is assembled in a temporary sibling and moved into place, so a failure never leaves a
    half-written model folder; an existing folder's three files are replaced, other files are kept. Files and a
    new folder get the permissions the umask gives; staging folders of earlier saves to the same destination that
    were killed midway are removed (see ``csap_zoo.fileio.clean_stale_temp`` for when one counts as abandoned).
    """
    if is_fused(model):
        raise ValueError("this model was optimised for inference (folded, fused layers) and no longer has the "
                         "architecture's checkpoint layout; save the original model instead of the "
                         "optimize_for_inference() copy")
    target = Path(save_directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    metrics = model.metrics if metrics is None else metrics
    config = model_config_dict(model, metrics)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    clean_stale_temp(target.parent, re.escape(target.name))  # staging folders a killed save left behind
    with atomic_folder(target, (WEIGHTS_NAME, CONFIG_NAME, MODEL_CARD_NAME), fsync=True) as staging:
        # safetensors writes a 0600 file of its own; atomic_write gives it the usual permissions. One metadata
        # entry: safetensors orders several in a per-process random order, so the same weights would not give
        # the same bytes (and sha256) twice; config.json records the csap-zoo version.
        atomic_write(staging / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (staging / MODEL_CARD_NAME).write_text(render_model_card(model, metrics, repo_id, license=license))
    return target




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


# ---------------------------------------------------------------------- reading a folder
class ModelFolder(NamedTuple):
    """The validated contents of a save_pretrained folder (its weights file not yet read)."""

    config: SegmentorConfig
    data_config: DataConfig
    metrics: Dict[str, Any]
    config_path: Path
    weights_path: Path


def _parse_config_file(config_path: Path) -> Dict[str, Any]:
    size = config_path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"is larger than {MAX_CONFIG_BYTES} bytes ({size}); not a config written by "
                          f"save_pretrained", source=str(config_path))
    try:
        saved = json.loads(config_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConversionError(f"{config_path} is not UTF-8 text: {err}") from None
    except RecursionError:
        raise ConversionError(f"{config_path} is not valid JSON: nested too deeply") from None
    except ValueError as err:  # json.JSONDecodeError, and integers longer than Python converts
        raise ConversionError(f"{config_path} is not valid JSON: {err}") from None
    saved = require_mapping(saved)
    version = saved.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION or "model" not in saved:
        raise ConversionError(f"{config_path} is not a csap-zoo config (format_version {FORMAT_VERSION} expected)")
    unknown = [k for k in saved if k not in _CONFIG_KEYS]
    if unknown:
        raise ConfigError(f"is not a known entry; a config.json holds {list(_CONFIG_KEYS)}", field=unknown[0])
    try:
        check_value(saved.get("csap_zoo_version"), Optional[str])
    except ConfigError as err:
        raise err.located(prefix="csap_zoo_version") from None
    return dict(saved)


def read_model_folder(folder: Path) -> ModelFolder:
    """The validated contents of a save_pretrained folder (its weights are not read)."""
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise ConversionError(f"{folder} is not a csap-zoo model folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                              f"(written by save_pretrained)")
    section = None
    try:
        saved = _parse_config_file(config_path)
        section = "model"
        config = SegmentorConfig.from_dict(saved["model"])
        section = "data"
        data_config = DataConfig.from_dict(saved.get("data", {}))
        section = "metrics"
        metrics = dict(require_mapping(saved.get("metrics", {})))
        section = None
        try:
            get_architecture(config.architecture)
        except ValueError as err:
            raise ConfigError(f"must name a registered architecture ({err})", field="model.architecture") from None
        names = data_config.class_names
        if names is not None and len(names) != config.num_classes:
            raise ConfigError(f"lists {len(names)} class names for model.num_classes={config.num_classes}",
                              field="data.class_names")
    except ConfigError as err:
        raise err.located(str(config_path), section) from None
    return ModelFolder(config, data_config, metrics, config_path, weights_path)


def _check_class_count(contents: ModelFolder, state: Dict[str, torch.Tensor]) -> None:
    weight = state.get(_CLASSIFIER_WEIGHT)
    saved = contents.config.num_classes
    if weight is not None and weight.dim() >= 1 and weight.shape[0] != saved:
        raise ConversionError(
            f"{contents.config_path.parent} is inconsistent: {contents.config_path.name} says num_classes={saved} "
            f"but {contents.weights_path.name} holds a classifier of {weight.shape[0]} classes "
            f"({_CLASSIFIER_WEIGHT} {tuple(weight.shape)}). Re-save the model with save_pretrained, or load the "
            f"weights file alone with create_model(name, pretrained=path_to_{contents.weights_path.name})."
        )


def _build_from_folder(cls: Any, contents: ModelFolder, meta: bool) -> Any:
    """The folder's model, never with pretrained backbone weights; a config the model code refuses is a
    ConfigError of the file."""
    try:
        if not meta:
            return cls.from_config(contents.config, pretrained_backbone=False, data_config=contents.data_config)
        with torch.device("meta"):
            return cls.from_config(contents.config, pretrained_backbone=False)
    except NotImplementedError:
        if meta:
            return None
        raise
    except (ValueError, TypeError, RuntimeError, AssertionError) as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"does not describe a model that can be built: {type(err).__name__}: {first_line}",
                          field="model", source=str(contents.config_path)) from None


def model_from_folder(cls: Any, folder: Path, source: str, num_classes: Optional[int]) -> Any:
    """A ``cls`` model (a Segmentor) rebuilt from a save_pretrained folder and strictly loaded with its weights."""
    contents = read_model_folder(folder)
    state = read_state_dict(contents.weights_path)
    _check_class_count(contents, state)
    # The backbone is built without pretrained weights (they are in the folder's own file), first on the meta
    # device: a config that describes anything but the weights file is refused before memory is allocated.
    probe = _build_from_folder(cls, contents, meta=True)
    if probe is not None:  # None: a module that computes at construction and cannot be built on meta
        _fit_state(probe.state_dict(), state, source, probe.num_classes, backbone_only=False,
                   classifier_may_differ=False)
    model = _build_from_folder(cls, contents, meta=False)
    assert model is not None
    load_checkpoint_into(model, state, source, classifier_may_differ=False)
    model.metrics = contents.metrics
    if num_classes is not None and num_classes != model.num_classes:
        warn_reset(source, model.num_classes, num_classes)
        model.reset_classifier(num_classes)
    return model


def warn_reset(source: str, old: int, new: int) -> None:
    warnings.warn(f"{source}: checkpoint has {old} classes, num_classes={new}; the classifier is re-initialised "
                  f"and needs fine-tuning.", stacklevel=4)


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = 3.0) -> Optional[str]:
    """Why the Hub endpoint cannot be reached (one TCP connection attempt), or None when it answers.

    huggingface_hub retries a refused connection for about half a minute; this single attempt lets an
    unreachable Hub fail (or fall back to the cache) at once. Behind a proxy the endpoint is not probed.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
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


def download_model_folder(repo_id: str, revision: Optional[str], cache_dir: Optional[PathLike],
                        local_files_only: Optional[bool]) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = is_offline() if local_files_only is None else local_files_only
    if offline:
        reason = ("offline mode is on (HF_HUB_OFFLINE or CSAP_ZOO_OFFLINE is set)" if local_files_only is None
                  else "local_files_only=True")
    else:
        unreachable = hub_unreachable()
        # like huggingface_hub without a network: the cached copy, if there is one
        offline = unreachable is not None
        reason = f"the Hub is unreachable ({unreachable})"
    try:
        paths = [Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir,
                                      local_files_only=offline)) for name in (CONFIG_NAME, WEIGHTS_NAME)]
    except LocalEntryNotFoundError:
        if not offline:
            reason = "the Hub is unreachable"
        advice = ("Download it once while online (unset HF_HUB_OFFLINE / CSAP_ZOO_OFFLINE), or point HF_HUB_CACHE "
                  "at a cache that holds it." if "offline mode" in reason else
                  "Check the network (or HF_ENDPOINT) and retry, or point HF_HUB_CACHE at a cache that holds it; "
                  "set HF_HUB_OFFLINE=1 to use cached models without trying the network.")
        raise CheckpointUnavailableError(f"hf-hub:{repo_id} is not in the local cache and {reason}. {advice}") from None
    except (RepositoryNotFoundError, EntryNotFoundError) as err:
        raise CheckpointUnavailableError(f"hf-hub:{repo_id} is not a csap-zoo model repository "
                                         f"({type(err).__name__}); it needs {CONFIG_NAME} and {WEIGHTS_NAME}") from None
    return paths[0].parent


# ---------------------------------------------------------------------- the methods a model class gets
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
