"""Property-based requests generated from the app's own OpenAPI document (schemathesis, valid and invalid
data) against a live server with an admin key, on SQLite and on PostgreSQL, with every schemathesis
check: no 5xx, every status, content type, header and body as the document says, valid data accepted
and invalid data refused.

Bounded: a few examples per operation, so the whole file takes about a minute per backend. Left out,
because each request would start real work rather than answer: `POST /v1/spaces/{name}/export` (builds
and serialises a whole subnet). The scheduler is off, so submitted searches only queue.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from svc_helpers import LiveServer, backend_live_server

from services.core.auth import create_key
from services.server.app import create_app
from services.settings import Settings

#: Examples per (operation, mode); NAS_FUZZ_EXAMPLES=200 for a longer hunt.
EXAMPLES_PER_OPERATION = int(os.environ.get("NAS_FUZZ_EXAMPLES", "6"))
LEFT_OUT = {"POST /v1/spaces/{name}/export"}
#: Operations whose valid input depends on what exists, beyond what a JSON schema can say (the space
#: names a registered space, a key is a block of that space at its options, an objective names a known
#: device, a config's choices are the space's, a table file is a CSV of real rows): schema-valid data
#: may rightly get a 422 naming the field, so `positive_data_acceptance` does not apply to them. Every
#: other check does, and their refusals are checked to be the API's error shape below.
SEMANTIC = {
    "POST /v1/searches",
    "POST /v1/spaces/{name}/evaluate",
    "POST /v1/devices/{device}/measurements",
    "POST /v1/devices/{device}/predict",
    "POST /v1/devices/{device}/accuracy",
    "PUT /v1/devices/{device}/table",
    "GET /v1/devices/{device}/work",
    "GET /v1/devices/{device}/work/subnets",
}


def _cases() -> list[tuple[str, GenerationMode]]:
    """(operation, mode) from the app's OpenAPI document, built at collection time on in-memory SQLite.

    Valid data for every operation; invalid data where an operation has input that can be invalid (a
    query, a body, or a typed path parameter: free-text path parameters accept anything)."""
    app = create_app(Settings(database_url="sqlite://"), start_scheduler=False)
    document = app.openapi()
    app.state.engine.dispose()
    cases = []
    for result in schemathesis.openapi.from_dict(document).get_all_operations():
        operation = result.ok()
        if operation.label in LEFT_OUT:
            continue
        cases.append((operation.label, GenerationMode.POSITIVE))
        if len(operation.query) or len(operation.body) or "{number}" in operation.label:
            cases.append((operation.label, GenerationMode.NEGATIVE))
    return sorted(cases)


CASES = _cases()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzz_server(request, tmp_path_factory) -> Iterator[LiveServer]:
    with backend_live_server(request, tmp_path_factory, "fuzz") as live:
        yield live


@pytest.fixture(scope="module")
def admin_headers(fuzz_server: LiveServer) -> dict[str, str]:
    token = create_key(fuzz_server.app.state.engine, "fuzz", ["admin"])[1]
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer):
    return schemathesis.openapi.from_dict(fuzz_server.app.openapi())


def test_operations_are_collected() -> None:
    labels = {label for label, _ in CASES}
    assert len(labels) >= 25
    assert ("POST /v1/searches", GenerationMode.NEGATIVE) in CASES
    assert ("POST /v1/devices/{device}/measurements", GenerationMode.POSITIVE) in CASES


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{mode.value}-{label}" for label, mode in CASES])
def test_no_server_errors(
    api_schema, fuzz_server: LiveServer, admin_headers: dict[str, str], label: str, mode: GenerationMode
) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case) -> None:
        # Every check schemathesis has (raises naming the failed checks, with a curl command).
        excluded = [positive_data_acceptance] if label in SEMANTIC else []
        response = case.call_and_validate(
            base_url=fuzz_server.url, headers=admin_headers, excluded_checks=excluded, timeout=60
        )
        assert response.status_code < 500, response.text[:2000]
        # Every refusal is JSON that names what was wrong.
        if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
            assert "detail" in response.json(), response.text[:500]

    try:
        check()
    except Unsatisfiable:
        # Schemathesis found no way to make this operation's input invalid.
        assert mode is GenerationMode.NEGATIVE, label
        pytest.skip(f"{label}: no invalid input to generate")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/dashboard/searches?offset=100000000000000000000",  # overflowed SQLite: was a 500
        "/v1/dashboard/searches/x/trials?offset=100000000000000000000",
        "/v1/devices/host-cpu-torch/work?space=efficientformerv2&offset=100000000000000000000",
    ],
)
def test_found_by_fuzzing(fuzz_server: LiveServer, admin_headers: dict[str, str], path: str) -> None:
    """Requests the fuzzer once answered with a 5xx: now a 422 naming the parameter and its range."""
    response = httpx.get(fuzz_server.url + path, headers=admin_headers, timeout=60)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["field"] == "offset"


def test_the_document_describes_the_error_bodies_the_api_gives() -> None:
    """The 422s are documented as `{detail: [{field, message, allowed}]}` (not FastAPI's `{loc, msg,
    type}`), 404s where the path names a resource, and the table's CSV and Parquet files."""
    app = create_app(Settings(database_url="sqlite://"), start_scheduler=False)
    document = app.openapi()
    app.state.engine.dispose()
    assert "HTTPValidationError" not in str(document)
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            refusal = responses["422"]["content"]["application/json"]["schema"]
            assert refusal == {"$ref": "#/components/schemas/ErrorBody"}, (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
    table = document["paths"]["/v1/devices/{device}/table"]["get"]["responses"]["200"]["content"]
    assert {"text/csv", "application/vnd.apache.parquet"} <= set(table)
    assert document["components"]["schemas"]["ErrorItem"]["required"] == ["field", "message"]
