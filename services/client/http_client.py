"""`NasClient`: a small Python client of the REST API (what the CLI uses)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import httpx

from services.client.results import (
    Device,
    Page,
    ParetoFront,
    Search,
    Space,
    Step,
    Submission,
    Trial,
)
from services.settings import get_settings


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
    """One readable line per error item: `field: message (allowed: ...)`; several items start on a new
    line each."""
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
        allowed = item.get("allowed")
        # Messages that list what is allowed already are not followed by the same list again.
        if allowed not in (None, "", []) and str(allowed) not in message:
            line += f" (allowed: {allowed})"
        lines.append(line)
    return lines[0] if len(lines) == 1 else "".join(f"\n  {line}" for line in lines)


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Server-sent events from a stream's lines: `(event, JSON data)` per event; comments (keep-alives)
    and events without data are skipped."""
    event, data = "message", []
    for line in lines:
        line = line.rstrip("\r")
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
    if data:
        yield event, json.loads("\n".join(data))


class NasClient:
    """Talks to one NAS server at `base_url` (e.g. `http://127.0.0.1:8000`).

    Searches, trials, fronts, devices and spaces come back as the typed objects of
    `services.client.results` (`Search`, `Trial`, `ParetoFront`, `Device`, `Space`; lists as a `Page`
    of them); the device-farm calls (work lists, uploads, predictions, accuracy) return the API's
    JSON as dicts."""

    def __init__(self, base_url: str | None = None, *, timeout: float = 30.0, api_key: str | None = None):
        """`base_url` defaults to `NAS_SERVER_URL` and `api_key` to `NAS_API_KEY` (see
        `services.settings`); the key is sent as a bearer token."""
        settings = get_settings()
        self.base_url = (base_url or settings.server_url).rstrip("/")
        api_key = api_key or settings.api_key or None
        headers = {"Authorization": f"Bearer {api_key.strip()}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

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
            self._raise(response, method, path)
        return response.content if raw else response.json()

    def _raise(self, response: httpx.Response, method: str, path: str) -> NoReturn:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text or response.reason_phrase
        raise ClientError(response.status_code, detail, f"{method} {self.base_url}{path}")

    # ----------------------------------------------------------------- resources
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def spaces(self) -> Page[Space]:
        return Page.of(self._request("GET", "/v1/spaces"), Space.of)

    def space(self, name: str, **options: Any) -> Space:
        return Space.of(self._request("GET", f"/v1/spaces/{name}", params=options))

    def devices(self) -> Page[Device]:
        return Page.of(self._request("GET", "/v1/devices"), Device.of)

    # ----------------------------------------------------------------- device farms
    def device(self, name: str) -> Device:
        return Device.of(self._request("GET", f"/v1/devices/{name}"))

    def register_device(
        self,
        name: str,
        *,
        runtime: str,
        hardware: str,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> Device:
        """Register a device (or update the description and metadata of the same registration)."""
        body = {
            "name": name,
            "runtime": runtime,
            "hardware": hardware,
            "description": description,
            "metadata": dict(metadata or {}),
        }
        return Device.of(self._request("POST", "/v1/devices", json=body))

    def work(
        self,
        device: str,
        *,
        space: str | None = None,
        options: Mapping[str, Any] | None = None,
        configs: list[Any] | None = None,
        search: str | None = None,
        timings: list[str] | None = None,
        offset: int = 0,
        limit: int = 500,
    ) -> dict[str, Any]:
        """One page of the table entries `device` lacks for a space (or for configs, or a search), for
        each of `timings` (default: all)."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if timings:
            params["timing"] = list(timings)
        if space is not None:
            params["space"] = space
        if options:
            params["options"] = json.dumps(dict(options))
        if configs is not None:
            params["configs"] = json.dumps(configs)
        if search is not None:
            params["search"] = search
        return self._request("GET", f"/v1/devices/{device}/work", params=params)

    def subnet_work(
        self, device: str, space: str, *, options: Mapping[str, Any] | None = None, n: int = 16, seed: int = 0
    ) -> dict[str, Any]:
        """Whole subnets the device should measure end to end next (its calibration subnets)."""
        params: dict[str, Any] = {"space": space, "n": n, "seed": seed}
        if options:
            params["options"] = json.dumps(dict(options))
        return self._request("GET", f"/v1/devices/{device}/work/subnets", params=params)

    def upload_measurements(self, device: str, batch: Mapping[str, Any]) -> dict[str, Any]:
        """POST one batch of raw samples (`MeasurementBatch`); idempotent per (run id, key)."""
        return self._request("POST", f"/v1/devices/{device}/measurements", json=dict(batch))

    def samples(self, device: str, key: str) -> Page[dict[str, Any]]:
        """Every run's raw samples of one table key, one dict per run."""
        return Page.of(self._request("GET", f"/v1/devices/{device}/samples", params={"key": key}), dict)

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

    def submit(self, spec: Mapping[str, Any]) -> Submission:
        """Queue a search; the answer has its id, links and warnings about the spec."""
        return Submission.of(self._request("POST", "/v1/searches", json=dict(spec)))

    def get(self, search_id: str) -> Search:
        return Search.of(self._request("GET", f"/v1/searches/{search_id}"))

    def list(self, *, status: str | None = None, offset: int = 0, limit: int = 50) -> Page[Search]:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if status:
            params["status"] = status
        return Page.of(self._request("GET", "/v1/searches", params=params), Search.of)

    def trials(
        self, search_id: str, *, offset: int = 0, limit: int = 100, state: str | None = None
    ) -> Page[Trial]:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if state:
            params["state"] = state
        return Page.of(self._request("GET", f"/v1/searches/{search_id}/trials", params=params), Trial.of)

    def pareto(self, search_id: str, *, offset: int = 0, limit: int | None = None) -> ParetoFront:
        params: dict[str, Any] = {"offset": offset}
        if limit is not None:
            params["limit"] = limit
        return ParetoFront.of_front(self._request("GET", f"/v1/searches/{search_id}/pareto", params=params))

    def trial(self, search_id: str, number: int) -> Trial:
        return Trial.of(self._request("GET", f"/v1/searches/{search_id}/trials/{number}"))

    def steps(self, search_id: str, *, offset: int = 0, limit: int | None = None) -> Page[Step]:
        """The decisions of a stepwise strategy (`evolving`, `slimming`); empty for other strategies."""
        params: dict[str, Any] = {"offset": offset}
        if limit is not None:
            params["limit"] = limit
        return Page.of(self._request("GET", f"/v1/searches/{search_id}/steps", params=params), Step.of)

    def export_trials(
        self, search_id: str, path: str | Path, fmt: str = "csv", *, state: str | None = None
    ) -> int:
        """Write every trial of a search to `path` as CSV or Parquet (streamed); returns the bytes
        written. The file appears only once complete (written to a temporary name first)."""
        params: dict[str, Any] = {"format": fmt}
        if state:
            params["state"] = state
        path = Path(path)
        partial = path.with_name(path.name + ".part")
        written = 0
        try:
            path_ = f"/v1/searches/{search_id}/trials/export"
            with self._stream("GET", path_, params=params) as response, partial.open("wb") as out:
                for block in response.iter_bytes():
                    out.write(block)
                    written += len(block)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        return written

    def events(
        self, search_id: str, *, poll_s: float = 1.0, read_timeout_s: float | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Follow `GET /v1/searches/{id}/events`: yields `(event, data)` pairs (`progress`, then
        `end`) until the server closes the stream (or nothing arrives for `read_timeout_s`: then
        `ServerUnreachableError`)."""
        path = f"/v1/searches/{search_id}/events"
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
        with self._stream("GET", path, params={"poll_s": poll_s}, timeout=timeout) as response:
            yield from parse_sse(response.iter_lines())

    def watch(
        self,
        search_id: str,
        on_progress: Callable[[Search], None] | None = None,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> Search:
        """Follow a search's event stream to its end; `on_progress` sees every event's search (without
        its spec). Returns the search as the final event gives it (without its spec). With `timeout_s`, a
        search still running after that many seconds raises `TimeoutError` (the search goes on)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last: Search | None = None
        try:
            for _event, data in self.events(search_id, poll_s=poll_s, read_timeout_s=timeout_s):
                last = Search.of(data)
                if on_progress is not None:
                    on_progress(last)
                if deadline is not None and time.monotonic() > deadline:
                    break
        except ServerUnreachableError:
            last = None  # the stream broke off (a restarting server) or went quiet: poll instead
        if last is None or not last.finished:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self.wait(search_id, on_progress, poll_s=poll_s, timeout_s=remaining)
        return last

    def trials_dataframe(self, search_id: str, *, state: str | None = None) -> Any:
        """Every trial of a search as a pandas DataFrame, one row per trial, like Optuna's
        `study.trials_dataframe()`: `number`, `config_id`, `state`, `feasible`, `on_front`,
        `duration_s`, `finished_at`, `error`, then flat `value.<objective>`, `config.<choice>` and
        `metric.<name>` columns (one streamed Parquet export, however many trials)."""
        import io

        import pandas as pd

        params: dict[str, Any] = {"format": "parquet"}
        if state:
            params["state"] = state
        buffer = io.BytesIO()
        with self._stream("GET", f"/v1/searches/{search_id}/trials/export", params=params) as response:
            for block in response.iter_bytes():
                buffer.write(block)
        buffer.seek(0)
        return pd.read_parquet(buffer)

    def pareto_dataframe(self, search_id: str) -> Any:
        """The Pareto front of a search as a pandas DataFrame: `number`, `config_id`, then
        `value.<objective>` and `config.<choice>` columns, one row per member (every page read)."""
        import pandas as pd

        rows: list[dict[str, Any]] = []
        front = self.pareto(search_id)
        while True:
            for trial in front:
                row = {"number": trial.number, "config_id": trial.config_id}
                row.update({f"value.{k}": v for k, v in trial.values.items()})
                row.update({f"config.{k}": v for k, v in trial.config.items()})
                rows.append(row)
            if not front.items or len(rows) >= front.total:
                break
            front = self.pareto(search_id, offset=len(rows))
        names = [o.name for o in front.objectives]
        columns = ["number", "config_id", *(f"value.{n}" for n in names)]
        # The objectives first (also for an empty front), then the config choices as they come.
        return pd.DataFrame(rows, columns=list(dict.fromkeys([*columns, *(k for r in rows for k in r)])))

    def evaluate(
        self,
        space: str,
        config: Mapping[str, Any] | str,
        *,
        options: Mapping[str, Any] | None = None,
        devices: list[str] | None = None,
        macs: bool = True,
    ) -> dict[str, Any]:
        """A subnet's objectives now: params, MACs, latency per device with the covered share."""
        body = {
            "config": config if isinstance(config, str) else dict(config),
            "space_options": dict(options or {}),
            "devices": list(devices or []),
            "macs": macs,
        }
        return self._request("POST", f"/v1/spaces/{space}/evaluate", json=body)

    def export_subnet(
        self,
        space: str,
        config: Mapping[str, Any] | str,
        path: str | Path,
        fmt: str = "onnx",
        *,
        options: Mapping[str, Any] | None = None,
    ) -> int:
        """Write a subnet as a TorchScript, ONNX or zipped Core ML file to `path`; returns its size."""
        body = {
            "config": config if isinstance(config, str) else dict(config),
            "space_options": dict(options or {}),
            "format": fmt,
        }
        timeout = httpx.Timeout(self._http.timeout.connect, read=600.0)
        content = self._request("POST", f"/v1/spaces/{space}/export", json=body, raw=True, timeout=timeout)
        Path(path).write_bytes(content)
        return len(content)

    def metrics(self) -> str:
        """The Prometheus text of `GET /metrics`."""
        return self._request("GET", "/metrics", raw=True).decode()

    @contextlib.contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise(response, method, path)
                yield response
        except httpx.TransportError as exc:
            raise ServerUnreachableError(self.base_url, str(exc) or type(exc).__name__) from None

    def cancel(self, search_id: str) -> Search:
        return Search.of(self._request("POST", f"/v1/searches/{search_id}/cancel"))

    def wait(
        self,
        search_id: str,
        on_progress: Callable[[Search], None] | None = None,
        *,
        poll_s: float = 1.0,
        timeout_s: float | None = None,
    ) -> Search:
        """Poll until the search has finished; `on_progress` sees every state read. Returns the last."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            search = self.get(search_id)
            if on_progress is not None:
                on_progress(search)
            if search.finished:
                return search
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"search {search_id} still {search.status} after {timeout_s}s")
            time.sleep(poll_s)
