"""``/health`` (no key needed; details for the admin key) and ``/metrics`` (admin key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from hearth import __version__
from hearth.api.auth import AdminKey, Ctl, optional_admin_key
from hearth.api.schemas import error_responses
from hearth.metrics import CONTENT_TYPE
from hearth.vm.select import Vmm, check_vmm

router = APIRouter(tags=["system"])


@router.get(
    "/health",
    responses={
        503: {"description": "The store does not answer (the same body, degraded)"},
        **error_responses(400, 401, 403),
    },
    # The key is optional here: without one, the public body; with the admin key, the details.
    openapi_extra={"security": [{}, {"apiKey": []}]},
)
async def health(ctl: Ctl, request: Request, response: Response) -> dict[str, Any]:
    """Status, version, whether the store answers (503 when not), which VMM runs and, for each
    VMM, whether it could run here and if not why; each VM type's image (`ready`, `missing`)
    and restore template (`pending`, `building`, `ready`, `no image`, `failed`, `off`) states.
    No key is needed. With the admin key, `details` adds the image paths on the host, the
    templates' error texts and how many VMs this controller runs (`vms.live`); a key that is not
    valid is 401, one that is not an admin's 403.
    While the store does not answer, no key can be checked: the public body, with 503."""
    store_ok = await ctl.store.ping()
    admin = await optional_admin_key(request, ctl) if store_ok else None
    images, templates = ctl.node.images_status(), ctl.templates.status()
    body: dict[str, Any] = {
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
        "images": {vm_type: status.state.value for vm_type, status in images.items()},
        # Per VM type, the default size's restore template: building, ready, or failed.
        "templates": {vm_type: status.state.value for vm_type, status in templates.items()},
    }
    if admin is not None:
        # Host paths, internal error texts and how busy the host is: for the operator only.
        body["details"] = {
            "images": {vm_type: status.text for vm_type, status in images.items()},
            "templates": {vm_type: status.text for vm_type, status in templates.items()},
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
