"""Every command and code block of README.md and of the documentation pages (docs/**/*.md) runs as written.

The fenced ```bash and ```python blocks are read from the files themselves, so a changed line changes the test. Each
bash line is one case and each python block is one case, with an id naming its file and line (``README.md:44
csap-zoo predict ...``, ``docs/guides/inference.md:30 python: ...``). A ```text block is not code (diagrams, file
trees) and is not run; a block of any other kind fails the test. The cases run in a temporary working folder
prepared so that the pages' placeholder inputs exist (see :func:`workspace`): ``photo.jpg``, ``photos/``, ``a.jpg``
... ``d.jpg``, a folder dataset ``my_data`` (train/val layout and ``classes.txt``) and a ``classes.txt`` beside it,
``run/final`` (a copy of the bundled demo folder), ``my.yaml`` / ``runs/my.yaml`` (the shapes-demo preset shrunk to
one block per backbone stage and two iterations on 64x64 images, so the pages' train commands finish in seconds),
``ckpt.safetensors`` (a real state dict) and links to the repository's ``csap_zoo/`` and ``benchmarks/`` (for
relative paths such as ``csap_zoo/assets/demo/example.png``), and ``<this repo>`` (a link to the repository: the
pages' ``torch.hub.load("<this repo>", ..., source="local")`` placeholder).

How a line runs:
- ``csap-zoo ARGS``: ``csap_zoo.cli.main(ARGS)`` in this process (the console script's entry point, checked against
  pyproject.toml), so that the network guard of tests/conftest.py covers it.
- ``python SCRIPT ARGS``: the script run as ``__main__`` in this process (same reason).
- ``torchrun --nproc_per_node=8 -m csap_zoo.cli ...``: eight processes cannot run here. torchrun's own parser
  reads the line (so its options are valid), and the module's argument list runs through ``csap_zoo.cli.main`` in
  one process, which is what each rank runs.
- ``pip install`` and ``pytest`` are not run: they are what CI runs (the install made this environment, and the
  test suite is the thing running this test).
- ``[--opt value]``: a bracketed optional part runs both without and with the options.
- A python block runs statement by statement in one namespace, after :data:`PRELUDE` (placeholder objects the
  pages use without defining them).

Lines whose weights or data cannot exist here (a checkpoint that needs a download, ``/data/ade``) must fail with the
expected clear error: on the command line exit status 1 or 2 and one ``error: ...`` line on stderr (no traceback);
in Python the package's own exception class (a :class:`csap_zoo.CsapZooError`; one exception noted at
:data:`STATEMENT_ERRORS`) with a message saying what to do. A line that needs the network must reach the test
suite's no-network guard and come out as that clear error (the guard's refusal reaches the code as the error a
machine without network raises: see :func:`_unreachable_network`).
"""
from __future__ import annotations

import ast
import errno
import json
import re
import runpy
import shlex
import shutil
import socket
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
import torch
from PIL import Image

import _servers
import csap_zoo
from csap_zoo.cli import main as cli_main
from csap_zoo.data.metadata import SHAPES_CLASSES, SHAPES_PALETTE, write_classes_file
from csap_zoo.data.synthetic import generate_shapes_dataset, render_shapes_sample

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# The pages whose blocks run: the README, then every page of the documentation site (mkdocs.yml's docs_dir)
DOC_FILES = [README, *sorted((REPO / "docs").rglob("*.md"))]

# --------------------------------------------------------------------------------------------------------------------
# Reading the pages
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeBlock:
    """A fenced block: its page (relative to the repository), its language tag, the line number of its first code
    line, and its lines."""

    path: str
    lang: str
    first_line: int
    lines: Tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def page_blocks(text: str, path: str) -> List[CodeBlock]:
    """Every fenced block of ``text``, the page ``path`` (fences at the start of a line), in order."""
    blocks: List[CodeBlock] = []
    lang: Optional[str] = None
    first, lines = 0, []
    for number, line in enumerate(text.splitlines(), 1):
        if lang is None:
            match = re.match(r"^```(\S*)\s*$", line)
            if match:
                lang, first, lines = match.group(1), number + 1, []
        elif line.strip() == "```":
            blocks.append(CodeBlock(path, lang, first, tuple(lines)))
            lang = None
        else:
            lines.append(line)
    assert lang is None, f"{path} has an unclosed code fence"
    return blocks


@dataclass(frozen=True)
class Command:
    """One bash line: its page and line number, the line without its trailing comment, and one variant's argv."""

    path: str
    line: int
    text: str
    argv: Tuple[str, ...]
    variant: str = ""


