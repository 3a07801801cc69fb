"""REST routers, one per resource, and the error handlers that give every bad request a 4xx JSON body."""

from services.api import devices, health, metrics, searches, spaces
from services.api.errors import install_error_handlers

ROUTERS = [health.router, spaces.router, devices.router, searches.router, metrics.router]

__all__ = ["ROUTERS", "install_error_handlers"]
