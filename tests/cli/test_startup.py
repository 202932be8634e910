"""The command line starts without the heavy libraries: ``csap-zoo --help`` and every ``csap-zoo COMMAND --help``
build the parser from the standard library and the package's light modules, and ``import csap_zoo`` loads its
public names on first use. (The seconds this saves are measured by benchmarks/startup.py, not here.)"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import csap_zoo

HEAVY = ("torch", "timm", "torchvision", "numpy", "PIL", "huggingface_hub", "safetensors", "openvino", "yaml",
         "jsonschema", "einops", "datasets", "pyarrow")
COMMANDS = ("models", "predict", "eval", "download", "convert", "publish", "push", "export", "bench", "train")

_CHILD = """
import contextlib, io, json, sys
from csap_zoo.cli import main
helps = {}
for argv in [["--help"]] + [[name, "--help"] for name in sys.argv[1].split(",")]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as stop:
            code = stop.code
    helps[" ".join(argv)] = [code, out.getvalue()]
print(json.dumps({"helps": helps, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


@pytest.fixture(scope="module")
def helps():
    done = subprocess.run([sys.executable, "-c", _CHILD, ",".join(COMMANDS)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_help_prints_without_importing_heavy_libraries(helps):
    assert helps["heavy"] == []
    assert set(helps["helps"]) == {"--help"} | {f"{name} --help" for name in COMMANDS}
    for argv, (code, text) in helps["helps"].items():
        assert code == 0 and text.startswith("usage: csap-zoo"), argv
    assert all(name in helps["helps"]["--help"][1] for name in COMMANDS)


def test_import_csap_zoo_loads_no_heavy_library():
    code = f"import sys, csap_zoo; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_public_names_load_on_first_use():
    assert set(csap_zoo.__all__) <= set(dir(csap_zoo))
    for name in csap_zoo.__all__:
        assert getattr(csap_zoo, name) is not None, name
    from csap_zoo import Segmenter, create_model  # noqa: F401  (from-imports go through the same path)
    from csap_zoo.inference import Segmenter as defined_there

    assert Segmenter is defined_there
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        csap_zoo.not_a_name  # noqa: B018


def test_the_preset_choices_are_the_presets():
    from csap_zoo.cli.train import PRESET_NAMES
    from csap_zoo.training.config import list_presets

    assert list(PRESET_NAMES) == list_presets()
