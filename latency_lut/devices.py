"""Devices: named latency targets. Built-in ones can be measured on this host; others get their
tables from device farms or imports."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from latency_lut.backends import MeasurementBackend, get_backend


@dataclass(frozen=True)
class Device:
    """A latency target. `backend` names the measurement backend that fills its table on this host
    (`None` when the hardware is elsewhere: a phone, a farm's GPU)."""

    name: str
    runtime: str
    hardware: str
    backend: str | None = None
    description: str = ""


BUILTIN_DEVICES: dict[str, Device] = {
    "host-cpu-torch": Device(
        name="host-cpu-torch",
        runtime="torch",
        hardware="this host's CPU",
        backend="torch-cpu",
        description="PyTorch eager on the service host's CPU, fixed thread count (measured locally)",
    ),
    "host-cpu-onnxruntime": Device(
        name="host-cpu-onnxruntime",
        runtime="onnxruntime",
        hardware="this host's CPU",
        backend="onnxruntime-cpu",
        description="ONNX Runtime (CPU execution provider) on the service host's CPU, one intra-op thread "
        "(measured locally; needs the onnx extra)",
    ),
}


def known_devices(table_devices: Iterable[str] = ()) -> list[str]:
    """Built-in devices plus every device that has a table."""
    return sorted(set(BUILTIN_DEVICES) | set(table_devices))


def device_info(name: str) -> Device:
    """The built-in `Device`, or a generic description for a device known only by its table."""
    return BUILTIN_DEVICES.get(name) or Device(name=name, runtime="unknown", hardware="unknown")


class NoLocalBackendError(LookupError):
    """A device's table cannot be measured on this host (its hardware is elsewhere)."""

    def __init__(self, device: str):
        local = sorted(name for name, known in BUILTIN_DEVICES.items() if known.backend)
        super().__init__(
            f"device {device!r} has no measurement backend on this host: its table must come from a "
            f"device farm or an import (`nas lut import`); devices measurable here: {local}"
        )
        self.device = device


def device_backend(name: str, **kwargs: Any) -> MeasurementBackend:
    """The backend that measures device `name` on this host (built with `kwargs`), or
    `NoLocalBackendError` when the device is measured elsewhere."""
    backend = device_info(name).backend
    if backend is None:
        raise NoLocalBackendError(name)
    return get_backend(backend, **kwargs)
