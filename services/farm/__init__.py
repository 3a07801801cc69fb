"""The device farm agent: fills a device's latency table on a NAS server from the machine it runs on
(`services.farm.agent`)."""

from services.farm.agent import (
    FarmAgent,
    FarmConfig,
    FarmError,
    FarmEvent,
    FarmReport,
    measure_and_upload_subnets,
    validate_device,
    with_retries,
)

__all__ = [
    "FarmAgent",
    "FarmConfig",
    "FarmError",
    "FarmEvent",
    "FarmReport",
    "measure_and_upload_subnets",
    "validate_device",
    "with_retries",
]
