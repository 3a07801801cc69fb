"""Device farm endpoints under `/v1/devices/{device}`: uploads of raw samples, the table as a file,
predictions, and the accuracy of predictions against subnets measured end to end (the devices
themselves are `services.server.routers.devices`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse

from latency_lut.io import SUFFIXES, export_table, import_table
from latency_lut.key_checks import key_problem, space_blocks, table_row_problem
from search_spaces import FieldError
from services.core.measurement_store import MeasurementConflictError, MeasurementRow
from services.core.prediction_service import ClockMismatchError, PairConflictError, PairIn, estimate_dict
from services.server.deps import (
    DeviceDep,
    HeavyRequestDep,
    MeasurementsDep,
    PredictionsDep,
    Scope,
    SettingsDep,
    check_request_inputs,
    host_tables_need_admin,
    require_scope,
)
from services.server.errors import (
    ResourceNotFoundError,
    canonical_at,
    conflict,
    error_response,
    json_query_param,
    space_at,
)
from services.server.schemas import (
    DEVICE_NAME_PATTERN,
    AccuracyBatch,
    AccuracyFigures,
    AccuracyOut,
    AccuracyUploadOut,
    ErrorBody,
    IngestOut,
    MeasurementBatch,
    PairOut,
    PredictIn,
    PredictionOut,
    PredictorAccuracy,
    PredictOut,
    SubnetWorkOut,
    SubnetWorkPage,
)

router = APIRouter(prefix="/v1/devices", tags=["devices"])
# Each route declares its scope: farms write with lut:write; reading and predicting need searches:read.
READ = [require_scope(Scope.SEARCHES_READ)]
WRITE = [require_scope(Scope.LUT_WRITE)]
# Writes to a table: those of the devices this host measures itself need an admin key.
TABLE_WRITE = [*WRITE, host_tables_need_admin()]

_MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


# --------------------------------------------------------------------------------- uploads
@router.post("/{device}/measurements", response_model=IngestOut, status_code=201, dependencies=TABLE_WRITE)
def upload_measurements(device: DeviceDep, batch: MeasurementBatch, store: MeasurementsDep) -> IngestOut:
    """Store one batch of raw samples of one agent run and re-aggregate the entries it touches.

    Idempotent per (run id, key): a retried batch stores nothing new and counts its rows as
    duplicates. Different samples for a (run id, key) already stored: 409. Any bad row: 422 naming
    it. Either way nothing of a rejected batch is written.
    """
    space = space_at(batch.space, batch.space_options)
    rows = [
        MeasurementRow(
            m.key,
            m.samples_ms,
            None if m.features is None else m.features.model_dump(),
            m.after,
            m.weight_kernel,
        )
        for m in batch.measurements
    ]
    try:
        result = store.ingest(
            device, run_id=batch.run_id, space=space, provenance=batch.provenance, rows=rows
        )
    except MeasurementConflictError as exc:
        raise conflict(exc.fields, str(exc)) from None
    return IngestOut(device=device, run_id=batch.run_id, **result.__dict__)


@router.get("/{device}/samples", dependencies=READ)
def samples(
    device: DeviceDep, store: MeasurementsDep, key: Annotated[str, Query(min_length=1, max_length=1024)]
) -> list[dict[str, Any]]:
    """Every run's raw samples of one key, with provenance and outlier flags."""
    rows = store.samples(device, key)
    if not rows:
        raise ResourceNotFoundError(f"device {device!r} has no samples of key {key!r}", field="key")
    for row in rows:
        row["created_at"] = row["created_at"].isoformat()
    return rows


