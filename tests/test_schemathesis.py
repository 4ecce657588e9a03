"""Schemathesis against the app's own OpenAPI document, on a real server on 127.0.0.1.

Bounded (about 25 cases per operation, a few hundred in all, seeded): no 5xx, every answer's
status, content type, headers and body conform to the schema, keys are enforced where the
schema says so, unsupported methods get 405.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from app.config import Settings
from app.main import create_app
from tests.conftest import RunningServer

KEY = "schemathesis-key"
EXAMPLES = 25


@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[RunningServer]:
    running = RunningServer(
        {
            "ALEXNET_MODELS": f"catdog={random_checkpoint}",
            "ALEXNET_API_KEYS": KEY,
            "ALEXNET_DTYPE": "fp32",
            "ALEXNET_MAX_BATCH_SIZE": "4",
            "ALEXNET_MAX_UPLOAD_BYTES": "1048576",
        }
    )
    yield running
    running.stop()


# The document the server serves, built without loading a model (schemathesis' lazy
# ``from_fixture`` loader does not run under pytest 9); test_the_server_serves_this_schema
# checks that it is the one on the wire.
OPENAPI = create_app(Settings()).openapi()
CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 11,
        "headers": {"Authorization": f"Bearer {KEY}", "X-API-Key": KEY},  # both schemes, so none is generated
        "parameters": {"model_name": "catdog"},  # the one served model; other names are 404 anyway
        "generation": {"max-examples": EXAMPLES},
        # A body the schema allows (any bytes as image/jpeg, any JSON object as an inference
        # request) is mostly not a decodable image or a well-formed request: 4xx is right.
        "operations": [{"include-method": "POST", "checks": {"positive_data_acceptance": {"enabled": False}}}],
    }
)
schema = schemathesis.openapi.from_dict(OPENAPI, config=CONFIG)


def test_the_server_serves_this_schema(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/openapi.json").json() == json.loads(json.dumps(OPENAPI))


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_answers_conform_to_the_schema(case: schemathesis.Case, server: RunningServer) -> None:
    case.call_and_validate(base_url=server.url, timeout=60)


def test_no_server_error_was_answered_or_logged(server: RunningServer) -> None:
    metrics = httpx.get(f"{server.url}/metrics", headers={"X-API-Key": KEY}).text
    answered = [line for line in metrics.splitlines() if line.startswith("alexnet_http_requests_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in answered) > 200, "schemathesis sent almost nothing"
    waiting = 'route="/readyz",status="503"'  # the fixture polling /readyz while the model warmed up
    assert not [line for line in answered if 'status="5' in line and waiting not in line]
    assert any('status="401"' in line for line in answered), "no request was refused for its key"
    records = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL") or "exception" in r]
    assert KEY not in server.output()


def test_v2_operations_declare_their_real_parameters_and_answers() -> None:
    paths = OPENAPI["paths"]
    for path, operations in paths.items():
        if not path.startswith("/v2/models/"):
            continue
        for method, operation in operations.items():
            names = {parameter["name"] for parameter in operation.get("parameters", [])}
            expected = {"model_name"} | ({"model_version"} if "{model_version}" in path else set())
            assert names - {"Inference-Header-Content-Length"} == expected, (method, path, names)
            assert {"404", "default"} <= set(operation["responses"]), (method, path)
            assert operation["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].endswith(
                "/V2Error"
            )
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert {"200", "400", "401", "404", "413", "415", "422", "429", "503", "504"} <= set(infer["responses"])
    assert set(infer["responses"]["200"]["content"]) == {"application/json", "application/octet-stream"}
    assert "401" in paths["/v2/models/{model_name}"]["get"]["responses"]
    assert "401" not in paths["/v2/models/{model_name}/ready"]["get"]["responses"]  # a probe: open
