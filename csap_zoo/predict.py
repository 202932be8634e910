"""Files in, PNGs out: what ``csap-zoo predict`` runs over image files, folders and glob patterns.

Each image becomes ``labels/<stem>.png`` (class indices) and ``overlays/<stem>.png`` (colour overlay with a legend),
written together and atomically, with a peak memory that does not grow with the image beyond its decode (see
:func:`predict_paths`).
"""
from __future__ import annotations

import glob
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .data.io import IMAGE_EXTENSIONS, ImageRows, image_format, open_rows
from .data.png import label_palette, label_png_mode, write_png
from .data.metadata import DatasetInfo
from .distributed import DistEnv, broadcast_object, gather_objects, run_in_rounds
from .errors import DistributedError
from .fileio import atomic_write_all, clean_stale_temp
from .inference import Segmenter
from .visualize import legend as draw_legend
from .visualize import OUTLINE_COLOUR, boundaries, legend_extent, overlay

__all__ = ["PredictSummary", "ResolvedInputs", "outputs_exist", "predict_paths", "resolve_inputs"]

Pair = Tuple[int, int]
_WRITE_BAND_PIXELS = 2 ** 18  # pixels per band of rows when storing labels and writing PNGs


@dataclass
class PredictSummary:
    """What ``predict_paths`` did, per input: ``written`` (input, label PNG, overlay PNG); ``skipped`` (path,
    reason): files it did not predict by design (hidden files of a folder, files without an image extension that
    did not decode); ``failed`` (path, reason): image files that could not be read; ``existing`` (input, label
    PNG, overlay PNG): inputs left alone because both outputs were already there (``skip_existing``).
    ``csap-zoo predict`` exits 1 when ``failed`` is not empty."""

    written: List[Tuple[Path, Path, Path]] = field(default_factory=list)
    existing: List[Tuple[Path, Path, Path]] = field(default_factory=list)
    skipped: List[Tuple[Path, str]] = field(default_factory=list)
    failed: List[Tuple[Path, str]] = field(default_factory=list)


class ResolvedInputs(NamedTuple):
    """The files an input list names: ``paths`` to predict (sorted, unique), ``single`` (the input was exactly one
    file, which must then be readable) and ``hidden`` (files of a named folder whose names start with '.', left
    out)."""

    paths: List[Path]
    single: bool
    hidden: List[Path]


_HIDDEN = "hidden file (its name starts with '.'; name it or use a glob to predict it)"


def resolve_inputs(inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> ResolvedInputs:
    """Expand image inputs: files, folders (their files, not recursive, hidden files left out) and glob patterns
    (``**`` recurses)."""
    specs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not specs:
        raise ValueError("no input given; pass an image file, a folder or a glob pattern")
    paths: List[Path] = []
    hidden: List[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_file():
            paths.append(path)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            found = [p for p in files if not p.name.startswith(".")]
            hidden.extend(p for p in files if p.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"folder {path} contains no files" + (
                    f" except {len(hidden)} hidden one(s) (names starting with '.')" if hidden else ""))
            paths.extend(found)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(spec), recursive=True) if Path(m).is_file())
            if not matches:
                raise FileNotFoundError(f"{spec} is not a file or folder and matches no files as a glob pattern")
            paths.extend(matches)
    unique = list(dict.fromkeys(paths))
    single = len(specs) == 1 and Path(specs[0]).is_file()
    return ResolvedInputs(unique, single, [p for p in dict.fromkeys(hidden) if p not in set(unique)])


def _output_names(paths: Sequence[Path]) -> List[str]:
    names = [p.stem for p in paths]
    seen: dict = {}
    for p, n in zip(paths, names):
        seen.setdefault(n, []).append(str(p))
    clashes = {n: ps for n, ps in seen.items() if len(ps) > 1}
    if clashes:
        listed = "; ".join(f"{n}: {', '.join(ps)}" for n, ps in sorted(clashes.items()))
        raise ValueError(f"several inputs would write the same output name (outputs are named by file stem): "
                         f"{listed}. Predict them into separate output folders.")
    return names


def _outputs(out_dir: Path, name: str) -> Tuple[Path, Path]:
    return out_dir / "labels" / f"{name}.png", out_dir / "overlays" / f"{name}.png"


def outputs_exist(out_dir: Union[str, os.PathLike], name: str) -> bool:
    """Whether the label map and the overlay of output ``name`` are both in ``out_dir``: each is written
    atomically, so a file that exists is complete; only a job killed between the two renames leaves one alone."""
    return all(path.is_file() for path in _outputs(Path(out_dir), name))


