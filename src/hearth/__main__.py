"""``python -m hearth`` runs the command line."""

from __future__ import annotations

from hearth.cli import main

main()
