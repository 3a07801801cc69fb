"""`/v1/spaces`: the registered search spaces (choices, options, references), and subnets out of them:
`POST /v1/spaces/{name}/evaluate` scores a config now, `POST /v1/spaces/{name}/export` returns it as a
TorchScript, ONNX or zipped Core ML model file."""

from __future__ import annotations

import json
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam

from latency_lut.backends import BackendUnavailableError
from latency_lut.export import export_subnet
from search_spaces import SearchSpace, SpaceError, UnknownSpaceError, get_space, list_spaces, space_class
from services.api.errors import ResourceNotFoundError, error_response
from services.api.measurements import MeasurementsDep, PredictionsDep, space_at
from services.auth import Scope, scope_by_method
from services.measurements import UnknownDeviceError
from services.schemas import (
    MAX_EXPORT_PARAMS,
    ErrorBody,
    EvaluateIn,
    EvaluateOut,
    ExportIn,
    LatencyOut,
    SpaceDetail,
    SpaceSummary,
)

router = APIRouter(
    prefix="/v1/spaces",
    tags=["spaces"],
    responses={422: {"model": ErrorBody}},
    dependencies=[scope_by_method(read=Scope.SEARCHES_READ, write=Scope.SEARCHES_WRITE)],
)

#: Exports built at once by this process (each builds a whole subnet); more get 503 at once.
MAX_CONCURRENT_EXPORTS = 2
_EXPORTS = threading.BoundedSemaphore(MAX_CONCURRENT_EXPORTS)
_EXPORT_FILES = {
    "torchscript": (".pt", "application/octet-stream"),
    "onnx": (".onnx", "application/octet-stream"),
    "coreml": (".mlpackage.zip", "application/zip"),
}


def known_space(name: Annotated[str, PathParam(description="a registered search space")]) -> str:
    """The path's space, or 404 naming the registered ones."""
    try:
        space_class(name)
    except UnknownSpaceError as exc:
        raise ResourceNotFoundError(str(exc), field="name", allowed=exc.allowed) from None
    return name


SpaceName = Annotated[str, Depends(known_space)]


@router.get("", response_model=list[SpaceSummary])
def list_all() -> list[SpaceSummary]:
    """Every registered space (a short, fixed list: the registry)."""
    out = []
    for name in list_spaces():
        space = get_space(name)
        out.append(
            SpaceSummary(
                name=name,
                description=space.description,
                cardinality=str(space.cardinality),
                options=[spec.to_dict() for spec in space.option_specs()],
            )
        )
    return out


@router.get("/{name}", response_model=SpaceDetail, responses={404: {"model": ErrorBody}})
def describe(name: SpaceName, request: Request) -> SpaceDetail:
    """One space at the options given as query parameters (e.g. `?resolution=64`; defaults otherwise)."""
    options = {key: parse_option_value(value) for key, value in request.query_params.items()}
    return SpaceDetail(**get_space(name, **options).describe())


def _canonical(space: SearchSpace, config: dict[str, Any] | str) -> dict[str, Any]:
    try:
        return space.canonicalize(config)
    except SpaceError as exc:
        where = "config" if exc.field in ("config", "", None) else f"config.{exc.field}"
        raise type(exc)(str(exc), field=where, allowed=exc.allowed) from None


@router.post("/{name}/evaluate", response_model=EvaluateOut, responses={404: {"model": ErrorBody}})
def evaluate(
    name: SpaceName, body: EvaluateIn, store: MeasurementsDep, predictions: PredictionsDep
) -> EvaluateOut:
    """Score one subnet now: parameters, MACs, and its latency on each device from the device's table
    (with the covered share, the fallback for missing blocks marked as estimated, and the device's
    calibration). Nothing is stored."""
    space = space_at(name, body.space_options)
    canonical = _canonical(space, body.config)
    for i, device in enumerate(body.devices):
        try:
            store.device(device)
        except UnknownDeviceError as exc:
            raise ResourceNotFoundError(str(exc), field=f"devices[{i}]", allowed=exc.known) from None
    blocks = space.blocks(canonical)
    params = sum(spec.params for spec in blocks)
    macs = int(space.count(canonical)["macs"]) if body.macs else None
    latency = {}
    for device in dict.fromkeys(body.devices):
        estimate = predictions.predictor(device, space).predict(canonical, calibrate=body.calibrate)
        latency[device] = LatencyOut(
            total_ms=estimate.total_ms if estimate.complete else None,
            table_ms=estimate.table_ms,
            covered_share=estimate.covered_share,
            complete=estimate.complete,
            estimated=estimate.estimated,
            estimated_ms=estimate.estimated_ms,
            calibrated=estimate.calibrated,
            missing_keys=len(estimate.missing_keys),
            missing_examples=list(estimate.missing_keys[:10]),
        )
    return EvaluateOut(
        space=space.name,
        options=dict(space.options),
        config_id=space.config_id(canonical),
        config=canonical,
        n_blocks=len(blocks),
        params=params,
        macs=macs,
        latency=latency,
    )


@router.post(
    "/{name}/export",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": {}, "application/zip": {}},
            "description": "model file",
        },
        404: {"model": ErrorBody},
        413: {"model": ErrorBody},
        501: {"model": ErrorBody},
        503: {"model": ErrorBody},
    },
)
def export(name: SpaceName, body: ExportIn) -> Response:
    """A subnet as a model file with random weights: `torchscript` (a traced `.pt`), `onnx` (opset 17)
    or `coreml` (an `.mlpackage` folder, zipped; needs the `coreml` extra, else 501). Subnets above
    100M parameters are refused (413); at most two exports run at once (else 503, retry later)."""
    space = space_at(name, body.space_options)
    return subnet_file(space, _canonical(space, body.config), body.format, body.coreml_precision)


#: What `subnet_file` may answer besides 200 (for the OpenAPI documents of the routes that use it).
EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}, "application/zip": {}}, "description": "model file"},
    413: {"model": ErrorBody},
    501: {"model": ErrorBody},
    503: {"model": ErrorBody},
}


def subnet_file(space: SearchSpace, canonical: dict[str, Any], fmt: str, precision: str = "fp16") -> Response:
    """The model file of a canonical config (the export of `POST /v1/spaces/{name}/export` and of a
    search's trial), or the 413/501/503 JSON error."""
    params = sum(spec.params for spec in space.blocks(canonical))
    if params > MAX_EXPORT_PARAMS:
        return error_response(
            413,
            "config",
            f"this subnet has {params:,} parameters; exports are limited to {MAX_EXPORT_PARAMS:,} "
            "(smaller width_scale or a smaller config), or export locally with the library",
            f"<= {MAX_EXPORT_PARAMS} parameters",
        )
    if fmt == "coreml":
        try:
            from latency_lut.coreml_backend import import_coremltools

            import_coremltools()
        except BackendUnavailableError as exc:
            return error_response(501, "format", str(exc), ["torchscript", "onnx"])
    if not _EXPORTS.acquire(blocking=False):
        return error_response(
            503, "format", f"{MAX_CONCURRENT_EXPORTS} exports are running; retry in a few seconds", None
        )
    try:
        content = export_subnet(space, canonical, fmt, precision)
    finally:
        _EXPORTS.release()
    suffix, media_type = _EXPORT_FILES[fmt]
    filename = f"{space.name}-{space.config_id(canonical)}{suffix}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return Response(content, media_type=media_type, headers=headers)


def parse_option_value(text: str) -> Any:
    """A query value as JSON when it is (`64`, `0.5`, `true`), else the text itself (`fp16`)."""
    try:
        return json.loads(text)
    except ValueError:
        return text
