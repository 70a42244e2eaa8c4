"""What the API's routes share: settings, store, services, metrics (one per app)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from hearth.auth.flow import AuthFlow
from hearth.config import Settings
from hearth.control.vms import VmService
from hearth.credentials.service import CredentialService
from hearth.metrics import ControllerMetrics
from hearth.store import Store


@dataclass
class Controller:
    """The running controller's parts, built by the app's lifespan."""

    settings: Settings
    store: Store
    vms: VmService
    metrics: ControllerMetrics
    credentials: CredentialService
    auth: AuthFlow


def controller(request: Request) -> Controller:
    """The controller of the app serving ``request``."""
    ctl: Controller = request.app.state.controller
    return ctl
