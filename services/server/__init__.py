"""The HTTP server: the FastAPI app factory, one router per resource, their dependencies, schemas,
error handlers and middleware, and the dashboard page."""

from services.server.app import create_app

__all__ = ["create_app"]