def _expand_optional(tokens: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """``a [--x 1] [--y]`` -> ``[("without options", [a]), ("with --x 1 --y", [a, --x, 1, --y])]``; a line
    without brackets -> ``[("", tokens)]``."""
    plain: List[str] = []
    optional: List[List[str]] = []
    group: Optional[List[str]] = None
    for token in tokens:
        if group is None and token.startswith("["):
            group, token = [], token[1:]
        if group is not None:
            closed = token.endswith("]")
            group.append(token[:-1] if closed else token)
            if closed:
                optional.append(group)
                group = None
        else:
            plain.append(token)
    assert group is None, f"unclosed [ in {' '.join(tokens)}"
    if not optional:
        return [("", plain)]
    # the optional parts sit at the end of the pages' lines, so appending them keeps the order as written
    return [("without options", plain), ("with " + " ".join(" ".join(g) for g in optional),
                                         plain + [t for g in optional for t in g])]


def page_commands(blocks: Sequence[CodeBlock]) -> List[Command]:
    """Every command line of the bash blocks (one per variant of its optional parts)."""
    commands = []
    for block in blocks:
        if block.lang != "bash":
            continue
        for offset, raw in enumerate(block.lines):
            tokens = shlex.split(raw, comments=True)
            if not tokens:
                continue
            text = raw.split(" #", 1)[0].strip()
            for variant, argv in _expand_optional(tokens):
                commands.append(Command(block.path, block.first_line + offset, text, tuple(argv), variant))
    return commands


BLOCKS = [block for page in DOC_FILES
          for block in page_blocks(page.read_text(encoding="utf-8"), page.relative_to(REPO).as_posix())]
COMMANDS = page_commands(BLOCKS)
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang == "python"]


def _case_id(path: str, line: int, text: str, variant: str = "") -> str:
    words = re.sub(r"\s+", " ", text).strip()
    words = words if len(words) <= 70 else words[:67] + "..."
    return f"{path}:{line} {words}" + (f" [{variant}]" if variant else "")


# --------------------------------------------------------------------------------------------------------------------
# The prepared working folder
# --------------------------------------------------------------------------------------------------------------------

# the shapes-demo preset shrunk so that a train command of the pages finishes in seconds: CSAP-T with one MSCAN block
# per stage, two iterations on two 64x64 images, one 64x64 validation image, a checkpoint every iteration (so a run
# killed after its first iteration can be resumed), no TensorBoard, no progress bar
TINY_TRAIN_CONFIG = """\
preset: shapes-demo
data_root: my_data
out_dir: runs/my
backbone_args: {depths: [1, 1, 1, 1]}
max_iters: 2
batch_size: 2
crop_size: [64, 64]
scale: [64, 64]
test_size: [64, 64]
warmup_iters: 0
eval_interval: 0
checkpoint_interval: 1
log_interval: 1
num_workers: 0
progress: false
tensorboard: false
"""