# --------------------------------------------------------------------------------- table files
@router.get(
    "/{device}/table",
    dependencies=READ,
    response_class=Response,
    responses={
        200: {"content": {media: {} for media in _MEDIA_TYPES.values()}, "description": "the table file"}
    },
)
def export(device: DeviceDep, store: MeasurementsDep, format: Literal["csv", "parquet"] = "csv") -> Response:
    """The device's whole table as a CSV or Parquet file (`latency_lut.io`'s columns)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{device}.{format}"
        export_table(store.lut, device, path)
        content = path.read_bytes()
    headers = {"Content-Disposition": f'attachment; filename="{device}.{format}"'}
    return Response(content, media_type=_MEDIA_TYPES[format], headers=headers)


@router.put("/{device}/table", dependencies=TABLE_WRITE)
def import_file(
    device: Annotated[str, PathParam(pattern=DEVICE_NAME_PATTERN)],
    store: MeasurementsDep,
    content: Annotated[bytes, Body(media_type="application/octet-stream")],
    format: Literal["csv", "parquet"] = "csv",
    space: Annotated[
        str | None, Query(description="check every key against this space (else each row's provenance)")
    ] = None,
    options: Annotated[
        str | None, Query(description='the space\'s options as JSON, e.g. {"resolution": 32}')
    ] = None,
) -> JSONResponse:
    """Validate a CSV or Parquet table file (the request body) and upsert its rows as the device's
    entries (the file's device column is overridden), all in one transaction. A bad file: 422,
    nothing written. Every key must be a block of `space` at `options` when given; else of the space
    and options its row's provenance names (as farm uploads record them), else of a registered
    space's block kinds. Importing creates a device known by its table; the tables this host
    measures itself (`host-cpu-torch`, ...) need an admin key."""
    check = table_row_problem
    if space is not None:
        instance = space_at(space, json_query_param("options", options, dict) or {}, field="options")
        blocks = space_blocks(instance.name, instance.options)

        def check(key: str, _provenance: Any) -> str | None:
            problem = key_problem(key, blocks)
            return None if problem is None else problem.message

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload.{format}"
        path.write_bytes(content)
        try:
            n = import_table(store.lut, path, device=device, key_check=check)
        except ValueError as exc:
            return error_response(422, "body", str(exc), "a latency table file: " + ", ".join(SUFFIXES))
        except Exception as exc:  # pandas and pyarrow raise their own types for unreadable files
            return error_response(422, "body", f"unreadable {format} file: {exc}", list(_MEDIA_TYPES))
    return JSONResponse({"device": device, "imported": n})


# --------------------------------------------------------------------------------- predictions
@router.post(
    "/{device}/predict",
    response_model=PredictOut,
    dependencies=READ,
    responses={
        429: {"model": ErrorBody, "description": "all expensive-request slots taken (Retry-After)"},
        503: {"model": ErrorBody, "description": "ran past NAS_HEAVY_REQUEST_TIMEOUT_S (Retry-After)"},
    },
)
def predict_configs(
    device: DeviceDep,
    body: PredictIn,
    predictions: PredictionsDep,
    settings: SettingsDep,
    deadline: HeavyRequestDep,
) -> PredictOut:
    """Predict subnets (configs or reference names) with the device's selected predictor (or the
    candidate named by `predictor`), the fallback pricing blocks the table lacks (marked estimated).
    An expensive request: at most `MAX_PREDICT_CONFIGS` configs, options up to
    `NAS_MAX_REQUEST_INPUT_SCALE` times the default inputs (422 beyond), at most
    `NAS_MAX_HEAVY_REQUESTS` at once (429) and `NAS_HEAVY_REQUEST_TIMEOUT_S` (503)."""
    space = space_at(body.space, body.space_options)
    check_request_inputs(space, settings)
    predictors = predictions.predictor(device, space)
    try:
        chosen = predictors.named(body.predictor)
    except ValueError as exc:
        raise FieldError(
            str(exc), field="predictor", allowed=["best", *predictors.selection.predictors]
        ) from None
    items = []
    for i, config in enumerate(body.configs):
        deadline.check(f"predicting configs[{i}] of {len(body.configs)}")
        canonical = canonical_at(space, config, field=f"configs[{i}]")
        estimate = chosen.predict(space.blocks(canonical))
        values = estimate_dict(estimate)
        values["total_ms"] = estimate.total_ms if estimate.complete else None
        items.append(PredictionOut(config_id=space.config_id(canonical), **values))
    return PredictOut(
        device=device,
        space=space.name,
        options=dict(space.options),
        predictor=predictors.describe(),
        fallback=predictors.fallback.to_dict(),
        items=items,
    )


@router.get("/{device}/work/subnets", response_model=SubnetWorkPage, dependencies=READ)
def subnet_work(
    device: DeviceDep,
    predictions: PredictionsDep,
    space: Annotated[str, Query(description="space name")],
    options: Annotated[
        str | None, Query(description='space options as JSON, e.g. {"resolution": 32}')
    ] = None,
    n: Annotated[int, Query(ge=1, le=1000, description="subnets wanted")] = 16,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> Any:
    """Whole subnets the device should measure end to end next and upload as `calibration` subnets:
    where its learned predictors are least sure, or, before it has any, spread over the space."""
    option_values = json_query_param("options", options, dict) or {}
    instance = space_at(space, option_values, field="options")
    items = predictions.subnet_work(device, instance, n, seed=seed)
    return SubnetWorkPage(
        device=device,
        space=instance.name,
        options=dict(instance.options),
        items=[SubnetWorkOut(config=w.config, config_id=w.config_id, reason=w.reason) for w in items],
    )


# --------------------------------------------------------------------------------- accuracy
@router.post("/{device}/accuracy", response_model=AccuracyUploadOut, status_code=201, dependencies=WRITE)
def upload_pairs(device: DeviceDep, batch: AccuracyBatch, predictions: PredictionsDep) -> AccuracyUploadOut:
    """Store whole subnets one run measured end to end: `validation` pairs (held out, never fitted on)
    get the prediction the device's selected predictor makes now; `calibration` subnets are what its
    learned predictors are fitted on. Idempotent per (run id, subnet). Subnets timed on another clock
    than the device's table: 422."""
    space = space_at(batch.space, batch.space_options)
    pairs = []
    for i, pair in enumerate(batch.pairs):
        canonical_at(space, pair.config, field=f"pairs[{i}].config")
        pairs.append(PairIn(pair.config, pair.samples_ms, pair.repeat_samples_ms))
    try:
        stored = predictions.add_pairs(
            device,
            run_id=batch.run_id,
            role=batch.role,
            space=space,
            provenance=batch.provenance,
            pairs=pairs,
        )
    except PairConflictError as exc:
        raise conflict(exc.fields, str(exc)) from None
    except ClockMismatchError as exc:
        raise FieldError(str(exc), field="provenance.clock", allowed=list(exc.table_clocks)) from None
    out = [
        PairOut(
            config_id=p.config_id,
            n_blocks=p.n_blocks,
            predicted_ms=p.predicted_ms,
            measured_ms=p.measured_ms,
            error=None if p.predicted_ms is None else (p.predicted_ms - p.measured_ms) / p.measured_ms,
            estimated=p.estimated,
            duplicate=p.duplicate,
        )
        for p in stored
    ]
    report = accuracy(device, predictions, space=space.name, run_id=batch.run_id)
    return AccuracyUploadOut(
        device=device,
        run_id=batch.run_id,
        role=batch.role,
        pairs=out,
        accuracy=report if batch.role == "validation" else None,
    )


