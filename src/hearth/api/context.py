"""What the API's routes share: the running control plane (one per app)."""

from __future__ import annotations

from fastapi import Request

from hearth.runtime import ControlPlane

# The routes' name for the control plane the app's lifespan built.
Controller = ControlPlane


def controller(request: Request) -> Controller:
    """The controller of the app serving ``request``."""
    ctl: Controller = request.app.state.controller
    return ctl
