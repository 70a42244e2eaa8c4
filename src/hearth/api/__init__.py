"""The controller's REST API (FastAPI): app factory, routes by resource, one error mapping."""

from hearth.api.app import create_app

__all__ = ["create_app"]
