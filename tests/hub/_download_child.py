"""Child-process side of the download cache tests (run as a script, not collected by pytest).

``python _download_child.py SPEC.json`` where SPEC holds ``mode`` and its arguments:

- ``"loads"``: import csap_zoo once, fork one child per name in ``names`` (all released together through a pipe),
  each runs ``create_model(name, pretrained=True)`` from ``manifest`` into ``cache`` and writes
  ``{"name", "fingerprint"}`` or ``{"name", "error"}`` to ``out/<i>.json``.
- ``"fetch"``: ``fetch_checkpoint(manifest.get(name), cache)``; prints ``ok <path>`` or ``error <message>``.

Prints ``ready`` on stdout (flushed) once the imports are done.
"""
from __future__ import annotations

import json
import os
import sys


def fingerprint(state) -> float:
    """A number that differs between two state dicts of different values (float tensors summed in float64)."""
    return float(sum(float(v.double().sum()) for _, v in sorted(state.items()) if v.is_floating_point()))


def _loads(spec: dict) -> int:
    import csap_zoo
    from csap_zoo.manifest import load_manifest

    create_model = csap_zoo.create_model  # imports torch, the models and the hub once, before the forks
    manifest = load_manifest(spec["manifest"])
    print("ready", flush=True)
    start_r, start_w = os.pipe()
    pids = []
    for i, name in enumerate(spec["names"]):
        pid = os.fork()
        if pid == 0:
            os.close(start_w)
            os.read(start_r, 1)
            try:
                model = create_model(name, pretrained=True, manifest=manifest, cache_dir=spec["cache"])
                result = {"name": name, "fingerprint": fingerprint(model.state_dict())}
            except Exception as err:  # reported to the test, which fails on it
                result = {"name": name, "error": f"{type(err).__name__}: {err}"}
            with open(os.path.join(spec["out"], f"{i}.json"), "w") as handle:
                json.dump(result, handle)
            os._exit(0)
        pids.append(pid)
    os.close(start_r)
    os.write(start_w, b"x" * len(pids))
    os.close(start_w)
    return max(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in pids)


def _fetch(spec: dict) -> int:
    from csap_zoo.hub.download import fetch_checkpoint
    from csap_zoo.manifest import load_manifest

    entry = load_manifest(spec["manifest"]).get(spec["name"])
    print("ready", flush=True)
    try:
        path = fetch_checkpoint(entry, spec["cache"])
    except Exception as err:
        print(f"error {type(err).__name__}: {err}", flush=True)
        return 1
    print(f"ok {path}", flush=True)
    return 0


if __name__ == "__main__":
    with open(sys.argv[1]) as spec_file:
        task = json.load(spec_file)
    sys.exit({"loads": _loads, "fetch": _fetch}[task["mode"]](task))
