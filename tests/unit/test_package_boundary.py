"""The shipped package stands alone: no module under ``src/`` imports ``tests`` or names its dir.

What a benchmark needs ships with the package (the OAuth test server is ``hearth/bench/
oidc_server``); the harness under ``tests/`` may import the product, never the other way round.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
# "tests/..." or "tests.module" as a path or module name, not the word in prose ("for tests.").
_TESTS_REFERENCE = re.compile(r"(?<![\w.-])tests[/.]\w")


def _imports_of_tests(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "tests"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [node.module] if node.module.split(".")[0] == "tests" else []
    return found


def _names_of_tests(tree: ast.AST) -> list[str]:
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (node.value == "tests" or _TESTS_REFERENCE.search(node.value))
    ]


def _modules() -> list[Path]:
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 50, f"found only {len(modules)} modules under {SRC}"
    return modules


def test_no_module_under_src_imports_tests() -> None:
    offenders = {
        str(path.relative_to(SRC)): found
        for path in _modules()
        if (found := _imports_of_tests(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert offenders == {}


def test_no_module_under_src_names_the_tests_directory() -> None:
    offenders = {
        str(path.relative_to(SRC)): found
        for path in _modules()
        if (found := _names_of_tests(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "source",
    [
        "import tests.e2e.flow_fixtures",
        "from tests.integration import oidc_fixtures",
        "from tests import conftest",
    ],
)
def test_an_import_of_tests_is_caught(source: str) -> None:
    assert _imports_of_tests(ast.parse(source))


@pytest.mark.parametrize(
    "source",
    [
        'ROOT / "tests" / "e2e"',
        'Path("tests/e2e/oidc_server")',
        '"""Runs ``tests/e2e/oidc_server/server.mjs``."""',
        'importlib.import_module("tests.vm.api_fixtures")',
    ],
)
def test_a_path_into_tests_is_caught(source: str) -> None:
    assert _names_of_tests(ast.parse(source))


@pytest.mark.parametrize(
    "source",
    ['"""Wait for background boots (tests and shutdown)."""', '"contract tests validate it"'],
)
def test_the_word_in_prose_is_not_a_path(source: str) -> None:
    assert _names_of_tests(ast.parse(source)) == []
