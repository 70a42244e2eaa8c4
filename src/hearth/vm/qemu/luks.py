"""Giving a fresh LUKS-encrypted qcow2 overlay a key of its own, without QEMU's PBKDF benchmark.

``qemu-img create -o encrypt.format=luks`` (QEMU 7.2) times PBKDF2 twice on every call to choose
iteration counts, whatever ``encrypt.iter-time`` asks for: ≈ 2.6 s of CPU per overlay here,
which would make a restore seven times slower. So qemu-img makes one *prototype* overlay per
backing file (and one blank volume per size), and each VM's overlay or user's volume is a copy
of it whose LUKS header (format 1, as QEMU writes it) gets a new master key, master-key digest,
UUID and key slot 0 for the VM's own key, with LUKS's minimum iteration counts (1000): the key
is 256 random bits, so stretching it buys nothing. This is only sound for an image that has no
data cluster yet (nothing was ever encrypted under the prototype's master key), which is what
``create_overlay`` and ``create_blank`` hand over. QEMU itself then opens the result: a header
written wrong fails the VM's start loudly.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hearth.errors import VmError

_QCOW2_MAGIC = b"QFI\xfb"
_FDE_HEADER_EXTENSION = 0x0537BE77  # qcow2 "full disk encryption header pointer"
_LUKS_MAGIC = b"LUKS\xba\xbe"
_LUKS_HEADER = struct.Struct(">6sH32s32s32sII20s32sI40s")  # up to the key slots: 208 bytes
_KEY_SLOT = struct.Struct(">II32sII")  # active, iterations, salt, key offset (sectors), stripes
_SLOT_ENABLED = 0x00AC71F3
_SLOT_DISABLED = 0x0000DEAD
_SECTOR = 512
ITERATIONS = 1000  # LUKS's minimum, for the master-key digest and the key slot alike
# What qemu-img writes by default, and the only layout re-keyed here.
_EXPECTED = (b"aes", b"xts-plain64", b"sha256", 64)


def rekey_overlay(path: Path, passphrase: bytes) -> None:
    """Give the fresh encrypted overlay at ``path`` a new master key, unlocked by ``passphrase``."""
    with path.open("r+b") as disk:
        offset = _luks_offset(disk.read(64 * 1024), path)
        disk.seek(offset)
        header = bytearray(disk.read(_LUKS_HEADER.size + 8 * _KEY_SLOT.size))
        fields = list(_LUKS_HEADER.unpack_from(header))
        magic, version, cipher, mode, hash_spec, _payload, key_bytes = fields[:7]
        described = (cipher.rstrip(b"\0"), mode.rstrip(b"\0"), hash_spec.rstrip(b"\0"), key_bytes)
        if magic != _LUKS_MAGIC or version != 1 or described != _EXPECTED:
            raise VmError(f"{path.name}: not a LUKS header this code re-keys: {described}")
        slots = [
            _KEY_SLOT.unpack_from(header, _LUKS_HEADER.size + i * _KEY_SLOT.size) for i in range(8)
        ]
        if slots[0][0] != _SLOT_ENABLED or any(s[0] != _SLOT_DISABLED for s in slots[1:]):
            raise VmError(f"{path.name}: expected exactly key slot 0 in use")
        _active, _iters, _salt, key_offset, stripes = slots[0]

        master_key = secrets.token_bytes(key_bytes)
        mk_salt = secrets.token_bytes(32)
        fields[7] = hashlib.pbkdf2_hmac("sha256", master_key, mk_salt, ITERATIONS, 20)
        fields[8] = mk_salt
        fields[9] = ITERATIONS
        fields[10] = str(uuid.uuid4()).encode().ljust(40, b"\0")
        _LUKS_HEADER.pack_into(header, 0, *fields)
        slot_salt = secrets.token_bytes(32)
        _KEY_SLOT.pack_into(
            header, _LUKS_HEADER.size, _SLOT_ENABLED, ITERATIONS, slot_salt, key_offset, stripes
        )
        slot_key = hashlib.pbkdf2_hmac("sha256", passphrase, slot_salt, ITERATIONS, key_bytes)
        material = _encrypt_sectors(slot_key, af_split(master_key, stripes))

        disk.seek(offset + key_offset * _SECTOR)
        disk.write(material)
        disk.seek(offset)
        disk.write(header)


def _luks_offset(head: bytes, path: Path) -> int:
    """Where the qcow2 file keeps its LUKS header (from its header extensions)."""
    if head[:4] != _QCOW2_MAGIC or struct.unpack_from(">I", head, 4)[0] < 3:
        raise VmError(f"{path.name}: not a qcow2 v3 file")
    position = struct.unpack_from(">I", head, 100)[0]  # header_length
    while position + 8 <= len(head):
        kind, length = struct.unpack_from(">II", head, position)
        if kind == 0:
            break
        if kind == _FDE_HEADER_EXTENSION:
            return int(struct.unpack_from(">Q", head, position + 8)[0])
        position += 8 + (length + 7) // 8 * 8
    raise VmError(f"{path.name}: qcow2 file without a LUKS header")


def _diffuse(block: bytes) -> bytes:
    """LUKS's AF diffusion: each digest-sized piece replaced by H(big-endian index || piece)."""
    out = bytearray()
    for index, start in enumerate(range(0, len(block), 32)):
        piece = block[start : start + 32]
        out += hashlib.sha256(struct.pack(">I", index) + piece).digest()[: len(piece)]
    return bytes(out)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def af_split(key: bytes, stripes: int) -> bytes:
    """LUKS's anti-forensic split of ``key`` into ``stripes`` blocks (sha256 diffusion)."""
    blocks = []
    mixed = bytes(len(key))
    for _ in range(stripes - 1):
        stripe = secrets.token_bytes(len(key))
        blocks.append(stripe)
        mixed = _diffuse(_xor(mixed, stripe))
    blocks.append(_xor(mixed, key))
    return b"".join(blocks)


def _encrypt_sectors(key: bytes, data: bytes) -> bytes:
    """AES-XTS with plain64 IVs (the sector number, little-endian), sector 0 first."""
    out = bytearray()
    for sector, start in enumerate(range(0, len(data), _SECTOR)):
        tweak = sector.to_bytes(16, "little")
        encryptor = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
        out += encryptor.update(data[start : start + _SECTOR]) + encryptor.finalize()
    return bytes(out)