def _jpeg(path: Path, seed: int, size: Tuple[int, int] = (96, 128)) -> Path:
    image, _ = render_shapes_sample(seed, size)
    Image.fromarray(image).save(path, quality=90)
    return path


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder holding the pages' placeholder inputs, made the current directory, with every cache
    (csap-zoo's, torch.hub's, huggingface_hub's) and the Hub token isolated under it and the network paths left
    on (no offline switch), so that the lines that need a download reach the no-network guard."""
    root = tmp_path / "work"
    root.mkdir()
    for name in ("csap_zoo", "benchmarks"):
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    (root / "<this repo>").symlink_to(REPO, target_is_directory=True)
    _jpeg(root / "photo.jpg", 1)
    (root / "photos").mkdir()
    _jpeg(root / "photos" / "street.jpg", 2)
    Image.fromarray(render_shapes_sample(3, (80, 72))[0]).save(root / "photos" / "room.png")
    for i, name in enumerate("abcd"):
        _jpeg(root / f"{name}.jpg", 10 + i, (64, 64))
    generate_shapes_dataset(root / "my_data", num_train=2, num_val=1, size=(64, 64), seed=0)
    write_classes_file(root / "classes.txt", SHAPES_CLASSES, SHAPES_PALETTE)
    (root / "run").mkdir()
    shutil.copytree(REPO / "csap_zoo" / "assets" / "demo", root / "run" / "final")
    (root / "my.yaml").write_text(TINY_TRAIN_CONFIG, encoding="utf-8")
    (root / "runs").mkdir()
    (root / "runs" / "my.yaml").write_text(TINY_TRAIN_CONFIG, encoding="utf-8")

    for var in ("CSAP_ZOO_OFFLINE", "HF_HUB_OFFLINE", "CSAP_ZOO_PROGRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CSAP_ZOO_CACHE", str(tmp_path / "csap_cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    # huggingface_hub with a private cache and no token, still pointed at the real Hub (so a request is a network
    # attempt the guard blocks); the helper only reads the endpoint from its server argument
    _servers.point_hf_hub_at(types.SimpleNamespace(endpoint="https://huggingface.co"), tmp_path / "hf_home",
                             monkeypatch)
    _unreachable_network(monkeypatch)
    monkeypatch.chdir(root)
    yield root
    _servers.reset_hf_session()


def _unreachable_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a blocked connection look like it does on a machine without network, on top of the suite's guard.

    The guard still sees (and records) every attempt, but what the code under test then gets is the error the
    operating system raises there (``gaierror`` for a name lookup, ``ENETUNREACH`` for a connection) instead of the
    guard's own exception, which is deliberately no ``OSError`` so that no fallback can swallow it. The pages'
    promise is about the real situation: without network, a clear error. A test that reached the network without
    expecting to still fails at teardown (the guard's record), and the cases below that expect it check the record.
    """
    def translated(function: Callable, lookup: bool) -> Callable:
        def call(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except RuntimeError as err:
                if type(err).__name__ != "NetworkAccessBlocked":
                    raise
                if lookup:
                    raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution") from None
                raise OSError(errno.ENETUNREACH, "Network is unreachable") from None
        return call

    for owner, name, lookup in ((socket.socket, "connect", False), (socket.socket, "connect_ex", False),
                                (socket, "create_connection", False), (socket, "getaddrinfo", True)):
        monkeypatch.setattr(owner, name, translated(getattr(owner, name), lookup))


def write_checkpoint(path: Path) -> Path:
    """``ckpt.safetensors``: the state dict of a real ``csap_tiny.ade20k`` model."""
    from safetensors.torch import save_file

    model = csap_zoo.create_model("csap_tiny.ade20k")
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return path


# --------------------------------------------------------------------------------------------------------------------
# Running a line and checking a clear error
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    rc: int
    out: str
    err: str


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture) -> Outcome:
    """``csap-zoo ARGV`` through the console script's function, in this process."""
    capsys.readouterr()
    try:
        rc = cli_main(list(argv))
    except SystemExit as exit_:  # argparse
        rc = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return Outcome(rc, out, err)


def run_script(argv: Sequence[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Outcome:
    """``python SCRIPT ARGS`` as ``__main__`` in this process (sys.argv and sys.path[0] as python sets them)."""
    script = Path(argv[0])
    monkeypatch.setattr(sys, "argv", list(argv))
    monkeypatch.syspath_prepend(str(script.resolve().parent))
    capsys.readouterr()
    rc = 0
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capsys.readouterr()
    return Outcome(rc, out, err)


def assert_clear_cli_error(outcome: Outcome, pattern: str, codes: Tuple[int, ...] = (1, 2)) -> None:
    """Exit status 1 or 2, no traceback, and exactly one ``error: ...`` line on stderr, matching ``pattern``."""
    assert outcome.rc in codes, f"exit status {outcome.rc}\nstdout:\n{outcome.out}\nstderr:\n{outcome.err}"
    assert "Traceback" not in outcome.err, outcome.err
    errors = [line for line in outcome.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected one 'error:' line on stderr, got:\n{outcome.err}"
    others = [line for line in outcome.err.splitlines() if line.strip() and not line.startswith("warning:")
              and line not in errors]
    assert not others, f"stderr holds more than the error line:\n{outcome.err}"
    assert re.search(pattern, errors[0]), f"{errors[0]!r} does not match {pattern!r}"


def assert_guard_was_hit(guard) -> None:
    """The line tried the network and the no-network guard stopped it (then forget it: it was expected)."""
    assert guard.attempts, "expected this line to try the network (and be stopped by the test suite's guard)"
    assert all(kind in ("connect", "getaddrinfo") for kind, _ in guard.attempts)
    guard.clear()


# --------------------------------------------------------------------------------------------------------------------
# What each bash line must do
# --------------------------------------------------------------------------------------------------------------------

# messages of the clear errors: a checkpoint that must be downloaded (names the source host or the way to fill the
# cache by hand); a dataset folder that does not exist
DOWNLOAD_ERROR = r"download\.openmmlab\.com|csap-zoo download"
MISSING_DATA = r"/data/(ade|cityscapes)"


def _labels_written(*names: str) -> Callable[[Path, Outcome], None]:
    def check(root: Path, outcome: Outcome) -> None:
        for name in names:
            for kind in ("labels", "overlays"):
                path = root / "out" / kind / f"{name}.png"
                assert path.is_file(), f"{path} was not written\n{outcome.err}"
                Image.open(path).verify()
    return check


def _evaluated(root: Path, outcome: Outcome) -> None:
    assert re.search(r"mIoU", outcome.out), outcome.out
    assert "background" in outcome.out  # the per-class table names the classes of classes.txt


def _trained(iterations: int) -> Callable[[Path, Outcome], None]:
    def check(root: Path, outcome: Outcome) -> None:
        assert f"trained {iterations} iterations" in outcome.out, outcome.out
        assert (root / "runs" / "my" / "final" / "model.safetensors").is_file()
    return check


def _flops_table(root: Path, outcome: Outcome) -> None:
    assert "| csap_tiny | 512x512 | 150 |" in outcome.out, outcome.out
    assert "| segnext_large | 1024x1024 | 19 |" in outcome.out


@dataclass(frozen=True)
class Expect:
    """What a bash line does: ``check`` after exit status 0, or the clear ``error`` it must end with (``network``:
    after reaching the no-network guard); ``skip``: why it is not run here; ``slow``: mark it slow."""

    check: Optional[Callable[[Path, Outcome], None]] = None
    error: Optional[str] = None
    network: bool = False
    skip: Optional[str] = None
    slow: bool = False
    setup: Optional[Callable[[Path, pytest.CaptureFixture], None]] = None


def _killed_run(root: Path, capsys: pytest.CaptureFixture) -> None:
    """A run of my.yaml killed after its first iteration's checkpoint (an exception from a training hook at
    iteration 2, before that iteration's checkpoint), for ``--resume auto`` to continue."""

    class Killed(Exception):
        pass

    def kill(trainer, iteration: int, loss: float) -> None:
        if iteration == 2:
            raise Killed

    with pytest.raises(Killed):
        csap_zoo.train("my.yaml", hooks=[kill])
    assert [p.name for p in (root / "runs" / "my" / "checkpoints").glob("iter_*.pt")] == ["iter_00000001.pt"]
    assert not (root / "runs" / "my" / "final").exists()
    capsys.readouterr()


def _resumed(root: Path, outcome: Outcome) -> None:
    _trained(2)(root, outcome)
    events = [json.loads(line) for line in (root / "runs" / "my" / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resume" for e in events), events
    assert [e["iter"] for e in events if e.get("event") == "train"] == [1, 2]


HF_HUB_ERROR = r"the Hub dataset 'scene_parse_150' \(the Hub is unreachable"


def _hf_dataset(root: Path, capsys: pytest.CaptureFixture) -> None:
    """``my_hf``: the workspace's shapes folder dataset saved as a DatasetDict (splits train and validation)."""
    from _helpers import save_folder_dataset_as_hf

    save_folder_dataset_as_hf(root / "my_data", root / "my_hf")
    capsys.readouterr()


NOT_RUN = ("not run inside the test suite: it is what CI runs (the install made this environment, and the tests "
           "are what is running now)")

EXPECTED: Dict[str, Expect] = {
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]"': Expect(skip=NOT_RUN),
    "pytest -n auto --cov": Expect(skip=NOT_RUN),
    "csap-zoo predict csap_zoo/assets/demo/example.png --model csap_tiny.shapes --pretrained --out out/":
        Expect(check=_labels_written("example")),
    "python benchmarks/flops.py": Expect(check=_flops_table, slow=True),
    "csap-zoo predict photos/ --model segnext_tiny.ade20k --pretrained --out out/ [--mode slide] [--tta]":
        Expect(error=DOWNLOAD_ERROR, network=True),
    # the dataset opens before the weights are fetched: a missing /data/ade fails without touching the network.
    "csap-zoo eval --model segnext_tiny.ade20k --pretrained --data /data/ade --dataset ade20k":
        Expect(error=MISSING_DATA),
    "csap-zoo eval --model csap_tiny --checkpoint run/final --data my_data --dataset folder --classes classes.txt":
        Expect(check=_evaluated),
    "csap-zoo predict photos/ --model run/final --out out/": Expect(check=_labels_written("street", "room")),
    "csap-zoo train --preset ade20k --data-root /data/ade --out runs/ade": Expect(error=MISSING_DATA),
    "csap-zoo train --config my.yaml --set lr=1e-4 --set crop_size=[384,384]": Expect(check=_trained(2)),
    "torchrun --nproc_per_node=8 -m csap_zoo.cli train --preset cityscapes --data-root /data/cityscapes":
        Expect(error=MISSING_DATA),
    "csap-zoo train --config my.yaml --resume auto": Expect(check=_resumed, setup=_killed_run),
    # docs/guides/distributed.md: what each rank runs, in this one process
    "torchrun --nproc_per_node=8 -m csap_zoo.cli eval --model segnext_tiny.ade20k --pretrained --data /data/ade "
    "--dataset ade20k --json ade20k.json": Expect(error=MISSING_DATA),
    'pip install "csap-zoo[hf-datasets]"': Expect(skip=NOT_RUN),
    # docs/guides/hf-datasets.md: the Hub's copy of ADE20K is opened before any weights, and needs the network
    "csap-zoo eval --model segnext_tiny.ade20k --pretrained --dataset hf --data scene_parse_150 "
    "--reduce-zero-label": Expect(error=HF_HUB_ERROR, network=True),
    "csap-zoo train --preset ade20k --dataset hf --data scene_parse_150 --set dataset_name=ade20k "
    "--set reduce_zero_label=true --out runs/sp150": Expect(error=HF_HUB_ERROR, network=True),
    "csap-zoo eval --model csap_tiny --checkpoint run/final --dataset hf --data my_hf":
        Expect(check=_evaluated, setup=_hf_dataset),
    "csap-zoo train --config my.yaml --dataset hf --data my_hf --set classes_file=classes.txt --out runs/my":
        Expect(check=_trained(2), setup=_hf_dataset),
}


def _command_params() -> List:
    params = []
    for command in COMMANDS:
        expect = EXPECTED.get(command.text)
        marks = []
        if expect is not None and expect.skip:
            marks.append(pytest.mark.skip(reason=expect.skip))
        if expect is not None and expect.slow:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(command, id=_case_id(command.path, command.line, command.text, command.variant),
                                   marks=marks))
    return params


def test_console_script_is_cli_main() -> None:
    """``csap-zoo`` in the pages is ``csap_zoo.cli:main``, which the cases below call in-process."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["csap-zoo"] == "csap_zoo.cli:main"


@pytest.mark.parametrize("command", _command_params())
def test_doc_command(command: Command, workspace: Path, capsys: pytest.CaptureFixture,
                        monkeypatch: pytest.MonkeyPatch, no_network) -> None:
    expect = EXPECTED.get(command.text)
    assert expect is not None, (f"{command.path}:{command.line} is a new command: say in EXPECTED what it must do "
                                f"({command.text!r})")
    if expect.setup is not None:
        expect.setup(workspace, capsys)
    argv = list(command.argv)
    if argv[0] == "csap-zoo":
        outcome = run_cli(argv[1:], capsys)
    elif argv[0] == "python":
        outcome = run_script(argv[1:], capsys, monkeypatch)
    elif argv[0] == "torchrun":
        # Eight DDP processes cannot run on this machine: torchrun's own parser reads its part of the line, and the
        # module's arguments run through csap_zoo.cli.main in this one process, as each rank would run them.
        from torch.distributed.run import get_args_parser

        launch = get_args_parser().parse_args(argv[1:])
        assert launch.nproc_per_node == "8" and launch.module and launch.training_script == "csap_zoo.cli"
        assert (REPO / "csap_zoo/cli/__main__.py").read_text(encoding="utf-8").rstrip().endswith("sys.exit(main())")
        outcome = run_cli(launch.training_script_args, capsys)
    else:
        raise AssertionError(f"{command.path}:{command.line}: no way to run {argv[0]!r} in this test")
    if expect.error is not None:
        assert_clear_cli_error(outcome, expect.error)
        if expect.network:
            assert_guard_was_hit(no_network)
    else:
        assert outcome.rc == 0, f"exit status {outcome.rc}\nstdout:\n{outcome.out}\nstderr:\n{outcome.err}"
        assert "Traceback" not in outcome.err
        expect.check(workspace, outcome)


# --------------------------------------------------------------------------------------------------------------------
# Python blocks
# --------------------------------------------------------------------------------------------------------------------

# Placeholder objects the pages' blocks use without defining them: ``model`` (any segmentor: the bundled trained
# demo, which loads offline; a case may give another, see :class:`PythonCase`) and ``image`` (an RGB image as a
# numpy array). Blocks that define ``model`` themselves replace it.
PRELUDE = """\
import numpy as np, torch, csap_zoo
from PIL import Image
image = np.asarray(Image.open("photo.jpg").convert("RGB"))
"""
DEMO_MODEL = """\
model = csap_zoo.create_model("csap_tiny.shapes", pretrained=True).eval()
"""
# The bundled demo's CSAP-T cut to one MSCAN block per stage (its stems, first blocks, norms and CSAP head, with the
# demo's trained weights: every weight of the shallow model comes from the demo): the same kinds of layers and the
# same head, a third of the depth, so that the export block's ONNX export (torch.export tracing, whose cost grows with
# the number of graph nodes) and its onnxruntime checks at four sizes cost a fraction of the full model's.
SHALLOW_DEMO_MODEL = """\
model = csap_zoo.create_model("csap_tiny", num_classes=6, backbone_args={"depths": (1, 1, 1, 1)})
_loaded = model.load_state_dict(csap_zoo.create_model("csap_tiny.shapes", pretrained=True).state_dict(), strict=False)
assert not _loaded.missing_keys, _loaded.missing_keys
model = model.eval()
"""


@dataclass(frozen=True)
class ExpectedError:
    """A statement of a page that must raise ``exc`` (a csap-zoo error class) with a message matching ``match``;
    ``network``: after reaching the no-network guard; ``stand_in``: run afterwards in its place, so that the
    block's next lines have the object the statement would have made had its weights been downloadable."""

    exc: type
    match: str
    network: bool = False
    stand_in: Optional[str] = None


STATEMENT_ERRORS: Dict[str, ExpectedError] = {
    'seg = csap_zoo.Segmenter(csap_zoo.create_model("segnext_tiny.ade20k", pretrained=True), resize=(2048, 512))':
        ExpectedError(csap_zoo.CheckpointError, DOWNLOAD_ERROR, network=True,
                      stand_in="seg = csap_zoo.Segmenter(model, resize=(2048, 512))"),
    'result = csap_zoo.train("ade20k", data_root="/data/ADEChallengeData2016", out_dir="runs/ade")':
        # FileNotFoundError (the builtin, not a CsapZooError) is what the readers raise for a missing folder
        ExpectedError(FileNotFoundError, r"/data/ADEChallengeData2016/images/training"),
    'csap_zoo.create_model("segnext_tiny.ade20k", pretrained=True)':
        ExpectedError(csap_zoo.CheckpointError, DOWNLOAD_ERROR, network=True),
    'csap_zoo.create_model("csap_tiny", pretrained=True, num_classes=5)':
        ExpectedError(csap_zoo.CheckpointError, DOWNLOAD_ERROR, network=True),
    'csap_zoo.create_model("hf-hub:org/repo")':
        ExpectedError(csap_zoo.CsapZooError, r"org/repo", network=True),
    'model.push_to_hub("org/repo")':
        # the upload is attempted (and blocked); the error then says that no token is set
        ExpectedError(csap_zoo.CsapZooError, r"no Hugging Face token", network=True),
    'torch.hub.load("<this repo>", "csap_tiny_ade20k", source="local", pretrained=True)':
        ExpectedError(csap_zoo.CheckpointUnavailableError, r"csap_tiny\.ade20k"),
}


def _check_usage(ns: dict, root: Path) -> None:
    assert ns["logits"].shape == (1, 150, 512, 512)  # the last assignment (forward_with_attention)
    assert ns["raw"].shape == (1, 150, 64, 64)
    assert ns["maps"] and all(m.shape[0] == 1 for m in ns["maps"])


def _check_segment(ns: dict, root: Path) -> None:
    h, w = Image.open(root / "photo.jpg").size[::-1]
    assert ns["labels"].shape == (h, w)
    assert ns["probs"].shape[-2:] == (h, w)


def _check_train(ns: dict, root: Path) -> None:
    assert (root / "runs" / "my" / "final" / "model.safetensors").is_file()
    assert ns["result"].final_dir is not None


def _check_hub(ns: dict, root: Path) -> None:
    assert (root / "out" / "config.json").is_file() and (root / "out" / "model.safetensors").is_file()
    assert "license: mit" in (root / "out" / "README.md").read_text(encoding="utf-8")


def _check_analysis(ns: dict, root: Path) -> None:
    assert (root / "sim.json").is_file() and (root / "sim.png").is_file()


def _check_export(ns: dict, root: Path) -> None:
    """The exported file (already checked by ``export_onnx`` against eager PyTorch at 512x512 and at sizes not
    divisible by 32, atol 1e-4): opset >= 17, symbolic batch / height / width, a batch of 3 at yet another size
    equal to eager, and no temporary left beside it."""
    import onnx
    import onnxruntime

    path = root / "csap_tiny.onnx"
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # batch, C, H, W
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 77, 150)  # batch 3, not divisible by 32, not an export or check size
    with torch.no_grad():
        assert abs(torch.from_numpy(session.run(None, {"image": x.numpy()})[0]) - ns["model"](x)).max() < 1e-4
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp.onnx")]


def _check_options(ns: dict, root: Path) -> None:
    """The block is bare ``create_model`` / ``list_models`` calls: that each one ran without an error is the check."""


def _check_torch_hub(ns: dict, root: Path) -> None:
    model = ns["model"]
    from csap_zoo.models.segmentor import Segmentor

    assert isinstance(model, Segmentor) and not model.training
    assert list(model.data_config.class_names) == list(SHAPES_CLASSES)


def _check_precision(ns: dict, root: Path) -> None:
    """The block's last Segmenter is int8 in OpenVINO (whatever CSAP_ZOO_BACKEND says: only OpenVINO runs int8),
    calibrated on the four images, and its labels have the photo's size."""
    seg = ns["seg"]
    assert seg.precision == "int8" and seg.backend == "openvino" and seg.network.quantizations == 1
    assert ns["labels"].shape == Image.open(root / "photo.jpg").size[::-1]


def _check_asserts(ns: dict, root: Path) -> None:
    """The block's own ``assert`` statements are the check."""


@dataclass(frozen=True)
class PythonCase:
    """What a python block is checked for after it ran (its first code line names it); ``slow``: mark it slow;
    ``model``: the source that defines the placeholder ``model`` before the block runs."""

    check: Callable[[dict, Path], None]
    slow: bool = False
    model: str = DEMO_MODEL


PYTHON_CASES: Dict[str, PythonCase] = {
    "import torch, csap_zoo": PythonCase(_check_usage),
    'seg = csap_zoo.Segmenter(csap_zoo.create_model("segnext_tiny.ade20k", pretrained=True), resize=(2048, 512))':
        PythonCase(_check_segment),
    "import csap_zoo": PythonCase(_check_train),
    'csap_zoo.create_model("segnext_tiny.ade20k", pretrained=True)': PythonCase(_check_hub),
    "from csap_zoo.tools.analysis import attention_similarity, format_similarity_table, plot_similarity, save_similarity_json":
        PythonCase(_check_analysis),
    "from csap_zoo.tools.export import export_onnx, export_program, export_torchscript, compile_model":
        PythonCase(_check_export, slow=True, model=SHALLOW_DEMO_MODEL),
    'csap_zoo.create_model("csap_tiny", num_classes=5, in_chans=4)': PythonCase(_check_options),
    'model = torch.hub.load("<this repo>", "csap_tiny_shapes", source="local", pretrained=True).eval()':
        PythonCase(_check_torch_hub, model=""),  # the block makes its own model
    "from csap_zoo.distributed import shard_indices": PythonCase(_check_asserts, model=""),
    "import datasets, numpy as np, csap_zoo": PythonCase(_check_asserts),
    "from csap_zoo.inference import cpu_info": PythonCase(_check_precision, model=""),  # the block makes its own
}


def _first_code_line(block: CodeBlock) -> str:
    return next(line.split("  #", 1)[0].strip() for line in block.lines if line.strip())


def _python_params() -> List:
    params = []
    for block in PYTHON_BLOCKS:
        case = PYTHON_CASES.get(_first_code_line(block))
        marks = [pytest.mark.slow] if case is not None and case.slow else []
        case_id = _case_id(block.path, block.first_line, "python: " + _first_code_line(block))
        params.append(pytest.param(block, id=case_id, marks=marks))
    return params


def run_statements(block: CodeBlock, ns: dict, guard) -> None:
    """Run ``block`` statement by statement in ``ns`` (tracebacks show the page's line numbers); the statements of
    :data:`STATEMENT_ERRORS` must raise their clear error."""
    source = "\n" * (block.first_line - 1) + block.text
    filename = str(REPO / block.path)
    for statement in ast.parse(source, filename=filename).body:
        code = compile(ast.Module(body=[statement], type_ignores=[]), filename, "exec")
        text = ast.get_source_segment(source, statement)
        expected = STATEMENT_ERRORS.get(text)
        if expected is None:
            exec(code, ns)
            assert not guard.attempts, f"{block.path}:{statement.lineno} tried the network: {guard.attempts}"
            continue
        with pytest.raises(Exception) as info:
            exec(code, ns)
        assert type(info.value).__name__ != "NetworkAccessBlocked", info.value
        assert isinstance(info.value, expected.exc), f"{block.path}:{statement.lineno}: {info.value!r}"
        assert re.search(expected.match, str(info.value)), f"{block.path}:{statement.lineno}: {info.value}"
        if expected.network:
            assert_guard_was_hit(guard)
        if expected.stand_in is not None:
            exec(expected.stand_in, ns)


@pytest.mark.parametrize("block", _python_params())
def test_doc_python_block(block: CodeBlock, workspace: Path, capsys: pytest.CaptureFixture, no_network) -> None:
    case = PYTHON_CASES.get(_first_code_line(block))
    assert case is not None, (f"{block.path}:{block.first_line} is a new python block: say in PYTHON_CASES what it "
                              f"must do")
    if "ckpt.safetensors" in block.text:
        write_checkpoint(workspace / "ckpt.safetensors")
    ns: dict = {"__name__": "__docs__"}
    exec(compile(PRELUDE + case.model, "<prelude>", "exec"), ns)
    run_statements(block, ns, no_network)
    case.check(ns, workspace)


# --------------------------------------------------------------------------------------------------------------------
# The tables above and the pages agree
# --------------------------------------------------------------------------------------------------------------------


def test_every_fenced_block_is_covered() -> None:
    """Every fenced block is bash or python, except the blocks marked ```text (diagrams and file trees: not code);
    an untagged block or one in another language would run nowhere, so it fails here."""
    others = [b for b in BLOCKS if b.lang not in ("bash", "python")]
    assert all(b.lang == "text" for b in others), [(b.path, b.first_line, b.lang) for b in others]
    layout_trees = [b for b in others if b.path == "docs/layout.md" and b.lines[0] == "csap_zoo/"]
    assert len(layout_trees) == 1, "docs/layout.md holds the package's file tree"
    assert COMMANDS and PYTHON_BLOCKS
    assert {b.path for b in BLOCKS if b.lang in ("bash", "python")} >= {"README.md", "docs/guides/inference.md"}


def test_no_stale_expectations() -> None:
    """Every line the tables above describe is still in a page (a removed line must leave the tables too)."""
    commands = {c.text for c in COMMANDS}
    assert set(EXPECTED) <= commands, sorted(set(EXPECTED) - commands)
    python_text = "".join(b.text for b in PYTHON_BLOCKS)
    assert all(text in python_text for text in STATEMENT_ERRORS), [t for t in STATEMENT_ERRORS if t not in python_text]
    firsts = {_first_code_line(b) for b in PYTHON_BLOCKS}
    assert set(PYTHON_CASES) <= firsts, sorted(set(PYTHON_CASES) - firsts)


# --------------------------------------------------------------------------------------------------------------------
# The documentation site
# --------------------------------------------------------------------------------------------------------------------


def test_docs_site_builds_without_warnings(tmp_path: Path) -> None:
    """``mkdocs build --strict`` (what CI runs) passes: every page is in the nav, every link between pages and every
    anchor resolves, and a link to a file outside docs/ (which would not exist on the site) is refused."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "layout" / "index.html").is_file()


def layer_matrix(allowed: Dict[str, set]) -> str:
    """The picture of ``ALLOWED`` in docs/layout.md: one row per part, ``x`` under each part it may import."""
    parts = list(allowed)
    short = {part: part[:3] for part in parts}
    assert len(set(short.values())) == len(parts), "two parts share their first three letters: widen the columns"
    width = max(map(len, parts)) + 7
    lines = [" " * width + " ".join(short[part] for part in parts)]
    for row in parts:
        cells = ["###" if col == row else (" x " if col in allowed[row] else " . ") for col in parts]
        lines.append(f"{row} ({short[row]})".ljust(width) + " ".join(cells).rstrip())
    return "\n".join(lines)


def test_layout_picture_is_the_import_map() -> None:
    """docs/layout.md draws the import rules as tests/test_layout.py enforces them (its ``ALLOWED`` map)."""
    from test_layout import ALLOWED

    expected = layer_matrix(ALLOWED)
    pictures = [b.text.rstrip("\n") for b in BLOCKS if b.path == "docs/layout.md" and b.lang == "text"]
    assert expected in pictures, f"docs/layout.md should hold this picture of ALLOWED:\n```text\n{expected}\n```"
