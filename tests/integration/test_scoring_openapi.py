"""The scoring service against its own OpenAPI schema, with schemathesis: no input makes it fail.

The real service (trained registry, Feast online store, ONNX Runtime, prediction log on an
embedded broker) runs on uvicorn; schemathesis generates requests for every operation of
the schema — schema-valid ones (examples, fuzzing) and invalid ones (its coverage phase) —
and sends them over HTTP. Whatever arrives, the answer is never a 5xx, and it is what the
schema promises.

Every schemathesis check runs on every operation. The small tests before them pin the
gaps schemathesis found once (a 500 on a time outside the UTC range, undocumented 401 and
422 bodies, lax parsing, ISO code lists missing from the schema, stripped ids), so they stay
closed.

The fixed-input tests come first in this file on purpose: on CPython 3.11.7, after the
hypothesis runs, pytest could not render a later failure's source (`SystemError: AST
constructor recursion depth mismatch`, an INTERNALERROR that ends the session).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from core.settings import Settings
from pipelines.broker import EmbeddedBroker
from services.scoring.app import create_app
from tests.integration.scoring_support import ADMIN, running_service, service_settings, trained_registry

pytestmark = pytest.mark.slow

# Fuzzing examples per operation (schemathesis' coverage phase adds its own, deterministic set).
EXAMPLES = 150
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same requests every run
    database=None,
    suppress_health_check=list(HealthCheck),
)

# The app's schema, built without starting anything (`create_app` only wires the routes); a
# test below holds it equal to what the running service publishes at /openapi.json. (Loading
# it from the server with `schemathesis.pytest.from_fixture` would be nicer, but that lazy
# collection sets `Function._nodeid`, which pytest 9 no longer has: AttributeError.)
OPENAPI = create_app(Settings(profile="embedded")).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


def _is_admin(case: schemathesis.Case) -> bool:
    return case.operation.path.startswith("/admin/")


def _key(case: schemathesis.Case) -> tuple[str, str]:
    return case.operation.method.upper(), case.operation.path


def _unparsable_body(response: Any) -> bool:
    """FastAPI's answer to a body that is not JSON: 400 (not even text) or 422 (not JSON).

    It comes before any dependency runs, the admin token check included, and the schema
    does not list the 400. Fine for a client error; any other 400/422 is judged normally.
    """
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    if response.status_code == 400:
        return bool(body == {"detail": "There was an error parsing the body"})
    return response.status_code == 422 and "JSON decode error" in body.get("fields", {}).values()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    base = Settings(profile="embedded", var_dir=tmp_path_factory.mktemp("openapi") / "var")
    trained_registry(base)
    with EmbeddedBroker(base, bootstrap="127.0.0.1:0") as broker:
        # A generous feature budget: on a loaded 2-core machine 5 ms reads can time out, and
        # five in a row open the breaker, which /readyz rightly reports as 503.
        settings_ = service_settings(broker.settings, feature_timeout_ms=2_000)
        with running_service(settings_) as client:
            assert client.get("/readyz").status_code == 200
            yield client


def test_the_served_schema_is_the_one_tested(service: httpx.Client) -> None:
    assert service.get("/openapi.json").json() == OPENAPI


# --- inputs schemathesis seldom generates -----------------------------------------------------
VALID = {
    "transaction_id": "t_openapi_1",
    "event_time": "2026-01-20T12:00:00Z",
    "card_id": "c_1",
    "merchant_id": "m_1",
    "merchant_country": "US",
    "channel": "ecommerce",
    "amount": 12.5,
}


@pytest.mark.parametrize(
    "event_time",
    [
        "0001-01-01T00:30:00+01:00",  # valid ISO-8601 with an offset, before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
    ],
)
def test_a_time_outside_the_utc_range_is_a_422_not_a_500(service: httpx.Client, event_time: str) -> None:
    # A connection of its own: after a 500 the server drops the connection.
    response = httpx.post(f"{service.base_url}/v1/score", json={**VALID, "event_time": event_time})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "event_time", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2026-01-20T12:00:00+14:00"]
)
def test_extreme_but_representable_times_are_scored(service: httpx.Client, event_time: str) -> None:
    response = service.post("/v1/score", json={**VALID, "event_time": event_time})
    assert response.status_code == 200, response.text


# --- gaps schemathesis found once, kept closed ----------------------------------------------
def test_metrics_content_type_is_documented(service: httpx.Client) -> None:
    served = service.get("/metrics").headers["content-type"].split(";")[0]
    documented = OPENAPI["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert served in documented


@pytest.mark.parametrize("path", ["/admin/reload", "/admin/canary", "/admin/kill-switch"])
def test_admin_401_is_documented(service: httpx.Client, path: str) -> None:
    assert service.post(path).status_code == 401
    assert "401" in OPENAPI["paths"][path]["post"]["responses"]


@pytest.mark.parametrize("path,required", [("/admin/canary", "percent"), ("/admin/kill-switch", "state")])
def test_admin_422_body_matches_its_schema(service: httpx.Client, path: str, required: str) -> None:
    response = service.post(path, headers=ADMIN, json={"nope": 1})
    assert response.status_code == 422
    documented = OPENAPI["paths"][path]["post"]["responses"]["422"]["content"]["application/json"]["schema"]
    assert documented["$ref"].endswith("/ValidationErrorOut")
    # Every wrong field is named, and only those: the unknown one and the missing one.
    assert response.json()["fields"] == {"nope": "Extra inputs are not permitted", required: "Field required"}


@pytest.mark.parametrize(
    "path,body",
    [
        ("/v1/score", {**VALID, "schema_version": True}),
        ("/v1/score", {**VALID, "amount": "12.5"}),
        ("/admin/canary", {"percent": False}),
    ],
)
def test_a_body_the_schema_rejects_is_rejected(
    service: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    response = service.post(path, json=body, headers=ADMIN)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "field,value,known",
    [("merchant_country", "AA", "US"), ("ip_country", "ZZ", "GB"), ("currency", "AAA", "USD")],
)
def test_score_schema_lists_the_codes_it_accepts(
    service: httpx.Client, field: str, value: str, known: str
) -> None:
    # The schema lists the codes (an enum), so clients and schemathesis know what passes.
    documented = OPENAPI["components"]["schemas"]["Transaction"]["properties"][field]
    enum = documented.get("enum") or next(o["enum"] for o in documented["anyOf"] if "enum" in o)
    assert value not in enum and known in enum and len(enum) > 100
    assert service.post("/v1/score", json={**VALID, field: known}).status_code == 200
    response = service.post("/v1/score", json={**VALID, field: value})
    assert response.status_code == 422 and field in response.json()["fields"], response.text


def test_whitespace_only_ids_are_documented(service: httpx.Client) -> None:
    response = service.post("/v1/score", json={**VALID, "merchant_id": "\u0085"})
    assert response.status_code == 200, response.text


# --- the property tests (last: see the note at the top) ----------------------------------------
@schema.parametrize()
@FUZZ
def test_without_a_token_no_server_error_and_admin_is_refused(
    case: schemathesis.Case, service: httpx.Client
) -> None:
    response = case.call(base_url=str(service.base_url))
    checks: list[Any] = [not_a_server_error]
    if _unparsable_body(response):
        pass
    elif _is_admin(case):
        # Without the token nothing gets through; a parsed body is refused by the token check.
        # (The coverage phase also tries methods the route lacks: routing answers 405 first.)
        expected = 401 if case.method.upper() == case.operation.method.upper() else 405
        assert response.status_code == expected, (case.as_curl_command(), response.text)
    else:
        checks += [
            status_code_conformance,
            response_schema_conformance,
            positive_data_acceptance,
            content_type_conformance,
            negative_data_rejection,
        ]
    case.validate_response(response, checks=checks)


@schema.include(path_regex="^/admin/").parametrize()
@FUZZ
def test_admin_with_the_token_no_server_error(case: schemathesis.Case, service: httpx.Client) -> None:
    response = case.call(base_url=str(service.base_url), headers=ADMIN)
    if response.request.headers.get("authorization") != ADMIN["authorization"]:
        # The coverage phase sends some requests with the credentials removed on purpose.
        assert response.status_code in (401, 405), (case.as_curl_command(), response.text)
        case.validate_response(response, checks=[not_a_server_error])
        return
    checks: list[Any] = [not_a_server_error]
    if not _unparsable_body(response):
        checks += [
            status_code_conformance,
            content_type_conformance,
            positive_data_acceptance,
            ignored_auth,  # replays the request without (and with a wrong) token: must be refused
            response_schema_conformance,
            negative_data_rejection,
        ]
    case.validate_response(response, headers=ADMIN, checks=checks)
