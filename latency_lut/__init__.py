"""Latency lookup tables: what a block costs on a device. Depends on `search_spaces`."""

from latency_lut._table import LatencyEntry, LatencyTable, MemoryLatencyTable
from latency_lut.devices import BUILTIN_DEVICES, Device, device_info, known_devices
from latency_lut.predictors import (
    LatencyEstimate,
    LatencyPredictor,
    MeasuredSubnet,
    TableView,
    select_predictor,
    table_predictors,
)

__all__ = [
    "BUILTIN_DEVICES",
    "Device",
    "LatencyEntry",
    "LatencyEstimate",
    "LatencyPredictor",
    "LatencyTable",
    "MeasuredSubnet",
    "MemoryLatencyTable",
    "TableView",
    "device_info",
    "known_devices",
    "select_predictor",
    "table_predictors",
]

# pandas-based file import/export stays out of the package import: `from latency_lut.io import ...`.
from latency_lut.backends import (
    MeasurementBackend,
    TorchCPUBackend,
    get_backend,
    list_backends,
    summarize,
)
from latency_lut.devices import NoLocalBackendError, device_backend
from latency_lut.measure import MeasureReport, measure_missing, missing_entries, needed_blocks
from latency_lut.sql_table import SqlLatencyTable

__all__ += [
    "MeasureReport",
    "MeasurementBackend",
    "NoLocalBackendError",
    "SqlLatencyTable",
    "TorchCPUBackend",
    "device_backend",
    "get_backend",
    "list_backends",
    "measure_missing",
    "missing_entries",
    "needed_blocks",
    "summarize",
]
