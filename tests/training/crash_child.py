"""Child processes of the crash tests.

``python crash_child.py`` is a zygote: it imports torch and the trainer once (the few seconds of a fresh
interpreter's imports), then serves one case per line read on stdin, a JSON list ``[CONFIG.json, MOMENT, SIGNAL_FILE,
LOG_FILE]``: it forks a child process for the case, answers ``started PID`` on stdout, waits for that child and
answers ``ended PID RETURNCODE`` (``-N``: killed by signal N, as in :mod:`subprocess`). The zygote runs no torch work
itself, so every child starts from the same freshly imported state; an empty line or end of input ends the zygote.

Each child (its stdout and stderr in LOG_FILE) trains the JSON config and, at ``MOMENT``, writes its pid to
``SIGNAL_FILE`` and blocks until the parent test kills it:
- ``step:N``: after optimiser step N (before that iteration's evaluation and checkpoint);
- ``checkpoint:N``: while the checkpoint of iteration N is being written (half of it is on disk, not renamed yet);
- ``best`` / ``final``: while save_pretrained fills its staging folder for ``best/`` / ``final/`` (weights written,
  config and card not yet).
"""
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

torch.set_num_threads(1)
from csap_zoo.training import TrainConfig, train  # noqa: E402  (imported once, before any fork)
from csap_zoo.models import serialization  # noqa: E402
import csap_zoo.training.trainer  # noqa: E402,F401  (what train() would otherwise import in every child)
import csap_zoo.models  # noqa: E402,F401


def _block(signal_file: str) -> None:
    Path(signal_file).write_text(str(os.getpid()))
    time.sleep(600)
    sys.exit("the parent never killed this process")


def run_case(config_file: str, moment: str, signal_file: str) -> None:
    """Train ``config_file`` and block at ``moment`` (what each forked child runs)."""
    torch.set_num_threads(1)
    hooks = []
    kind, _, arg = moment.partition(":")
    if kind == "step":
        def hook(trainer, iteration, loss):
            if iteration == int(arg):
                _block(signal_file)
        hooks.append(hook)
    elif kind == "checkpoint":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            if isinstance(obj, dict) and obj.get("format") == "csap-zoo-train" and obj.get("iteration") == int(arg):
                if hasattr(f, "fileno"):  # a writer that hands torch.save an open file
                    f.flush()
                    os.ftruncate(f.fileno(), os.fstat(f.fileno()).st_size // 2)
                else:
                    os.truncate(f, os.path.getsize(f) // 2)
                _block(signal_file)
        torch.save = save
    elif kind in ("best", "final"):
        real_save_file = serialization.save_file

        def save_file(tensors, filename, *args, **kwargs):
            real_save_file(tensors, filename, *args, **kwargs)
            if Path(filename).parent.name.startswith(f".{kind}."):
                _block(signal_file)
        serialization.save_file = save_file
    else:
        sys.exit(f"unknown moment {moment!r}")
    train(TrainConfig.from_dict(json.loads(Path(config_file).read_text())), hooks=hooks)
    sys.exit("the run finished without reaching the moment")


def _child(config_file: str, moment: str, signal_file: str, log_file: str) -> None:
    """The forked child: never returns into the zygote's loop."""
    code = 1
    try:
        log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        try:
            run_case(config_file, moment, signal_file)
            code = 0
        except SystemExit as exit_:
            if isinstance(exit_.code, int):
                code = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    for line in sys.stdin:
        if not line.strip():
            break
        words = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(*words)
        print(f"started {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(f"ended {pid} {code}", flush=True)


if __name__ == "__main__":
    serve()
