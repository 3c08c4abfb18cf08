"""Every DVC stage depends on all the project code it runs: the modules its command imports, followed
through the import graph (imports inside functions too: they run), must each be covered by one of the
stage's deps (the file itself or a folder above it). Otherwise `dvc repro` reports a stale result as
up to date after a code change."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from project_helpers import REPO

PACKAGES = ("asap", "pipelines", "benchmarks")


def module_file(name: str) -> Path | None:
    """asap.models.asapnet -> asap/models/asapnet.py (or the package's __init__.py); None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Project modules that ``path`` imports anywhere in its body, with the packages they live in."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    with_parents = set()
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in with_parents if module_file(m) is not None}


def docstring_only(path: Path) -> bool:
    """A package marker holding nothing but its docstring runs no code: no dep needed."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                                              for n in body)


def closure(entry: str) -> set[Path]:
    todo, seen = [entry], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(imported_modules(module_file(name)) - seen)
    return {module_file(m).relative_to(REPO) for m in seen}


def stages() -> list[tuple[str, str, list[str]]]:
    """(stage, module its command runs, deps) for every stage of dvc.yaml, foreach templates included."""
    out = []
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        match = re.search(r"python -m ([\w.]+)", body["cmd"])
        assert match, f"stage {name}: cmd {body['cmd']!r} does not run a python module"
        out.append((name, match.group(1), [d for d in body.get("deps", []) if isinstance(d, str)]))
    return out


@pytest.mark.parametrize("stage, module, deps", stages(), ids=[s[0] for s in stages()])
def test_stage_deps_cover_the_code_it_runs(stage, module, deps):
    covered = [Path(d.rstrip("/")) for d in deps if "${" not in d]
    missing = sorted(str(f) for f in closure(module)
                     if not docstring_only(REPO / f) and not any(f == d or d in f.parents for d in covered))
    assert not missing, f"dvc.yaml stage {stage!r} runs these files but does not depend on them: {missing}"


def test_the_import_walk_finds_lazy_and_from_imports():
    """The walk itself, on a module whose imports are known: pipelines/train.py imports
    asap.training at the top and asap.engine inside a function (lazy), and asap.training imports
    asap.models.checkpoint, which imports asap.models.pixelwise."""
    files = {str(f) for f in closure("pipelines.train")}
    assert {"pipelines/train.py", "asap/training.py", "asap/engine.py", "asap/models/checkpoint.py",
            "asap/models/pixelwise.py", "pipelines/common.py"} <= files
    assert "asap/report/figures.py" not in files
