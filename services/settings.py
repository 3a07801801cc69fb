"""Service settings, read from the environment (prefix `NAS_`, e.g. `NAS_DATABASE_URL`).

The environment is read in one place: `get_settings()` builds `Settings` once per process and caches
it; everything else (the server, the scheduler, the CLI, the client, the farm agent) asks it. No other
module reads `os.environ` for a `NAS_*` variable. Tests that change the environment call
`get_settings.cache_clear()` (an autouse fixture does).
"""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
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
    replica_id: str | None = Field(
        None,
        max_length=200,
        description="this scheduler's name in search claims; stable across restarts (e.g. the pod name) "
        "lets a restarted replica take its running searches back at once (None: host:pid:random)",
    )
    heartbeat_s: float = Field(5.0, gt=0, le=600, description="how often a scheduler renews its leases")
    lease_s: float = Field(
        30.0, gt=0, le=3600, description="a running search not heartbeated for this long is reclaimed"
    )
    evaluation_retries: int = Field(
        2, ge=0, le=10, description="re-runs of a trial whose evaluation worker died, before it is failed"
    )
    warm_evaluators: int = Field(
        2,
        ge=0,
        le=256,
        description="evaluator actors kept started between searches, so the next search starts at once "
        "(0: every search starts its own); each holds one Ray CPU while it waits",
    )
    warm_evaluators_idle_s: float = Field(
        600.0, gt=0, description="a warm evaluator actor unused for this long is ended, freeing its CPU"
    )
    lut_warmup: int = Field(10, ge=0)
    lut_repeats: int = Field(30, ge=1)
    lut_min_seconds: float = Field(
        0.0,
        ge=0,
        le=60,
        description="local table measurements time each block past lut_repeats until its runs span this "
        "many seconds (docs/lut.md)",
    )
    server_url: str = Field("http://127.0.0.1:8000", description="where the CLI client finds the API")
    api_key: str | None = Field(
        None, description="the API key the CLI, the Python client and farm agents send (`nas keys create`)"
    )
    farm_state_dir: Path = Field(
        Path.home() / ".cache" / "nas-farm",
        description="where `nas farm run` keeps its spool and run state (to resume after an interruption)",
    )
    state_dir: Path = Field(
        Path.home() / ".cache" / "nas-server",
        description="where a server records the processes of the local Ray it starts, so that a later "
        "start ends those a killed server left behind (servers of one host may share it)",
    )
    supernet_dir: Path = Field(
        Path("var/supernets"),
        description="where trained supernets live (`nas supernet train`); the `supernet_*` proxies look here",
    )
    max_body_bytes: int = Field(
        32 << 20, ge=1024, description="request bodies above this many bytes are refused with 413"
    )
    max_heavy_requests: int = Field(
        2,
        ge=1,
        le=64,
        description="expensive requests (predict, evaluate) served at once; more get 429 with Retry-After",
    )
    heavy_request_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="an expensive request still working after this long answers 503"
    )
    max_request_input_scale: float = Field(
        4.0,
        ge=1,
        le=1024,
        description="predict and evaluate refuse (422) space options whose inputs have more than this many "
        "times the elements of the space's default inputs (resolution 448 for EfficientFormerV2)",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="server logs as text lines or one JSON object per line (json)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    auth_disabled: bool = Field(
        False,
        description="development only: serve without API keys; refused unless `host` is a loopback address",
    )

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> Settings:
        if self.auth_disabled and not is_loopback(self.host):
            raise ValueError(
                f"auth_disabled (NAS_AUTH_DISABLED / --no-auth) is only allowed when the server binds to a "
                f"loopback address such as 127.0.0.1, ::1 or localhost; host is {self.host!r}. Create an "
                f"API key with `nas keys create` instead."
            )
        return self

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> Settings:
        if self.lease_s <= self.heartbeat_s:
            raise ValueError(
                f"lease_s ({self.lease_s}) must be longer than heartbeat_s ({self.heartbeat_s}), or live "
                "searches would be reclaimed between two heartbeats (3x or more is advisable)"
            )
        return self

    def with_overrides(self, **overrides: Any) -> Settings:
        """These settings with some fields replaced (validated; the environment is not read again)."""
        return type(self).model_validate({**self.model_dump(), **overrides})


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()


def is_loopback(host: str | None) -> bool:
    """Whether `host` (an address or `localhost`) can only be reached from this machine."""
    if host is None:
        return False
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
