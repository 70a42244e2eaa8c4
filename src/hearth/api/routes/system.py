"""``/health`` (no auth, no secrets) and ``/metrics`` (Prometheus, admin key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from hearth import __version__
from hearth.api.auth import AdminKey, Ctl
from hearth.api.schemas import error_responses
from hearth.metrics import CONTENT_TYPE
from hearth.vm.select import Vmm, check_vmm

router = APIRouter(tags=["system"])


@router.get(
    "/health",
    responses={
        503: {"description": "The store does not answer (the same body, degraded)"},
        **error_responses(400),
    },
)
async def health(ctl: Ctl, response: Response) -> dict[str, Any]:
    """Store and backend status; 503 when the store does not answer."""
    store_ok = await ctl.store.ping()
    body = {
        "status": "ok" if store_ok else "degraded",
        "version": __version__,
        "store": {"ok": store_ok, "url": ctl.store.url_for_log().split("://", 1)[0]},
        "backend": {
            "name": ctl.node.vmm,
            "accel": ctl.node.accel.name,
            "reason": ctl.node.accel.reason,
        },
        # Every VMM this controller knows: whether it could run here, and if not, why not.
        "vmms": {vmm.value: check_vmm(ctl.settings, vmm).to_dict() for vmm in Vmm},
        "images": ctl.node.images_status(),
        # Per VM type, the default size's restore template: building, ready, or why not.
        "templates": ctl.templates.status(),
        "vms": {"live": len(ctl.vms.live)},
    }
    if not store_ok:
        response.status_code = 503
    return body


@router.get(
    "/metrics",
    responses={200: {"content": {CONTENT_TYPE: {}}}, **error_responses(400, 401, 403, 413, 500)},
)
async def metrics(key: AdminKey, ctl: Ctl) -> Response:
    """Prometheus text: VMs by status, create→healthy by boot mode, failures, HTTP requests."""
    await ctl.vms.refresh_gauges()
    return Response(ctl.metrics.render(), media_type=CONTENT_TYPE)
