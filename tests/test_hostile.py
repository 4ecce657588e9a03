"""Hostile input never gets a 5xx: the V2 parser, HTTP it cannot parse, odd headers and shapes.

The parser is driven directly (and fuzzed), then the same inputs go over a real socket to a
real server, which must answer each with its 4xx (or 501) JSON and log no error.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import ApiError
from app.v2_wire import parse_request
from tests.conftest import RunningServer, make_image

DEEP = b"[" * 100_000 + b"]" * 100_000


def _refused(body: bytes, header_length: str | None = None) -> str:
    with pytest.raises(ApiError) as caught:
        parse_request(body, header_length)
    assert caught.value.status == 400
    return caught.value.message


def _request(**tensor: Any) -> bytes:
    return json.dumps({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], **tensor}]}).encode()


@pytest.mark.parametrize(
    "body",
    [DEEP, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b'{"inputs": ' + DEEP + b"}"],
    ids=["list", "object", "inside"],
)
def test_json_nested_past_any_limit_is_400(body: bytes) -> None:
    assert "nested too deeply" in _refused(body)


def _nested(leaf: Any, depth: int) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def test_data_nested_hundreds_deep_costs_no_recursion() -> None:
    # Within what json.loads takes, deeper than a recursive walk of the lists could go.
    (tensor,) = parse_request(_request(data=_nested("AA==", 800)), None).inputs
    assert tensor.data == [b"\x00"]
    pixels = {"name": "pixels", "datatype": "UINT8", "shape": [1], "data": _nested(7, 800)}
    assert "not a UINT8 array" in _refused(json.dumps({"inputs": [pixels]}).encode())


@pytest.mark.parametrize(
    "value", ["²", "١٢", "１２", "1_0", "+5", "-1", " 5", "5 ", "", "0x10", "9" * 5000, "99999999999999999999"]
)
def test_header_length_takes_ascii_digits_only(value: str) -> None:
    body = _request(data=["AA=="])
    assert "Inference-Header-Content-Length" in _refused(body, value)


def test_header_length_in_ascii_digits_is_taken() -> None:
    body = _request(parameters={"binary_data_size": 5}) + b"\x01\x00\x00\x00x"
    (tensor,) = parse_request(body, str(len(body) - 5)).inputs
    assert tensor.data == [b"x"]


@pytest.mark.parametrize(
    "tensor",
    [
        {"datatype": ["BYTES"]},
        {"datatype": {"a": 1}},
        {"datatype": 7},
        {"shape": [True]},
        {"shape": [-1]},
        {"shape": [1.0]},
        {"shape": ["1"]},
        {"shape": [2**63]},
        {"shape": [1] * 65},
        {"shape": [2**62, 2**62, 2**62], "data": ["AA=="]},
        {"shape": "1"},
        {"parameters": [1]},
        {"parameters": {"binary_data_size": -1}},
        {"parameters": {"binary_data_size": True}},
        {"parameters": {"binary_data_size": 2**70}},
        {"parameters": {"shared_memory_region": "x"}},
        {"data": [{"a": 1}]},
        {"data": [None]},
        {"data": "not base64!"},
    ],
)
def test_malformed_inputs_are_400(tensor: dict[str, Any]) -> None:
    _refused(_request(**({"data": ["AA=="]} | tensor)))


@pytest.mark.parametrize(
    "header",
    [
        {"inputs": [{"name": "tensor", "datatype": "FP32", "shape": [2], "data": [1, "x"]}]},
        {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [256]}]},
        {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [-1]}]},
        {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [[1, 2], 3]}]},
        {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": ["9" * 5000]}]},
        {"inputs": [{"name": 1}]},
        {"inputs": {"name": "x"}},
        {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}], "id": 5},
        {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}], "outputs": {}},
        {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}], "parameters": []},
        {
            "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],
            "outputs": [{"name": "p", "parameters": {"classification": -1}}],
        },
        {
            "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["AA=="]}],
            "outputs": [{"name": "p", "parameters": {"binary_data": "yes"}}],
        },
    ],
)
def test_malformed_requests_are_400(header: dict[str, Any]) -> None:
    _refused(json.dumps(header).encode())


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["name", "datatype", "shape", "data", "parameters", "binary_data_size", "classification"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)
_INPUT = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["images", "tensor", "pixels"]) | _JSON,
        "datatype": st.sampled_from(["BYTES", "STRING", "FP32", "UINT8", "INT8"]) | _JSON,
        "shape": st.lists(st.integers(-2, 2**64), max_size=4) | _JSON,
    },
    optional={
        "data": _JSON,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(-1, 64) | _JSON, "binary_data": _JSON}
        )
        | _JSON,
    },
)
_BODY = st.fixed_dictionaries(
    {"inputs": st.lists(_INPUT, max_size=3) | _JSON},
    optional={"outputs": st.lists(st.fixed_dictionaries({"name": _JSON}, optional={"parameters": _JSON})) | _JSON},
)


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(_BODY, st.binary(max_size=48), st.none() | st.text(max_size=4) | st.just("exact"))
def test_any_body_is_parsed_or_refused_with_400(header: dict[str, Any], tail: bytes, length: str | None) -> None:
    text = json.dumps(header).encode()
    try:
        parse_request(text + tail, str(len(text)) if length == "exact" else length)
    except ApiError as exc:
        assert exc.status == 400


# --- the same over a real socket -------------------------------------------------------------


@pytest.fixture(scope="module")
def server(random_checkpoint: Path) -> Iterator[RunningServer]:
    running = RunningServer(
        {"ALEXNET_MODELS": f"catdog={random_checkpoint}", "ALEXNET_DTYPE": "fp32", "ALEXNET_MAX_BATCH_SIZE": "4"}
    )
    yield running
    running.stop()


def _raw(server: RunningServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; the status, headers and body of the one answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"FOO /predict HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n", 400, "bad_request"),
        (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", 400, "bad_request"),
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
        (
            b"PUT /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        (b"PROPFIND /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, "method_not_allowed"),
    ],
    ids=[
        "unknown-method",
        "space-in-header-name",
        "bad-content-length",
        "huge-content-length",
        "bad-version",
        "put",
        "propfind",
    ],
)
def test_http_the_server_cannot_take_gets_json(
    server: RunningServer, request_bytes: bytes, status: int, code: str
) -> None:
    got, headers, body = _raw(server, request_bytes)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == code


def _infer(server: RunningServer, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v2/models/catdog/infer",
        content=body,
        headers=[(b"Content-Type", b"application/json"), *(headers or [])],
        timeout=60,
    )


def test_hostile_v2_bodies_and_headers_get_400_over_http(server: RunningServer) -> None:
    image = base64.b64encode(make_image(3)).decode()
    good = _request(data=[image])
    cases = [
        _infer(server, DEEP),
        _infer(server, b'{"a":' * 100_000 + b"}" * 100_000),
        _infer(server, good, [(b"Inference-Header-Content-Length", "²".encode("latin-1"))]),
        _infer(server, good, [(b"Inference-Header-Content-Length", "１".encode())]),
        _infer(server, good, [(b"Inference-Header-Content-Length", b"9" * 5000)]),
        _infer(server, _request(data=[image], shape=[2**63 - 1])),
        _infer(server, _request(data=[image], shape=[-1])),
        _infer(server, _request(data=[image], datatype=["BYTES"])),
        _infer(
            server,
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "tensor",
                            "datatype": "FP32",
                            "shape": [2**62, 3, 227, 227],
                            "parameters": {"binary_data_size": 4},
                        }
                    ]
                }
            ).encode()
            + b"\x00" * 4,
        ),
    ]
    for response in cases:
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/json"
        assert isinstance(response.json()["error"], str)
    assert _infer(server, good, [(b"Inference-Header-Content-Length", str(len(good)).encode())]).status_code == 200


def test_query_integers_are_ascii(server: RunningServer) -> None:
    for value in ("²", "１", "٣", "9" * 5000, "1e3"):
        response = httpx.post(
            f"{server.url}/predict",
            params={"top_k": value},
            content=make_image(1),
            headers={"Content-Type": "image/jpeg"},
        )
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request", value


def test_nothing_hostile_became_a_server_error(server: RunningServer) -> None:
    metrics = httpx.get(f"{server.url}/metrics").text
    answered = [line for line in metrics.splitlines() if line.startswith("alexnet_http_requests_total{")]
    assert any('status="400"' in line for line in answered)
    # 501 is the protocol's answer to a transfer coding it does not implement (RFC 9112 §6.1), not a failure
    failures = [line for line in answered if 'status="5' in line and 'status="501"' not in line]
    assert not [line for line in failures if 'route="/readyz"' not in line]
    records = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL") or "exception" in r]
