"""`NasClient`: a small Python client of the REST API (what the CLI uses)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "cancelled")


class ClientError(Exception):
    """The server refused a request; `detail` is its JSON error detail, `status` the HTTP status."""

    def __init__(self, status: int, detail: Any, url: str):
        self.status = status
        self.detail = detail
        self.url = url
        super().__init__(f"{status} from {url}: {format_detail(detail)}")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The detail as a list of `{field, message, allowed}` items (one item for plain-text details)."""
        if isinstance(self.detail, list):
            return [d if isinstance(d, dict) else {"field": "", "message": str(d)} for d in self.detail]
        return [{"field": "", "message": str(self.detail), "allowed": None}]


class ServerUnreachableError(ConnectionError):
    """Nothing answers at the server's URL."""

    def __init__(self, url: str, reason: str):
        self.url = url
        super().__init__(f"no NAS server answers at {url} ({reason})")


def format_detail(detail: Any) -> str:
    """One readable line per error item: `field: message (allowed: ...)`."""
    if not isinstance(detail, list):
        return str(detail)
    lines = []
    for item in detail:
        if not isinstance(item, dict):
            lines.append(str(item))
            continue
        message = str(item.get("message", ""))
        field = item.get("field")
        line = message if not field or message.startswith(f"{field}:") else f"{field}: {message}"
        if item.get("allowed") not in (None, "", []):
            line += f" (allowed: {item['allowed']})"
        lines.append(line)
    return "; ".join(lines)


class NasClient:
    """Talks to one NAS server at `base_url` (e.g. `http://127.0.0.1:8000`)."""

    def __init__(self, base_url: str, *, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def __enter__(self) -> NasClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, raw: bool = False, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachableError(self.base_url, str(exc) or type(exc).__name__) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text or response.reason_phrase
            raise ClientError(response.status_code, detail, f"{method} {self.base_url}{path}")
        return response.content if raw else response.json()

    # ----------------------------------------------------------------- resources
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def spaces(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/spaces")

    def space(self, name: str, **options: Any) -> dict[str, Any]:
        return self._request("GET", f"/v1/spaces/{name}", params=options)

    def devices(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/devices")

    # ----------------------------------------------------------------- device farms
    def device(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/devices/{name}")

    def register_device(
        self,
        name: str,
        *,
        runtime: str,
        hardware: str,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Register a device (or update the description and metadata of the same registration)."""
        body = {
            "name": name,
            "runtime": runtime,
            "hardware": hardware,
            "description": description,
            "metadata": dict(metadata or {}),
        }
        return self._request("POST", "/v1/devices", json=body)

    def work(
        self,
        device: str,
        *,
        space: str | None = None,
        options: Mapping[str, Any] | None = None,
        configs: list[Any] | None = None,
        search: str | None = None,
        offset: int = 0,
        limit: int = 500,
    ) -> dict[str, Any]:
        """One page of the blocks `device` lacks for a space (or for configs, or a search)."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if space is not None:
            params["space"] = space
        if options:
            params["options"] = json.dumps(dict(options))
        if configs is not None:
            params["configs"] = json.dumps(configs)
        if search is not None:
            params["search"] = search
        return self._request("GET", f"/v1/devices/{device}/work", params=params)

    def upload_measurements(self, device: str, batch: Mapping[str, Any]) -> dict[str, Any]:
        """POST one batch of raw samples (`MeasurementBatch`); idempotent per (run id, key)."""
        return self._request("POST", f"/v1/devices/{device}/measurements", json=dict(batch))

    def samples(self, device: str, key: str) -> list[dict[str, Any]]:
        return self._request("GET", f"/v1/devices/{device}/samples", params={"key": key})

    def predict(
        self, device: str, space: str, configs: list[Any], *, options: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        body = {"space": space, "space_options": dict(options or {}), "configs": configs}
        return self._request("POST", f"/v1/devices/{device}/predict", json=body)

    def upload_pairs(self, device: str, batch: Mapping[str, Any]) -> dict[str, Any]:
        """POST subnets measured end to end (`AccuracyBatch`); idempotent per (run id, subnet)."""
        return self._request("POST", f"/v1/devices/{device}/accuracy", json=dict(batch))

    def accuracy(self, device: str, *, space: str | None = None, run_id: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"space": space, "run_id": run_id}.items() if v is not None}
        return self._request("GET", f"/v1/devices/{device}/accuracy", params=params)

    def export_table(self, device: str, fmt: str = "csv") -> bytes:
        """The device's table as the bytes of a CSV or Parquet file."""
        return self._request("GET", f"/v1/devices/{device}/table", params={"format": fmt}, raw=True)

    def import_table(self, device: str, content: bytes, fmt: str = "csv") -> dict[str, Any]:
        headers = {"Content-Type": "application/octet-stream"}
        return self._request(
            "PUT", f"/v1/devices/{device}/table", params={"format": fmt}, content=content, headers=headers
        )

    def submit(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Queue a search; returns `{id, status, links}`."""
        return self._request("POST", "/v1/searches", json=dict(spec))

    def get(self, search_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/searches/{search_id}")

    def list(self, *, status: str | None = None, offset: int = 0, limit: int = 50) -> dict[str, Any]:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status:
            params["status"] = status
        return self._request("GET", "/v1/searches", params=params)

    def trials(
        self, search_id: str, *, offset: int = 0, limit: int = 100, state: str | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if state:
            params["state"] = state
        return self._request("GET", f"/v1/searches/{search_id}/trials", params=params)

    def pareto(self, search_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/searches/{search_id}/pareto")

    def cancel(self, search_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/searches/{search_id}/cancel")

    def wait(
        self,
        search_id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the search has finished; `on_progress` sees every state read. Returns the last."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            search = self.get(search_id)
            if on_progress is not None:
                on_progress(search)
            if search["status"] in FINISHED:
                return search
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"search {search_id} still {search['status']} after {timeout_s}s")
            time.sleep(poll_s)
