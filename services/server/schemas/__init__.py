"""Pydantic models of the REST API's bodies (search requests are `nas.SearchSpec`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from latency_lut.io import MAX_LATENCY_MS
from nas import Trial
from services.core.db import SearchRow, SearchStatus
from services.core.search_phase import PHASE_MEASURING, PHASE_SEARCHING, table_eta_s
from services.server.input_checks import MAX_FREE_JSON_BYTES, MAX_JSON_DEPTH, bounded_json

#: A free-form JSON object (device metadata, provenance), bounded so that what is stored can be read back.
FreeJson = Annotated[
    dict[str, Any],
    AfterValidator(bounded_json),
    Field(
        description=f"free-form JSON object: at most {MAX_JSON_DEPTH} levels deep and "
        f"{MAX_FREE_JSON_BYTES:,} bytes as JSON"
    ),
]


class ErrorItem(BaseModel):
    """One problem with a request: the field (dotted path into the body, or the parameter's name),
    what is wrong, and what would be accepted."""

    field: str
    message: str
    allowed: list[Any] | str | None = None


class ErrorBody(BaseModel):
    detail: list[ErrorItem]


class DatabaseHealth(BaseModel):
    ok: bool
    backend: str
    error: str | None = None


class RayInfo(BaseModel):
    mode: Literal["local", "cluster"]
    address: str | None


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    database: DatabaseHealth
    ray: RayInfo
    scheduler: bool = Field(description="whether this server runs searches (its scheduler is started)")


class Page(BaseModel):
    """The one envelope of every list answer: `items` (this page, in a subclass), `total` (items on
    all pages), and the `offset` and `limit` that chose this page. Lists that are short by nature
    (spaces, devices, one key's samples) take `offset`/`limit` too and answer everything by default."""

    total: int = Field(description="items on all pages")
    offset: int = Field(description="items skipped before this page")
    limit: int = Field(description="the most items this page could hold")


class OptionOut(BaseModel):
    name: str
    default: Any
    type: str
    allowed: list[Any] | str
    help: str = ""


class ChoiceOut(BaseModel):
    name: str
    options: list[Any]
    help: str = ""


class SpaceSummary(BaseModel):
    name: str
    description: str
    cardinality: str = Field(description="number of distinct subnets (a decimal string: it can be huge)")
    options: list[OptionOut]


class SpacePage(Page):
    items: list[SpaceSummary]


class ProxyOut(BaseModel):
    name: str = Field(description="objective `proxy:<name>` in a search spec")
    direction: str
    needs: str = Field(description="nothing, batch, supernet or predictor")
    cost: str
    description: str
    available: bool = Field(description="whether a search of the space at these options can use it now")
    requirement: str | None = Field(None, description="what it still needs, when not available")
    predictor: dict[str, Any] | None = Field(
        None, description="`predicted`: the fitted predictor's target, training size and held-out error"
    )


class LayerStage(BaseModel):
    stage: str
    layers: int = Field(description="quantizable conv / linear layers of the stage")
    searched: int = Field(description="of those, the layers whose width is a choice")
    weights: int


class SpaceDetail(SpaceSummary):
    choices: list[ChoiceOut]
    option_values: dict[str, Any]
    reference_configs: dict[str, dict[str, Any]]
    base_space: str | None = Field(None, description="bit-width spaces: the space whose layers get widths")
    fixed_layers: dict[str, int] | None = Field(
        None, description="bit-width spaces: the layers kept at fixed_bits (not choices)"
    )
    layer_stages: list[LayerStage] | None = Field(
        None, description="bit-width spaces: the quantizable layers per stage, in execution order"
    )
    proxies: list[ProxyOut] = Field(
        default_factory=list, description="quality proxies of the space at these options"
    )
    default_proxy: str | None = Field(None, description="what `proxy:default` stands for at these options")
    supernet_checkpoint: str | None = Field(
        None, description="the trained supernet the inherited proxies use at these options, if any"
    )


class DeviceOut(BaseModel):
    name: str
    runtime: str
    hardware: str
    backend: str | None = Field(description="local measurement backend; null when measured elsewhere")
    description: str
    builtin: bool
    entries: int = Field(description="entries in this device's latency table")
    registered: bool = Field(False, description="registered with POST /v1/devices")
    metadata: dict[str, Any] = Field(default_factory=dict)


class DevicePage(Page):
    items: list[DeviceOut]


class SamplePage(Page):
    items: list[dict[str, Any]] = Field(
        description="one row per run of the key: its raw samples, provenance and outlier flags"
    )


#: Device names: lower-case letters, digits and `.-_`, starting with a letter or digit.
DEVICE_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"
#: Agent run ids: letters, digits and `.-_` (agents use a uuid4 hex).
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: Rows one upload may carry.
MAX_BATCH_ROWS = 10_000
#: Samples one row may carry.
MAX_SAMPLES = 10_000
#: Whole subnets one accuracy upload may carry.
MAX_PAIRS = 1_000

#: A timed repeat: finite, positive and at most an hour (`latency_lut.io.MAX_LATENCY_MS`), so that
#: no statistic of samples overflows and every entry exports to a file its import accepts.
Milliseconds = Annotated[float, Field(gt=0, le=MAX_LATENCY_MS, allow_inf_nan=False)]


class DeviceIn(BaseModel):
    """A device to register: what runs where. Its name is what objectives say (`latency:<name>`)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=DEVICE_NAME_PATTERN, description="e.g. iphone14pro-coreml-ane")
    runtime: str = Field(..., min_length=1, max_length=100, description="torch, onnxruntime, coreml, ...")
    hardware: str = Field(..., min_length=1, max_length=200, description="e.g. Apple A16 Neural Engine")
    description: str = Field("", max_length=2000)
    metadata: FreeJson = Field(default_factory=dict)


class WorkItem(BaseModel):
    """One table entry a device lacks: the block (build it with `get_space(space, **options)
    .build_block(BlockSpec.from_key(block_key))`), how to time it (`timing`: `isolated`, `in_context`
    right after the block `after`, or `call_overhead`) and the table key to upload its samples under."""

    key: str = Field(description="the table key: the block key, with a `ctx@` or `call@` prefix by timing")
    block_key: str
    timing: Literal["isolated", "in_context", "call_overhead"]
    after: str | None = Field(None, description="in_context: the key of the block to run before it")
    kind: str
    space: str
    options: dict[str, Any]
    params: int


class WorkPage(Page):
    device: str
    space: str
    options: dict[str, Any]
    needed: int = Field(description="table entries the space (or the configs) needs: blocks x timings")
    total: int = Field(description="of those, entries the device's table lacks")
    items: list[WorkItem]


class BlockFeaturesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    macs: int = Field(..., ge=0)
    params: int = Field(..., ge=0)
    bytes_moved: int = Field(..., ge=0)


class MeasurementIn(BaseModel):
    """One key's timed repeats from one agent run."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(..., min_length=1, max_length=1024)
    samples_ms: list[Milliseconds] = Field(..., min_length=1, max_length=MAX_SAMPLES)
    features: BlockFeaturesIn | None = None
    after: str | None = Field(None, max_length=1024, description="in-context timings: the block run before")
    weight_kernel: FreeJson | None = Field(
        None,
        description="blocks with low-bit weights: how they ran (`weight_bits`, `weight_kernel`: the real "
        "kernel's name or 'modelled: ...', `layers_on_kernel`, `layers_float`; latency_lut.low_bit)",
    )


class MeasurementBatch(BaseModel):
    """A batch of one agent run: its id, the space its keys belong to, how it measured, the rows."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(..., pattern=RUN_ID_PATTERN)
    space: str
    space_options: dict[str, Any] = Field(default_factory=dict)
    provenance: FreeJson = Field(
        ..., description="backend, runtime and library versions, machine; needs `backend` and `runtime`"
    )
    measurements: list[MeasurementIn] = Field(..., min_length=1, max_length=MAX_BATCH_ROWS)

    @field_validator("provenance")
    @classmethod
    def _provenance_names_runtime(cls, provenance: dict[str, Any]) -> dict[str, Any]:
        for name in ("backend", "runtime"):
            value = provenance.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"provenance.{name} must be a non-empty string (what measured the batch)")
        return provenance


class IngestOut(BaseModel):
    device: str
    run_id: str
    accepted: int = Field(description="rows stored now")
    duplicates: int = Field(description="rows this run had already uploaded (a retry): ignored")
    entries_updated: int
    outlier_runs: int = Field(description="runs left out of the updated entries as outliers")


#: Configs one predict request may carry (more: 422); each costs its canonicalisation and blocks.
MAX_PREDICT_CONFIGS = 256


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    space: str
    space_options: dict[str, Any] = Field(default_factory=dict)
    configs: list[dict[str, Any] | str] = Field(..., min_length=1, max_length=MAX_PREDICT_CONFIGS)
    predictor: str = Field(
        "best", max_length=100, description="`best` (what searches price with) or a candidate's name"
    )


class PredictionOut(BaseModel):
    config_id: str
    total_ms: float | None = Field(description="null when blocks are missing and no fallback covers them")
    table_ms: float
    covered_share: float
    n_blocks: int
    complete: bool
    estimated: bool
    estimated_keys: list[str]
    estimated_ms: float
    estimated_error_ms: float
    missing_keys: list[str]
    predictor: str = Field(description="the predictor that made total_ms")
    statistic: str = Field(description="the statistic of the samples predicted (p10 or median)")
    expected_error: float | None = Field(description="its relative RMS error on held-out subnets")


class PredictOut(BaseModel):
    device: str
    space: str
    options: dict[str, Any]
    predictor: dict[str, Any] = Field(description="the selected predictor and every candidate's error")
    fallback: dict[str, Any]
    items: list[PredictionOut]


class PairIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any]
    samples_ms: list[Milliseconds] = Field(..., min_length=1, max_length=MAX_SAMPLES)
    repeat_samples_ms: list[Milliseconds] | None = Field(
        None, min_length=1, max_length=MAX_SAMPLES, description="the same subnet measured a second time"
    )


class AccuracyBatch(BaseModel):
    """Whole subnets one run measured end to end on the device."""

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(..., pattern=RUN_ID_PATTERN)
    role: Literal["validation", "calibration"] = "validation"
    space: str
    space_options: dict[str, Any] = Field(default_factory=dict)
    provenance: FreeJson = Field(default_factory=dict)
    pairs: list[PairIn] = Field(..., min_length=1, max_length=MAX_PAIRS)


class PairOut(BaseModel):
    config_id: str
    n_blocks: int
    predicted_ms: float | None
    measured_ms: float
    error: float | None = Field(description="(predicted - measured) / measured")
    estimated: bool
    duplicate: bool


class AccuracyPoint(BaseModel):
    space: str
    run_id: str
    config_id: str
    predicted_ms: float
    measured_ms: float
    estimated: bool


class AccuracyFigures(BaseModel):
    """nn-Meter's measures plus rank correlation: RMSE (ms), RMSPE and mean error (fractions; error =
    (predicted - measured) / measured), the shares within +-5/10/15%, Spearman's rho."""

    n: int
    rmse_ms: float | None
    rmspe: float | None
    mean_error: float | None
    within_5: float | None
    within_10: float | None
    within_15: float | None
    spearman: float | None


class PredictorAccuracy(AccuracyFigures):
    name: str


class AccuracyOut(AccuracyFigures):
    """The selected predictor's figures (top level) and every candidate's, on held-out subnets, with
    the measurement's own repeatability (`ceiling`: a second measurement of the same subnets judged as
    if it were a prediction)."""

    device: str
    space: str | None
    run_id: str | None
    selected: str | None = Field(description="the predictor searches price with")
    statistic: str = Field(description="the statistic of the samples compared (p10 or median)")
    predictors: list[PredictorAccuracy]
    ceiling: AccuracyFigures | None = Field(description="two measurements of the same subnets compared")
    excluded_calibration: int = Field(description="validation subnets also used for calibration: left out")
    unpriced: int = Field(description="subnets the table could not price (missing keys): left out")
    estimated: int = Field(description="subnets priced partly by the fallback")
    spaces: list[str]
    runs: list[dict[str, Any]]
    pairs: list[AccuracyPoint] | None = Field(
        None, description="with ?pairs=true: the held-out (predicted, measured) points, newest 5,000"
    )


class SubnetWorkOut(BaseModel):
    config: dict[str, Any]
    config_id: str
    reason: str


class SubnetWorkPage(Page):
    """Whole subnets a device should measure end to end next (upload them with role `calibration`);
    one page: `limit` is the `n` asked for."""

    device: str
    space: str
    options: dict[str, Any]
    items: list[SubnetWorkOut]


class AccuracyUploadOut(BaseModel):
    device: str
    run_id: str
    role: str
    pairs: list[PairOut]
    accuracy: AccuracyOut | None = Field(description="this run's report (validation runs)")


class SearchLinks(BaseModel):
    self: str
    trials: str
    pareto: str
    steps: str
    cancel: str

    @classmethod
    def of(cls, search_id: str) -> SearchLinks:
        base = f"/v1/searches/{search_id}"
        return cls(
            self=base,
            trials=f"{base}/trials",
            pareto=f"{base}/pareto",
            steps=f"{base}/steps",
            cancel=f"{base}/cancel",
        )


class TableToMeasureOut(BaseModel):
    device: str
    blocks: int = Field(description="distinct blocks of the space with an entry missing from the table")
    entries: int = Field(
        description="table entries to measure: each block is timed isolated, in context and for its call "
        "overhead"
    )


class SearchCreated(BaseModel):
    id: str
    status: SearchStatus
    links: SearchLinks
    warnings: list[str] = Field(
        default_factory=list,
        description="what the spec will likely not achieve, e.g. a budget too small for the strategy's "
        "latency target",
    )
    measure_first: list[TableToMeasureOut] = Field(
        default_factory=list,
        description="latency-table entries the scheduler measures on its host before the first trial, per "
        "local device (the search's `measuring latency table` phase); empty when the tables are complete",
    )
    message: str = Field(default="", description="what happens next, in words")


class TableProgress(BaseModel):
    """The latency-table phase of a search: entries of one local device's table measured so far."""

    device: str
    done: int = Field(description="entries measured so far")
    total: int = Field(description="entries this search measures for the device")
    elapsed_s: float = Field(description="seconds spent measuring this device's entries")
    eta_s: float | None = Field(description="seconds left at the rate so far; null before the first entry")


class SearchProgress(BaseModel):
    """Where a search stands: counts of its trials, time spent, and an estimate of the time left."""

    completed: int = Field(description="trials recorded as completed")
    failed: int = Field(description="trials recorded as failed (evaluation errors)")
    recorded: int = Field(description="completed + failed")
    in_flight: int = Field(description="evaluations running now (the parallelism while the search runs)")
    remaining: int = Field(description="trials of the budget not yet recorded")
    fraction: float = Field(description="recorded / budget, 0..1")
    elapsed_s: float = Field(description="seconds the search has run (live while it runs)")
    trials_per_s: float | None = Field(description="recorded trials per second of run time; null before one")
    eta_s: float | None = Field(
        description="estimated seconds left (trial rate and budget, capped by budget.seconds); null when "
        "unknown (queued, measuring its latency table, or no trial yet); 0 once finished"
    )
    phase: Literal["measuring latency table", "searching"] | None = Field(
        default=None,
        description="what a running search is doing: measuring the latency-table entries its local devices "
        "lack (before the first trial; `latency_table` has the counts) or searching; null unless running",
    )
    latency_table: TableProgress | None = Field(
        default=None,
        description="the entries measured on the scheduler's host before the first trial (live while "
        "measuring, kept once done); null when the tables had every entry",
    )

    @classmethod
    def of(cls, row: SearchRow, now: datetime | None = None) -> SearchProgress:
        status = SearchStatus(row.status)
        spec_budget = (row.spec or {}).get("budget") or {}
        parallelism = int(spec_budget.get("parallelism") or 1)
        budget_seconds = spec_budget.get("seconds")
        recorded = max(0, int(row.trials_done))
        failed = max(0, int(row.trials_failed))
        remaining = max(0, int(row.budget_trials) - recorded)
        elapsed = float(row.elapsed_s)
        if status == SearchStatus.RUNNING and row.started_at is not None:
            # The row's elapsed time is written with each trial; between trials it runs on.
            now = now or datetime.now(row.started_at.tzinfo)
            elapsed = max(elapsed, (now - row.started_at).total_seconds())
        stored_phase = row.phase or {}
        phase = stored_phase.get("name", PHASE_SEARCHING) if status == SearchStatus.RUNNING else None
        measuring = phase == PHASE_MEASURING
        table = stored_phase.get("table")
        # The trial rate counts the time since the table was measured only.
        trial_s = row.elapsed_s - float(table["seconds"]) if table and not measuring else row.elapsed_s
        rate = recorded / trial_s if recorded and trial_s > 0 else None
        eta: float | None
        if status.finished:
            eta = 0.0
        elif status != SearchStatus.RUNNING or rate is None or measuring:
            eta = None
        else:
            eta = remaining / rate
            if budget_seconds is not None:
                eta = max(0.0, min(eta, float(budget_seconds) - elapsed))
        return cls(
            completed=max(0, recorded - failed),
            failed=failed,
            recorded=recorded,
            in_flight=min(parallelism, remaining) if status == SearchStatus.RUNNING and not measuring else 0,
            remaining=remaining,
            fraction=min(1.0, recorded / row.budget_trials) if row.budget_trials else 0.0,
            elapsed_s=elapsed,
            trials_per_s=rate,
            eta_s=eta,
            phase=phase,
            latency_table=None
            if not table
            else TableProgress(
                device=table["device"],
                done=int(table["done"]),
                total=int(table["total"]),
                elapsed_s=float(table["seconds"]),
                eta_s=table_eta_s(table),
            ),
        )


class SearchOut(BaseModel):
    id: str
    name: str
    status: SearchStatus
    status_message: str
    error: str | None
    warnings: list[str] = Field(
        description="what the spec will likely not achieve (said at submit: a budget too small for the "
        "strategy's latency target) and what a succeeded search did not achieve: no feasible trial, no "
        "trial at all, or a budget too small for its strategy to take a step"
    )
    owner: str = Field(description="the team or key name that submitted it (`legacy`: before owners existed)")
    cancel_requested: bool
    trials_done: int
    trials_failed: int
    budget_trials: int
    front_size: int
    hypervolume: float | None
    elapsed_s: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    spec: dict[str, Any]
    links: SearchLinks
    progress: SearchProgress

    @classmethod
    def of(cls, row: SearchRow) -> SearchOut:
        return cls(
            id=row.id,
            name=row.name,
            status=SearchStatus(row.status),
            status_message=row.status_message,
            error=row.error,
            warnings=list(row.warnings or []),
            owner=row.owner,
            cancel_requested=row.cancel_requested,
            trials_done=row.trials_done,
            trials_failed=row.trials_failed,
            budget_trials=row.budget_trials,
            front_size=row.front_size,
            hypervolume=row.hypervolume,
            elapsed_s=row.elapsed_s,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
            updated_at=row.updated_at,
            spec=row.spec,
            links=SearchLinks.of(row.id),
            progress=SearchProgress.of(row),
        )


class SearchPage(Page):
    items: list[SearchOut]


class TrialOut(BaseModel):
    number: int
    config: dict[str, Any]
    config_id: str
    state: str
    values: dict[str, float]
    feasible: bool
    metrics: dict[str, Any]
    error: str | None
    duration_s: float
    finished_at: datetime

    @classmethod
    def of(cls, trial: Trial) -> TrialOut:
        return cls(
            number=trial.number,
            config=trial.config,
            config_id=trial.config_id,
            state=trial.state.value,
            values=trial.values,
            feasible=trial.feasible,
            metrics=trial.metrics,
            error=trial.error,
            duration_s=trial.duration_s,
            finished_at=trial.finished_at,
        )


class TrialPage(Page):
    items: list[TrialOut]


class ObjectiveOut(BaseModel):
    name: str
    direction: Literal["minimize", "maximize"]


class ParetoOut(Page):
    search_id: str
    status: SearchStatus
    objectives: list[ObjectiveOut]
    constraints: list[str]
    hypervolume: float | None
    total: int = Field(description="members on the front (all pages)")
    items: list[TrialOut] = Field(description="the front's members ordered by trial number (one page)")


class StepOut(BaseModel):
    """One decision of a stepwise strategy: the action(s) taken, their quality and latency change,
    their score under the strategy's rule (`ranked_by`; smaller is better) and the runner-up."""

    step: int
    kind: str = Field(description="remove, add, slim, or stop (the last step)")
    from_config_id: str | None = Field(description="the config the step started from")
    to_config_id: str | None = Field(description="where it led (null for a stop)")
    taken: list[dict[str, Any]] = Field(description="the actions taken: {choice, from, to}")
    d_quality: float | None = Field(description="quality change of the taken actions (+ = better)")
    d_latency_ms: float | None = Field(description="latency change of the taken actions, ms (- = faster)")
    score: list[float] = Field(description="each taken action's score")
    ranked_by: str | None
    runner_up: dict[str, Any] | None = Field(description="the best action not taken: actions, score, changes")
    reason: str | None = Field(description="why the walk stopped (stop steps)")
    latency_ms: float | None = Field(description="latency of the config the step started from")
    quality: float | None = Field(description="quality of the config the step started from")
    probed: list[dict[str, Any]] = Field(description="every probed action with its changes")

    @classmethod
    def of(cls, step: dict[str, Any]) -> StepOut:
        return cls(
            step=step["step"],
            kind=step.get("kind", ""),
            from_config_id=step.get("from"),
            to_config_id=step.get("to"),
            taken=step.get("taken") or [],
            d_quality=step.get("d_quality"),
            d_latency_ms=step.get("d_latency_ms"),
            score=step.get("score") or [],
            ranked_by=step.get("ranked_by"),
            runner_up=step.get("runner_up"),
            reason=step.get("reason"),
            latency_ms=step.get("latency_ms", step.get("latency")),
            quality=step.get("quality"),
            probed=step.get("probed") or [],
        )


class StepPage(Page):
    search_id: str
    strategy: str
    final: bool = Field(description="whether the search has finished (the log is written when it ends)")
    items: list[StepOut]


#: What a model file export may answer besides 200 (for the OpenAPI documents of its routes).
EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}, "application/zip": {}}, "description": "model file"},
    413: {"model": ErrorBody},
    501: {"model": ErrorBody},
    503: {"model": ErrorBody},
}