def predict_paths(
        segmenter: Segmenter,
        inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
        out_dir: Union[str, os.PathLike],
        *,
        alpha: float = 0.5,
        legend: bool = True,
        progress: bool = True,
        palette_labels: bool = True,
        outline: Optional[Tuple[int, int, int]] = OUTLINE_COLOUR,
        skip_existing: bool = False,
        env: Optional[DistEnv] = None,
) -> PredictSummary:
    """Predict image files and write ``out_dir/labels/<stem>.png`` (class indices) and
    ``out_dir/overlays/<stem>.png`` (colour overlay, with a legend of the classes present).

    A single named file must be readable (else ValueError). From folders, globs or several files, an image file that
    cannot be read (or is above the segmenter's ``max_pixels``) is ``failed``, and files without an image extension
    that do not decode, and a folder's hidden files, are ``skipped``: one warning lists each group, with why.
    Every PNG is written atomically, the label and overlay of an image together, so a failure leaves only
    complete results; an output folder this call created and wrote nothing into is removed.

    Memory: each image is decoded once at full size (JPEGs are also decoded at a reduced DCT scale for the model
    first); the model's input is reduced from it a band of rows at a time, the label map is produced in bands and
    kept zlib-compressed, and both PNGs are written by a streaming encoder from bands of image and label rows.
    So the peak is the decoded image (as PIL holds it) plus an amount that does not grow with the image, plus the
    compressed label map (a few MiB for a large photo). Several views (multi-scale / flip) are merged band by
    band too. Overlays are 8-bit RGB with the class boundaries drawn in ``outline`` (None: none), as
    :func:`csap_zoo.visualize.render_overlay` draws them.

    Label maps are 8-bit palette ("P") PNGs carrying the dataset's colours, so that image viewers show them in
    colour; the stored values are still the class indices (``read_mask``, PIL and MMSegmentation read them back
    unchanged). Label maps with a label above 255 cannot be palette PNGs and are 16-bit grayscale;
    ``palette_labels=False`` writes 8-bit grayscale instead of a palette.

    ``skip_existing``: leave alone the inputs whose label map and overlay are both there already
    (:func:`outputs_exist`), so a rerun of a stopped job does only what is missing; the temporaries a killed
    process left in the output folders are removed first.

    ``env``: the process group of a torchrun job (``csap_zoo.distributed.init_distributed``). Every process
    resolves the same sorted list of inputs (checked), rank 0 decides which are still to do, and each process
    predicts its share of those (``shard_indices``), one image per round: each output is written once, by one
    process, byte-identical to a single-process run. Every process returns the summary of the whole job, and
    only rank 0 draws the progress bar and warns.
    """
    env = env or DistEnv()
    paths, single, hidden = resolve_inputs(inputs)
    out_dir = Path(out_dir)
    names = _output_names(paths)
    summary = PredictSummary(skipped=[(p, _HIDDEN) for p in hidden])
    created = not out_dir.exists()
    info = segmenter.dataset_info
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_same_inputs(env, paths)
    for folder in ("labels", "overlays"):
        clean_stale_temp(out_dir / folder)
    todo = list(range(len(paths)))
    if skip_existing:
        missing = [i for i in todo if not outputs_exist(out_dir, names[i])] if env.is_main else None
        todo = broadcast_object(env, missing)  # every process takes rank 0's list, so the shares agree
        pending = set(todo)
        summary.existing = [(paths[i], *_outputs(out_dir, names[i])) for i in range(len(paths)) if i not in pending]
    bar = None
    if progress and env.is_main:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(paths), initial=len(summary.existing), unit="img", desc="predict")
        except ImportError:  # pragma: no cover - tqdm ships with huggingface_hub
            bar = None

    def predict_one(position: int) -> Tuple[str, Path, Any]:
        path, name = paths[todo[position]], names[todo[position]]
        try:
            rows, labels = _predict_file(segmenter, path)
        except (ValueError, OSError) as err:
            if single:
                raise  # a clear ValueError before anything is written
            cause = err.__cause__ or err
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                return "failed", path, f"unreadable image ({type(cause).__name__}: {cause})"
            return "skipped", path, f"not an image file ({type(cause).__name__}: {cause})"
        label_path, overlay_path = _outputs(out_dir, name)
        overlay_size, overlay_bands = _overlay_bands(rows, labels, info, alpha=alpha, with_legend=legend,
                                                     outline=outline)
        mode = labels.png_mode(palette=palette_labels)
        plte = labels.palette(info) if mode == "P" else None
        atomic_write_all([  # the label map and its overlay appear together or not at all
            (label_path, lambda tmp: write_png(tmp, labels.bands(), labels.size, mode, palette=plte)),
            (overlay_path, lambda tmp: write_png(tmp, overlay_bands, overlay_size, "RGB")),
        ])
        return "written", path, (label_path, overlay_path)

    def record(results: Sequence[Tuple[int, Tuple[str, Path, Any]]]) -> None:
        for _, (kind, path, detail) in results:
            if kind == "written":
                summary.written.append((path, *detail))
            else:
                (summary.failed if kind == "failed" else summary.skipped).append((path, detail))
        if bar is not None:
            bar.update(len(results))

    try:
        run_in_rounds(env, len(todo), predict_one, describe=lambda i: str(paths[todo[i]]), after_round=record)
    finally:
        if bar is not None:
            bar.close()
        if created and not summary.written and env.is_main:
            _remove_empty_tree(out_dir)
    if not env.is_main:
        return summary
    if summary.skipped:
        listed = "\n".join(f"  {p}: {why}" for p, why in summary.skipped)
        warnings.warn(f"skipped {len(summary.skipped)} file(s) that are not images or are hidden:\n{listed}",
                      stacklevel=2)
    if summary.failed:
        listed = "\n".join(f"  {p}: {why}" for p, why in summary.failed)
        warnings.warn(f"failed on {len(summary.failed)} unreadable image file(s):\n{listed}", stacklevel=2)
    return summary


