"""The shape of the package: every import points down, and no module takes part in an import cycle.

The imports are read from the source (every ``import`` / ``from ... import`` statement, also those inside
functions, except under ``if TYPE_CHECKING:``), so a lazy import that would tie two floors together counts too.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set

import csap_zoo

PACKAGE = Path(csap_zoo.__file__).resolve().parent

# What each part of the package may import (besides itself). "face" is csap_zoo/__init__.py.
FOUNDATION = {"version", "errors", "constants", "settings", "fileio", "validation", "hf_access", "distributed"}
ALLOWED: Dict[str, Set[str]] = {
    "version": set(),
    "errors": set(),
    "constants": set(),
    "settings": {"errors"},
    "fileio": {"errors"},  # UnsafePathError for names that would leave their folder
    "validation": {"errors"},
    "hf_access": {"errors", "settings"},  # the one Hugging Face download wrapper, below models/ and hub/
    "distributed": {"errors"},  # torchrun's process group, shared by training, eval and predict
    "manifest": {"errors", "fileio", "settings"},
    "models": FOUNDATION | {"manifest"},
    "data": FOUNDATION,
    "evaluation": FOUNDATION | {"data"},
    "visualize": FOUNDATION | {"data"},
    "inference": FOUNDATION | {"data", "models"},
    "predict": FOUNDATION | {"data", "models", "inference", "visualize"},
    "hub": FOUNDATION | {"manifest", "models", "data"},  # data: the shipped class names a checkpoint carries
    "training": FOUNDATION | {"manifest", "models", "data", "evaluation", "visualize",
                              "inference", "hub"},
    "tools": FOUNDATION | {"manifest", "models", "data", "evaluation", "visualize",
                           "inference", "predict", "hub"},
    "cli": FOUNDATION | {"manifest", "models", "data", "evaluation", "visualize",
                         "inference", "predict", "hub", "training", "tools", "face"},
    "face": FOUNDATION | {"manifest", "models", "data", "evaluation", "visualize",
                          "inference", "hub", "training"},
}
# Names that moved modules once had (no alias keeps them: one name per module)
OLD_NAMES = (
    "csap_zoo.analysis", "csap_zoo.benchmark", "csap_zoo.complexity", "csap_zoo.export", "csap_zoo.engine",
    "csap_zoo.hub.manifest", "csap_zoo.hub.pretrained", "csap_zoo.hub.serialization",
    "csap_zoo.labelmap", "csap_zoo.backends",
)


def _module_name(path: Path) -> str:
    parts = ["csap_zoo", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> List[ast.AST]:
    found: List[ast.AST] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def _imports(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The package modules that module ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: Set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # "from pkg import sub" imports the submodule sub when there is one, else a name of pkg
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("csap_zoo") and target != name:
                out.add(target)
    return out


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _part(module: str) -> str:
    return "face" if module == "csap_zoo" else module.split(".")[1]


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_the_import_reader_sees_relative_lazy_and_submodule_imports():
    graph = _graph()
    assert "csap_zoo.models.segmentor" in graph["csap_zoo.models.registry"]  # from .segmentor import Segmentor
    assert "csap_zoo.models.mscan" in graph["csap_zoo.models.registry"]  # from . import mscan
    assert "csap_zoo.hub.factory" in graph["csap_zoo.cli.common"] or "csap_zoo" in graph["csap_zoo.cli.common"]  # lazy
    assert not any(m.startswith("torch") for deps in graph.values() for m in deps)


def test_the_package_has_no_import_cycle():
    assert _cycles(_graph()) == []


def test_every_import_points_down():
    upward = []
    for module, deps in _graph().items():
        part = _part(module)
        assert part in ALLOWED, f"{module} belongs to no known part of the package; add its part to ALLOWED"
        for dep in deps:
            if _part(dep) != part and _part(dep) not in ALLOWED[part]:
                upward.append(f"{module} -> {dep}")
    assert upward == []


def test_the_model_layer_knows_nothing_above_it():
    graph = _graph()
    above = {"hub", "data", "training", "tools", "inference", "predict", "cli", "face", "evaluation", "visualize"}
    for module, deps in graph.items():
        if module.startswith("csap_zoo.models"):
            assert not {d for d in deps if _part(d) in above}, module


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_has_two_names():
    """No alias module: the old names of moved modules do not import, and no module of the package swaps entries
    of ``sys.modules`` (the way an alias gives a module a second name)."""
    import importlib.util

    assert [old for old in OLD_NAMES if importlib.util.find_spec(old) is not None] == []
    swapping = [name for name, path in _modules().items() if re.search(r"sys\.modules\[[^]]*\]\s*=", path.read_text())]
    assert swapping == []


def test_every_error_has_the_one_root_and_keeps_its_builtin_base():
    from csap_zoo import errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        if name != "CsapZooError":
            assert issubclass(cls, errors.CsapZooError), name
            assert issubclass(cls, (ValueError, RuntimeError, OSError)), name  # OSError: DiskFullError
    assert issubclass(errors.CheckpointError, RuntimeError) and issubclass(errors.ConfigError, ValueError)


def test_the_hub_builds_models_only_through_the_registry():
    """The hub names a model (registry), loads a folder (the model's own format) or converts a foreign file with the
    family's checkpoint filter; it never builds a backbone, a head or a block itself."""
    allowed = {
        "csap_zoo.models", "csap_zoo.models.registry", "csap_zoo.models.architectures", "csap_zoo.models.config",
        "csap_zoo.models.segmentor", "csap_zoo.models.serialization", "csap_zoo.models.flops",
        "csap_zoo.models.hub_transfer",  # push_to_hub, which the hub package hands on
        "csap_zoo.models.mscan", "csap_zoo.models.heads.ham",  # checkpoint_filter_fn of the family files
    }
    reached = {f"{module} -> {dep}" for module, deps in _graph().items()
               if module.startswith("csap_zoo.hub.")
               for dep in deps if dep.startswith("csap_zoo.models") and dep not in allowed}
    assert reached == set()


def test_the_public_face_is_the_names_a_user_needs_first():
    """``csap_zoo.`` hands on model creation and discovery, inference, evaluation, training and the errors; the rest
    is in submodules, and there is one ``list_models`` (the models layer's is ``list_architectures``)."""
    from csap_zoo import errors, models
    from csap_zoo.models import registry

    face = set(csap_zoo.__all__) - {"__version__"}
    wanted = {"create_model", "from_pretrained", "list_models", "list_pretrained", "Segmenter", "InferenceConfig",
              "evaluate", "EvalResult", "train", "TrainConfig"}
    assert face - set(errors.__all__) == wanted
    assert len(face) <= 20
    for name in ("Segmentor", "build_model", "optimize_for_inference", "overlay", "get_dataset_info", "push_to_hub"):
        assert not hasattr(csap_zoo, name), name
    assert not hasattr(models, "list_models") and not hasattr(registry, "list_models")
