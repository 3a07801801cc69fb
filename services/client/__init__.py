"""The Python client of the REST API: HTTP only (no torch, Ray or database at import)."""

from services.client.http_client import (
    ClientError,
    NasClient,
    ServerUnreachableError,
    format_detail,
    parse_sse,
)
from services.client.results import (
    Device,
    Objective,
    Page,
    ParetoFront,
    ParetoMember,
    Search,
    Space,
    Step,
    Submission,
    Trial,
)

__all__ = [
    "ClientError",
    "Device",
    "NasClient",
    "Objective",
    "Page",
    "ParetoFront",
    "ParetoMember",
    "Search",
    "ServerUnreachableError",
    "Space",
    "Step",
    "Submission",
    "Trial",
    "format_detail",
    "parse_sse",
]