def _check_same_inputs(env: DistEnv, paths: Sequence[Path]) -> None:
    """In a distributed job, refuse inputs that the processes resolve differently (the shares would overlap or
    leave gaps): a folder or glob must name the same files on every node."""
    if not env.distributed:
        return
    listing = "\n".join(str(p) for p in paths)
    digests = gather_objects(env, (len(paths), zlib.crc32(listing.encode())))
    if len(set(digests)) > 1:
        seen = ", ".join(f"rank {r}: {n} file(s)" for r, (n, _) in enumerate(digests))
        raise DistributedError(f"the processes see different input files ({seen}); the inputs must name the same "
                               f"files on every node (a shared file system, the same sorted folder)", shared=True)


class _LabelStore:
    """A label map kept as zlib-compressed bands of ``step`` rows (label maps compress well), with the set of
    classes present and the largest label."""

    def __init__(self, size: Pair) -> None:
        self.size = size
        self.step = max(1, _WRITE_BAND_PIXELS // max(size[1], 1))
        self.dtype: Optional[np.dtype] = None
        self.max_label = 0
        self._chunks: List[Tuple[int, bytes]] = []
        self._seen = np.zeros(0, dtype=bool)
        self._pending: List[np.ndarray] = []
        self._pending_rows = 0
        self.rows = 0

    def add(self, band: np.ndarray) -> None:
        self.dtype = band.dtype
        self._pending.append(band)
        self._pending_rows += band.shape[0]
        while self._pending_rows >= self.step:
            self._emit(self.step)

    def finish(self) -> None:
        if self._pending_rows:
            self._emit(self._pending_rows)
        if self.rows != self.size[0]:
            raise RuntimeError(f"label bands cover {self.rows} rows of {self.size[0]}")

    def _emit(self, rows: int) -> None:
        joined = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending, axis=0)
        part, rest = joined[:rows], joined[rows:]
        self._pending, self._pending_rows = ([rest] if len(rest) else []), len(rest)
        counts = np.bincount(part.ravel().astype(np.int64, copy=False)) > 0
        if len(counts) > len(self._seen):
            self._seen = np.pad(self._seen, (0, len(counts) - len(self._seen)))
        self._seen[:len(counts)] |= counts
        self.max_label = max(self.max_label, len(counts) - 1)
        self._chunks.append((part.shape[0], zlib.compress(np.ascontiguousarray(part).tobytes(), 1)))
        self.rows += part.shape[0]

    def classes(self, ignore_index: int) -> List[int]:
        return [int(c) for c in np.flatnonzero(self._seen) if c != ignore_index]

    def png_mode(self, palette: bool = False) -> str:
        """The mode ``save_png`` chooses for these labels (``csap_zoo.data.png.label_png_mode``)."""
        return label_png_mode(0, self.max_label, palette)

    def palette(self, info: DatasetInfo) -> bytes:
        """The PLTE data ``save_png(labels, path, palette=info.palette)`` writes for this label map."""
        return label_palette(info.palette, min(256, max(len(info.palette), self.max_label + 1)))

    def bands(self) -> Iterator[np.ndarray]:
        """The label map again, as consecutive (rows, W) bands of ``step`` rows."""
        assert self.dtype is not None
        for rows, data in self._chunks:
            yield np.frombuffer(zlib.decompress(data), dtype=self.dtype).reshape(rows, self.size[1])


