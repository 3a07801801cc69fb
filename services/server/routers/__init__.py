"""REST routers, one per resource. A router imports only `services.server.deps`, `.schemas`, `.errors`
and `services.core`: never another router, never sqlalchemy (import-linter contracts, `make lint`)."""

from services.server.routers import dashboard, devices, health, measurements, metrics, searches, spaces

ROUTERS = [
    health.router,
    spaces.router,
    devices.router,
    measurements.router,
    searches.router,
    metrics.router,
    dashboard.api,
    dashboard.pages,
]

__all__ = ["ROUTERS"]
