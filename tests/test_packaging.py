"""What an install needs: the core dependencies serve `import csap_zoo` and prediction; everything else is an extra."""
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import csap_zoo

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
OPTIONAL = ("fvcore", "torchprofile", "onnx", "onnxscript", "onnxruntime", "transformers", "matplotlib", "psutil",
            "nncf", "datasets")


def _requirement_names(requirements):
    names = set()
    for requirement in requirements:
        name = requirement
        for stop in "<>=!~[; ":
            name = name.split(stop)[0]
        names.add(name.lower())
    return names


def test_core_dependencies_hold_no_tool_of_the_lab():
    core = _requirement_names(PYPROJECT["project"]["dependencies"])
    assert core.isdisjoint(OPTIONAL)
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert _requirement_names(extras["flops"]) == {"fvcore"}
    assert _requirement_names(extras["export"]) == {"onnx", "onnxscript", "onnxruntime"}
    assert _requirement_names(extras["export"]) <= _requirement_names(extras["bench"])
    assert _requirement_names(extras["int8"]) == {"nncf"} <= _requirement_names(extras["bench"])
    assert "openvino" in core  # the default CPU backend (backend="auto")
    for extra in ("flops", "export", "int8", "bench"):
        assert _requirement_names(extras[extra]) <= _requirement_names(extras["dev"]), extra


def _run_without_optional_packages(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which every optional package fails to import."""
    # None in sys.modules: `import x` raises ImportError and importlib.util.find_spec("x") says "not installed"
    blocker = f"import sys\nsys.modules.update(dict.fromkeys({OPTIONAL!r}))\n"
    return subprocess.run([sys.executable, "-c", blocker + textwrap.dedent(code)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_predict_runs_with_the_core_dependencies_only(tmp_path):
    example = Path(csap_zoo.__file__).parent / "assets" / "demo" / "example.png"
    result = _run_without_optional_packages(f"""
        from csap_zoo.cli import main
        raise SystemExit(main(["predict", {str(example)!r}, "--model", "csap_tiny.shapes", "--pretrained",
                               "--out", "out", "--no-progress"]))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "labels" / "example.png").is_file()


def test_a_missing_extra_is_named_in_the_error(tmp_path):
    result = _run_without_optional_packages("""
        from csap_zoo.tools.complexity import measure_complexity
        try:
            measure_complexity("csap_tiny", 64, 64)
        except ImportError as err:
            print(err)
    """, tmp_path)
    assert "pip install 'csap-zoo[flops]'" in result.stdout, result.stderr[-2000:]


def test_the_command_line_starts_without_the_trainer_or_the_lab(tmp_path):
    result = _run_without_optional_packages("""
        import sys
        from csap_zoo.cli import build_parser
        build_parser().format_help()
        loaded = sorted(m for m in sys.modules
                        if m.startswith(("csap_zoo.training.trainer", "csap_zoo.tools", "jsonschema")))
        print(loaded)
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