def _predict_file(segmenter: Segmenter, path: Path) -> Tuple[ImageRows, _LabelStore]:
    """Decode ``path`` for the overlay (once, full size) and predict its label map into a compressed store.

    JPEGs are first decoded at a reduced DCT scale for the model (as :meth:`Segmenter.predict` does), then at full
    size; other files are decoded once and the model's input is reduced from that image."""
    max_pixels = segmenter.config.max_pixels
    rows: Optional[ImageRows] = None
    if image_format(path, max_pixels) != "JPEG":
        rows = open_rows(path, max_pixels)
    with torch.inference_mode():
        raw, size = segmenter.decode_raw(path if rows is None else rows.image, segmenter.decode_target)
        labels = _LabelStore(size)
        for band in segmenter.label_bands(raw, size):
            labels.add(band)
        del raw
    labels.finish()
    if rows is None:
        rows = open_rows(path, max_pixels)
    if rows.size != size:  # pragma: no cover - both decodes read the same header
        raise ValueError(f"{path}: decoded as {rows.size} for the overlay but {size} for the model")
    return rows, labels


def _overlay_bands(rows: ImageRows, labels: _LabelStore, info: DatasetInfo, alpha: float, with_legend: bool,
                   outline: Optional[Tuple[int, int, int]] = None, max_legend_rows: int = 20
                   ) -> Tuple[Pair, Iterator[np.ndarray]]:
    """The size of ``visualize.render_overlay``'s picture and its rows, band by band: the image blended with
    its label colours (class boundaries in ``outline``, found with the label rows around each band), and on the
    right a legend of the classes present, as tall as the image (or up to ``max_legend_rows`` entries tall for short
    images, the overlay padded with white below). Only the top part of the legend that holds entries is drawn;
    below it the panel is white."""
    height, width = labels.size
    panel: Optional[np.ndarray] = None
    total = height
    if with_legend:
        classes = labels.classes(info.ignore_index)
        natural = draw_legend(classes[:max_legend_rows], info).shape[0]
        total = max(height, natural)
        panel = draw_legend(classes, info, height=total, rows=legend_extent(classes, info, height=total))
    out_width = width + (0 if panel is None else panel.shape[1])

    def bands() -> Iterator[np.ndarray]:
        y = 0
        above: Optional[np.ndarray] = None
        parts = labels.bands()
        part = next(parts, None)
        while part is not None:
            after = next(parts, None)  # its first row decides the boundaries of this band's last row
            edges = None
            if outline is not None:
                edges = boundaries(part, info.ignore_index, above=above, below=after)
            blended = overlay(rows.rows(y, y + part.shape[0]), part, info, alpha=alpha, ignore_index=info.ignore_index,
                              outline=outline, edges=edges)
            yield blended if panel is None else _with_panel(blended, panel, y, out_width)
            y += part.shape[0]
            above, part = part[-1:], after
        for start in range(height, total, labels.step):  # below a short image: white, and the legend
            blank = np.full((min(labels.step, total - start), width, 3), 255, dtype=np.uint8)
            yield _with_panel(blank, panel, start, out_width)

    return (total, out_width), bands()


def _with_panel(left: np.ndarray, panel: Optional[np.ndarray], top: int, out_width: int) -> np.ndarray:
    """Rows [top, top + len(left)) of the overlay with the legend panel (drawn rows, then white) on the right."""
    out = np.full((left.shape[0], out_width, 3), 255, dtype=np.uint8)
    out[:, :left.shape[1]] = left
    if panel is not None and top < panel.shape[0]:
        part = panel[top:top + left.shape[0]]
        out[:part.shape[0], left.shape[1]:] = part
    return out


def _remove_empty_tree(root: Path) -> None:
    if not root.is_dir():
        return
    for sub in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir():
            try:
                sub.rmdir()
            except OSError:
                return
    try:
        root.rmdir()
    except OSError:
        pass
