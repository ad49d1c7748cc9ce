"""The package layering: imports only point down (the README's layout section: scripts ->
engine -> models, data -> layers -> utils), checked on the source."""

import ast

import pytest

from tests.conftest import REPO_ROOT

# Lower numbers sit lower. data/ and models/ share a level and do not import each other.
LEVELS = {"utils": 0, "layers": 1, "data": 2, "models": 2, "engine": 3, "tools": 4}
PACKAGES = sorted(LEVELS)
SCRIPTS = ["train.py", "test.py", "demo.py", "prune.py", "benchmark.py"]


def project_imports(path):
    """The project packages a file imports, at any depth of the file (lazy imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & (set(LEVELS) | {name.removesuffix(".py") for name in SCRIPTS})


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_only_point_down(package):
    level = LEVELS[package]
    wrong = {}
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        for imported in project_imports(path):
            if imported == package:
                continue
            if LEVELS.get(imported, 99) >= level:
                wrong[str(path.relative_to(REPO_ROOT))] = imported
    assert wrong == {}


def test_scripts_are_not_imported_by_the_library():
    scripts = {name.removesuffix(".py") for name in SCRIPTS}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            assert not project_imports(path) & scripts, path


def test_library_code_does_not_read_command_lines():
    """Flags belong to the scripts and utils/cli.py: the packages below them take typed
    arguments, never an argparse namespace."""
    readers = []
    for package in ("layers", "data", "models", "engine"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    modules = (
                        [alias.name for alias in node.names]
                        if isinstance(node, ast.Import)
                        else [node.module or ""]
                    )
                    if "argparse" in modules:
                        readers.append(str(path.relative_to(REPO_ROOT)))
    assert readers == []
