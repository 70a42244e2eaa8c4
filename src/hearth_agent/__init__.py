"""Hearth's in-VM agent: receives CLI credentials over HTTP and writes them where each CLI looks.

Runs inside the guest on the distribution's python3 with the standard library only; it never
imports ``hearth`` or any third-party package. Start it with ``python3 -m hearth_agent``.
"""

from __future__ import annotations

from hearth_agent.providers import SUPPORTED_PROVIDERS

__version__ = "0.1.0"

__all__ = ["SUPPORTED_PROVIDERS", "__version__"]
