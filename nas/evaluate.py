"""Scoring one subnet: parameters, MACs, LUT latency per device and quality proxies."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latency_lut import BUILTIN_DEVICES, LatencyPredictor, TableView
from latency_lut.predictors import BlockSum
from nas.objectives import Objective, check_offered
from nas.proxies import DEFAULT_SUPERNET_DIR, ProxyContext, available_proxies, get_proxy
from nas.proxies.predictor import predictor_for
from search_spaces import SearchSpace, get_space
from search_spaces.precision import MixedPrecisionSpace, weight_storage

#: What prices `latency:<device>`: the device's predictor, or a plain table snapshot (block key -> ms).
LatencySource = LatencyPredictor | Mapping[str, float]


def as_predictor(device: str, source: LatencySource) -> LatencyPredictor:
    """The predictor of a latency source: itself, or the `block_sum` of a table snapshot."""
    if isinstance(source, LatencyPredictor):
        return source
    return BlockSum(TableView(device, "median", dict(source)))


@dataclass
class EvalOutcome:
    """What evaluating one config gave: objective values by name, extra metrics, or the error.

    On error `values` is empty and `error` says why (and what to do about it where we know).
    """

    values: dict[str, float]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0


class SubnetEvaluator:
    """Scores configs of one space (at fixed options) on the given (parsed) objectives.

    `luts` maps a device to what prices it: its `LatencyPredictor` (the service passes the one chosen
    for the device and space, see `latency_lut.predictors`) or a plain table snapshot (block key ->
    ms, as `LatencyTable.snapshot` gives, summed). `params` is the sum of the blocks' parameter
    counts (no tracing); `macs` comes from `space.count` (fvcore, cached per block key);
    `size_mb` and `bits` count the weights' storage (`search_spaces.precision.weight_storage`); on
    a space with per-layer bit widths the metric `weights_by_bits` says how many weights each width
    holds (a digest of the config's hundreds of entries);
    `latency:<device>` is the predictor's estimate, recorded with the metrics
    `latency_predictor:<device>` (its name), `latency_expected_error:<device>` (its relative RMS
    error on held-out subnets, where known), `latency_coverage:<device>` (the share of blocks with a
    measured entry) and `latency_estimated_ms:<device>` (the part the fallback estimated for blocks
    the table lacks). A subnet with a block neither the table nor its fallback can price is an
    error naming the missing keys. `proxy:<name>` runs
    the proxy `name` of `nas.proxies` (in the evaluator's process: inside a Ray actor under the
    runner) and records its cost as the metric `proxy_seconds:<name>`; proxies are seeded with
    `proxy_seed`, so a config gets the same value in every evaluator. `supernet_checkpoint` names the
    trained supernet the `supernet_*` proxies inherit from (by default the one `nas supernet train`
    wrote for the space at these options under `supernet_dir`). A proxy the space does not offer is
    a `SpecError` here, before any evaluation.

    `space` may pass an already built instance of the space (in-process use); workers build their own
    from `space_name` and `space_options`.
    """

    def __init__(
        self,
        space_name: str,
        space_options: Mapping[str, Any],
        objectives: Sequence[Objective],
        luts: Mapping[str, LatencySource],
        *,
        space: SearchSpace | None = None,
        proxy_seed: int = 0,
        supernet_checkpoint: str | None = None,
        supernet_dir: str | Path = DEFAULT_SUPERNET_DIR,
    ):
        self.space = space if space is not None else get_space(space_name, **dict(space_options))
        self.objectives = list(objectives)
        self.devices = [o.device for o in self.objectives if o.device is not None]
        self.proxies = [o.proxy for o in self.objectives if o.proxy is not None]
        self.predictors = {device: as_predictor(device, luts.get(device, {})) for device in self.devices}
        self.proxy_context: ProxyContext | None = None
        if self.proxies:
            offered = available_proxies(
                self.space,
                supernet=True if supernet_checkpoint else None,
                supernet_dir=supernet_dir,
                predictor=predictor_for(self.space, supernet_checkpoint) is not None
                if supernet_checkpoint
                else None,
            )
            for objective in self.objectives:
                check_offered(objective, offered, space=self.space.name)
            self.proxy_context = ProxyContext(
                self.space,
                seed=proxy_seed,
                supernet_checkpoint=supernet_checkpoint,
                supernet_dir=supernet_dir,
            )

    def evaluate(self, config: Mapping[str, Any]) -> EvalOutcome:
        """Score one config; never raises (any failure is the outcome's `error`)."""
        start = time.perf_counter()
        values: dict[str, float] = {}
        metrics: dict[str, Any] = {}
        try:
            error = self._evaluate(config, values, metrics)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            metrics["traceback"] = traceback.format_exc(limit=8)
        duration = time.perf_counter() - start
        if error is not None:
            return EvalOutcome(values={}, metrics=metrics, error=error, duration_s=duration)
        return EvalOutcome(values=values, metrics=metrics, error=None, duration_s=duration)

    def _evaluate(
        self, config: Mapping[str, Any], values: dict[str, float], metrics: dict[str, Any]
    ) -> str | None:
        canonical = self.space.canonicalize(config)
        blocks = self.space.blocks(canonical)
        metrics["n_blocks"] = len(blocks)
        errors = []
        n_keys = len({spec.key for spec in blocks})
        for device in self.devices:
            estimate = self.predictors[device].predict(blocks)
            metrics[f"latency_coverage:{device}"] = estimate.covered_share
            if estimate.missing_keys:
                errors.append(self._missing_message(device, estimate.missing_keys, n_keys))
                continue
            values[f"latency:{device}"] = estimate.total_ms
            metrics[f"latency_predictor:{device}"] = estimate.predictor
            if estimate.expected_error is not None:
                metrics[f"latency_expected_error:{device}"] = estimate.expected_error
            if estimate.estimated:
                metrics[f"latency_estimated_ms:{device}"] = estimate.estimated_ms
        if errors:
            # Before counting MACs: a subnet that cannot be priced is not worth tracing.
            return "; ".join(errors)
        wanted = {o.name for o in self.objectives}
        if "macs" in wanted:
            mac_count = self.space.mac_count(canonical)
            values["macs"] = float(mac_count.macs)
            if mac_count.uncounted:
                metrics["macs_uncounted_ops"] = mac_count.uncounted
        if "params" in wanted:
            values["params"] = float(sum(spec.params for spec in blocks))
        if isinstance(self.space, MixedPrecisionSpace):
            # A readable digest beside the hundreds of per-layer entries of the config.
            metrics["weights_by_bits"] = self.space.summary(canonical)["weights_by_bits"]
        if wanted & {"size_mb", "bits"}:
            storage = weight_storage(self.space, canonical)
            measured = {"size_mb": storage.size_mb, "bits": storage.mean_bits}
            values.update({name: value for name, value in measured.items() if name in wanted})
        for name in self.proxies:
            assert self.proxy_context is not None
            start = time.perf_counter()
            values[f"proxy:{name}"] = get_proxy(name).compute(self.proxy_context, canonical)
            metrics[f"proxy_seconds:{name}"] = time.perf_counter() - start
        return None

    def _missing_message(self, device: str, missing: list[str], n_keys: int) -> str:
        examples = ", ".join(repr(key) for key in missing[:2])
        return (
            f"the latency table of device {device!r} lacks {len(missing)} of the {n_keys} distinct block "
            f"keys of this subnet, e.g. {examples}; {fill_command(device, self.space)}"
        )


def fill_command(device: str, space: SearchSpace) -> str:
    """How to fill `device`'s table for `space` at its options: `nas lut measure` for a device this
    host measures, else `nas farm run` on the device."""
    defaults = {spec.name: spec.default for spec in space.option_specs()}
    options = "".join(
        f" -o {name}={_option_text(value)}"
        for name, value in sorted(space.options.items())
        if defaults.get(name, object()) != value
    )
    known = BUILTIN_DEVICES.get(device)
    if known is not None and known.backend is not None:
        return (
            f"run `nas lut measure --device {device} --space {space.name}{options}` on this host to fill it"
        )
    return (
        f"run `nas farm run --device {device} --backend BACKEND --space {space.name}{options}` on that "
        "device (BACKEND: torch, onnxruntime or coreml, whichever it runs) to fill it"
    )


def _option_text(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return f"'{text}'" if any(c in text for c in " {}[]\"'") else text
