"""The Python client of the REST API: HTTP only (no torch, Ray or database at import)."""

from services.client.http_client import (
    ClientError,
    NasClient,
    ServerUnreachableError,
    format_detail,
    parse_sse,
)

__all__ = ["ClientError", "NasClient", "ServerUnreachableError", "format_detail", "parse_sse"]
