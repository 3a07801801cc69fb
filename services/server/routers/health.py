"""`GET /v1/health`: is the service up, can it reach its database, where does it run searches."""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter, Request

from services.core.db import check_db
from services.server.deps import EngineDep, SettingsDep, public
from services.server.schemas import DatabaseHealth, Health, RayInfo

router = APIRouter(prefix="/v1/health", tags=["health"])


def service_version() -> str:
    try:
        return metadata.version("hwnas")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@router.get("", response_model=Health, dependencies=[public()])
def health(request: Request, settings: SettingsDep, engine: EngineDep) -> Health:
    error = check_db(engine)
    return Health(
        status="ok" if error is None else "degraded",
        version=service_version(),
        database=DatabaseHealth(ok=error is None, backend=engine.dialect.name, error=error),
        ray=RayInfo(
            mode="local" if settings.ray_address is None else "cluster", address=settings.ray_address
        ),
        scheduler=getattr(request.app.state, "scheduler", None) is not None,
    )
