"""The tree ``hearth.errors`` draws: every HearthError, under its parent, with its module."""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass

import pytest

import hearth
import hearth.errors
from hearth.errors import HearthError

# Not importable on their own: ``python -m hearth`` runs the CLI, Alembic's env needs Alembic's
# context (the migration scripts themselves import fine).
_NOT_IMPORTED = ("hearth.__main__", "hearth.store.migrations.env")
_BRANCH = re.compile(r"^(?P<indent>[│ ]*)[├└]── (?P<name>\w+)")
_MODULE = re.compile(r"\[(?P<module>[\w.]+)\]$")


@dataclass(frozen=True)
class Drawn:
    """One class as the docstring draws it."""

    parent: str | None
    module: str


def drawn_tree() -> dict[str, Drawn]:
    """Each class in the docstring's tree: its drawn parent, and the module it names (or ours)."""
    doc = hearth.errors.__doc__ or ""
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["HearthError"])
    tree: dict[str, Drawn] = {"HearthError": Drawn(parent=None, module="hearth.errors")}
    path = ["HearthError"]
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        match = _BRANCH.match(line.removeprefix("    "))
        assert match, f"not a line of the tree: {line!r}"
        depth = len(match["indent"]) // 4 + 1
        name = match["name"]
        path[depth:] = [name]
        named = _MODULE.search(line.rstrip())
        tree[name] = Drawn(
            parent=path[depth - 1], module=named["module"] if named else "hearth.errors"
        )
    return tree


def every_hearth_error() -> list[type[HearthError]]:
    """Every subclass of HearthError, after importing every module of the ``hearth`` package."""
    for module in pkgutil.walk_packages(hearth.__path__, prefix="hearth."):
        if module.name not in _NOT_IMPORTED:
            importlib.import_module(module.name)
    found: list[type[HearthError]] = []
    pending: list[type[HearthError]] = [HearthError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


ERRORS = every_hearth_error()


def test_the_walk_finds_classes_defined_outside_errors_py() -> None:
    modules = {cls.__module__ for cls in ERRORS}
    assert {"hearth.errors", "hearth.credentials.errors", "hearth.auth.stages"} <= modules


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__qualname__)
def test_every_hearth_error_is_drawn_under_its_parent_with_its_module(
    cls: type[HearthError],
) -> None:
    tree = drawn_tree()
    name = cls.__qualname__
    assert name in tree, (
        f"{cls.__module__}.{name} is missing from the tree in hearth/errors.py's docstring: "
        "draw it under its parent, naming its module in brackets if it lives elsewhere"
    )
    parent = next((base for base in cls.__bases__ if issubclass(base, HearthError)), None)
    assert tree[name] == Drawn(
        parent=parent.__qualname__ if parent else None, module=cls.__module__
    ), f"hearth/errors.py draws {name} wrongly"


def test_the_tree_draws_no_class_that_does_not_exist() -> None:
    assert set(drawn_tree()) == {cls.__qualname__ for cls in ERRORS}


@pytest.mark.parametrize(
    "cls", [c for c in ERRORS if c is not HearthError], ids=lambda cls: cls.__qualname__
)
def test_every_hearth_error_declares_its_own_code_and_http_status(cls: type[HearthError]) -> None:
    own = vars(cls)
    assert isinstance(own.get("code"), str), f"{cls.__qualname__} declares no code"
    assert own["code"], f"{cls.__qualname__} has an empty code"
    assert isinstance(own.get("http_status"), int), f"{cls.__qualname__} declares no http_status"
    assert 400 <= own["http_status"] < 600, cls.__qualname__
