"""The Debian mirror read from the host's apt sources, as debootstrap gets it."""

from __future__ import annotations

from pathlib import Path

from hearth.apt_sources import mirror_from_apt_sources


def test_a_deb822_source_gives_its_first_uri(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert mirror_from_apt_sources("bookworm", (tmp_path,)) == "http://deb.example/debian"


def test_an_apt_mirror_list_gives_its_first_mirror(tmp_path: Path) -> None:
    # Debian 12's cloud images: URIs: mirror+file:///etc/apt/mirrors/debian.list, which debootstrap
    # cannot fetch from.
    mirrors = tmp_path / "debian.list"
    mirrors.write_text("# the mirrors\nhttps://deb.example/debian priority:1\n")
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "debian.sources").write_text(
        f"Types: deb\nURIs: mirror+file://{mirrors}\nSuites: bookworm\nComponents: main\n"
    )
    assert mirror_from_apt_sources("bookworm", (sources,)) == "https://deb.example/debian"


def test_a_uri_debootstrap_cannot_use_is_passed_over(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "deb cdrom:[Debian 12]/ bookworm main\ndeb http://deb.example/debian bookworm main\n"
    )
    assert mirror_from_apt_sources("bookworm", (tmp_path / "sources.list",)) == (
        "http://deb.example/debian"
    )
