"""`/v1/spaces`: the registered search spaces (choices, options, references), and subnets out of them:
`POST /v1/spaces/{name}/evaluate` scores a config now, `POST /v1/spaces/{name}/export` returns it as a
TorchScript, ONNX or zipped Core ML model file."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from nas.proxies.catalog import proxy_catalog
from search_spaces import FieldError, get_space, list_spaces
from services.core.measurement_store import UnknownDeviceError
from services.core.model_export import ModelFile, export_model
from services.core.precision_view import precision_view
from services.option_values import parse_option_value
from services.server.deps import (
    HeavyRequestDep,
    MeasurementsDep,
    PredictionsDep,
    Scope,
    SettingsDep,
    SpaceName,
    check_request_inputs,
    scope_by_method,
)
from services.server.errors import ResourceNotFoundError, canonical_at, space_at
from services.server.schemas import (
    EXPORT_RESPONSES,
    ErrorBody,
    EvaluateIn,
    EvaluateOut,
    ExportIn,
    LatencyOut,
    PrecisionView,
    SpaceDetail,
    SpaceSummary,
)

router = APIRouter(
    prefix="/v1/spaces",
    tags=["spaces"],
    responses={422: {"model": ErrorBody}},
    dependencies=[scope_by_method(read=Scope.SEARCHES_READ, write=Scope.SEARCHES_WRITE)],
)


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
def describe(name: SpaceName, request: Request, settings: SettingsDep) -> SpaceDetail:
    """One space at the options given as query parameters (e.g. `?resolution=64`; defaults otherwise),
    with the quality proxies a search can use at those options (the supernet-inherited ones once a
    supernet is trained under the server's supernet directory, `predicted` once fitted) and the one
    `proxy:default` stands for."""
    options = {key: parse_option_value(value) for key, value in request.query_params.items()}
    space = get_space(name, **options)
    catalog = proxy_catalog(space, settings.supernet_dir)
    return SpaceDetail(
        **space.describe(),
        proxies=catalog["proxies"],
        default_proxy=catalog["default"],
        supernet_checkpoint=catalog["supernet_checkpoint"],
    )


@router.post(
    "/{name}/evaluate",
    response_model=EvaluateOut,
    responses={
        404: {"model": ErrorBody},
        429: {"model": ErrorBody, "description": "all expensive-request slots taken (Retry-After)"},
        503: {"model": ErrorBody, "description": "ran past NAS_HEAVY_REQUEST_TIMEOUT_S (Retry-After)"},
    },
)
def evaluate(
    name: SpaceName,
    body: EvaluateIn,
    store: MeasurementsDep,
    predictions: PredictionsDep,
    settings: SettingsDep,
    deadline: HeavyRequestDep,
) -> EvaluateOut:
    """Score one subnet now: parameters, MACs, and its latency on each device by the device's selected
    predictor (or the candidate `predictor` names), with the covered share and the fallback for blocks
    the table lacks marked as estimated. Nothing is stored. An expensive request: options up to
    `NAS_MAX_REQUEST_INPUT_SCALE` times the default inputs (422 beyond), at most
    `NAS_MAX_HEAVY_REQUESTS` at once (429) and `NAS_HEAVY_REQUEST_TIMEOUT_S` (503)."""
    space = space_at(name, body.space_options)
    check_request_inputs(space, settings)
    canonical = canonical_at(space, body.config)
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
        deadline.check(f"pricing the subnet on {device!r}")
        predictors = predictions.predictor(device, space)
        try:
            estimate = predictors.predict(canonical, predictor=body.predictor)
        except ValueError as exc:
            raise FieldError(
                str(exc), field="predictor", allowed=["best", *predictors.selection.predictors]
            ) from None
        latency[device] = LatencyOut(
            total_ms=estimate.total_ms if estimate.complete else None,
            table_ms=estimate.table_ms,
            covered_share=estimate.covered_share,
            complete=estimate.complete,
            estimated=estimate.estimated,
            estimated_ms=estimate.estimated_ms,
            predictor=estimate.predictor,
            expected_error=estimate.expected_error,
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
        precision=None
        if (view := precision_view(space, canonical)) is None
        else PrecisionView.model_validate(view),
    )


@router.post(
    "/{name}/export",
    response_class=Response,
    responses={**EXPORT_RESPONSES, 404: {"model": ErrorBody}},
)
def export(name: SpaceName, body: ExportIn) -> Response:
    """A subnet as a model file with random weights: `torchscript` (a traced `.pt`), `onnx` (opset 17)
    or `coreml` (an `.mlpackage` folder, zipped; needs the `coreml` extra, else 501); on a space with
    per-layer bit widths also `quantized` (packed codes and scales per layer and the assignment as
    JSON, zipped; docs/quantization.md). Subnets above
    100M parameters are refused (413); at most two exports run at once (else 503, retry later)."""
    space = space_at(name, body.space_options)
    return _model_file(
        export_model(space, canonical_at(space, body.config), body.format, body.coreml_precision)
    )


def _model_file(model: ModelFile) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{model.filename}"'}
    return Response(model.content, media_type=model.media_type, headers=headers)
