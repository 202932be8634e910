"""Child process of the crash tests: ``python crash_child.py CONFIG.json MOMENT SIGNAL_FILE``.

Trains the JSON config and, at ``MOMENT``, writes its pid to ``SIGNAL_FILE`` and blocks until the parent kills it:
- ``step:N``: after optimiser step N (before that iteration's evaluation and checkpoint);
- ``checkpoint:N``: while the checkpoint of iteration N is being written (half of it is on disk, not renamed yet);
- ``best`` / ``final``: while save_pretrained fills its staging folder for ``best/`` / ``final/`` (weights written,
  config and card not yet).
"""
import json
import os
import sys
import time
from pathlib import Path

import torch


def _block(signal_file: str) -> None:
    Path(signal_file).write_text(str(os.getpid()))
    time.sleep(600)
    sys.exit("the parent never killed this process")


def main() -> None:
    config_file, moment, signal_file = sys.argv[1:4]
    torch.set_num_threads(1)
    from csap_zoo.engine import TrainConfig, train
    from csap_zoo.hub import serialization

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


if __name__ == "__main__":
    main()
