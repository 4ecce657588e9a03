"""The Open Inference Protocol body codec, without a server."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from app.errors import ApiError
from app.v2_wire import OutputTensor, classification_strings, encode_response, parse_request


def _binary_body(header: dict[str, object], *chunks: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + b"".join(chunks), str(len(text))


def _elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_json_bytes_are_base64_and_string_is_bytes() -> None:
    body = {"id": "1", "inputs": [{"name": "images", "shape": [2], "datatype": "STRING", "data": ["YWI=", "Yw=="]}]}
    request = parse_request(json.dumps(body).encode(), None)
    (tensor,) = request.inputs
    assert (tensor.datatype, tensor.shape, tensor.data) == ("BYTES", (2,), [b"ab", b"c"])
    assert request.id == "1" and request.outputs is None and request.binary_output is False


def test_binary_inputs_follow_the_json_in_order() -> None:
    floats = np.arange(6, dtype="<f4").tobytes()
    images = _elements(b"\x00\x01", b"", b"xyz")
    header = {
        "inputs": [
            {"name": "a", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": len(floats)}},
            {"name": "b", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": len(images)}},
        ],
        "parameters": {"binary_data_output": True},
        "outputs": [
            {"name": "p", "parameters": {"classification": 2}},
            {"name": "p", "parameters": {"binary_data": False}},
        ],
    }
    request = parse_request(*_binary_body(header, floats, images))
    assert request.inputs[0].data == floats and request.inputs[1].data == [b"\x00\x01", b"", b"xyz"]
    assert [(o.binary, o.classification) for o in request.outputs or []] == [(True, 2), (False, 0)]


def test_json_numbers_nested_or_flat() -> None:
    for data in ([[1, 2], [3, 4]], [1, 2, 3, 4], ["1", "2", "3", "4"]):
        body = {"inputs": [{"name": "p", "shape": [2, 2], "datatype": "UINT8", "data": data}]}
        assert parse_request(json.dumps(body).encode(), None).inputs[0].data == bytes([1, 2, 3, 4])


@pytest.mark.parametrize(
    ("header", "binary", "message"),
    [
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}, b"", "INT64"),
        ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0]}]}, b"", "1 elements"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]}]}, b"", "base64"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}]}, b"", "UINT8"),
        ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1.0]}]}, b"", "non-negative"),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}]},
            b"\0" * 8,
            "4 bytes of binary data belong to no input",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]},
            struct.pack("<I", 9) + b"ab",
            "runs past",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"shared_memory_region": "r"}}]},
            b"",
            "shared-memory",
        ),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, b"", "neither"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "id": 7}, b"", "'id'"),
    ],
)
def test_malformed_requests_are_400(header: dict[str, object], binary: bytes, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_request(*_binary_body(header, binary))
    assert caught.value.status == 400 and message in caught.value.message


def test_classification_strings_are_top_k_most_probable_first() -> None:
    strings = classification_strings(np.array([[0.1, 0.6, 0.3], [0.5, 0.0, 0.5]], dtype=np.float32), ("a", "b", "c"), 2)
    assert strings.tolist() == [[b"0.600000:1:b", b"0.300000:2:c"], [b"0.500000:0:a", b"0.500000:2:c"]]


def test_encode_response_json_and_binary() -> None:
    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    strings = np.array([[b"0.750000:1:dog"]], dtype=object)
    body, headers = encode_response("m", "1", None, [OutputTensor("p", "FP32", probabilities, False)])
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(body) == {
        "model_name": "m",
        "model_version": "1",
        "outputs": [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 0.75]}],
    }
    outputs = [OutputTensor("p", "FP32", probabilities, True), OutputTensor("p", "BYTES", strings, True)]
    body, headers = encode_response("m", "1", "r", outputs)
    size = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:size])
    assert header["id"] == "r" and [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [8, 18]
    assert body[size:] == probabilities.tobytes() + _elements(b"0.750000:1:dog")