@router.get("/{device}/accuracy", response_model=AccuracyOut, dependencies=READ)
def accuracy(
    device: DeviceDep,
    predictions: PredictionsDep,
    space: Annotated[str | None, Query(description="only subnets of this space")] = None,
    run_id: Annotated[str | None, Query(description="only this validation run")] = None,
    pairs: Annotated[bool, Query(description="also return the (predicted, measured) points")] = False,
) -> AccuracyOut:
    """Every candidate predictor's RMSE, RMSPE, mean error, shares within +-5/10/15% and Spearman's rho
    on the device's held-out subnets (`nas lut validate`), the selected one's at the top level, and the
    repeatability ceiling of the subnets measured twice; with `pairs=true` the selected predictor's
    points."""
    result = predictions.accuracy(device, space=space, run_id=run_id, include_pairs=pairs)
    empty = AccuracyFigures(
        n=0,
        rmse_ms=None,
        rmspe=None,
        mean_error=None,
        within_5=None,
        within_10=None,
        within_15=None,
        spearman=None,
    )
    selected_name = result.selected.split(", ")[0] if result.selected else None
    top = result.reports.get(selected_name) if selected_name else None
    # Several spaces may each select another predictor: the top level then shows the first one's.
    return AccuracyOut(
        device=device,
        space=space,
        run_id=run_id,
        selected=result.selected,
        statistic=result.statistic,
        predictors=[PredictorAccuracy(name=name, **r.to_dict()) for name, r in result.reports.items()],
        ceiling=None if result.ceiling is None else AccuracyFigures(**result.ceiling.to_dict()),
        **(empty.model_dump() if top is None else top.to_dict()),
        **result.details,
    )
