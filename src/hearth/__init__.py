"""Hearth: a self-hostable control plane giving each user isolated microVMs for AI coding CLIs."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
