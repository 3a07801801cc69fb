"""The dashboard against a server with auth on: without a key the page says what it needs; a key put
into the key box is kept and sent, and the page works."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from svc_helpers import LiveServer, throwaway_server

from services.core.auth import create_key


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[LiveServer]:

    with throwaway_server(tmp_path_factory.mktemp("browser-auth"), auth_disabled=False) as server:
        yield server


def test_key_box(page, secured: LiveServer) -> None:
    reader = create_key(secured.app.state.engine, "browser", ["searches:read"])[1]
    farm = create_key(secured.app.state.engine, "farm-only", ["lut:write"])[1]
    banner = page.locator("#error-banner")

    page.goto(secured.url + "/")
    banner.wait_for(state="visible")
    assert "this server needs an API key" in banner.inner_text()
    assert "searches:read" in banner.inner_text()

    # A key without the scope: 403, and the page says the key lacks it.
    page.fill("#api-key", farm)
    page.click("#api-key-form button")
    page.wait_for_load_state("load")
    banner.wait_for(state="visible")
    assert "lacks the scope" in banner.inner_text()

    page.fill("#api-key", reader)
    page.click("#api-key-form button")
    page.wait_for_load_state("load")
    # The searches list loads (empty on this server) and the error banner is gone.
    page.wait_for_selector("#searches-table td.empty")
    assert banner.is_hidden()
    assert page.evaluate("window.localStorage.getItem('nas.apiKey')") == reader
    assert page.input_value("#api-key") == reader
    # The devices page loads its data with the key as well.
    page.goto(secured.url + "/#/devices")
    page.wait_for_selector("text=host-cpu-torch")
    assert banner.is_hidden()


def test_export_button_sends_the_key(page, secured: LiveServer, tmp_path) -> None:
    from services.core.demo_search import insert_synthetic_search

    engine = secured.app.state.engine
    # A stored search belongs to `legacy` (no key submitted it): reading it takes searches:read-all.
    reader = create_key(engine, "exporter", ["searches:read-all"])[1]
    search_id = insert_synthetic_search(engine, trials=12, name="export-under-auth")
    page.goto(secured.url + "/")
    page.fill("#api-key", reader)
    page.click("#api-key-form button")
    page.wait_for_load_state("load")
    page.goto(f"{secured.url}/#/search/{search_id}")
    page.wait_for_selector("#selected-number")
    number = page.get_attribute("#selected-number", "data-number")
    # A plain link could not send the key (401); the button fetches with it and hands over the file.
    with page.expect_download(timeout=120_000) as download_info:
        page.click("#export-onnx")
    download = download_info.value
    path = tmp_path / download.suggested_filename
    download.save_as(path)
    assert path.suffix == ".onnx" and path.stat().st_size > 1000, (path, number)
    assert page.locator("#error-banner").is_hidden()
