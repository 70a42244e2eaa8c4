"""The Browser VM's VNC password: derived from the agent's token, written where x11vnc reads it.

x11vnc does not run before the claim (``hearth-browser`` waits for this file), so neither the
snapshot template nor an unclaimed pooled VM serves VNC at all; after the claim it serves only
clients that answer the VNC challenge with this password. The controller derives the same
password from the token it gave the agent (``vnc_password`` is imported by both sides), so no
further secret travels or is stored, and the controller's token-gated view can answer the
challenge for the user's browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

from hearth_agent.storage import atomic_write

BROWSER_STATE_DIR = Path("/run/hearth-browser")
PASSWORD_FILE_NAME = "vnc.passwd"  # noqa: S105 - a file name, not a password
# Classic VNC authentication uses the first 8 bytes of the password as a DES key.
PASSWORD_LENGTH = 8
_CONTEXT = b"hearth vnc password v1"


def vnc_password(token: str) -> str:
    """The VNC password of the VM whose agent holds ``token`` (8 URL-safe characters)."""
    digest = hmac.new(token.encode("utf-8"), _CONTEXT, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii")[:PASSWORD_LENGTH]


def provision_vnc_password(token: str, *, state_dir: Path = BROWSER_STATE_DIR) -> bool:
    """Write the password file (0600, on the guest's tmpfs) in a Browser VM; False elsewhere."""
    if not state_dir.is_dir():
        return False
    path = state_dir / PASSWORD_FILE_NAME
    atomic_write(path, (vnc_password(token) + "\n").encode("ascii"))
    return True
