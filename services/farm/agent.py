"""The device farm agent: fills a device's latency table on a NAS server from the machine it runs on.

`FarmAgent.run` registers the device when the server does not know it, pulls the work list (the
blocks of a space, of some configs or of a search that the device's table lacks), builds every block
with `build_block`, times it with the backend of the device's runtime (warm-up, repeats, fixed
threads) and uploads the samples in batches, each retried with exponential backoff. Optionally it then
measures a few whole random subnets end to end as the device's *calibration* subnets.

Interruptions lose nothing: every measured row is appended to a spool file before it is uploaded,
and the run's id is kept in a state file, so the same command started again first re-uploads the
spool under the same run id (the server ignores rows it already has) and then measures only what the
table still lacks. `validate_device` measures whole subnets with the same backend and uploads them as
validation pairs, and the server reports how well the table predicted them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from latency_lut import MeasurementBackend, get_backend
from latency_lut.backends import check_min_seconds
from latency_lut.features import block_features
from latency_lut.measure import weight_bits
from latency_lut.timings import timing_key
from latency_lut.validate import measure_subnet, sample_configs
from search_spaces import BlockSpec, SearchSpace, get_space
from services.client import ClientError, NasClient, ServerUnreachableError
from services.settings import get_settings

#: `--backend` of the agent -> measurement backend (torch picks CPU or CUDA by `torch_device`).
RUNTIME_BACKENDS = {"torch": "torch-cpu", "onnxruntime": "onnxruntime-cpu", "coreml": "coreml"}
#: HTTP statuses worth retrying: timeouts, rate limits and server-side failures.
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}

T = TypeVar("T")


class FarmError(RuntimeError):
    """The agent cannot go on (the server refused a batch, a backend cannot run here, ...)."""


@dataclass(frozen=True)
class FarmEvent:
    """Progress: `phase` is `work`, `measure`, `upload`, `calibrate` or `validate`."""

    phase: str
    done: int
    total: int
    detail: str = ""


@dataclass
class FarmConfig:
    """What one agent run does; the CLI's `nas farm run` options."""

    device: str
    backend: str
    space: str
    options: dict[str, Any] = field(default_factory=dict)
    configs: list[Any] | None = None
    search: str | None = None
    warmup: int = 10
    repeats: int = 30
    threads: int = 1
    clock: str | None = None
    min_seconds: float = 0.0
    torch_device: str = "cpu"
    batch_size: int = 64
    page_size: int = 500
    retries: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    calibrate: int = 0
    seed: int = 0
    state_dir: Path = field(default_factory=lambda: get_settings().farm_state_dir)
    export_dir: Path | None = None
    dry_run: bool = False
    register: bool = True

    def __post_init__(self) -> None:
        if self.backend not in RUNTIME_BACKENDS:
            raise ValueError(f"backend must be one of {list(RUNTIME_BACKENDS)}, got {self.backend!r}")
        if self.torch_device not in ("cpu", "cuda"):
            raise ValueError(f"torch_device must be 'cpu' or 'cuda', got {self.torch_device!r}")
        for name in ("batch_size", "page_size", "repeats", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("warmup", "retries", "calibrate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.min_seconds = check_min_seconds(self.min_seconds)

    @property
    def backend_name(self) -> str:
        if self.backend == "torch" and self.torch_device == "cuda":
            return "torch-cuda"
        return RUNTIME_BACKENDS[self.backend]

    def make_backend(self) -> MeasurementBackend:
        name = self.backend_name
        # The floor on a timing's length (`--min-seconds`) applies to every backend; torch-cuda and
        # coreml time with their own clocks and threads.
        options: dict[str, Any] = {"min_seconds": self.min_seconds}
        if name in ("torch-cpu", "onnxruntime-cpu"):
            options.update(threads=self.threads, clock=self.clock)
        return get_backend(name, **options)

    @property
    def run_key(self) -> str:
        """What makes two agent invocations the same run (and so share a run id when resumed)."""
        what = {
            "device": self.device,
            "backend": self.backend_name,
            "space": self.space,
            "options": self.options,
            "configs": self.configs,
            "search": self.search,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class FarmReport:
    """What a run did."""

    run_id: str
    device: str
    backend: str
    resumed: bool = False
    planned: int = 0
    measured: int = 0
    uploaded: int = 0
    duplicates: int = 0
    respooled: int = 0
    exported: int = 0
    calibrated: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    registered: bool = False
    timing_supported: bool = True
    dry_run: bool = False
    seconds: float = 0.0


def with_retries(
    call: Callable[[], T],
    *,
    retries: int,
    backoff_s: float,
    max_backoff_s: float,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, Exception], None] | None = None,
) -> T:
    """`call()`, retried up to `retries` times on an unreachable server or a retryable status, waiting
    `backoff_s * 2**attempt` (at most `max_backoff_s`, with up to 25% random jitter) in between."""
    for attempt in range(retries + 1):
        try:
            return call()
        except (ServerUnreachableError, ClientError) as exc:
            retryable = isinstance(exc, ServerUnreachableError) or exc.status in RETRY_STATUSES
            if not retryable or attempt == retries:
                raise
            if on_retry is not None:
                on_retry(attempt + 1, exc)
            delay = min(max_backoff_s, backoff_s * 2**attempt)
            sleep(delay * (1 + 0.25 * random.random()))
    raise AssertionError("unreachable")


class _Spool:
    """Rows measured but not yet acknowledged by the server, one JSON object per line."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # the last line of a process killed mid-write
        return rows

    def append(self, row: Mapping[str, Any]) -> None:
        with self.path.open("a") as spool:
            spool.write(json.dumps(row) + "\n")
            spool.flush()
            os.fsync(spool.fileno())

    def drop(self, keys: set[str]) -> None:
        kept = [row for row in self.read() if row["key"] not in keys]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        tmp.replace(self.path)


class FarmAgent:
    """One run of the agent against one server; see the module docstring."""

    def __init__(
        self,
        config: FarmConfig,
        client: NasClient,
        *,
        progress: Callable[[FarmEvent], None] | None = None,
        log: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.config = config
        self.client = client
        self.progress = progress or (lambda _event: None)
        self.log = log or (lambda _message: None)
        self.sleep = sleep
        self._spaces: dict[str, SearchSpace] = {}
        self.backend: MeasurementBackend | None = None

    # ----------------------------------------------------------------- the run
    def run(self) -> FarmReport:
        cfg = self.config
        started = time.perf_counter()
        self.backend = cfg.make_backend()
        if not (self.backend.can_time or cfg.export_dir is not None or cfg.dry_run):
            raise FarmError(
                f"backend {cfg.backend_name!r} cannot time blocks on this machine (Core ML timing needs "
                "macOS); give --export-dir DIR to export every block for timing elsewhere"
            )
        state_path = cfg.state_dir / f"{_safe(cfg.device)}-{cfg.run_key}.json"
        spool = _Spool(state_path.with_suffix(".spool.jsonl"))
        run_id, resumed = self._run_id(state_path)
        report = FarmReport(run_id=run_id, device=cfg.device, backend=cfg.backend_name, resumed=resumed)
        report.dry_run = cfg.dry_run
        report.timing_supported = self.backend.can_time
        known = self._ensure_device(report)
        if known and not cfg.dry_run:
            self._flush_spool(spool, run_id, report)
        items = self._work() if known else self._local_work()
        report.planned = len(items)
        for item in items:
            kind = item["block_key"].split("|", 1)[0]
            report.kinds[kind] = report.kinds.get(kind, 0) + 1
        if cfg.dry_run:
            report.seconds = time.perf_counter() - started
            return report
        self._measure(items, spool, run_id, report)
        if cfg.calibrate and report.timing_supported:
            self._calibrate(run_id, report)
        if not report.failed and not spool.read():
            # Done: the next invocation starts a new run (and so may re-measure keys as new runs).
            state_path.unlink(missing_ok=True)
            spool.path.unlink(missing_ok=True)
        report.seconds = time.perf_counter() - started
        return report

    def _run_id(self, state_path: Path) -> tuple[str, bool]:
        """The run id of an interrupted run of the same work, or a new one (saved before any upload)."""
        if self.config.dry_run:
            return uuid.uuid4().hex, False
        state_path.parent.mkdir(parents=True, exist_ok=True)
        if state_path.exists():
            try:
                return str(json.loads(state_path.read_text())["run_id"]), True
            except (ValueError, KeyError, TypeError):
                pass
        run_id = uuid.uuid4().hex
        state_path.write_text(json.dumps({"run_id": run_id, "created": time.time()}))
        return run_id, False

    def _retrying(self, call: Callable[[], T]) -> T:
        cfg = self.config
        return with_retries(
            call,
            retries=cfg.retries,
            backoff_s=cfg.backoff_s,
            max_backoff_s=cfg.max_backoff_s,
            sleep=self.sleep,
            on_retry=lambda attempt, exc: self.log(f"retry {attempt}/{cfg.retries} after: {exc}"),
        )

    def _ensure_device(self, report: FarmReport) -> bool:
        """Whether the server knows the device (registering it unless told not to or dry-running)."""
        cfg = self.config
        try:
            self._retrying(lambda: self.client.device(cfg.device))
            return True
        except ClientError as exc:
            if exc.status != 404:
                raise
        if cfg.dry_run:
            self.log(f"device {cfg.device!r} is not registered: a real run would register it")
            return False
        if not cfg.register:
            raise FarmError(f"the server does not know device {cfg.device!r} (and --no-register was given)")
        assert self.backend is not None
        provenance = self.backend.provenance()
        hardware = provenance.get("gpu") or provenance.get("cpu") or "unknown"
        metadata = {"registered_by": "nas farm run", "hostname": provenance.get("hostname")}
        self._retrying(
            lambda: self.client.register_device(
                cfg.device, runtime=self.backend.runtime, hardware=str(hardware), metadata=metadata
            )
        )
        report.registered = True
        return True

    def _work(self) -> list[dict[str, Any]]:
        """The whole work list, paged through before measuring (uploads shrink it meanwhile)."""
        cfg = self.config
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self._retrying(
                lambda offset=offset: self.client.work(
                    cfg.device,
                    space=None if cfg.search else cfg.space,
                    options=cfg.options,
                    configs=cfg.configs,
                    search=cfg.search,
                    offset=offset,
                    limit=cfg.page_size,
                )
            )
            items.extend(page["items"])
            self.progress(FarmEvent("work", len(items), page["total"]))
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return items

    def _local_work(self) -> list[dict[str, Any]]:
        """The work of a device the server does not know yet (dry runs): every entry needed."""
        from latency_lut import needed_blocks
        from latency_lut.measure import DEFAULT_TIMINGS

        space = self._space(self.config.space, self.config.options)
        return [
            {
                "key": timing_key(spec.key, timing),
                "block_key": spec.key,
                "timing": timing,
                "space": space.name,
                "options": dict(space.options),
            }
            for spec in needed_blocks(space, self.config.configs)
            for timing in DEFAULT_TIMINGS
        ]

    def _space(self, name: str, options: Mapping[str, Any]) -> SearchSpace:
        cache_key = json.dumps([name, dict(options)], sort_keys=True)
        if cache_key not in self._spaces:
            self._spaces[cache_key] = get_space(name, **options)
        return self._spaces[cache_key]

    # ----------------------------------------------------------------- measuring and uploading
    def _measure(self, items: list[dict[str, Any]], spool: _Spool, run_id: str, report: FarmReport) -> None:
        cfg = self.config
        backend = self.backend
        assert backend is not None
        pending: list[dict[str, Any]] = []
        for done, item in enumerate(items, start=1):
            key = item["key"]
            space = self._space(item["space"], item["options"])
            try:
                spec = BlockSpec.from_key(item["block_key"])
                module, inputs = space.build_block(spec)
                if cfg.export_dir is not None and item["timing"] == "isolated":
                    self._export(backend, module, inputs, spec, report)
                if backend.can_time:
                    samples, kernel = self._time(backend, space, item, spec, module, inputs)
                    row = {
                        "key": key,
                        "space": space.name,
                        "options": dict(space.options),
                        "samples_ms": samples,
                        "features": block_features(space, spec).__dict__,
                        "after": item.get("after"),
                        "weight_kernel": kernel,
                    }
                    spool.append(row)
                    pending.append(row)
                    report.measured += 1
            except (FarmError, ClientError, ServerUnreachableError):
                raise
            except Exception as exc:  # one block that cannot be built or run must not stop the farm
                report.failed[key] = f"{type(exc).__name__}: {exc}"
                self.log(f"block {key} failed: {report.failed[key]}")
            self.progress(FarmEvent("measure", done, len(items), key))
            if len(pending) >= cfg.batch_size:
                self._upload(pending, spool, run_id, report)
                pending = []
        if pending:
            self._upload(pending, spool, run_id, report)

    def _time(
        self,
        backend: MeasurementBackend,
        space: SearchSpace,
        item: Mapping[str, Any],
        spec: BlockSpec,
        module: Any,
        inputs: Sequence[Any],
    ) -> tuple[list[float], dict[str, Any] | None]:
        """The samples of one work item, timed as the item says (`latency_lut.timings`), and for a
        block with low-bit weights how they ran (on the backend's real kernel, or modelled)."""
        counts = {"warmup": self.config.warmup, "repeats": self.config.repeats}
        if item["timing"] == "call_overhead":
            return backend.measure_call_overhead(inputs, **counts), None
        before = None
        if item["timing"] == "in_context" and item.get("after"):
            before = space.build_block(BlockSpec.from_key(item["after"]))
        bits = weight_bits(spec)
        if bits is not None:
            samples, kernel = backend.measure_weight_bits(module, inputs, bits=bits, before=before, **counts)
            return samples, kernel.provenance()
        if before is not None:
            return backend.measure_in_context(module, inputs, before=before, **counts), None
        return backend.measure(module, inputs, **counts), None

    def _export(
        self,
        backend: MeasurementBackend,
        module: Any,
        inputs: Sequence[Any],
        spec: BlockSpec,
        report: FarmReport,
    ) -> None:
        assert self.config.export_dir is not None
        folder = self.config.export_dir / _safe(self.config.device)
        path = backend.export(module, inputs, folder / f"{spec.key_hash}{backend.export_suffix}")
        index = folder / "index.jsonl"
        with index.open("a") as out:
            out.write(json.dumps({"key": spec.key, "file": path.name}) + "\n")
        report.exported += 1

    def _flush_spool(self, spool: _Spool, run_id: str, report: FarmReport) -> None:
        """Upload what an interrupted run of this work measured but may not have delivered."""
        rows = spool.read()
        if rows:
            self.log(f"re-uploading {len(rows)} measured block(s) of interrupted run {run_id}")
            for start in range(0, len(rows), self.config.batch_size):
                self._upload(rows[start : start + self.config.batch_size], spool, run_id, report)
            report.respooled = len(rows)

    def _upload(self, rows: list[dict[str, Any]], spool: _Spool, run_id: str, report: FarmReport) -> None:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(json.dumps([row["space"], row["options"]], sort_keys=True), []).append(row)
        provenance = self._provenance()
        for group in groups.values():
            batch = {
                "run_id": run_id,
                "space": group[0]["space"],
                "space_options": group[0]["options"],
                "provenance": provenance,
                "measurements": [
                    {
                        "key": r["key"],
                        "samples_ms": r["samples_ms"],
                        "features": r.get("features"),
                        "after": r.get("after"),
                        **({"weight_kernel": r["weight_kernel"]} if r.get("weight_kernel") else {}),
                    }
                    for r in group
                ],
            }
            try:
                result = self._retrying(
                    lambda batch=batch: self.client.upload_measurements(self.config.device, batch)
                )
            except ClientError as exc:
                raise FarmError(
                    f"the server refused a batch of {len(group)} rows ({exc.status}): {exc}; the rows stay "
                    f"in {spool.path} and are sent again by the next run of this command"
                ) from None
            report.uploaded += result["accepted"]
            report.duplicates += result["duplicates"]
            spool.drop({r["key"] for r in group})
            self.progress(FarmEvent("upload", report.uploaded + report.duplicates, report.measured))

    def _provenance(self) -> dict[str, Any]:
        cfg = self.config
        return {
            **self.backend_required().provenance(),
            "warmup": cfg.warmup,
            "repeats": cfg.repeats,
            "agent": "nas farm run",
        }

    # ----------------------------------------------------------------- whole subnets
    def _calibrate(self, run_id: str, report: FarmReport) -> None:
        cfg = self.config
        space = self._space(cfg.space, cfg.options)
        # The server proposes them (where the device's predictors are least sure); seeded by the run id,
        # so a resumed run measures the same subnets and a new run other ones.
        seed = int(run_id[:7], 16)
        work = self._retrying(
            lambda: self.client.subnet_work(
                cfg.device, space.name, options=cfg.options, n=cfg.calibrate, seed=seed
            )
        )
        report.calibrated = measure_and_upload_subnets(
            self.client,
            cfg.device,
            space,
            self.backend_required(),
            [item["config"] for item in work["items"]],
            run_id=run_id,
            role="calibration",
            warmup=cfg.warmup,
            repeats=cfg.repeats,
            retrying=self._retrying,
            progress=lambda done, total: self.progress(FarmEvent("calibrate", done, total)),
        )["stored"]

    def backend_required(self) -> MeasurementBackend:
        assert self.backend is not None
        return self.backend


def measure_and_upload_subnets(
    client: NasClient,
    device: str,
    space: SearchSpace,
    backend: MeasurementBackend,
    configs: list[dict[str, Any]],
    *,
    run_id: str,
    role: str,
    warmup: int,
    repeats: int,
    retrying: Callable[[Callable[[], Any]], Any],
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 10,
    repeat: bool = False,
) -> dict[str, Any]:
    """Measure `configs` end to end and upload them as `role` pairs; returns the last response
    and how many pairs were stored. With `repeat`, every subnet is measured a second time after all
    of them were measured once (so the two measurements of a subnet are minutes apart, as two
    measurements of a device would be), and both are uploaded: the accuracy report's ceiling."""
    provenance = {**backend.provenance(), "warmup": warmup, "repeats": repeats}
    pending: list[dict[str, Any]] = []
    last: dict[str, Any] = {}
    stored = 0
    total = len(configs) * (2 if repeat else 1)
    first = []
    for done, config in enumerate(configs, start=1):
        first.append(measure_subnet(space, config, backend, warmup=warmup, repeats=repeats))
        if progress is not None:
            progress(done, total)

    def flush() -> None:
        nonlocal last, stored
        batch = {
            "run_id": run_id,
            "role": role,
            "space": space.name,
            "space_options": dict(space.options),
            "provenance": provenance,
            "pairs": list(pending),
        }
        last = retrying(lambda: client.upload_pairs(device, batch))
        stored += sum(1 for p in last["pairs"] if not p["duplicate"])
        pending.clear()

    for done, run in enumerate(first, start=len(configs) + 1):
        pair: dict[str, Any] = {"config": run.config, "samples_ms": list(run.samples_ms)}
        if repeat:
            again = measure_subnet(space, run.config, backend, warmup=warmup, repeats=repeats)
            pair["repeat_samples_ms"] = list(again.samples_ms)
            if progress is not None:
                progress(done, total)
        pending.append(pair)
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return {"response": last, "stored": stored}


def validate_device(
    client: NasClient,
    device: str,
    space: SearchSpace,
    backend: MeasurementBackend,
    *,
    samples: int,
    seed: int = 0,
    warmup: int = 10,
    repeats: int = 30,
    run_id: str | None = None,
    retries: int = 6,
    progress: Callable[[int, int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Measure `samples` random subnets end to end on `backend`, twice each, store them as validation
    pairs of `device` (each with the prediction the server makes now) and return the run's accuracy
    report (every candidate predictor, and the repeatability ceiling of the two measurements)."""
    run_id = run_id or uuid.uuid4().hex
    client.device(device)

    def retrying(call: Callable[[], T]) -> T:
        return with_retries(call, retries=retries, backoff_s=0.5, max_backoff_s=30.0, sleep=sleep)

    configs = sample_configs(space, samples, seed=seed)
    measure_and_upload_subnets(
        client,
        device,
        space,
        backend,
        configs,
        run_id=run_id,
        role="validation",
        warmup=warmup,
        repeats=repeats,
        retrying=retrying,
        progress=progress,
        repeat=True,
    )
    return retrying(lambda: client.accuracy(device, space=space.name, run_id=run_id))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
