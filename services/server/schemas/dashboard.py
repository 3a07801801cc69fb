"""Response models of the dashboard's JSON endpoints (`/v1/dashboard/...`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from services.server.schemas import ObjectiveOut, PrecisionView, SearchOut, TrialOut


class Capabilities(BaseModel):
    """What this server offers the page beyond the plots, so it shows only working controls."""

    plotting_library: bool = Field(description="plotly.min.js is installed and served at /vendor/")
    export_formats: list[str] = Field(description="formats a selected subnet can be downloaded in")
    export_url: str | None = Field(
        description="URL template of the server-side export (ONNX, Core ML), when the server has one"
    )
    device_accuracy: bool = Field(description="the server offers GET /v1/devices/{device}/accuracy")


class SearchSummary(SearchOut):
    space: str
    strategy: str
    objectives: list[ObjectiveOut]
    best: dict[str, float] = Field(description="best value of each objective on the current front")


class SearchSummaryPage(BaseModel):
    items: list[SearchSummary]
    total: int
    offset: int
    limit: int


class Series(BaseModel):
    numbers: list[int]
    x: list[float]
    y: list[float]
    z: list[float] | None = None


class PlotCounts(BaseModel):
    trials: int
    plottable: int = Field(description="complete trials with every plotted objective")
    failed: int
    feasible: int
    infeasible: int
    front: int
    shown: int


class PlotOut(BaseModel):
    search_id: str
    status: str
    trials_done: int
    objectives: list[ObjectiveOut]
    counts: PlotCounts
    thinned: bool = Field(description="whether the non-front series are a stratified sample")
    front: Series = Field(description="every trial on the Pareto front of the plotted objectives")
    feasible: Series
    infeasible: Series


class HypervolumeOut(BaseModel):
    search_id: str
    objectives: list[str]
    evaluations: list[int]
    hypervolume: list[float]
    reference: float
    normalized_by: Literal["anchors", "observed"] = Field(
        description="anchors: the runner's figures, bounds from the space's smallest and largest subnets; "
        "observed: recomputed with the trials' own minimum and maximum (see docs/dashboard.md)"
    )
    reason: str = Field("", description="why the curve is empty, when it is")
    live_hypervolume: float | None = Field(description="the runner's figure (anchored normalisation)")


class SortedTrialPage(BaseModel):
    items: list[TrialOut]
    total: int
    offset: int
    limit: int
    sort: str
    order: Literal["asc", "desc"]
    sortable: list[str]
    front_numbers: list[int] = Field(description="members of the stored front among `items`")


class StageSetting(BaseModel):
    key: str
    name: str
    value: Any
    options: list[Any]


class StageBlock(BaseModel):
    index: int
    active: bool
    attrs: list[StageSetting]


class Stage(BaseModel):
    name: str
    settings: list[StageSetting]
    blocks: list[StageBlock]


class TrialDetail(BaseModel):
    search_id: str
    space: str
    space_options: dict[str, Any]
    on_front: bool
    trial: TrialOut
    stages: list[Stage]
    precision: PrecisionView | None = Field(
        None, description="bit-width spaces: the config per stage, a histogram of widths, every layer"
    )


class CoverageRow(BaseModel):
    device: str
    space: str
    options: dict[str, Any]
    blocks: int = Field(description="distinct blocks the space can contain at these options")
    covered: int = Field(description="of those, blocks with an entry in the device's table")
    share: float
    error: str | None = None