#: Devices one evaluate request may price.
MAX_EVALUATE_DEVICES = 16


class EvaluateIn(BaseModel):
    """A subnet to score now: a config (or a reference name) at the space's options."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | str = Field(..., description="a config, or a reference name such as 's0'")
    space_options: dict[str, Any] = Field(default_factory=dict)
    devices: list[str] = Field(
        default_factory=list,
        max_length=MAX_EVALUATE_DEVICES,
        description="devices to price the subnet on (their latency tables, with the fallback)",
    )
    macs: bool = Field(True, description="count MACs (traces each distinct block once, cached)")
    predictor: str = Field(
        "best", max_length=100, description="`best` (what searches price with) or a candidate's name"
    )


class LatencyOut(BaseModel):
    total_ms: float | None = Field(description="null when blocks are missing and no fallback covers them")
    table_ms: float
    covered_share: float = Field(description="share of the subnet's blocks the table measured")
    complete: bool
    estimated: bool
    estimated_ms: float
    predictor: str
    expected_error: float | None
    missing_keys: int
    missing_examples: list[str]


class WidthCount(BaseModel):
    bits: int = Field(description="weight width (16: float16, not quantized)")
    layers: int
    weights: int


class StagePrecision(BaseModel):
    stage: str = Field(description="UNet stage (down0 .. up0, mid) or outer block (time, conv_in, conv_out)")
    layers: int
    weights: int
    mean_bits: float = Field(description="mean counted bits per weight, log2(2^n + 1) for n bits")
    histogram: dict[str, int] = Field(description="layers per width")


class LayerPrecision(BaseModel):
    name: str = Field(description="the layer's choice name without `bits.`")
    stage: str
    bits: int
    weights: int
    fixed: bool = Field(description="kept at the space's fixed_bits (first / last layers), not a choice")


class PrecisionView(BaseModel):
    """A bit-width config readable with hundreds of layers: totals, a histogram of widths, a line per
    stage, and the full per-layer list (for a collapsed view)."""

    size_mb: float
    mean_bits: float
    layers_total: int
    histogram: list[WidthCount]
    stages: list[StagePrecision]
    layers: list[LayerPrecision]


class EvaluateOut(BaseModel):
    space: str
    options: dict[str, Any]
    config_id: str
    config: dict[str, Any] = Field(description="the canonical config")
    n_blocks: int
    params: int
    macs: int | None
    latency: dict[str, LatencyOut] = Field(description="per device")
    precision: PrecisionView | None = Field(
        None, description="bit-width spaces: the config per stage and as a histogram of widths"
    )


class ExportIn(BaseModel):
    """A subnet to export as a model file (random weights: the architecture, for deployment tests)."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] | str
    space_options: dict[str, Any] = Field(default_factory=dict)
    format: Literal["torchscript", "onnx", "coreml", "quantized"] = "onnx"
    coreml_precision: Literal["fp16", "fp32"] = "fp16"
