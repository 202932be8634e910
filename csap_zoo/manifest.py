"""The weights manifest: every checkpoint the zoo knows, validated against its JSON Schema.

The manifest ships with the package (``csap_zoo/weights_manifest.json``, the repository's top-level
``weights_manifest.json``). Entries are named ``architecture.dataset`` (``csap_tiny.ade20k``, ``mscan_tiny.in1k``).
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import unquote, urlsplit

from .errors import ManifestError, UnsafePathError
from .fileio import atomic_write, check_relative_path, contained_path
from .settings import manifest_override

__all__ = [
    "Checkpoint", "HfSource", "Manifest", "ManifestError", "PackageSource", "UrlSource", "default_manifest", "load_manifest",
    "MANIFEST_PATH", "SCHEMA_PATH",
]

_HERE = Path(__file__).resolve().parent
MANIFEST_PATH = _HERE / "weights_manifest.json"
SCHEMA_PATH = _HERE / "weights_manifest.schema.json"


# the schema's patterns for the fields of an HF source (weights_manifest.schema.json holds the same ones)
HF_REPO_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
HF_REVISION_PATTERN = r"^[0-9a-f]{40}$"
HF_FILENAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._+-]*(/[A-Za-z0-9_][A-Za-z0-9._+-]*)*$"


@dataclass(frozen=True)
class HfSource:
    """A file in a Hugging Face Hub model repository, pinned to a commit.

    All three fields become parts of a cache path (``models--<org>--<name>/snapshots/<revision>/<filename>``), so each
    is checked here as the schema checks it: a built-in ``HfSource`` with ``..`` in its file name cannot exist."""

    repo_id: str
    revision: str
    filename: str

    def __post_init__(self) -> None:
        for field_name, pattern, example in (("repo_id", HF_REPO_ID_PATTERN, "org/name"),
                                             ("revision", HF_REVISION_PATTERN, "a 40-digit commit sha"),
                                             ("filename", HF_FILENAME_PATTERN, "weights/model.safetensors")):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not re.fullmatch(pattern, value):
                raise ManifestError(f"HF source {field_name} {value!r} is not allowed (expected {example}: plain "
                                    f"segments of letters, digits, '_', '-', '.', '+', none of them '.' or '..')")
        try:
            check_relative_path(self.filename, "HF source filename")
        except UnsafePathError as err:
            raise ManifestError(str(err)) from None

    def describe(self) -> str:
        return f"hf://{self.repo_id}@{self.revision[:12]}/{self.filename}"


@dataclass(frozen=True)
class UrlSource:
    """A file at a plain URL (torch.hub style); the URL's last path segment is the file's name."""

    url: str

    def __post_init__(self) -> None:
        name = unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])
        if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise ManifestError(
                f"source URL {self.url!r} does not end in a file name (last path segment {name!r}); the URL must "
                f"name the checkpoint file itself, e.g. https://host/path/model.safetensors"
            )

    @property
    def filename(self) -> str:
        """The last path segment, percent-decoded (query and fragment ignored)."""
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class PackageSource:
    """A file shipped inside the installed ``csap_zoo`` package (bundled demo weights), by relative path."""

    path: str

    def __post_init__(self) -> None:
        try:
            check_relative_path(self.path, "package source")
        except UnsafePathError as err:
            raise ManifestError(str(err)) from None

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def resolve(self) -> Path:
        try:
            return contained_path(_HERE, self.path, "package source").resolve()
        except UnsafePathError as err:
            raise ManifestError(str(err)) from None

    def describe(self) -> str:
        return f"package:csap_zoo/{self.path}"


Source = Union[HfSource, UrlSource, PackageSource]


@dataclass(frozen=True)
class Checkpoint:
    """One manifest entry."""

    name: str
    architecture: str
    kind: str  # "backbone" or "segmentor"
    dataset: str
    num_classes: int
    class_set: str
    train_crop: Tuple[int, int]
    test_size: Tuple[int, int]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    source: Optional[Source]
    sha256: Optional[str]
    sha256_prefix: Optional[str]
    size_bytes: Optional[int]
    format: str  # "csap-safetensors", "mscan-original" or "mmseg-segnext"
    metrics: Dict[str, Dict[str, Any]]
    license: str
    status: str  # "published" or "unpublished"
    notes: str = ""

    @property
    def published(self) -> bool:
        return self.status == "published"

    @property
    def dataset_tag(self) -> str:
        return self.name.split(".", 1)[1]

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Checkpoint":
        source_data = data.get("source")
        source: Optional[Source] = None
        if source_data and "hf" in source_data:
            source = HfSource(**source_data["hf"])
        elif source_data and "package" in source_data:
            source = PackageSource(source_data["package"])
        elif source_data:
            source = UrlSource(source_data["url"])
        values = dict(data)
        values.update(
            source=source,
            train_crop=tuple(data["train_crop"]),
            test_size=tuple(data["test_size"]),
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
        )
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        if isinstance(self.source, HfSource):
            data["source"] = {"hf": asdict(self.source)}
        elif isinstance(self.source, UrlSource):
            data["source"] = {"url": self.source.url}
        elif isinstance(self.source, PackageSource):
            data["source"] = {"package": self.source.path}
        for key in ("train_crop", "test_size", "mean", "std"):
            data[key] = list(data[key])
        if not data["notes"]:
            del data["notes"]
        return data


@lru_cache(maxsize=1)
def _schema() -> Dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


@dataclass
class Manifest:
    """An ordered collection of checkpoints with name lookups."""

    checkpoints: List[Checkpoint] = field(default_factory=list)
    path: Optional[Path] = None

    @classmethod
    def from_dict(cls, data: Dict[str, Any], path: Optional[Path] = None) -> "Manifest":
        where = f" in {path}" if path else ""
        import jsonschema  # loaded only when a manifest is read

        try:
            jsonschema.validate(data, _schema())
        except jsonschema.ValidationError as err:
            location = "/".join(str(p) for p in err.absolute_path) or "(top level)"
            raise ManifestError(f"invalid weights manifest{where} at {location}: {err.message}") from None
        checkpoints = []
        for entry in data["checkpoints"]:
            try:
                checkpoints.append(Checkpoint.from_dict(entry))
            except ManifestError as err:
                raise ManifestError(f"weights manifest{where}, entry {entry['name']!r}: {err}") from None
        names = [c.name for c in checkpoints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ManifestError(f"weights manifest{where} lists these names more than once: {duplicates}")
        return cls(checkpoints, path)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "$schema": "./csap_zoo/weights_manifest.schema.json",
            "schema_version": 1,
            "checkpoints": [c.to_dict() for c in self.checkpoints],
        }

    def names(self) -> List[str]:
        return [c.name for c in self.checkpoints]

    def __contains__(self, name: str) -> bool:
        return any(c.name == name for c in self.checkpoints)

    def get(self, name: str) -> Checkpoint:
        for checkpoint in self.checkpoints:
            if checkpoint.name == name:
                return checkpoint
        close = difflib.get_close_matches(name, self.names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ManifestError(
            f"no checkpoint named {name!r} in the weights manifest.{hint} "
            f"`csap-zoo models` lists the checkpoints and their status."
        )

    def backbone_for(self, backbone_arch: str) -> Optional[Checkpoint]:
        """The ImageNet checkpoint of a backbone architecture (e.g. ``mscan_tiny``), if the manifest has one."""
        for checkpoint in self.checkpoints:
            if checkpoint.kind == "backbone" and checkpoint.architecture == backbone_arch:
                return checkpoint
        return None

    def upsert(self, checkpoint: Checkpoint) -> None:
        """Add a checkpoint, replacing the entry of the same name if there is one."""
        for i, existing in enumerate(self.checkpoints):
            if existing.name == checkpoint.name:
                self.checkpoints[i] = checkpoint
                return
        self.checkpoints.append(checkpoint)

    def save(self, path: Union[str, Path, None] = None) -> Path:
        """Validate and write atomically (temp file in the same folder, then rename)."""
        target = Path(path or self.path or MANIFEST_PATH).resolve()
        data = self.to_dict()
        Manifest.from_dict(data)  # never write a manifest that would not load
        atomic_write(target, lambda tmp: Path(tmp).write_text(_format_manifest(data)))
        return target


def _format_manifest(data: Any, indent: int = 0) -> str:
    """JSON with objects spread over lines and lists of plain values kept on one line (readable, small diffs)."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(data, dict) and data:
        items = [f"{inner}{json.dumps(k)}: {_format_manifest(v, indent + 2).lstrip()}" for k, v in data.items()]
        text = "{\n" + ",\n".join(items) + "\n" + pad + "}"
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        text = "[\n" + ",\n".join(inner + _format_manifest(v, indent + 2).lstrip() for v in data) + "\n" + pad + "]"
    else:
        text = json.dumps(data)
    return text + ("\n" if indent == 0 else "")


def load_manifest(path: Union[str, Path]) -> Manifest:
    """Read and validate a manifest file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ManifestError(f"weights manifest {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"weights manifest {path} is not valid JSON: {err}") from None
    return Manifest.from_dict(data, path)


@lru_cache(maxsize=1)
def _default_manifest() -> Manifest:
    return load_manifest(MANIFEST_PATH)


def default_manifest() -> Manifest:
    """The manifest shipped with the package (or the file named by ``CSAP_ZOO_MANIFEST``)."""
    override = manifest_override()
    return load_manifest(override) if override else _default_manifest()
