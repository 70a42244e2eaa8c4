"""Image recipes: which Debian packages each golden image carries and how large it is."""

from __future__ import annotations

from dataclasses import dataclass

from hearth.errors import InvalidInput

# Packages every image needs: the agent's interpreter and the tools hearth-init uses.
BASE_PACKAGES = ("python3", "iproute2", "ca-certificates")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """One kind of golden image."""

    name: str
    description: str
    packages: tuple[str, ...]
    disk_mib: int

    @property
    def all_packages(self) -> tuple[str, ...]:
        """Base packages plus the recipe's own, sorted and without duplicates."""
        return tuple(sorted(set(BASE_PACKAGES) | set(self.packages)))


RECIPES: dict[str, Recipe] = {
    "minimal": Recipe(
        name="minimal",
        description="Debian 12 minbase, python3 and the Hearth agent",
        packages=(),
        disk_mib=600,
    ),
    "cli": Recipe(
        name="cli",
        description="minimal plus Node.js, npm and git for the AI coding CLIs",
        packages=("nodejs", "npm", "git", "procps", "less"),
        disk_mib=2048,
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``, or InvalidInput listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join(sorted(RECIPES))
        raise InvalidInput(f"unknown recipe {name!r}; known recipes: {known}") from None
