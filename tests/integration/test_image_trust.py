"""``hearth image trust-ca`` on real small ext4 images, read back with debugfs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hearth.bench.standins.ca import TestCA
from hearth.errors import ImageVerifyFailed, InvalidInput
from hearth.images.agent_install import list_backups
from hearth.images.trust import LOCAL_CA_DIR, SYSTEM_BUNDLE, trust_ca
from tests.conftest import hearth_cli, require_tools
from tests.integration.test_image_agent_install import debugfs_cat, sha256

DEBIAN_BUNDLE = b"-----BEGIN CERTIFICATE-----\nMIIB (a Debian root)\n-----END CERTIFICATE-----\n"


@pytest.fixture(autouse=True)
def _needs_e2fsprogs() -> None:
    require_tools("mkfs.ext4", "debugfs", "e2fsck")


def image_with_bundle(tmp_path: Path, bundle: bytes | None = DEBIAN_BUNDLE) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc/ssl/certs").mkdir(parents=True)
    (tree / "usr/local/share/ca-certificates").mkdir(parents=True)
    if bundle is not None:
        (tree / SYSTEM_BUNDLE.lstrip("/")).write_bytes(bundle)
    image = tmp_path / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", tree, image, "16M"], check=True)
    return image


def test_the_ca_joins_the_system_bundle_and_the_local_ca_dir(tmp_path: Path) -> None:
    image = image_with_bundle(tmp_path)
    ca = TestCA()
    result = trust_ca(image, ca.pem, name="test")
    assert result.changed
    assert result.backup is not None
    assert result.backup in list_backups(image)
    bundle = debugfs_cat(image, SYSTEM_BUNDLE)
    assert bundle.startswith(DEBIAN_BUNDLE)
    assert bundle.endswith(ca.pem)
    assert debugfs_cat(image, f"{LOCAL_CA_DIR}/hearth-test.crt") == ca.pem
    subprocess.run(["e2fsck", "-fn", image], check=True, capture_output=True)


def test_trusting_the_same_ca_again_changes_nothing(tmp_path: Path) -> None:
    image = image_with_bundle(tmp_path)
    ca = TestCA()
    trust_ca(image, ca.pem, name="test")
    before = sha256(image)
    again = trust_ca(image, ca.pem, name="other-name")
    assert not again.changed
    assert sha256(image) == before


@pytest.mark.parametrize(
    ("pem", "words"),
    [
        (b"not a certificate", "not a PEM certificate"),
        (b"", "not a PEM certificate"),
    ],
)
def test_what_is_not_one_ca_certificate_is_refused_and_the_image_untouched(
    tmp_path: Path, pem: bytes, words: str
) -> None:
    image = image_with_bundle(tmp_path)
    before = sha256(image)
    with pytest.raises(InvalidInput, match=words):
        trust_ca(image, pem, name="test")
    assert sha256(image) == before


def test_a_leaf_certificate_or_two_cas_are_refused(tmp_path: Path) -> None:
    image = image_with_bundle(tmp_path)
    ca = TestCA()
    leaf = ca.issue(["example.test"], tmp_path / "leaf")
    with pytest.raises(InvalidInput, match="not a CA"):
        trust_ca(image, Path(leaf.cert).read_bytes(), name="test")
    with pytest.raises(InvalidInput, match="expected one certificate, found 2"):
        trust_ca(image, ca.pem + TestCA().pem, name="test")
    with pytest.raises(InvalidInput, match="lowercase"):
        trust_ca(image, ca.pem, name="../etc/passwd")


def test_an_image_without_a_system_bundle_is_refused(tmp_path: Path) -> None:
    image = image_with_bundle(tmp_path, bundle=None)
    with pytest.raises(ImageVerifyFailed, match="ca-certificates"):
        trust_ca(image, TestCA().pem, name="test")


def test_the_cli_command_adds_the_ca(tmp_path: Path) -> None:
    image = image_with_bundle(tmp_path)
    ca_file = tmp_path / "ca.pem"
    ca = TestCA()
    ca_file.write_bytes(ca.pem)
    result = hearth_cli("image", "trust-ca", str(image), str(ca_file), "--name", "proxy")
    assert result.returncode == 0, result.stderr
    assert "added to" in result.stdout
    assert debugfs_cat(image, f"{LOCAL_CA_DIR}/hearth-proxy.crt") == ca.pem
