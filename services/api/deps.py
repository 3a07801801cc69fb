"""Request dependencies as `Annotated` aliases; the objects live on `app.state` (see `services.app`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine

from latency_lut import SqlLatencyTable
from services.search_queue import SearchQueue
from services.settings import Settings
from services.store import SqlTrialStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_queue(request: Request) -> SearchQueue:
    return request.app.state.queue


def get_store(request: Request) -> SqlTrialStore:
    return request.app.state.store


def get_lut(request: Request) -> SqlLatencyTable:
    return request.app.state.lut


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
QueueDep = Annotated[SearchQueue, Depends(get_queue)]
StoreDep = Annotated[SqlTrialStore, Depends(get_store)]
LutDep = Annotated[SqlLatencyTable, Depends(get_lut)]
