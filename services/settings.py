"""Service settings, read from the environment (prefix `NAS_`, e.g. `NAS_DATABASE_URL`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///./var/nas.db"


class Settings(BaseSettings):
    """Everything the API server, the scheduler and the CLI need to know about their surroundings."""

    model_config = SettingsConfigDict(env_prefix="NAS_", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite:///path/to/file.db (its folder is created on first use) "
        "or postgresql+psycopg://user@host/db",
    )
    ray_address: str | None = Field(
        None, description="existing Ray cluster to join ('auto', 'ray://host:10001'); None starts a local Ray"
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (None: all)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_concurrent_searches: int = Field(1, ge=1, le=64)
    scheduler_poll_s: float = Field(1.0, gt=0, le=60)
    lut_warmup: int = Field(10, ge=0)
    lut_repeats: int = Field(30, ge=1)
    server_url: str = Field("http://127.0.0.1:8000", description="where the CLI client finds the API")
